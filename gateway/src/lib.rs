//! The TopSmile edge gateway.
//!
//! Listens for gRPC over HTTP/2 and forwards each call, undecoded, to a replica of the
//! service that owns it, chosen by the call's path (`/topsmile.<area>.v1.<Service>/...`)
//! from the contracts' descriptor set. It serves health and reflection for the whole
//! public API itself, so `grpcurl` works against it; internal services are neither
//! listed nor forwarded.
//!
//! Before forwarding, every call passes the same [`Guard`](topsmile_kit::access::Guard)
//! the services run: a missing or bad token is UNAUTHENTICATED, a role the contract does
//! not admit PERMISSION_DENIED. Sign-in methods are rate-limited per client address.

pub mod config;
pub mod forwarded;
pub mod hold;
pub mod proxy;
pub mod upstream;
pub mod vouch;
pub mod web;

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::{ServingStatus, server::HealthReporter};
use topsmile_kit::{
    policy::{PolicyError, PolicyTable},
    server::{ServeError, add_reflection},
    shutdown::{self, Shutdown},
    tls::ServerTls,
};

pub use config::{EdgeSettings, GatewayConfig};
use proxy::Proxy;
use upstream::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("configuration: {0}")]
    Config(String),
}

/// A configured gateway, ready to [`serve`](Gateway::serve).
pub struct Gateway {
    proxy: Arc<Proxy>,
    health: HealthReporter,
    /// Public service names by area, for per-service health.
    services_by_area: HashMap<String, Vec<String>>,
    drain_timeout: Duration,
    drain_delay: Duration,
    /// How often replica names are resolved again (zero: never).
    dns_refresh: Duration,
    /// How often each replica's health is checked.
    health_check_every: Duration,
    limits: topsmile_kit::config::ServerLimits,
    /// TLS for the listener (reloaded as its files change), or plaintext.
    tls: Option<Arc<ServerTls>>,
    /// Health alone, for the plaintext probe listener.
    health_only: Routes,
    health_listen: Option<std::net::SocketAddr>,
}

/// ALPN, in order of preference: gRPC's HTTP/2, then HTTP/1.1 for gRPC-Web.
const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection closed for stalling (see `hold`) has, after its GOAWAY, before
/// it is dropped.
const GOAWAY_LINGER: Duration = Duration::from_millis(250);

