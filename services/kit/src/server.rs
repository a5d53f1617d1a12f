//! The server bootstrap every TopSmile gRPC server uses, so they all behave the same
//! under load and on shutdown:
//!
//! - `grpc.health.v1` (overall and per service) and server reflection (v1 and v1alpha, so
//!   every `grpcurl` version can `list` and `describe`);
//! - [`crate::calls`] around every API call: a bound on calls in flight (the rest are
//!   shed at once), a span that continues the caller's trace, Prometheus series;
//! - a default deadline, TCP_NODELAY and HTTP/2 keepalive;
//! - a graceful drain: on shutdown every service reports NOT_SERVING and goes on serving
//!   for `drain_delay` (callers move away meanwhile), then sends GOAWAY and stops
//!   accepting; in-flight calls finish (bounded by `drain_timeout`), then `serve` returns.

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::{StreamExt, wrappers::TcpListenerStream};
use tonic::{service::Routes, transport::Server};
use tonic_health::ServingStatus;
use topsmile_proto::FILE_DESCRIPTOR_SET;

use std::sync::Arc;

use crate::{
    access::{Guard, GuardLayer},
    calls::{Calls, CallsLayer},
    config::ServerLimits,
    shutdown::Shutdown,
};

/// The longest a call may run when the client sets no deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the contracts' descriptor set does not decode: {0}")]
    Descriptors(String),
    #[error("reflection set-up failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// Binds a listener. Tests pass port 0 and read the chosen port from `local_addr()`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Adds reflection over the given fully-qualified service names (plus health), from the
/// contracts' descriptor set, in both protocol versions.
///
/// The definitions of the `hidden` services are left out of the descriptors served, so
/// `describe` finds them no more than `list` does (the gateway hides the internal,
/// service-to-service APIs this way).
pub fn add_reflection(
    routes: Routes,
    names: &[&str],
    hidden: &[&str],
) -> Result<Routes, ServeError> {
    let contracts = contracts_without(hidden)?;
    let v1 = names
        .iter()
        .fold(reflection_builder(contracts.clone()), |b, n| {
            b.with_service_name(*n)
        })
        .build_v1()?;
    let v1alpha = names
        .iter()
        .fold(reflection_builder(contracts), |b, n| {
            b.with_service_name(*n)
        })
        .build_v1alpha()?;
    Ok(routes.add_service(v1).add_service(v1alpha))
}

/// The contracts' descriptor set minus the definitions of the `hidden` services.
fn contracts_without(hidden: &[&str]) -> Result<prost_types::FileDescriptorSet, ServeError> {
    let mut set = <prost_types::FileDescriptorSet as prost::Message>::decode(FILE_DESCRIPTOR_SET)
        .map_err(|e| ServeError::Descriptors(e.to_string()))?;
    for file in &mut set.file {
        let package = file.package().to_owned();
        file.service
            .retain(|s| !hidden.contains(&format!("{package}.{}", s.name()).as_str()));
    }
    Ok(set)
}

fn reflection_builder(
    contracts: prost_types::FileDescriptorSet,
) -> tonic_reflection::server::Builder<'static> {
    // The health contract and google.rpc's error details are served too, so grpcurl can
    // call health checks and print the rich error details of a failed call.
    tonic_reflection::server::Builder::configure()
        .register_file_descriptor_set(contracts)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(tonic_health::pb::health_server::HealthServer::<
            tonic_health::server::HealthService,
        >::NAME)
}

use tonic::server::NamedService;

/// Serves `routes` (the service's own gRPC services, named by `names`) plus health and
/// reflection on `listener` until `shutdown` fires, then drains.
///
/// Every call passes `guard` first (token and role policy, see [`crate::access`]), so
/// the handlers only ever see callers the contract admits.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    names: &[&'static str],
    limits: &ServerLimits,
    guard: Arc<Guard>,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    serve_over(
        listener,
        Transport::default(),
        routes,
        names,
        limits,
        guard,
        shutdown,
    )
    .await
}

