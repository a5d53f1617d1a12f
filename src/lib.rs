//! The all-in-one launcher: every TopSmile service and the gateway in one process, each
//! a real gRPC server on loopback, talking to the others over real connections.
//!
//! `topsmile dev` runs it for people; the end-to-end tests run it on port 0 for each test.

pub mod seed;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use topsmile_gateway::{EdgeSettings, Gateway, GatewayConfig};
use topsmile_identity::Accounts;
use topsmile_identity::IdentitySettings;
use topsmile_kit::{
    config::{ServerLimits, ServiceConfig, StoreConfig},
    password::Passwords,
    server::{self, Built, Runtime},
    shutdown::{self, Trigger},
    store::StoreChoice,
    telemetry::LogFormat,
    time::{Clock, SystemClock},
};

/// `topsmile dev` settings after defaults, file and `TOPSMILE_*` environment: those of
/// every service (store, limits, identity's) and the gateway's edge settings, so dev
/// honours the same variables as the binaries it stands in for.
#[derive(Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct DevConfig {
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    /// Admin address serving every server's Prometheus metrics at `/metrics` (off when
    /// unset).
    pub metrics_listen: Option<SocketAddr>,
    #[serde(flatten)]
    pub store: StoreConfig,
    #[serde(flatten)]
    pub limits: ServerLimits,
    #[serde(flatten)]
    pub identity: IdentitySettings,
    #[serde(flatten)]
    pub edge: EdgeSettings,
    /// TLS for the gateway (`TOPSMILE_TLS_CERT`, `_KEY`, `_CLIENT_CA`).
    #[serde(flatten)]
    pub tls: topsmile_kit::tls::TlsFiles,
}

impl Default for DevConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            log_format: LogFormat::Pretty,
            metrics_listen: None,
            store: StoreConfig::default(),
            limits: ServerLimits::default(),
            identity: IdentitySettings::default(),
            edge: EdgeSettings::default(),
            tls: topsmile_kit::tls::TlsFiles::default(),
        }
    }
}

impl DevConfig {
    pub fn key_file(&self) -> PathBuf {
        self.identity
            .key_file
            .clone()
            .unwrap_or_else(|| self.store.data_dir.join("signing-keys.json"))
    }
}

/// How to start a suite.
#[derive(Clone)]
pub struct SuiteOptions {
    /// Where the gateway listens (port 0 picks a free one).
    pub gateway_listen: SocketAddr,
    /// The store every service uses.
    pub store: StoreChoice,
    pub limits: ServerLimits,
    /// Identity's signing key file (created with a first key if missing).
    pub key_file: PathBuf,
    /// The first super admin, created if none exists yet.
    pub bootstrap_admin: Option<(String, SecretString)>,
    /// The gateway's connections, deadlines, shedding and sign-in limit.
    pub edge: EdgeSettings,
    /// TLS for the gateway's listener (off: plaintext).
    pub tls: topsmile_kit::tls::TlsFiles,
    /// How long services reuse identity's answer about a clinic (active, time zone).
    pub clinic_facts_ttl: std::time::Duration,
    /// Lock and refresh-token expiry time (tests move it).
    pub clock: Arc<dyn Clock>,
    pub passwords: Passwords,
    /// Where every server's Prometheus metrics are served (`None`: nowhere).
    pub metrics_listen: Option<SocketAddr>,
    /// Replicas of each service (at least one), all behind the gateway, as a cluster
    /// would run them: one store, each replica its own server.
    pub replicas: usize,
    /// Replicas that run elsewhere (other processes), by area: the gateway and the
    /// services call them like the suite's own.
    pub outside_replicas: BTreeMap<&'static str, Vec<SocketAddr>>,
}

