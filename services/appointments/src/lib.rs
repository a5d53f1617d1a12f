//! The appointments service. It owns the `appointments` and `appointmentClaims`
//! collections: bookings, their lifecycle, and the claims on provider and patient time
//! that keep any two active appointments from overlapping, across replicas.
//!
//! The library is what the `topsmile-appointments` binary, the all-in-one `topsmile dev`
//! launcher and the tests mount, all through [`build`].
//!
//! - `api/`: gRPC handlers (proto <-> domain, caller checks, the other services, audit);
//! - `domain/`: the lifecycle, appointments and the one availability function, pure;
//! - `store/`: the adapters' plain operations and, once for both, booking and
//!   rescheduling on top of them (`store::reserve`, which says why it works).
//!
//! Served: `AppointmentService`.

pub mod api;
pub mod domain;
pub mod store;

use std::sync::Arc;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use topsmile_kit::{
    access::{Guard, KeySource},
    clinics::ClinicDirectory,
    config::split_list,
    peers::{Replicas, ServiceTokens},
    policy::PolicyTable,
};

pub use store::{Appointments, open as open_store};

/// The gRPC services this process serves, for health and reflection.
pub const SERVICE_NAMES: &[&str] = api::SERVED;

/// What the appointments service needs besides the common configuration: how to reach
/// the patients and providers services, and the secret to get a service token with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AppointmentSettings {
    /// What this service presents to identity's `MintServiceToken`.
    #[serde(skip_serializing)]
    pub service_secret: Option<SecretString>,
    /// Replicas of the patients service (`host:port`, comma-separated).
    pub patients_upstreams: String,
    /// Replicas of the providers service (`host:port`, comma-separated).
    pub providers_upstreams: String,
}

impl Default for AppointmentSettings {
    fn default() -> Self {
        Self {
            service_secret: None,
            patients_upstreams: "127.0.0.1:50062".to_owned(),
            providers_upstreams: "127.0.0.1:50063".to_owned(),
        }
    }
}

/// The appointments service from its configuration: store, guard (keys from identity),
/// the other services it asks, and routes.
pub async fn build(
    config: &topsmile_kit::config::ServiceConfig,
    settings: &AppointmentSettings,
    runtime: &topsmile_kit::server::Runtime,
) -> Result<topsmile_kit::server::Built, topsmile_kit::server::BoxError> {
    let identity = config.identity_addresses();
    let secret = settings.service_secret.clone().ok_or(
        "the appointments service needs TOPSMILE_SERVICE_SECRET to ask the patients and providers services",
    )?;
    topsmile_kit::config::check_service_secret(&secret)?;
    let tokens = Arc::new(ServiceTokens::new(
        "appointments",
        secret,
        Replicas::new("identity", &identity)?,
    ));
    let patients = Replicas::new("patients", &split_list(&settings.patients_upstreams))?;
    let deps = api::Dependencies {
        clinics: ClinicDirectory::caching_for(&identity, runtime.clinic_facts_ttl)?,
        trail: topsmile_kit::audit::AuditTrail::new(tokens.clone(), patients.clone()),
        tokens,
        patients,
        providers: Replicas::new("providers", &split_list(&settings.providers_upstreams))?,
    };
    let store = topsmile_kit::store::StoreChoice::from_config(&config.store);
    let guard = Guard::new(PolicyTable::builtin()?, KeySource::identity(&identity)?)
        .with_sessions(topsmile_kit::access::identity_sessions(&identity)?)
        .with_refusals(Arc::new(deps.clone()));
    Ok(topsmile_kit::server::Built {
        routes: api::routes(
            open_store(&store).await?,
            deps,
            runtime.clock.clone(),
            &config.limits,
        ),
        guard: Arc::new(guard),
    })
}

/// The whole service as its own process (what `topsmile-appointments` and `topsmile serve appointments`
/// run): configuration from `TOPSMILE_*`, serve until SIGTERM, drain.
pub async fn run_process() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_kit::server::run_service(
        "topsmile-appointments",
        SERVICE_NAMES,
        |config, runtime| async move {
            let settings: AppointmentSettings = topsmile_kit::config::load(None)?;
            build(&config, &settings, &runtime).await
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    /// The README's rows for the appointments service: its upstreams and the service
    /// secret come from `TOPSMILE_*` variables.
    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type.
    fn settings_come_from_the_documented_variables() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "TOPSMILE_PATIENTS_UPSTREAMS",
                "patients-0:50051,patients-1:50051",
            );
            jail.set_env("TOPSMILE_PROVIDERS_UPSTREAMS", "providers:50051");
            jail.set_env("TOPSMILE_SERVICE_SECRET", "s3cret");
            let settings: AppointmentSettings =
                topsmile_kit::config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                settings.patients_upstreams,
                "patients-0:50051,patients-1:50051"
            );
            assert_eq!(settings.providers_upstreams, "providers:50051");
            let secret = settings
                .service_secret
                .as_ref()
                .map(|s| s.expose_secret().to_owned());
            assert_eq!(secret.as_deref(), Some("s3cret"));
            assert!(
                !format!("{settings:?}").contains("s3cret"),
                "the secret is never printed"
            );
            Ok(())
        });
    }
}
