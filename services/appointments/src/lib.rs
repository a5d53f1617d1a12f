//! The appointments service. It owns the `appointments` collections.
//!
//! The library is what the `topsmile-appointments` binary, the all-in-one `topsmile dev`
//! launcher and the tests mount: [`open_store`] then [`routes`].
//!
//! Served now: health and reflection. `AppointmentService` is in the contract and answers UNIMPLEMENTED until the appointments issue lands: no fake data is ever returned.

pub mod api;
pub mod domain;
pub mod store;

use std::sync::Arc;

use tonic::service::Routes;
use topsmile_kit::config::ServerLimits;

pub use store::{AppointmentStore, open as open_store};

/// The gRPC services this process serves, for health and reflection.
pub const SERVICE_NAMES: &[&str] = api::SERVED;

/// The appointments service's routes on top of `store`.
pub fn routes(store: Arc<dyn AppointmentStore>, limits: &ServerLimits) -> Routes {
    api::routes(store, limits)
}