impl Gateway {
    pub fn new(config: &GatewayConfig) -> Result<Self, GatewayError> {
        let table = PolicyTable::builtin()?;
        let public = table.public_services();
        let mut services_by_area: HashMap<String, Vec<String>> = HashMap::new();
        for service in &public {
            if let Some(m) = table.methods().find(|m| &m.service == service) {
                services_by_area
                    .entry(m.area.clone())
                    .or_default()
                    .push(service.clone());
            }
        }
        let upstreams = config
            .upstreams()
            .into_iter()
            .map(|(area, addrs)| {
                let upstream = Upstream::new(
                    &addrs,
                    config.edge.connections_per_upstream,
                    config.edge.connect_timeout(),
                    config.edge.upstream_retry(),
                );
                (area, upstream)
            })
            .collect();

        let (health, health_service) = tonic_health::server::health_reporter();
        let names: Vec<&str> = public.iter().map(String::as_str).collect();
        let internal = table.internal_services();
        let hidden: Vec<&str> = internal.iter().map(String::as_str).collect();
        let health_only = Routes::new(health_service.clone());
        let local = add_reflection(Routes::new(health_service), &names, &hidden)?;
        let guard = topsmile_kit::access::Guard::edge_via_identity(&config.identity_addresses())
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        let sign_in_limiter =
            std::num::NonZeroU32::new(config.edge.sign_in_per_minute).map(|rate| {
                let burst = std::num::NonZeroU32::new(config.edge.sign_in_burst).unwrap_or(rate);
                governor::RateLimiter::keyed(governor::Quota::per_minute(rate).allow_burst(burst))
            });
        let trusted = forwarded::TrustedProxies::parse(&config.edge.trusted_proxies)
            .map_err(GatewayError::Config)?;
        // Without the secret the gateway could not vouch for client addresses, and the
        // services would count every client as one: refuse to start.
        let secret = config.service_secret.clone().ok_or_else(|| {
            GatewayError::Config(
                "the gateway needs TOPSMILE_SERVICE_SECRET to vouch for client addresses".into(),
            )
        })?;
        topsmile_kit::config::check_service_secret(&secret)
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        let voucher = vouch::Voucher::new(
            secret,
            topsmile_kit::peers::Replicas::new("identity", &config.identity_addresses())
                .map_err(|e| GatewayError::Config(e.to_string()))?,
        );
        let proxy = Proxy {
            table,
            guard,
            trusted,
            voucher,
            shares: Arc::new(hold::AddressShares::new(&config.edge)),
            sign_in_limiter,
            upstreams,
            local,
            calls: topsmile_kit::calls::Calls::new("gateway", config.edge.max_in_flight),
            max_deadline: config.edge.max_deadline(),
            max_message_bytes: config.limits.max_message_bytes,
            max_answer_bytes: config.edge.max_answer_bytes,
            cors: web::Cors::parse(&config.edge.cors_origins).map_err(GatewayError::Config)?,
        };
        let tls =
            ServerTls::load(&config.tls, ALPN).map_err(|e| GatewayError::Config(e.to_string()))?;
        Ok(Self {
            proxy: Arc::new(proxy),
            health,
            services_by_area,
            drain_timeout: config.limits.drain_timeout(),
            drain_delay: config.limits.drain_delay(),
            dns_refresh: Duration::from_secs(config.edge.dns_refresh_secs),
            health_check_every: Duration::from_millis(config.edge.health_check_ms.max(50)),
            limits: config.limits.clone(),
            tls,
            health_only,
            health_listen: config.health_listen,
        })
    }

