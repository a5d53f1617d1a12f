//! Configuration layering: built-in defaults, then an optional TOML file, then
//! `TOPSMILE_*` environment variables, each overriding the last.
//!
//! Every binary has one config struct made of the pieces below. Secrets are
//! [`SecretString`]s, so printing a config (which every binary does at start-up) shows
//! `[REDACTED]` instead of them.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The environment variable that names an optional config file.
pub const CONFIG_FILE_ENV: &str = "TOPSMILE_CONFIG";

/// Loads `T`: its `Default`, then the TOML file named by `file` (or by `TOPSMILE_CONFIG`),
/// then `TOPSMILE_*` variables (`TOPSMILE_DATA_DIR` sets `data_dir`).
pub fn load<T>(file: Option<PathBuf>) -> Result<T, Box<figment::Error>>
where
    T: Serialize + DeserializeOwned + Default,
{
    let file = file.or_else(|| std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from));
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(Env::prefixed("TOPSMILE_").ignore(&["config"]))
        .extract()
        .map_err(Box::new)
}

/// Where a service keeps its data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// Directory of the embedded SQLite store (and of key files in development).
    pub data_dir: PathBuf,
    /// MongoDB connection string; when set, MongoDB replaces the embedded store.
    #[serde(skip_serializing)]
    pub mongodb_uri: Option<SecretString>,
    /// MongoDB database name.
    pub mongodb_database: String,
    /// Read preference for list and search reads ("primary", "secondaryPreferred", ...).
    /// Reads that decide something (auth, booking) always go to the primary.
    pub mongodb_list_read_preference: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".topsmile"),
            mongodb_uri: None,
            mongodb_database: "topsmile".to_owned(),
            mongodb_list_read_preference: "primary".to_owned(),
        }
    }
}

/// How a gRPC server protects itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerLimits {
    /// Largest message a server decodes or encodes, in bytes.
    pub max_message_bytes: usize,
    /// API calls one server runs at once, across all its connections; more are shed at
    /// once with RESOURCE_EXHAUSTED and a retry hint.
    pub concurrency_limit: usize,
    /// HTTP/2 keepalive ping interval, in seconds.
    pub keepalive_interval_secs: u64,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    pub keepalive_timeout_secs: u64,
    /// How long a graceful drain waits for in-flight calls on shutdown.
    pub drain_timeout_secs: u64,
    /// On shutdown, how long, in milliseconds, a server goes on serving after it turns
    /// NOT_SERVING, so callers (the gateway's health checks, Kubernetes' readiness)
    /// move their calls elsewhere before it stops accepting them.
    pub drain_delay_ms: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            concurrency_limit: 128,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            drain_timeout_secs: 20,
            drain_delay_ms: 0,
        }
    }
}

impl ServerLimits {
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(self.keepalive_interval_secs)
    }
    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_secs)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }
}

/// The configuration of one service binary (`topsmile-identity`, `topsmile-patients`, ...).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceConfig {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Log format: "json" (default) or "pretty".
    pub log_format: crate::telemetry::LogFormat,
    /// Replicas of the identity service (`host:port`, comma-separated), whose
    /// `GetJwks` the other services verify tokens with.
    pub identity_upstreams: String,
    /// How long, in seconds, identity's answers about a clinic (active? time zone?) are
    /// reused: a deactivation or a new time zone reaches every replica within this.
    pub clinic_cache_secs: u64,
    /// Admin address serving Prometheus metrics at `/metrics` (off when unset).
    pub metrics_listen: Option<SocketAddr>,
    /// A second, plaintext address serving gRPC health only, for probes that cannot
    /// speak TLS (off when unset).
    pub health_listen: Option<SocketAddr>,
    /// CA certificates (PEM) that this service's clients verify the other services
    /// against: set, every call to another service is TLS.
    pub tls_ca: Option<std::path::PathBuf>,
    #[serde(flatten)]
    pub store: StoreConfig,
    #[serde(flatten)]
    pub limits: ServerLimits,
    /// TLS for this service's listener (`TOPSMILE_TLS_CERT`, `_KEY`, `_CLIENT_CA`).
    #[serde(flatten)]
    pub tls: crate::tls::TlsFiles,
}

impl ServiceConfig {
    /// The identity addresses, split.
    pub fn identity_addresses(&self) -> Vec<String> {
        split_list(&self.identity_upstreams)
    }
}

