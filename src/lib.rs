//! The all-in-one launcher: every TopSmile service and the gateway in one process, each
//! a real gRPC server on loopback, talking to the others over real connections.
//!
//! `topsmile dev` runs it for people; the end-to-end tests run it on port 0 for each test.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc};

use secrecy::SecretString;
use tokio::task::JoinHandle;
use topsmile_gateway::{Gateway, GatewayConfig};
use topsmile_identity::{Accounts, Identity};
use topsmile_kit::{
    access::Guard,
    config::ServerLimits,
    password::Passwords,
    server,
    shutdown::{self, Trigger},
    store::StoreChoice,
    time::{Clock, SystemClock},
};

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
    /// Sign-in calls per client address and minute at the gateway (0: no limit).
    pub sign_in_per_minute: u32,
    /// Lock and refresh-token expiry time (tests move it).
    pub clock: Arc<dyn Clock>,
    pub passwords: Passwords,
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
            sign_in_per_minute: GatewayConfig::default().sign_in_per_minute,
            clock: Arc::new(SystemClock),
            passwords: Passwords::for_this_machine()?,
        })
    }
}

/// A running suite. Dropping it (or [`Suite::stop`]) drains every server.
pub struct Suite {
    pub gateway: SocketAddr,
    /// Each service's own address, by area (`identity`, `patients`, ...).
    pub services: BTreeMap<&'static str, SocketAddr>,
    /// Identity's sign-in core (tests count password checks and create accounts).
    pub accounts: Arc<Accounts>,
    trigger: Trigger,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
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
        for area in ["identity", "patients", "providers", "appointments"] {
            let listener = server::bind(loopback).await?;
            services.insert(area, listener.local_addr()?);
            listeners.push(listener);
        }
        let patients_addresses = vec![
            services
                .get("patients")
                .map(ToString::to_string)
                .unwrap_or_default(),
        ];
        let identity_addresses = vec![
            services
                .get("identity")
                .map(ToString::to_string)
                .unwrap_or_default(),
        ];

        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        let service_secret = SecretString::from(
            secret
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        );
        let identity_service = Identity::new(
            topsmile_identity::open_store(&options.store).await?,
            options.key_file.clone(),
            Some(service_secret),
            Some(&patients_addresses),
            options.clock.clone(),
            options.passwords.clone(),
        )
        .map_err(|e| anyhow::anyhow!("identity: {e}"))?;
        if let Some((email, password)) = &options.bootstrap_admin {
            identity_service
                .accounts
                .bootstrap_admin(email, password)
                .await?;
        }
        let identity = identity_service.routes(&limits);
        let via_identity =
            || Guard::via_identity(&identity_addresses).map_err(|e| anyhow::anyhow!("guard: {e}"));
        let patient_stores = topsmile_patients::open_store(&options.store).await?;
        let patients_guard = topsmile_patients::guard(
            topsmile_kit::access::KeySource::identity(&identity_addresses)?,
            &patient_stores,
        )
        .map_err(|e| anyhow::anyhow!("patients guard: {e}"))?;
        let patients =
            topsmile_patients::routes(patient_stores, options.passwords.clone(), &limits);
        let providers = topsmile_providers::routes(
            topsmile_providers::open_store(&options.store).await?,
            &limits,
        );
        let appointments = topsmile_appointments::routes(
            topsmile_appointments::open_store(&options.store).await?,
            &limits,
        );
        let mounted = [
            (
                "identity",
                identity,
                topsmile_identity::SERVICE_NAMES,
                identity_service.guard.clone(),
            ),
            (
                "patients",
                patients,
                topsmile_patients::SERVICE_NAMES,
                patients_guard,
            ),
            (
                "providers",
                providers,
                topsmile_providers::SERVICE_NAMES,
                via_identity()?,
            ),
            (
                "appointments",
                appointments,
                topsmile_appointments::SERVICE_NAMES,
                via_identity()?,
            ),
        ];
        for ((area, routes, names, guard), listener) in mounted.into_iter().zip(listeners) {
            let stop = trigger.subscribe();
            let limits = limits.clone();
            let serve: ServeFuture = Box::pin(async move {
                server::serve(listener, routes, names, &limits, guard, stop).await?;
                Ok(())
            });
            tasks.push((area, tokio::spawn(serve)));
        }

        let addr = |area: &str| {
            services
                .get(area)
                .map(ToString::to_string)
                .unwrap_or_default()
        };
        let config = GatewayConfig {
            listen: options.gateway_listen,
            identity_upstreams: addr("identity"),
            patients_upstreams: addr("patients"),
            providers_upstreams: addr("providers"),
            appointments_upstreams: addr("appointments"),
            sign_in_per_minute: options.sign_in_per_minute,
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

        Ok(Self {
            gateway: gateway_addr,
            services,
            accounts: identity_service.accounts.clone(),
            trigger,
            tasks,
        })
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
