//! The identity service: clinics (the tenants), staff users, sign-in tokens and signing
//! keys. It owns the `clinics`, `users` and `refreshTokens` collections.
//!
//! The library is what the `topsmile-identity` binary, the all-in-one `topsmile dev`
//! launcher and the tests mount, all through [`build`]: [`open_store`], then
//! [`Identity::new`], then [`Identity::routes`] served behind [`Identity::guard`].
//!
//! - `api/`: gRPC handlers (`AuthService`, `ClinicService`, `UserService`, internal);
//! - `accounts`: signing in, sessions and tokens; `sessions`: who may see and end
//!   them; `patients_client`: the patients service, which checks portal credentials;
//! - `domain/`: clinics and users, their rules, pure;
//! - `store/`: the repository traits and their SQLite and MongoDB adapters;
//! - `keys`: the signing key file.

pub mod accounts;
pub mod api;
pub mod domain;
pub mod keys;
pub mod mfa;
pub mod patients_client;
pub mod sessions;
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
    time::Clock,
};
use topsmile_proto::topsmile::identity::v1::{
    auth_service_server::AuthServiceServer, clinic_service_server::ClinicServiceServer,
    identity_internal_service_server::IdentityInternalServiceServer,
    mfa_service_server::MfaServiceServer, session_service_server::SessionServiceServer,
    user_service_server::UserServiceServer,
};

pub use accounts::Accounts;
pub use domain::user::LockPolicy;
pub use store::{ClinicStore, RefreshTokenStore, Stores, UserStore, open as open_store};

/// The bootstrap super admin's email when only `TOPSMILE_BOOTSTRAP_ADMIN_PASSWORD` is
/// set (the same one `topsmile dev` uses).
pub const DEFAULT_BOOTSTRAP_EMAIL: &str = "admin@topsmile.local";

/// The gRPC services this process serves, for health and reflection.
pub const SERVICE_NAMES: &[&str] = &[
    AuthServiceServer::<api::AuthApi>::NAME,
    ClinicServiceServer::<api::ClinicApi>::NAME,
    UserServiceServer::<api::UserApi>::NAME,
    SessionServiceServer::<api::SessionApi>::NAME,
    MfaServiceServer::<api::MfaApi>::NAME,
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
        if let Some(secret) = &service_secret {
            topsmile_kit::config::check_service_secret(secret)?;
        }
        // Signing keys others can read are not secret: refuse, naming the setting.
        if let Some(mode) = topsmile_kit::files::is_shared(&key_file)? {
            return Err(format!(
                "the key file {} (TOPSMILE_KEY_FILE) can be read by other users (mode {mode:o}): \
                 make it readable by its owner only (chmod 600) or mount the Secret with defaultMode 0400",
                key_file.display()
            )
            .into());
        }
        let keys = Arc::new(keys::SigningKeys::open(&key_file)?);
        let accounts = Arc::new(Accounts {
            stores,
            passwords,
            keys,
            clock,
            lock_policy: LockPolicy::default(),
            service_secret,
            patients,
        });
        // Identity judges sessions from its own store, as `CheckSession` does for
        // everyone else.
        let guard = Arc::new(
            Guard::new(PolicyTable::builtin()?, KeySource::File(key_file))
                .with_sessions(Arc::new(accounts::OwnSessions(accounts.clone()))),
        );
        Ok(Self { accounts, guard })
    }

    /// Creates the configured bootstrap super admin if there is none yet. A password
    /// on its own signs in as [`DEFAULT_BOOTSTRAP_EMAIL`]; an email without a password
    /// is refused (there would be no way to sign in).
    pub async fn bootstrap(&self, settings: &IdentitySettings) -> Result<bool, BoxError> {
        match (
            &settings.bootstrap_admin_email,
            &settings.bootstrap_admin_password,
        ) {
            (email, Some(password)) => {
                let email = email.as_deref().unwrap_or(DEFAULT_BOOTSTRAP_EMAIL);
                Ok(self.accounts.bootstrap_admin(email, password).await?)
            }
            (Some(_), None) => Err(
                "TOPSMILE_BOOTSTRAP_ADMIN_EMAIL is set without TOPSMILE_BOOTSTRAP_ADMIN_PASSWORD"
                    .into(),
            ),
            (None, None) => Ok(false),
        }
    }

    /// The routes and guard to serve.
    pub fn built(&self, limits: &ServerLimits) -> topsmile_kit::server::Built {
        topsmile_kit::server::Built {
            routes: self.routes(limits),
            guard: self.guard.clone(),
        }
    }

    /// The identity service's routes.
    pub fn routes(&self, limits: &ServerLimits) -> Routes {
        api::routes(&self.accounts, &self.guard, limits)
    }
}

/// The identity service from its configuration: store, signing keys (`key_file`, by
/// default in the data directory), the patients service for portal sign-in, and the
/// bootstrap super admin if one is configured and none exists. Its binary, `topsmile
/// dev` and the tests all build it here.
pub async fn build(
    config: &topsmile_kit::config::ServiceConfig,
    settings: &IdentitySettings,
    runtime: &topsmile_kit::server::Runtime,
) -> Result<Identity, BoxError> {
    let store = topsmile_kit::store::StoreChoice::from_config(&config.store);
    let stores = open_store(&store).await?;
    let key_file = settings
        .key_file
        .clone()
        .unwrap_or_else(|| config.store.data_dir.join("signing-keys.json"));
    let patients = topsmile_kit::config::split_list(
        settings
            .patients_upstreams
            .as_deref()
            .unwrap_or("127.0.0.1:50062"),
    );
    let identity = Identity::new(
        stores,
        key_file,
        settings.service_secret.clone(),
        Some(&patients),
        runtime.clock.clone(),
        runtime.passwords.clone(),
    )?;
    identity.bootstrap(settings).await?;
    Ok(identity)
}

/// The whole service as its own process (what `topsmile-identity` and `topsmile serve identity`
/// run): configuration from `TOPSMILE_*`, serve until SIGTERM, drain.
pub async fn run_process() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_kit::server::run_service(
        "topsmile-identity",
        SERVICE_NAMES,
        |config, runtime| async move {
            let settings: IdentitySettings = topsmile_kit::config::load(None)?;
            let identity = build(&config, &settings, &runtime).await?;
            Ok(identity.built(&config.limits))
        },
    )
    .await
}