/// Why a service could not start: a bad setting, found before it serves anything. Kept
/// apart from the API's errors (a start-up failure has no caller to answer), with its
/// cause.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{what} address {address:?} is not usable")]
    Address {
        what: &'static str,
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("no {0} address is configured")]
    NoAddress(&'static str),
    #[error("password hashing cannot be set up: {0}")]
    Hashing(String),
    #[error(
        "TOPSMILE_SERVICE_SECRET is {0} bytes: it must be at least {min} random bytes (e.g. `openssl rand -hex 32`)",
        min = MIN_SERVICE_SECRET_BYTES
    )]
    WeakServiceSecret(usize),
}

/// The shortest service secret a service starts with: 32 bytes (256 bits if random).
pub const MIN_SERVICE_SECRET_BYTES: usize = 32;

/// Refuses a service secret shorter than [`MIN_SERVICE_SECRET_BYTES`], empty included:
/// the secret mints tokens that open every internal method in every clinic.
pub fn check_service_secret(
    secret: &secrecy::SecretString,
) -> Result<&secrecy::SecretString, StartupError> {
    use secrecy::ExposeSecret;
    let length = secret.expose_secret().len();
    if length < MIN_SERVICE_SECRET_BYTES {
        return Err(StartupError::WeakServiceSecret(length));
    }
    Ok(secret)
}

/// The endpoint of a service replica at `address` (host:port): plaintext, or TLS
/// verified against `TOPSMILE_TLS_CA` for the address's host when it is set.
pub fn endpoint(address: &str) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    endpoint_named(address, crate::tls::host_of(address))
}

/// The same, verifying the certificate for `server_name` (a replica reached by its
/// resolved address is verified for the name it was resolved from).
pub fn endpoint_named(
    address: &str,
    server_name: &str,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    match crate::tls::client_trust() {
        None => tonic::transport::Endpoint::from_shared(format!("http://{address}")),
        Some(trust) => tonic::transport::Endpoint::from_shared(format!("https://{address}"))?
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&trust.pem))
                    .domain_name(server_name),
            ),
    }
}

/// Lazily connected channels to the replicas of `what` at `addresses` (host:port), with
/// TopSmile's connect and call timeouts for service-to-service calls.
pub fn lazy_channels(
    what: &'static str,
    addresses: &[String],
) -> Result<Vec<tonic::transport::Channel>, StartupError> {
    if addresses.is_empty() {
        return Err(StartupError::NoAddress(what));
    }
    addresses
        .iter()
        .map(|a| {
            endpoint(a)
                .map(|e| {
                    e.connect_timeout(std::time::Duration::from_secs(2))
                        .timeout(std::time::Duration::from_secs(5))
                        .connect_lazy()
                })
                .map_err(|source| StartupError::Address {
                    what,
                    address: a.clone(),
                    source,
                })
        })
        .collect()
}

/// `"a:1, b:2,"` -> `["a:1", "b:2"]`.
pub fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            log_format: crate::telemetry::LogFormat::Json,
            identity_upstreams: "127.0.0.1:50061".to_owned(),
            clinic_cache_secs: crate::clinics::CACHE_FOR.as_secs(),
            metrics_listen: None,
            health_listen: None,
            tls_ca: None,
            store: StoreConfig::default(),
            limits: ServerLimits::default(),
            tls: crate::tls::TlsFiles::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type.
    fn env_overrides_file_and_file_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "svc.toml",
                "mongodb_database = \"from_file\"\nconcurrency_limit = 7",
            )?;
            jail.set_env("TOPSMILE_MONGODB_DATABASE", "from_env");
            jail.set_env("TOPSMILE_CLINIC_CACHE_SECS", "2");
            jail.set_env("TOPSMILE_MONGODB_URI", "mongodb://user:hunter2@db:27017");
            let config: ServiceConfig = load(Some("svc.toml".into())).map_err(|e| e.to_string())?;
            assert_eq!(config.store.mongodb_database, "from_env");
            assert_eq!(config.limits.concurrency_limit, 7);
            assert_eq!(config.clinic_cache_secs, 2);
            let uri = config
                .store
                .mongodb_uri
                .as_ref()
                .map(|s| s.expose_secret().to_owned());
            assert_eq!(uri.as_deref(), Some("mongodb://user:hunter2@db:27017"));
            let printed = format!("{config:?}");
            assert!(!printed.contains("hunter2"), "secret printed: {printed}");
            Ok(())
        });
    }
}
