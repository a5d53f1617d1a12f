//! The replicas of one service and the HTTP/2 connections to them.
//!
//! Calls are spread round-robin over the replicas. A replica that cannot be reached is
//! skipped for `retry_after` and the next one is tried; because a connection is chosen
//! before the request body is touched, a call moves to another replica without loss.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::{body::Incoming, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no replica configured")]
    NoReplicas,
    #[error("no replica reachable: {0}")]
    Unreachable(String),
}

/// One connection slot: a live HTTP/2 connection or none yet.
struct Slot {
    sender: Mutex<Option<SendRequest<Incoming>>>,
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
}

/// A chosen connection: the replica's authority (for the request URI) and a handle that
/// sends one request over the shared connection.
pub struct Picked {
    pub authority: String,
    pub sender: SendRequest<Incoming>,
}

pub struct Upstream {
    replicas: Vec<Replica>,
    next: AtomicUsize,
    connect_timeout: Duration,
    retry_after: Duration,
}

impl Upstream {
    pub fn new(
        addresses: &[String],
        connections: usize,
        connect_timeout: Duration,
        retry_after: Duration,
    ) -> Arc<Self> {
        let replicas = addresses
            .iter()
            .map(|a| Replica {
                authority: a.clone(),
                slots: (0..connections.max(1))
                    .map(|_| Slot {
                        sender: Mutex::new(None),
                        connecting: tokio::sync::Mutex::new(()),
                        failed_at: Mutex::new(None),
                    })
                    .collect(),
                next_slot: AtomicUsize::new(0),
                down_until: Mutex::new(None),
            })
            .collect();
        Arc::new(Self {
            replicas,
            next: AtomicUsize::new(0),
            connect_timeout,
            retry_after,
        })
    }

    pub fn addresses(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.authority.clone()).collect()
    }

    /// A connection to the next healthy replica. Replicas marked down are tried only
    /// when every replica is down, so a recovered one is found again.
    pub async fn pick(&self) -> Result<Picked, UpstreamError> {
        let n = self.replicas.len();
        if n == 0 {
            return Err(UpstreamError::NoReplicas);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last_error = String::new();
        for pass in 0..2 {
            for i in 0..n {
                let replica = &self.replicas[(start + i) % n];
                if pass == 0 && replica.is_down() {
                    continue;
                }
                match self.connection(replica).await {
                    Ok(sender) => {
                        return Ok(Picked {
                            authority: replica.authority.clone(),
                            sender,
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
        if let Some(r) = self.replicas.iter().find(|r| r.authority == authority) {
            r.mark_down(self.retry_after);
        }
    }

    async fn connection(&self, replica: &Replica) -> Result<SendRequest<Incoming>, String> {
        let slot =
            &replica.slots[replica.next_slot.fetch_add(1, Ordering::Relaxed) % replica.slots.len()];
        if let Some(sender) = slot.cached() {
            return Ok(sender);
        }
        let waiting_since = Instant::now();
        let _connecting = slot.connecting.lock().await;
        if let Some(sender) = slot.cached() {
            return Ok(sender);
        }
        if slot.failed_since(waiting_since) {
            return Err("the connect attempt this call waited for failed".to_owned());
        }
        let attempt = tokio::time::timeout(self.connect_timeout, connect(&replica.authority))
            .await
            .map_err(|_| "connect timed out".to_owned())
            .and_then(|connected| connected);
        let sender = match attempt {
            Ok(sender) => sender,
            Err(e) => {
                if let Ok(mut failed_at) = slot.failed_at.lock() {
                    *failed_at = Some(Instant::now());
                }
                return Err(e);
            }
        };
        if let Ok(mut cached) = slot.sender.lock() {
            *cached = Some(sender.clone());
        }
        replica.mark_up();
        Ok(sender)
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

    fn cached(&self) -> Option<SendRequest<Incoming>> {
        let cached = self.sender.lock().ok()?;
        cached.as_ref().filter(|s| !s.is_closed()).cloned()
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
            if let Ok(mut s) = slot.sender.lock() {
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

async fn connect(authority: &str) -> Result<SendRequest<Incoming>, String> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .adaptive_window(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let authority = authority.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%authority, error = %e, "upstream connection closed");
        }
    });
    Ok(sender)
}
