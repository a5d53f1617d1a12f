//! The providers service. It owns the `providers` collection: who a clinic's dentists
//! and specialists are, and when they work.
//!
//! The library is what the `topsmile-providers` binary, the all-in-one `topsmile dev`
//! launcher and the tests mount, all through [`build`]: [`open_store`], then [`routes`].
//!
//! - `api`: gRPC handlers (proto <-> domain, caller and tenancy checks);
//! - `domain/`: providers, their rules and schedules, pure; the appointments service
//!   uses [`domain::working_intervals`] for both finding and booking times;
//! - `store/`: the repository trait and its SQLite and MongoDB adapters.
//!
//! Served: `ProviderService`.

pub mod api;
pub mod domain;
pub mod store;

use std::sync::Arc;

use tonic::service::Routes;
use topsmile_kit::{clinics::ClinicDirectory, config::ServerLimits};

pub use store::{ProviderStore, open as open_store};

/// The gRPC services this process serves, for health and reflection.
pub const SERVICE_NAMES: &[&str] = api::SERVED;

/// The providers service's routes on top of `store`; `clinics` is identity (clinic
/// state, linked users).
pub fn routes(
    store: Arc<dyn ProviderStore>,
    clinics: ClinicDirectory,
    limits: &ServerLimits,
) -> Routes {
    api::routes(store, clinics, limits)
}

/// The providers service from its configuration: store, guard and clinic directory
/// (identity at `config.identity_upstreams`) and routes.
pub async fn build(
    config: &topsmile_kit::config::ServiceConfig,
    runtime: &topsmile_kit::server::Runtime,
) -> Result<topsmile_kit::server::Built, topsmile_kit::server::BoxError> {
    let store = topsmile_kit::store::StoreChoice::from_config(&config.store);
    let identity = config.identity_addresses();
    let clinics = ClinicDirectory::caching_for(&identity, runtime.clinic_facts_ttl)?;
    Ok(topsmile_kit::server::Built {
        routes: routes(open_store(&store).await?, clinics, &config.limits),
        guard: topsmile_kit::access::Guard::via_identity(&identity)?,
    })
}

/// The whole service as its own process (what `topsmile-providers` and `topsmile serve providers`
/// run): configuration from `TOPSMILE_*`, serve until SIGTERM, drain.
pub async fn run_process() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_kit::server::run_service(
        "topsmile-providers",
        SERVICE_NAMES,
        |config, runtime| async move { build(&config, &runtime).await },
    )
    .await
}