/// How a server meets its callers: plaintext or TLS, and whether a second, plaintext
/// listener answers health probes (Kubernetes' gRPC probes cannot speak TLS).
#[derive(Default)]
pub struct Transport {
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    pub health: Option<TcpListener>,
}

/// How long a caller has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// [`serve`] over `transport`.
pub async fn serve_over(
    listener: TcpListener,
    transport: Transport,
    routes: Routes,
    names: &[&'static str],
    limits: &ServerLimits,
    guard: Arc<Guard>,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // Answers (NOT_SERVING while draining) until this server has stopped.
    let probes = transport.health.map(|probe_listener| {
        let health_only = Server::builder()
            .add_service(health_service.clone())
            .serve_with_incoming(TcpListenerStream::new(probe_listener));
        tokio::spawn(async move {
            if let Err(e) = health_only.await {
                tracing::warn!(error = %e, "the health listener stopped");
            }
        })
    });
    health.set_service_status("", ServingStatus::Serving).await;
    for name in names {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }

    let routes = answer_unserved_methods(add_reflection(
        routes.add_service(health_service),
        names,
        &[],
    )?);

    let local = listener.local_addr().ok();
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            // gRPC messages are small and latency-bound: don't let Nagle hold them back.
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    if let Some(tls) = &transport.tls {
        tls.spawn_reloader(shutdown.clone());
    }

    let names: Vec<&'static str> = names.to_vec();
    let names_served = names.clone();
    let drain = limits.drain_timeout();
    let delay = limits.drain_delay();
    let signal = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.wait().await;
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            for name in &names {
                health
                    .set_service_status(*name, ServingStatus::NotServing)
                    .await;
            }
            if !delay.is_zero() {
                tracing::info!(
                    ?local,
                    ?delay,
                    "draining: NOT_SERVING, still serving while callers move away"
                );
                tokio::time::sleep(delay).await;
            }
            // From here the server sends GOAWAY and accepts no new connections.
            tracing::info!(?local, "draining: finishing in-flight calls");
        }
    };

    let server = Server::builder()
        .timeout(DEFAULT_DEADLINE)
        .http2_keepalive_interval(Some(limits.keepalive_interval()))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout()))
        .layer(CallsLayer(Arc::new(Calls::new(
            component_of(&names_served),
            limits.concurrency_limit,
        ))))
        .layer(GuardLayer(guard))
        .add_routes(routes);
    let served: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match transport.tls {
        None => Box::pin(server.serve_with_incoming_shutdown(incoming, signal)),
        Some(tls) => {
            Box::pin(server.serve_with_incoming_shutdown(tls_handshakes(incoming, tls), signal))
        }
    };

    tokio::pin!(served);
    tokio::select! {
        result = &mut served => result?,
        () = async { shutdown.wait().await; tokio::time::sleep(delay + drain).await } => {
            tracing::warn!(?local, "drain timeout reached; closing with calls still in flight");
        }
    }
    if let Some(probes) = probes {
        probes.abort();
    }
    tracing::info!(?local, "server stopped");
    Ok(())
}

/// The TLS connections of `incoming`: each handshake in a task of its own (bounded by
/// [`HANDSHAKE_TIMEOUT`]), so a caller that stalls its handshake holds up no other.
fn tls_handshakes(
    incoming: impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static,
    tls: Arc<crate::tls::ServerTls>,
) -> impl tokio_stream::Stream<
    Item = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
