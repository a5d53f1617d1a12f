//! The replicas of one service and the HTTP/2 connections to them.
//!
//! Calls are spread round-robin over the replicas. A replica that cannot be reached is
//! skipped for `retry_after` and the next one is tried; because a connection is chosen
//! before the request body is touched, a call moves to another replica without loss.
//!
//! The configured names (`host:port`, e.g. a headless Service's `identity-pods:50051`)
//! are resolved again every few seconds ([`Upstream::refresh`]): every address a name
//! resolves to is a replica, so pods that come and go are added and dropped without a
//! restart. A name that fails to resolve (or resolves to nothing) keeps its last good
//! addresses; replicas that stay keep their connections.
//!
//! The connections are the `h2` crate's own, not hyper's client: a request goes
//! straight into the connection's stream table and its response is read from there by
//! the calling task. hyper's client would add, per call, a hand-off to its dispatch
//! task, a task that waits for the response and a task that writes the body: three
//! wake-ups the gateway's forwarding does not need.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::net::TcpStream;

/// How often an idle or busy connection to a replica is pinged, and how long a pong may
/// take before the connection is given up as dead (a replica whose host vanished sends
/// no FIN: without pings, its connection would look alive until the kernel gives up).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Flow-control windows: fixed, and large enough for any message the services accept
/// (hyper's defaults); adaptive windows would cost a PING round per burst of calls.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no replica configured")]
    NoReplicas,
    #[error("no replica reachable: {0}")]
    Unreachable(String),
}