    /// Whether the gateway serves TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Reports NOT_SERVING, overall and for every public service.
    async fn report_not_serving(&self) {
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for names in self.services_by_area.values() {
            for name in names {
                self.health
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
        }
    }

    /// Serves until `shutdown` fires, then reports NOT_SERVING, goes on serving for the
    /// drain delay, stops accepting and lets in-flight calls finish (bounded by the
    /// drain timeout).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: Shutdown,
    ) -> Result<(), GatewayError> {
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;
        let probes = tokio::spawn(probe_upstreams(
            self.proxy.clone(),
            self.health.clone(),
            self.services_by_area.clone(),
            self.health_check_every,
            shutdown.clone(),
        ));
        let refresher = (!self.dns_refresh.is_zero()).then(|| {
            tokio::spawn(refresh_upstreams(
                self.proxy.clone(),
                self.dns_refresh,
                shutdown.clone(),
            ))
        });

        // gRPC over HTTP/2 and gRPC-Web over HTTP/1.1 or HTTP/2: with TLS, ALPN says
        // which; in plaintext, the first bytes (HTTP/2's preface or not).
        let mut either = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        either
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(self.limits.keepalive_interval()))
            .keep_alive_timeout(self.limits.keepalive_timeout())
            .max_concurrent_streams(Some(
                u32::try_from(self.limits.concurrency_limit).unwrap_or(u32::MAX),
            ))
            // Fixed windows, as towards the services (see `upstream::connect`).
            .initial_stream_window_size(Some(2 << 20))
            .initial_connection_window_size(Some(5 << 20));
        either
            .http1()
            .timer(TokioTimer::new())
            // A client that trickles its request head (slowloris) is dropped.
            .header_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .max_buf_size(64 << 10);
        let builders = Builders {
            http2: either.clone().http2_only(),
            http1: either.clone().http1_only(),
            either,
        };
        // Each connection's task holds a sender; draining waits for them all to end.
        let (drain, draining_now) = shutdown::channel();
        let (alive, mut all_ended) = tokio::sync::mpsc::channel::<()>(1);
        let local = listener.local_addr().ok();
        if let Some(tls) = &self.tls {
            tls.spawn_reloader(shutdown.clone());
        }
        let probes_listener = match self.health_listen {
            Some(addr) => Some(topsmile_kit::server::bind(addr).await?),
            None => None,
        };
        // Answers (NOT_SERVING while draining) until the gateway has stopped.
        let health_listener = probes_listener.map(|listener| {
            let routes = self.health_only.clone();
            tokio::spawn(async move {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let served = tonic::transport::Server::builder()
                    .add_routes(routes)
                    .serve_with_incoming(incoming)
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "the health listener stopped");
                }
            })
        });
        let serve_connection = |stream: tokio::net::TcpStream, peer: std::net::SocketAddr| {
            let _ = stream.set_nodelay(true);
            let proxy = self.proxy.clone();
            let builders = builders.clone();
            let tls = self.tls.as_ref().map(|tls| tls.acceptor());
            let (alive, draining) = (alive.clone(), draining_now.clone());
            tokio::spawn(async move {
                let _alive = alive;
                // Closed when a call on it outlives its deadline undelivered (see `hold`).
                let close = Arc::new(tokio::sync::Notify::new());
                let watchdog = hold::Watchdog::start(peer.ip(), close.clone());
                let calls_watchdog = watchdog.clone();
                let service = service_fn(move |req| {
                    let (proxy, watchdog) = (proxy.clone(), calls_watchdog.clone());
                    async move { Ok::<_, Infallible>(proxy.handle(req, peer.ip(), &watchdog).await) }
                });
                let Some(acceptor) = tls else {
                    drive(&builders.either, stream, service, draining, close, peer).await;
                    return watchdog.stop();
                };
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                let builder = match stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => &builders.http2,
                    Some(b"http/1.1") => &builders.http1,
                    _ => &builders.either,
                };
                drive(builder, stream, service, draining, close, peer).await;
                watchdog.stop();
            });
        };
        // Serves until shutdown, then (NOT_SERVING) for the drain delay more.
        let mut draining: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let accepted = match draining.as_mut() {
                None => tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = shutdown.clone().wait() => {
                        self.report_not_serving().await;
                        tracing::info!(?local, delay = ?self.drain_delay, "gateway draining: NOT_SERVING, still serving while callers move away");
                        draining = Some(Box::pin(tokio::time::sleep(self.drain_delay)));
                        continue;
                    }
                },
                Some(delay) => tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = delay => break,
                },
            };
            match accepted {
                Ok((stream, peer)) => serve_connection(stream, peer),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }

        tracing::info!(?local, "gateway draining: finishing in-flight calls");
        drop(listener);
        // GOAWAY on every connection; each ends when its calls have.
        drain.fire();
        drop(alive);
        if tokio::time::timeout(self.drain_timeout, all_ended.recv())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached; closing with calls still in flight");
        }
        probes.abort();
        if let Some(health_listener) = health_listener {
            health_listener.abort();
        }
        if let Some(refresher) = refresher {
            refresher.abort();
        }
        tracing::info!(?local, "gateway stopped");
        Ok(())
    }
}

/// The connection builders: HTTP/2 only, HTTP/1.1 only (as ALPN chose), or either
/// (plaintext, or TLS without ALPN).
#[derive(Clone)]
struct Builders {
    http2: AutoBuilder,
    http1: AutoBuilder,
    either: AutoBuilder,
}

type AutoBuilder = hyper_util::server::conn::auto::Builder<TokioExecutor>;

