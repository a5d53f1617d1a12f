//! The all-in-one launcher: every TopSmile service and the gateway in one process, each
//! a real gRPC server on loopback, talking to the others over real connections.
//!
//! `topsmile dev` runs it for people; the end-to-end tests run it on port 0 for each test.

use std::{collections::BTreeMap, net::SocketAddr};

use tokio::task::JoinHandle;
use topsmile_gateway::{Gateway, GatewayConfig};
use topsmile_kit::{
    config::ServerLimits,
    server,
    shutdown::{self, Trigger},
    store::StoreChoice,
};

/// How to start a suite.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Where the gateway listens (port 0 picks a free one).
    pub gateway_listen: SocketAddr,
    /// The store every service uses.
    pub store: StoreChoice,
    pub limits: ServerLimits,
}

/// A running suite. Dropping it (or [`Suite::stop`]) drains every server.
pub struct Suite {
    pub gateway: SocketAddr,
    /// Each service's own address, by area (`identity`, `patients`, ...).
    pub services: BTreeMap<&'static str, SocketAddr>,
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

        let identity = topsmile_identity::routes(
            topsmile_identity::open_store(&options.store).await?,
            &limits,
        );
        let patients = topsmile_patients::routes(
            topsmile_patients::open_store(&options.store).await?,
            &limits,
        );
        let providers = topsmile_providers::routes(
            topsmile_providers::open_store(&options.store).await?,
            &limits,
        );
        let appointments = topsmile_appointments::routes(
            topsmile_appointments::open_store(&options.store).await?,
            &limits,
        );
        let mounted = [
            ("identity", identity, topsmile_identity::SERVICE_NAMES),
            ("patients", patients, topsmile_patients::SERVICE_NAMES),
            ("providers", providers, topsmile_providers::SERVICE_NAMES),
            (
                "appointments",
                appointments,
                topsmile_appointments::SERVICE_NAMES,
            ),
        ];
        for (area, routes, names) in mounted {
            let listener = server::bind(loopback).await?;
            services.insert(area, listener.local_addr()?);
            let stop = trigger.subscribe();
            let limits = limits.clone();
            let serve: ServeFuture = Box::pin(async move {
                server::serve(listener, routes, names, &limits, stop).await?;
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
