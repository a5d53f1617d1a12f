//! The providers service. It owns the `providers` collections.
//!
//! The library is what the `topsmile-providers` binary, the all-in-one `topsmile dev`
//! launcher and the tests mount: [`open_store`] then [`routes`].
//!
//! Served now: health and reflection. `ProviderService` is in the contract and answers UNIMPLEMENTED until the providers issue lands: no fake data is ever returned.

pub mod api;
pub mod domain;
pub mod store;

use std::sync::Arc;

use tonic::service::Routes;
use topsmile_kit::config::ServerLimits;

pub use store::{ProviderStore, open as open_store};

/// The gRPC services this process serves, for health and reflection.
pub const SERVICE_NAMES: &[&str] = api::SERVED;

/// The providers service's routes on top of `store`.
pub fn routes(store: Arc<dyn ProviderStore>, limits: &ServerLimits) -> Routes {
    api::routes(store, limits)
}
