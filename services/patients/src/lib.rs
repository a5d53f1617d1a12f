//! The patients service. It owns the `patients` and `medicalHistory` collections.
//!
//! The library is what the `topsmile-patients` binary, the all-in-one `topsmile dev`
//! launcher and the tests mount: [`open_store`] then [`routes`].
//!
//! Served now: health and reflection. `PatientService`, `MedicalHistoryService` and `PatientInternalService` are in the contract and answer UNIMPLEMENTED until the patients issue lands: no fake data is ever returned.

pub mod api;
pub mod domain;
pub mod store;

use std::sync::Arc;

use tonic::service::Routes;
use topsmile_kit::config::ServerLimits;

pub use store::{PatientStore, open as open_store};

/// The gRPC services this process serves, for health and reflection.
pub const SERVICE_NAMES: &[&str] = api::SERVED;

/// The patients service's routes on top of `store`.
pub fn routes(store: Arc<dyn PatientStore>, limits: &ServerLimits) -> Routes {
    api::routes(store, limits)
}
