//! The patients service. It owns the `patients`, `medicalHistory` and `auditEvents`
//! collections.
//!
//! The library is what the `topsmile-patients` binary, the all-in-one `topsmile dev`
//! launcher and the tests mount, all through [`build`]: [`open_store`], then [`routes`]
//! behind [`guard`].
//!
//! - `api/`: gRPC handlers (proto <-> domain, caller and tenancy checks, audit events);
//! - `domain`: patients and medical histories, their rules, pure;
//! - `store/`: the repository traits and their SQLite and MongoDB adapters.
//!
//! Served: `PatientService`, `MedicalHistoryService`, `AuditService`, and
//! `PatientInternalService` (portal credential checks for identity; never exposed).

pub mod api;
pub mod domain;
pub mod store;

pub use api::{guard, routes};
pub use store::{AuditLog, PatientStore, Stores, open as open_store};

/// The gRPC services this process serves, for health and reflection.
pub const SERVICE_NAMES: &[&str] = api::SERVED;

/// The patients service from its configuration: store, key source and clinic directory
/// (identity at `config.identity_upstreams`), guard and routes.
pub async fn build(
    config: &topsmile_kit::config::ServiceConfig,
    runtime: &topsmile_kit::server::Runtime,
) -> Result<topsmile_kit::server::Built, topsmile_kit::server::BoxError> {
    let store = topsmile_kit::store::StoreChoice::from_config(&config.store);
    let stores = open_store(&store).await?;
    let identity = config.identity_addresses();
    let keys = topsmile_kit::access::KeySource::identity(&identity)?;
    let guard = guard(
        keys,
        topsmile_kit::access::identity_sessions(&identity)?,
        &stores,
    )?;
    let clinics =
        topsmile_kit::clinics::ClinicDirectory::caching_for(&identity, runtime.clinic_facts_ttl)?;
    Ok(topsmile_kit::server::Built {
        routes: routes(stores, runtime.passwords.clone(), clinics, &config.limits),
        guard,
    })
}

/// The whole service as its own process (what `topsmile-patients` and `topsmile serve patients`
/// run): configuration from `TOPSMILE_*`, serve until SIGTERM, drain.
pub async fn run_process() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_kit::server::run_service(
        "topsmile-patients",
        SERVICE_NAMES,
        |config, runtime| async move { build(&config, &runtime).await },
    )
    .await
}