/// Serves one client connection until it ends, the gateway drains (GOAWAY, then its
/// calls finish), or its watchdog closes it (GOAWAY, then dropped: its stalled streams
/// will not finish).
async fn drive<I, S>(
    builder: &AutoBuilder,
    io: I,
    service: S,
    draining: Shutdown,
    close: Arc<tokio::sync::Notify>,
    peer: std::net::SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => {
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
        }
        () = draining.wait() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
        () = close.notified() => {
            connection.as_mut().graceful_shutdown();
            // Dropping the connection drops its streams: their slots are freed.
            let _ = tokio::time::timeout(GOAWAY_LINGER, connection).await;
        }
    }
}

/// Keeps health current: each replica's (a replica that is not SERVING is passed over
/// while another is), and per public service (SERVING while at least one replica of
/// its owner is).
async fn probe_upstreams(
    proxy: Arc<Proxy>,
    health: HealthReporter,
    services_by_area: HashMap<String, Vec<String>>,
    every: Duration,
    shutdown: Shutdown,
) {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    // One client per replica address, made when a replica first appears (replicas come
    // and go with DNS).
    let mut clients: HashMap<String, HealthClient<tonic::transport::Channel>> = HashMap::new();
    loop {
        if let Some(limiter) = &proxy.sign_in_limiter {
            // Forget addresses that are back to a full allowance, so the table stays small.
            limiter.retain_recent();
        }
        for (area, upstream) in &proxy.upstreams {
            let mut serving = false;
            for address in upstream.addresses() {
                let client = match clients.get(&address) {
                    Some(client) => client.clone(),
                    None => {
                        let Ok(endpoint) =
                            topsmile_kit::config::endpoint_named(&address, upstream.tls_name())
                        else {
                            continue;
                        };
                        let client = HealthClient::new(
                            endpoint
                                .connect_timeout(Duration::from_secs(1))
                                .connect_lazy(),
                        );
                        clients.insert(address.clone(), client.clone());
                        client
                    }
                };
                let mut client = client;
                let check = client.check(HealthCheckRequest {
                    service: String::new(),
                });
                let replica_serving = matches!(
                    tokio::time::timeout(Duration::from_secs(1), check).await,
                    Ok(Ok(answer)) if answer.get_ref().status == ServingStatus::Serving as i32
                );
                // A draining replica says NOT_SERVING while it still serves: calls move
                // to the others before it stops accepting them.
                upstream.set_serving(&address, replica_serving);
                serving |= replica_serving;
            }
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in services_by_area.get(area.as_str()).into_iter().flatten() {
                health.set_service_status(name, status).await;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.clone().wait() => return,
        }
    }
}

/// Resolves every upstream's names again every `every`, so replicas that come and go
/// (a headless Service's pods) are added and dropped without a restart.
async fn refresh_upstreams(proxy: Arc<Proxy>, every: Duration, shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.clone().wait() => return,
        }
        for upstream in proxy.upstreams.values() {
            upstream
                .refresh(|name| async move {
                    tokio::net::lookup_host(name).await.map(Iterator::collect)
                })
                .await;
        }
    }
}

/// The gateway as its own process (what `topsmile-gateway` and `topsmile serve gateway`
/// run): configuration from `TOPSMILE_*`, serve until SIGTERM, drain.
pub async fn run_process() -> anyhow::Result<()> {
    let config: GatewayConfig = topsmile_kit::config::load(None)?;
    let telemetry = topsmile_kit::telemetry::init(config.log_format, "topsmile-gateway");
    tracing::info!(?config, "starting topsmile-gateway");
    // Before any client is made: calls to the services are TLS from the start.
    if let Some(ca) = &config.tls_ca {
        topsmile_kit::tls::trust_ca(ca)?;
    }
    let gateway = Gateway::new(&config)?;
    let listener = topsmile_kit::server::bind(config.listen).await?;
    topsmile_kit::server::until_terminated(telemetry, config.metrics_listen, |stop| {
        gateway.serve(listener, stop)
    })
    .await
    .map_err(|e| anyhow::anyhow!(e))
}