impl SuiteOptions {
    /// Defaults for `store`: key file beside the data (or in `keys_dir` for MongoDB),
    /// real clock, one password hash per core, the gateway's default sign-in limit.
    pub fn new(
        gateway_listen: SocketAddr,
        store: StoreChoice,
        keys_dir: PathBuf,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            gateway_listen,
            store,
            limits: ServerLimits::default(),
            key_file: keys_dir.join("signing-keys.json"),
            bootstrap_admin: None,
            edge: EdgeSettings::default(),
            tls: topsmile_kit::tls::TlsFiles::default(),
            clinic_facts_ttl: topsmile_kit::clinics::CACHE_FOR,
            clock: Arc::new(SystemClock),
            passwords: Passwords::for_this_machine()?,
            metrics_listen: None,
            replicas: 1,
            outside_replicas: BTreeMap::new(),
        })
    }
}

/// A running suite. Dropping it (or [`Suite::stop`]) drains every server.
pub struct Suite {
    pub gateway: SocketAddr,
    /// Each service's own address (its first replica's), by area (`identity`,
    /// `patients`, ...).
    pub services: BTreeMap<&'static str, SocketAddr>,
    /// Every replica of each service, by area, in start order.
    pub replicas: BTreeMap<&'static str, Vec<Replica>>,
    /// Where the metrics are served, if they are.
    pub metrics: Option<SocketAddr>,
    /// Identity's sign-in core (tests count password checks and create accounts).
    pub accounts: Arc<Accounts>,
    /// How the appointments service was built here, for extra replicas of it.
    appointments: (
        ServiceConfig,
        topsmile_appointments::AppointmentSettings,
        Runtime,
    ),
    trigger: Trigger,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

/// One running replica of a service.
pub struct Replica {
    pub addr: SocketAddr,
    stop: Arc<Trigger>,
}

impl Replica {
    /// Starts its drain, as SIGTERM does to a pod: NOT_SERVING, serving on for the
    /// drain delay, then GOAWAY and the calls in flight finish.
    pub fn stop(&self) {
        self.stop.fire();
    }
}

type ServeFuture = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

impl Suite {
    pub async fn start(options: SuiteOptions) -> anyhow::Result<Self> {
        let (trigger, _) = shutdown::channel();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let limits = options.limits.clone();
        let mut services = BTreeMap::new();
        let mut tasks = Vec::new();

        // Bind every listener first: the services need identity's address for its keys.
        let mut listeners = Vec::new();
        let mut replica_addresses: BTreeMap<&'static str, Vec<SocketAddr>> = BTreeMap::new();
        for area in ["identity", "patients", "providers", "appointments"] {
            for _ in 0..options.replicas.max(1) {
                let listener = server::bind(loopback).await?;
                let addr = listener.local_addr()?;
                services.entry(area).or_insert(addr);
                replica_addresses.entry(area).or_default().push(addr);
                listeners.push((area, listener));
            }
        }
        for (area, outside) in &options.outside_replicas {
            replica_addresses
                .entry(*area)
                .or_default()
                .extend(outside.iter().copied());
        }
        // Every replica of `area`, comma-separated, as a service or the gateway is told.
        let address = |area: &str| {
            replica_addresses
                .get(area)
                .map(|all| {
                    all.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default()
        };
        let (identity_address, patients_address) = (address("identity"), address("patients"));

        // Each service is built by its crate's own `build`, exactly as its binary builds
        // it, from the configuration this suite would give that binary.
        let config = ServiceConfig {
            identity_upstreams: identity_address,
            store: options.store.to_config(),
            limits: limits.clone(),
            ..ServiceConfig::default()
        };
        let runtime = Runtime {
            clock: options.clock.clone(),
            passwords: options.passwords.clone(),
            clinic_facts_ttl: options.clinic_facts_ttl,
        };
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        let service_secret = SecretString::from(
            secret
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        );
        let (bootstrap_admin_email, bootstrap_admin_password) = options
            .bootstrap_admin
            .clone()
            .map_or((None, None), |(email, password)| {
                (Some(email), Some(password))
            });
        let identity_settings = IdentitySettings {
            key_file: Some(options.key_file.clone()),
            bootstrap_admin_email,
            bootstrap_admin_password,
            service_secret: Some(service_secret.clone()),
            patients_upstreams: Some(patients_address.clone()),
        };
        let service_secret_for_gateway = service_secret.clone();
        let provider_settings = topsmile_providers::ProviderSettings {
            service_secret: Some(service_secret.clone()),
            patients_upstreams: patients_address.clone(),
        };
        let appointment_settings = topsmile_appointments::AppointmentSettings {
            service_secret: Some(service_secret),
            patients_upstreams: patients_address,
            providers_upstreams: address("providers"),
        };
        let mut accounts = None;
        let mut replicas: BTreeMap<&'static str, Vec<Replica>> = BTreeMap::new();
        for (area, listener) in listeners {
            let failed = |e: topsmile_kit::server::BoxError| anyhow::anyhow!("{area}: {e}");
            let (Built { routes, guard }, names) = match area {
                "identity" => {
                    let identity = topsmile_identity::build(&config, &identity_settings, &runtime)
                        .await
                        .map_err(|e| anyhow::anyhow!("identity: {e}"))?;
                    accounts.get_or_insert_with(|| identity.accounts.clone());
                    (identity.built(&limits), topsmile_identity::SERVICE_NAMES)
                }
                "patients" => (
                    topsmile_patients::build(&config, &runtime)
                        .await
                        .map_err(failed)?,
                    topsmile_patients::SERVICE_NAMES,
                ),
                "providers" => (
                    topsmile_providers::build(&config, &provider_settings, &runtime)
                        .await
                        .map_err(failed)?,
                    topsmile_providers::SERVICE_NAMES,
                ),
                _ => (
                    topsmile_appointments::build(&config, &appointment_settings, &runtime)
                        .await
                        .map_err(failed)?,
                    topsmile_appointments::SERVICE_NAMES,
                ),
            };
            let addr = listener.local_addr()?;
            // Each replica stops on its own trigger, which the suite's fires too.
            let (own, stop) = shutdown::channel();
            let own = Arc::new(own);
            let suite_stop = trigger.subscribe();
            let forward = own.clone();
            tokio::spawn(async move {
                suite_stop.wait().await;
                forward.fire();
            });
            let limits = limits.clone();
            let serve: ServeFuture = Box::pin(async move {
                server::serve(listener, routes, names, &limits, guard, stop).await?;
                Ok(())
            });
            tasks.push((area, tokio::spawn(serve)));
            replicas
                .entry(area)
                .or_default()
                .push(Replica { addr, stop: own });
        }
        let accounts = accounts.ok_or_else(|| anyhow::anyhow!("identity did not start"))?;

        let addr = address;
        let service_config = config;
        let config = GatewayConfig {
            listen: options.gateway_listen,
            identity_upstreams: addr("identity"),
            patients_upstreams: addr("patients"),
            providers_upstreams: addr("providers"),
            appointments_upstreams: addr("appointments"),
            service_secret: Some(service_secret_for_gateway),
            edge: options.edge.clone(),
            tls: options.tls.clone(),
            limits,
            ..GatewayConfig::default()
        };
        let gateway = Gateway::new(&config)?;
        let listener = server::bind(config.listen).await?;
        let gateway_addr = listener.local_addr()?;
        let stop = trigger.subscribe();
        let serve: ServeFuture = Box::pin(async move {
            gateway.serve(listener, stop).await?;
            Ok(())
        });
        tasks.push(("gateway", tokio::spawn(serve)));
        let metrics = match options.metrics_listen {
            Some(addr) => {
                Some(topsmile_kit::calls::spawn_metrics(addr, trigger.subscribe()).await?)
            }
            None => None,
        };

        Ok(Self {
            gateway: gateway_addr,
            services,
            replicas,
            metrics,
            accounts,
            appointments: (service_config, appointment_settings, runtime),
            trigger,
            tasks,
        })
    }

    /// The secret services present to identity for service tokens.
    pub fn service_secret(&self) -> Option<SecretString> {
        self.appointments.1.service_secret.clone()
    }

    /// Starts one more replica of the appointments service on a free loopback port,
    /// against the same store and services (or other `settings`, e.g. a patients
    /// service that is down): its address. It stops with the suite. The gateway does
    /// not know it; callers reach it directly, as a second pod would be reached.
    pub async fn start_appointments_replica(
        &mut self,
        settings: Option<topsmile_appointments::AppointmentSettings>,
    ) -> anyhow::Result<SocketAddr> {
        let (config, default_settings, runtime) = &self.appointments;
        let settings = settings.unwrap_or_else(|| default_settings.clone());
        let Built { routes, guard } = topsmile_appointments::build(config, &settings, runtime)
            .await
            .map_err(|e| anyhow::anyhow!("appointments replica: {e}"))?;
        let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let stop = self.trigger.subscribe();
        let limits = config.limits.clone();
        let serve: ServeFuture = Box::pin(async move {
            server::serve(
                listener,
                routes,
                topsmile_appointments::SERVICE_NAMES,
                &limits,
                guard,
                stop,
            )
            .await?;
            Ok(())
        });
        self.tasks
            .push(("appointments replica", tokio::spawn(serve)));
        Ok(addr)
    }

    /// Runs until `signal` resolves or a server stops on its own (an error), then drains
    /// every server and returns the first error.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Self { trigger, tasks, .. } = self;
        let (names, handles): (Vec<_>, Vec<_>) = tasks.into_iter().unzip();
        let mut all = futures::future::select_all(handles);
        let (mut result, rest) = tokio::select! {
            (first, index, rest) = &mut all => (flatten(names[index], first), rest),
            () = signal => (Ok(()), all.into_inner()),
        };
        trigger.fire();
        for handle in rest {
            let outcome = flatten("server", handle.await);
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }

    /// Fires the shutdown and waits for every server to drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.trigger.fire();
        let mut result = Ok(());
        for (name, handle) in self.tasks {
            let outcome = flatten(name, handle.await);
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }
}

fn flatten(
    name: &str,
    joined: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match joined {
        Ok(result) => result.map_err(|e| e.context(format!("{name} server failed"))),
        Err(e) => Err(anyhow::anyhow!("{name} server task failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of the README's configuration table that names `dev` (or "all", or
    /// "services") is read by `topsmile dev` from the environment.
    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type.
    fn dev_honours_the_documented_variables() {
        figment::Jail::expect_with(|jail| {
            for (name, value) in [
                ("TOPSMILE_LISTEN", "127.0.0.1:6000"),
                ("TOPSMILE_DATA_DIR", "/srv/topsmile"),
                ("TOPSMILE_MONGODB_URI", "mongodb://db:27017"),
                ("TOPSMILE_MONGODB_DATABASE", "clinics"),
                (
                    "TOPSMILE_MONGODB_LIST_READ_PREFERENCE",
                    "secondaryPreferred",
                ),
                ("TOPSMILE_LOG_FORMAT", "json"),
                ("TOPSMILE_MAX_MESSAGE_BYTES", "1000"),
                ("TOPSMILE_CONCURRENCY_LIMIT", "7"),
                ("TOPSMILE_KEEPALIVE_INTERVAL_SECS", "11"),
                ("TOPSMILE_KEEPALIVE_TIMEOUT_SECS", "12"),
                ("TOPSMILE_DRAIN_TIMEOUT_SECS", "13"),
                ("TOPSMILE_KEY_FILE", "/keys/ring.json"),
                ("TOPSMILE_BOOTSTRAP_ADMIN_EMAIL", "boss@example.com"),
                ("TOPSMILE_SIGN_IN_PER_MINUTE", "0"),
                ("TOPSMILE_SIGN_IN_BURST", "3"),
                ("TOPSMILE_MAX_IN_FLIGHT", "99"),
                ("TOPSMILE_PER_ADDRESS_PERCENT", "40"),
                ("TOPSMILE_PUBLIC_PER_ADDRESS_PERCENT", "5"),
                ("TOPSMILE_MAX_BUFFERED_BYTES", "1048576"),
                ("TOPSMILE_MAX_ANSWER_BYTES", "65536"),
                ("TOPSMILE_CORS_ORIGINS", "https://app.example.com"),
                ("TOPSMILE_TLS_CERT", "/tls/cert.pem"),
                ("TOPSMILE_TLS_KEY", "/tls/key.pem"),
                ("TOPSMILE_TLS_CLIENT_CA", "/tls/partners.pem"),
                ("TOPSMILE_TLS_RELOAD_SECS", "30"),
                ("TOPSMILE_MAX_DEADLINE_SECS", "5"),
                ("TOPSMILE_CONNECTIONS_PER_UPSTREAM", "4"),
                ("TOPSMILE_CONNECT_TIMEOUT_MS", "250"),
                ("TOPSMILE_UPSTREAM_RETRY_MS", "500"),
                ("TOPSMILE_TRUSTED_PROXIES", "10.0.0.0/8"),
                ("TOPSMILE_DNS_REFRESH_SECS", "9"),
                ("TOPSMILE_DRAIN_DELAY_MS", "1500"),
                ("TOPSMILE_HEALTH_CHECK_MS", "250"),
                ("TOPSMILE_METRICS_LISTEN", "127.0.0.1:9464"),
            ] {
                jail.set_env(name, value);
            }
            let config: DevConfig = topsmile_kit::config::load(None)
                .map_err(|e| figment::Error::from(e.to_string()))?;
            assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 6000)));
            assert_eq!(config.store.data_dir, PathBuf::from("/srv/topsmile"));
            assert!(config.store.mongodb_uri.is_some());
            assert_eq!(config.store.mongodb_database, "clinics");
            assert_eq!(
                config.store.mongodb_list_read_preference,
                "secondaryPreferred"
            );
            assert!(matches!(config.log_format, LogFormat::Json));
            assert_eq!(config.limits.max_message_bytes, 1000);
            assert_eq!(config.limits.concurrency_limit, 7);
            assert_eq!(config.limits.keepalive_interval_secs, 11);
            assert_eq!(config.limits.keepalive_timeout_secs, 12);
            assert_eq!(config.limits.drain_timeout_secs, 13);
            assert_eq!(config.key_file(), PathBuf::from("/keys/ring.json"));
            assert_eq!(
                config.identity.bootstrap_admin_email.as_deref(),
                Some("boss@example.com")
            );
            assert_eq!(config.edge.sign_in_per_minute, 0);
            assert_eq!(config.edge.sign_in_burst, 3);
            assert_eq!(config.edge.max_in_flight, 99);
            assert_eq!(config.edge.per_address_percent, 40);
            assert_eq!(config.edge.public_per_address_percent, 5);
            assert_eq!(config.edge.max_buffered_bytes, 1 << 20);
            assert_eq!(config.edge.max_answer_bytes, 1 << 16);
            assert_eq!(config.edge.cors_origins, "https://app.example.com");
            assert_eq!(config.tls.tls_cert, Some(PathBuf::from("/tls/cert.pem")));
            assert_eq!(config.tls.tls_key, Some(PathBuf::from("/tls/key.pem")));
            assert_eq!(
                config.tls.tls_client_ca,
                Some(PathBuf::from("/tls/partners.pem"))
            );
            assert_eq!(config.tls.tls_reload_secs, 30);
            assert_eq!(config.edge.max_deadline_secs, 5);
            assert_eq!(config.edge.connections_per_upstream, 4);
            assert_eq!(config.edge.connect_timeout_ms, 250);
            assert_eq!(config.edge.upstream_retry_ms, 500);
            assert_eq!(config.edge.trusted_proxies, "10.0.0.0/8");
            assert_eq!(config.edge.dns_refresh_secs, 9);
            assert_eq!(config.limits.drain_delay_ms, 1500);
            assert_eq!(config.edge.health_check_ms, 250);
            assert_eq!(
                config.metrics_listen,
                Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
            );
            Ok(())
        });
    }
}
