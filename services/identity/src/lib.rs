//! The identity service: clinics (the tenants), staff users, sign-in tokens and signing
//! keys. It owns the `clinics`, `users` and `refreshTokens` collections.
//!
//! The library is what the `topsmile-identity` binary, the all-in-one `topsmile dev`
//! launcher and the tests mount: [`open_store`], then [`Identity::new`], then
//! [`Identity::routes`] served behind [`Identity::guard`].

pub mod accounts;
pub mod api;
pub mod domain;
pub mod keys;
pub mod store;

use std::{path::PathBuf, sync::Arc};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tonic::{server::NamedService, service::Routes};
use topsmile_kit::{
    access::{Guard, KeySource},
    config::ServerLimits,
    password::Passwords,
    policy::PolicyTable,
    server::BoxError,
    time::{Clock, SystemClock},
};
use topsmile_proto::topsmile::identity::v1::{
    auth_service_server::AuthServiceServer, clinic_service_server::ClinicServiceServer,
    identity_internal_service_server::IdentityInternalServiceServer,
    user_service_server::UserServiceServer,
};

pub use accounts::Accounts;
pub use domain::user::LockPolicy;
pub use store::{ClinicStore, RefreshTokenStore, Stores, UserStore, open as open_store};

/// The gRPC services this process serves, for health and reflection.
pub const SERVICE_NAMES: &[&str] = &[
    AuthServiceServer::<api::AuthApi>::NAME,
    ClinicServiceServer::<api::ClinicApi>::NAME,
    UserServiceServer::<api::UserApi>::NAME,
    IdentityInternalServiceServer::<api::InternalApi>::NAME,
];

/// Identity's own settings, beside the common [`ServiceConfig`](topsmile_kit::config::ServiceConfig)
/// (same file, same `TOPSMILE_*` variables).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct IdentitySettings {
    /// The signing key file [default: `<data_dir>/signing-keys.json`]; in Kubernetes a
    /// mounted Secret.
    pub key_file: Option<PathBuf>,
    /// The first super admin, created at start-up if none exists (never overwritten).
    pub bootstrap_admin_email: Option<String>,
    #[serde(skip_serializing)]
    pub bootstrap_admin_password: Option<SecretString>,
    /// What other services present to `MintServiceToken`.
    #[serde(skip_serializing)]
    pub service_secret: Option<SecretString>,
    /// Replicas of the patients service (`host:port`, comma-separated), which checks
    /// patients' portal credentials for `LoginPatient`.
    pub patients_upstreams: Option<String>,
}

/// A configured identity service.
pub struct Identity {
    pub accounts: Arc<Accounts>,
    pub guard: Arc<Guard>,
}

impl Identity {
    /// Opens the signing keys (creating the file with a first key if needed) and wires
    /// the service on `stores`. `clock` decides lock and refresh-token expiry (tests
    /// move it); access tokens always carry real time.
    pub fn new(
        stores: Stores,
        key_file: PathBuf,
        service_secret: Option<SecretString>,
        patients: Option<&[String]>,
        clock: Arc<dyn Clock>,
        passwords: Passwords,
    ) -> Result<Self, BoxError> {
        let patients = patients.map(accounts::PatientDirectory::new).transpose()?;
        let keys = Arc::new(keys::SigningKeys::open(&key_file)?);
        let guard = Arc::new(Guard::new(
            PolicyTable::builtin()?,
            KeySource::File(key_file),
        ));
        Ok(Self {
            accounts: Arc::new(Accounts {
                stores,
                passwords,
                keys,
                clock,
                lock_policy: LockPolicy::default(),
                service_secret,
                patients,
            }),
            guard,
        })
    }

    /// From configuration, on the real clock.
    pub fn from_settings(
        stores: Stores,
        data_dir: &std::path::Path,
        settings: &IdentitySettings,
    ) -> Result<Self, BoxError> {
        let key_file = settings
            .key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("signing-keys.json"));
        let patients = topsmile_kit::config::split_list(
            settings
                .patients_upstreams
                .as_deref()
                .unwrap_or("127.0.0.1:50062"),
        );
        Self::new(
            stores,
            key_file,
            settings.service_secret.clone(),
            Some(&patients),
            Arc::new(SystemClock),
            Passwords::for_this_machine()?,
        )
    }

    /// Creates the configured bootstrap super admin if there is none yet.
    pub async fn bootstrap(&self, settings: &IdentitySettings) -> Result<bool, BoxError> {
        match (
            &settings.bootstrap_admin_email,
            &settings.bootstrap_admin_password,
        ) {
            (Some(email), Some(password)) => {
                Ok(self.accounts.bootstrap_admin(email, password).await?)
            }
            _ => Ok(false),
        }
    }

    /// The identity service's routes.
    pub fn routes(&self, limits: &ServerLimits) -> Routes {
        let max = limits.max_message_bytes;
        Routes::new(
            ClinicServiceServer::new(api::ClinicApi::new(self.accounts.stores.clinics.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            AuthServiceServer::new(api::AuthApi::new(self.accounts.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            UserServiceServer::new(api::UserApi::new(self.accounts.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            IdentityInternalServiceServer::new(api::InternalApi::new(self.accounts.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
    }
}
