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

/// The providers service from its configuration: store, guard (keys from identity at
/// `config.identity_upstreams`) and routes.
pub async fn build(
    config: &topsmile_kit::config::ServiceConfig,
    _runtime: &topsmile_kit::server::Runtime,
) -> Result<topsmile_kit::server::Built, topsmile_kit::server::BoxError> {
    let store = topsmile_kit::store::StoreChoice::from_config(&config.store);
    Ok(topsmile_kit::server::Built {
        routes: routes(open_store(&store).await?, &config.limits),
        guard: topsmile_kit::access::Guard::via_identity(&config.identity_addresses())?,
    })
}
