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

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tonic::service::Routes;
use topsmile_kit::{
    audit::AuditTrail,
    clinics::ClinicDirectory,
    config::{ServerLimits, split_list},
    peers::{Replicas, ServiceTokens},
};

pub use store::{ProviderStore, open as open_store};

/// The gRPC services this process serves, for health and reflection.
pub const SERVICE_NAMES: &[&str] = api::SERVED;

/// What the providers service needs besides the common configuration: the clinics'
/// audit trail (in the patients service), written with its own service token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderSettings {
    /// What this service presents to identity's `MintServiceToken` (at least 32 bytes).
    #[serde(skip_serializing)]
    pub service_secret: Option<SecretString>,
    /// Replicas of the patients service (`host:port`, comma-separated).
    pub patients_upstreams: String,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            service_secret: None,
            patients_upstreams: "127.0.0.1:50062".to_owned(),
        }
    }
}

/// The providers service's routes on top of `store`; `clinics` is identity (clinic
/// state, linked users); changes go to `trail`.
pub fn routes(
    store: Arc<dyn ProviderStore>,
    clinics: ClinicDirectory,
    trail: AuditTrail,
    limits: &ServerLimits,
) -> Routes {
    api::routes(store, clinics, trail, limits)
}

/// The providers service from its configuration: store, guard and clinic directory
/// (identity at `config.identity_upstreams`), the audit trail, and routes.
pub async fn build(
    config: &topsmile_kit::config::ServiceConfig,
    settings: &ProviderSettings,
    runtime: &topsmile_kit::server::Runtime,
) -> Result<topsmile_kit::server::Built, topsmile_kit::server::BoxError> {
    let store = topsmile_kit::store::StoreChoice::from_config(&config.store);
    let identity = config.identity_addresses();
    let secret = settings.service_secret.clone().ok_or(
        "the providers service needs TOPSMILE_SERVICE_SECRET to write provider changes to the audit trail",
    )?;
    topsmile_kit::config::check_service_secret(&secret)?;
    let trail = AuditTrail::new(
        Arc::new(ServiceTokens::new(
            "providers",
            secret,
            Replicas::new("identity", &identity)?,
        )),
        Replicas::new("patients", &split_list(&settings.patients_upstreams))?,
    );
    let clinics = ClinicDirectory::caching_for(&identity, runtime.clinic_facts_ttl)?;
    let guard = topsmile_kit::access::Guard::new(
        topsmile_kit::policy::PolicyTable::builtin()?,
        topsmile_kit::access::KeySource::identity(&identity)?,
    )
    .with_sessions(topsmile_kit::access::identity_sessions(&identity)?)
    .with_refusals(Arc::new(trail.clone()));
    Ok(topsmile_kit::server::Built {
        routes: routes(open_store(&store).await?, clinics, trail, &config.limits),
        guard: Arc::new(guard),
    })
}

/// The whole service as its own process (what `topsmile-providers` and `topsmile serve providers`
/// run): configuration from `TOPSMILE_*`, serve until SIGTERM, drain.
pub async fn run_process() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_kit::server::run_service(
        "topsmile-providers",
        SERVICE_NAMES,
        |config, runtime| async move {
            let settings: ProviderSettings = topsmile_kit::config::load(None)?;
            build(&config, &settings, &runtime).await
        },
    )
    .await
}