/// A live HTTP/2 connection to a replica: a handle that opens streams on it, and
/// whether it has ended (its driving task sets that as it exits).
#[derive(Clone)]
pub struct Connection {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Connection {
    /// A handle that opens one stream.
    pub fn sender(&self) -> SendRequest<Bytes> {
        self.sender.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// One connection slot: a live HTTP/2 connection or none yet.
struct Slot {
    connection: Mutex<Option<Connection>>,
    /// Serialises reconnects, so a burst of calls opens one connection, not hundreds.
    connecting: tokio::sync::Mutex<()>,
    /// When the last connect attempt through this slot failed: calls that waited for
    /// that attempt share its outcome instead of each trying (and timing out) again.
    failed_at: Mutex<Option<Instant>>,
}

struct Replica {
    authority: String,
    slots: Vec<Slot>,
    next_slot: AtomicUsize,
    down_until: Mutex<Option<Instant>>,
    /// Its last health check said NOT_SERVING (it is draining, or failing): not picked
    /// while another replica serves.
    not_serving: AtomicBool,
}

/// A chosen connection: the replica's authority (for the request URI) and a handle that
/// sends one request over the shared connection.
pub struct Picked {
    pub authority: String,
    pub connection: Connection,
}

pub struct Upstream {
    /// The configured names, as given.
    names: Vec<String>,
    /// The name the replicas' certificates are verified for (with `TOPSMILE_TLS_CA`):
    /// the host of the first configured name, whatever address it resolved to.
    tls_name: String,
    /// The replicas now: swapped whole when a refresh changes them.
    replicas: RwLock<Arc<Vec<Arc<Replica>>>>,
    /// Each name's last good resolution.
    resolved: Mutex<BTreeMap<String, Vec<String>>>,
    connections: usize,
    next: AtomicUsize,
    connect_timeout: Duration,
    retry_after: Duration,
}

fn replica(authority: &str, connections: usize) -> Arc<Replica> {
    Arc::new(Replica {
        authority: authority.to_owned(),
        slots: (0..connections.max(1))
            .map(|_| Slot {
                connection: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                failed_at: Mutex::new(None),
            })
            .collect(),
        next_slot: AtomicUsize::new(0),
        down_until: Mutex::new(None),
        not_serving: AtomicBool::new(false),
    })
}

impl Upstream {
    pub fn new(
        addresses: &[String],
        connections: usize,
        connect_timeout: Duration,
        retry_after: Duration,
    ) -> Arc<Self> {
        let replicas = addresses.iter().map(|a| replica(a, connections)).collect();
        let tls_name = addresses
            .first()
            .map(|a| topsmile_kit::tls::host_of(a).to_owned())
            .unwrap_or_default();
        Arc::new(Self {
            tls_name,
            names: addresses.to_vec(),
            replicas: RwLock::new(Arc::new(replicas)),
            resolved: Mutex::new(BTreeMap::new()),
            connections,
            next: AtomicUsize::new(0),
            connect_timeout,
            retry_after,
        })
    }

    /// The name the replicas' certificates are verified for.
    pub fn tls_name(&self) -> &str {
        &self.tls_name
    }

    /// The replicas now.
    fn current(&self) -> Arc<Vec<Arc<Replica>>> {
        self.replicas
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    pub fn addresses(&self) -> Vec<String> {
        self.current().iter().map(|r| r.authority.clone()).collect()
    }

    /// Resolves every configured name again with `resolve` and makes the replicas every
    /// address they resolve to. A name whose resolution fails or is empty keeps its last
    /// good addresses (or itself, before the first success); replicas that remain keep
    /// their connections. Returns whether the set changed.
    pub async fn refresh<R, F>(&self, resolve: R) -> bool
    where
        R: Fn(String) -> F,
        F: std::future::Future<Output = std::io::Result<Vec<SocketAddr>>>,
    {
        let mut wanted: Vec<String> = Vec::new();
        for name in &self.names {
            let found = match resolve(name.clone()).await {
                Ok(addresses) if !addresses.is_empty() => {
                    let mut found: Vec<String> =
                        addresses.iter().map(ToString::to_string).collect();
                    found.sort();
                    found.dedup();
                    if let Ok(mut resolved) = self.resolved.lock() {
                        resolved.insert(name.clone(), found.clone());
                    }
                    found
                }
                outcome => {
                    if let Err(e) = outcome {
                        tracing::warn!(%name, error = %e, "replica name did not resolve: keeping the last good set");
                    }
                    self.resolved
                        .lock()
                        .ok()
                        .and_then(|r| r.get(name).cloned())
                        .unwrap_or_else(|| vec![name.clone()])
                }
            };
            wanted.extend(found);
        }
        wanted.sort();
        wanted.dedup();
        let current = self.current();
        let mut now: Vec<String> = current.iter().map(|r| r.authority.clone()).collect();
        now.sort();
        if now == wanted {
            return false;
        }
        let next: Vec<Arc<Replica>> = wanted
            .iter()
            .map(|authority| {
                current
                    .iter()
                    .find(|r| &r.authority == authority)
                    .cloned()
                    .unwrap_or_else(|| replica(authority, self.connections))
            })
            .collect();
        tracing::info!(before = ?now, after = ?wanted, "replicas changed");
        if let Ok(mut replicas) = self.replicas.write() {
            *replicas = Arc::new(next);
        }
        true
    }

    /// Records a replica's health check: a replica that is not serving (draining, or
    /// not answering its checks) is passed over while another one serves.
    pub fn set_serving(&self, authority: &str, serving: bool) {
        if let Some(r) = self.current().iter().find(|r| r.authority == authority) {
            let was_serving = !r.not_serving.swap(!serving, Ordering::Relaxed);
            if was_serving != serving {
                tracing::info!(replica = %authority, serving, "replica health changed");
            }
        }
    }

    /// A connection to the next healthy replica, other than those in `avoid` (replicas
    /// that already turned this call away). Replicas marked down or not serving are
    /// tried only when no other is left, so a recovered one is found again.
    pub async fn pick(&self, avoid: &[String]) -> Result<Picked, UpstreamError> {
        let replicas = self.current();
        let n = replicas.len();
        if n == 0 {
            return Err(UpstreamError::NoReplicas);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last_error = String::new();
        for pass in 0..2 {
            for i in 0..n {
                let replica = &replicas[(start + i) % n];
                if avoid.contains(&replica.authority)
                    || (pass == 0
                        && (replica.is_down() || replica.not_serving.load(Ordering::Relaxed)))
                {
                    continue;
                }
                match self.connection(replica).await {
                    Ok(connection) => {
                        return Ok(Picked {
                            authority: replica.authority.clone(),
                            connection,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(replica = %replica.authority, error = %e, "upstream unreachable");
                        replica.mark_down(self.retry_after);
                        last_error = format!("{}: {e}", replica.authority);
                    }
                }
            }
        }
        Err(UpstreamError::Unreachable(last_error))
    }

    /// Reports that a call over `authority` failed at the transport level.
    pub fn report_failure(&self, authority: &str) {
        if let Some(r) = self.current().iter().find(|r| r.authority == authority) {
            r.mark_down(self.retry_after);
        }
    }

    async fn connection(&self, replica: &Replica) -> Result<Connection, String> {
        let slot =
            &replica.slots[replica.next_slot.fetch_add(1, Ordering::Relaxed) % replica.slots.len()];
        if let Some(connection) = slot.cached() {
            return Ok(connection);
        }
        let waiting_since = Instant::now();
        let _connecting = slot.connecting.lock().await;
        if let Some(connection) = slot.cached() {
            return Ok(connection);
        }
        if slot.failed_since(waiting_since) {
            return Err("the connect attempt this call waited for failed".to_owned());
        }
        let attempt = tokio::time::timeout(
            self.connect_timeout,
            connect(&replica.authority, &self.tls_name),
        )
        .await
        .map_err(|_| "connect timed out".to_owned())
        .and_then(|connected| connected);
        let connection = match attempt {
            Ok(connection) => connection,
            Err(e) => {
                if let Ok(mut failed_at) = slot.failed_at.lock() {
                    *failed_at = Some(Instant::now());
                }
                return Err(e);
            }
        };
        if let Ok(mut cached) = slot.connection.lock() {
            *cached = Some(connection.clone());
        }
        replica.mark_up();
        Ok(connection)
    }
}

impl Slot {
    fn failed_since(&self, since: Instant) -> bool {
        self.failed_at
            .lock()
            .ok()
            .and_then(|f| *f)
            .is_some_and(|at| at >= since)
    }

    fn cached(&self) -> Option<Connection> {
        let cached = self.connection.lock().ok()?;
        cached.as_ref().filter(|c| !c.is_closed()).cloned()
    }
}

impl Replica {
    fn is_down(&self) -> bool {
        self.down_until
            .lock()
            .ok()
            .and_then(|d| *d)
            .is_some_and(|until| Instant::now() < until)
    }

    fn mark_down(&self, for_how_long: Duration) {
        if let Ok(mut d) = self.down_until.lock() {
            *d = Some(Instant::now() + for_how_long);
        }
        for slot in &self.slots {
            if let Ok(mut s) = slot.connection.lock() {
                *s = None;
            }
        }
    }

    fn mark_up(&self) {
        if let Ok(mut d) = self.down_until.lock() {
            *d = None;
        }
    }
}

async fn connect(authority: &str, tls_name: &str) -> Result<Connection, String> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    // With TOPSMILE_TLS_CA, the replica proves it is the service (its certificate names
    // `tls_name`) before anything is sent.
    match topsmile_kit::tls::client_trust() {
        None => handshake(stream, authority, KEEPALIVE_EVERY, KEEPALIVE_TIMEOUT).await,
        Some(trust) => {
            let name = rustls::pki_types::ServerName::try_from(tls_name.to_owned())
                .map_err(|e| format!("{tls_name}: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(trust.config.clone())
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS to {authority}: {e}"))?;
            handshake(stream, authority, KEEPALIVE_EVERY, KEEPALIVE_TIMEOUT).await
        }
    }
}

#[cfg(test)]
async fn connect_with_keepalive(
    authority: &str,
    ping_every: Duration,
    pong_within: Duration,
) -> Result<Connection, String> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    handshake(stream, authority, ping_every, pong_within).await
}

/// HTTP/2 over `stream`, its connection driven (and kept alive with pings) by a task
/// of its own.
async fn handshake<S>(
    stream: S,
    authority: &str,
    ping_every: Duration,
    pong_within: Duration,
) -> Result<Connection, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, mut connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(16 << 10)
        .max_send_buffer_size(1 << 20)
        .enable_push(false)
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(|e| e.to_string())?;
    let closed = Arc::new(AtomicBool::new(false));
    let ended = closed.clone();
    let authority = authority.to_owned();
    let mut pings = connection.ping_pong();
    tokio::spawn(async move {
        let keepalive = async {
            let Some(pings) = pings.as_mut() else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(ping_every).await;
                match tokio::time::timeout(pong_within, pings.ping(h2::Ping::opaque())).await {
                    Ok(Ok(_pong)) => {}
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => return "no answer to a keep-alive ping".to_owned(),
                }
            }
        };
        // Dropping the connection fails every stream still open on it.
        tokio::select! {
            finished = &mut connection => {
                if let Err(e) = finished {
                    tracing::debug!(%authority, error = %e, "upstream connection closed");
                }
            }
            why = keepalive => tracing::warn!(%authority, %why, "upstream connection given up"),
        }
        ended.store(true, Ordering::Release);
    });
    Ok(Connection { sender, closed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(
        addresses: &[&str],
    ) -> impl Fn(String) -> std::future::Ready<std::io::Result<Vec<SocketAddr>>> {
        let addresses: Vec<SocketAddr> = addresses.iter().filter_map(|a| a.parse().ok()).collect();
        move |_name| std::future::ready(Ok(addresses.clone()))
    }

    fn failing(_name: String) -> std::future::Ready<std::io::Result<Vec<SocketAddr>>> {
        std::future::ready(Err(std::io::Error::other("SERVFAIL")))
    }

    fn upstream(names: &[&str]) -> Arc<Upstream> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        Upstream::new(&names, 1, Duration::from_secs(1), Duration::from_secs(1))
    }

    #[tokio::test]
    async fn replicas_follow_their_names_and_keep_the_last_good_set() {
        let up = upstream(&["identity-pods:50051"]);
        assert_eq!(
            up.addresses(),
            ["identity-pods:50051"],
            "unresolved at first"
        );
        assert!(up.refresh(answer(&["10.0.0.1:50051"])).await);
        assert_eq!(up.addresses(), ["10.0.0.1:50051"]);
        let first = up.current()[0].clone();

        // A pod is added: the one already there keeps its replica (and connections).
        assert!(
            up.refresh(answer(&["10.0.0.2:50051", "10.0.0.1:50051"]))
                .await
        );
        assert_eq!(up.addresses(), ["10.0.0.1:50051", "10.0.0.2:50051"]);
        assert!(Arc::ptr_eq(&up.current()[0], &first));

        // DNS fails, or answers nothing: the last good set stays.
        assert!(!up.refresh(failing).await);
        assert!(!up.refresh(answer(&[])).await);
        assert_eq!(up.addresses(), ["10.0.0.1:50051", "10.0.0.2:50051"]);

        // A pod is gone.
        assert!(up.refresh(answer(&["10.0.0.2:50051"])).await);
        assert_eq!(up.addresses(), ["10.0.0.2:50051"]);
    }

    #[tokio::test]
    async fn a_name_that_never_resolved_stays_as_written() {
        let up = upstream(&["10.0.0.9:50051", "later-pods:50051"]);
        assert!(!up.refresh(failing).await);
        assert_eq!(up.addresses(), ["10.0.0.9:50051", "later-pods:50051"]);
    }

    /// A connection whose replica stops answering (its host gone, no FIN) is given up
    /// once a keep-alive ping goes unanswered, and one whose replica answers is kept.
    #[tokio::test]
    async fn a_connection_whose_pings_go_unanswered_is_given_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (answering, silent) = (
            tokio::sync::oneshot::channel::<()>(),
            tokio::sync::oneshot::channel::<()>(),
        );
        tokio::spawn(async move {
            // The first connection is served; the second, after its handshake, is
            // never read again (the socket stays open).
            let (socket, _) = listener.accept().await.unwrap();
            let mut served = h2::server::handshake(socket).await.unwrap();
            tokio::spawn(async move { while served.accept().await.is_some() {} });
            let (socket, _) = listener.accept().await.unwrap();
            let _stuck = h2::server::handshake(socket).await.unwrap();
            let _ = answering.1.await;
            let _ = silent.1.await;
        });
        let every = Duration::from_millis(50);
        let live = connect_with_keepalive(&addr, every, every * 2)
            .await
            .unwrap();
        let stuck = connect_with_keepalive(&addr, every, every * 2)
            .await
            .unwrap();
        let waited = Instant::now();
        while !stuck.is_closed() {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "the silent replica's connection is still in use"
            );
            tokio::time::sleep(every).await;
        }
        assert!(
            !live.is_closed(),
            "the answering replica's connection was kept through the same pings"
        );
        drop((answering.0, silent.0));
    }

    /// Calls go to the replicas a refresh finds: a real server that appears in the
    /// answers is picked, and one that left is not.
    #[tokio::test]
    async fn calls_go_to_the_replicas_the_names_resolve_to() {
        let mut servers = Vec::new();
        for _ in 0..2 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (_, health) = tonic_health::server::health_reporter();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(health)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            servers.push(addr.to_string());
        }
        let up = upstream(&["replicas.invalid:50051"]);
        assert!(up.refresh(answer(&[&servers[0]])).await);
        for _ in 0..3 {
            assert_eq!(up.pick(&[]).await.unwrap().authority, servers[0]);
        }
        assert!(up.refresh(answer(&[&servers[1]])).await);
        for _ in 0..3 {
            assert_eq!(up.pick(&[]).await.unwrap().authority, servers[1]);
        }
    }
}