> + Send
+ 'static {
    let (ready, handshaken) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        tokio::pin!(incoming);
        while let Some(accepted) = incoming.next().await {
            let stream = match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (acceptor, handing) = (tls.acceptor(), ready.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = handing.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
            if ready.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(handshaken)
}

/// The component a server is, from the services it serves: `topsmile.identity.v1.X`
/// is `identity`.
pub fn component_of(names: &[&'static str]) -> &'static str {
    names
        .first()
        .and_then(|name| name.split('.').nth(1))
        .unwrap_or("service")
}

/// Makes a call to a method this server does not serve answer UNIMPLEMENTED with a
/// message that names it (the router's own answer has an empty message).
pub fn answer_unserved_methods(mut routes: Routes) -> Routes {
    let router = std::mem::take(routes.axum_router_mut());
    *routes.axum_router_mut() = router.fallback(|uri: http::Uri| async move {
        tonic::Status::unimplemented(format!("{} is not served here (yet)", uri.path()))
            .into_http::<tonic::body::Body>()
    });
    routes
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a launcher hands a service besides its configuration: the parts that tests
/// replace (a clock they move, fewer hashing lanes, no reuse of identity's answers).
/// A service binary uses [`Runtime::for_this_machine`].
#[derive(Clone)]
pub struct Runtime {
    pub clock: Arc<dyn crate::time::Clock>,
    pub passwords: crate::password::Passwords,
    /// How long identity's answers about a clinic are reused (see [`crate::clinics`]).
    pub clinic_facts_ttl: Duration,
}

impl Runtime {
    /// The real clock, one password hash per core, the default clinic cache.
    pub fn for_this_machine() -> Result<Self, BoxError> {
        Ok(Self {
            clock: Arc::new(crate::time::SystemClock),
            passwords: crate::password::Passwords::for_this_machine()?,
            clinic_facts_ttl: crate::clinics::CACHE_FOR,
        })
    }
}

/// A service, built from its configuration by its crate's one `build` function (which
/// its binary, `topsmile dev` and the tests all call): its routes and the guard they
/// run behind.
pub struct Built {
    pub routes: Routes,
    pub guard: Arc<Guard>,
}

/// The whole `main` of a service binary: load [`ServiceConfig`](crate::config::ServiceConfig),
/// start telemetry, build the routes and the guard (`make`), serve until Ctrl-C or
/// SIGTERM, then drain.
pub async fn run_service<F, Fut>(
    binary: &str,
    names: &'static [&'static str],
    make: F,
) -> Result<(), BoxError>
where
    F: FnOnce(crate::config::ServiceConfig, Runtime) -> Fut,
    Fut: std::future::Future<Output = Result<Built, BoxError>>,
{
    let config: crate::config::ServiceConfig = crate::config::load(None)?;
    let telemetry = crate::telemetry::init(config.log_format, binary);
    tracing::info!(?config, "starting {binary}");
    let listen = config.listen;
    let metrics_listen = config.metrics_listen;
    let limits = config.limits.clone();
    let runtime = Runtime {
        clinic_facts_ttl: Duration::from_secs(config.clinic_cache_secs),
        ..Runtime::for_this_machine()?
    };
    // Before any client is made: calls to the other services are TLS from the start.
    if let Some(ca) = &config.tls_ca {
        crate::tls::trust_ca(ca)?;
    }
    let tls = crate::tls::ServerTls::load(&config.tls, &[b"h2"])?;
    let health_listen = config.health_listen;
    let Built { routes, guard } = make(config, runtime).await?;
    let listener = bind(listen).await?;
    let transport = Transport {
        tls,
        health: match health_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        },
    };
    until_terminated(telemetry, metrics_listen, |stop| {
        serve_over(listener, transport, routes, names, &limits, guard, stop)
    })
    .await
}

/// The end of every TopSmile process's `main`: metrics on the admin port if one is
/// configured, `serve` until Ctrl-C or SIGTERM (it gets the shutdown signal and drains),
/// then the spans still queued are sent.
pub async fn until_terminated<F, Fut, E>(
    telemetry: crate::telemetry::Telemetry,
    metrics_listen: Option<SocketAddr>,
    serve: F,
) -> Result<(), BoxError>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    let (trigger, stop) = crate::shutdown::channel();
    tokio::spawn(async move {
        crate::shutdown::os_signal().await;
        trigger.fire();
    });
    if let Some(addr) = metrics_listen {
        let bound = crate::calls::spawn_metrics(addr, stop.clone()).await?;
        tracing::info!(%bound, "metrics at /metrics");
    }
    let served = serve(stop).await;
    telemetry.shutdown();
    served.map_err(Into::into)
}
