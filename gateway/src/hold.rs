//! What one client may hold of the gateway: a share of its in-flight calls per client
//! address, and no call past its deadline.
//!
//! The in-flight bound (`calls::Calls`) protects the gateway, not its clients: one
//! client that opens enough calls and never reads their answers (a zero stream window:
//! hyper never polls a body it cannot send) would hold every slot, and everyone else
//! would be shed. So:
//!
//! - **Per address.** One client address holds at most [`EdgeSettings::per_address_percent`]
//!   of the in-flight calls, and at most [`EdgeSettings::public_per_address_percent`]
//!   of calls to public (unauthenticated) methods; beyond that its calls are shed
//!   (RESOURCE_EXHAUSTED with a retry hint) while other addresses go on.
//! - **Deadlines, polled or not.** Each connection has a watchdog that knows the
//!   deadline of every call on it. A call still unfinished a grace period after its
//!   deadline (its answer could not be delivered: the client gives no window) is
//!   counted and logged (rate-limited) as abandoned, and its connection is closed:
//!   dropping the connection drops every stream of it, so the slots are freed and the
//!   streams reset both ways. A client that reads its answers is never affected: its
//!   calls end at their deadline with DEADLINE_EXCEEDED (see `proxy::Relayed`).
//!
//! Rejected: a timer task per call (a spawn on the hot path of every call), and
//! resetting only the stalled stream (hyper does not expose the stream to reset; the
//! connection is the unit it lets us end).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};

use crate::config::EdgeSettings;

/// How long past its deadline a call may still be finishing before its connection is
/// closed.
pub const GRACE: Duration = Duration::from_secs(1);

/// In-flight calls per client address.
pub struct AddressShares {
    counts: Mutex<HashMap<IpAddr, (usize, usize)>>,
    all: usize,
    public: usize,
}

impl AddressShares {
    pub fn new(edge: &EdgeSettings) -> Self {
        let share = |percent: u8| (edge.max_in_flight * usize::from(percent.min(100)) / 100).max(1);
        Self {
            counts: Mutex::new(HashMap::new()),
            all: share(edge.per_address_percent),
            public: share(edge.public_per_address_percent),
        }
    }

    /// A place for one more call from `client` (`public`: to a method without a token),
    /// or `None` when the address holds its share already.
    pub fn admit(self: &Arc<Self>, client: IpAddr, public: bool) -> Option<AddressSlot> {
        let mut counts = self.counts.lock().ok()?;
        let (all, publics) = counts.entry(client).or_insert((0, 0));
        if *all >= self.all || (public && *publics >= self.public) {
            return None;
        }
        *all += 1;
        if public {
            *publics += 1;
        }
        Some(AddressSlot {
            shares: self.clone(),
            client,
            public,
        })
    }

    fn release(&self, client: IpAddr, public: bool) {
        if let Ok(mut counts) = self.counts.lock()
            && let Some((all, publics)) = counts.get_mut(&client)
        {
            *all = all.saturating_sub(1);
            if public {
                *publics = publics.saturating_sub(1);
            }
            if *all == 0 {
                counts.remove(&client);
            }
        }
    }
}

/// One call's place in its address's share, given back when dropped.
pub struct AddressSlot {
    shares: Arc<AddressShares>,
    client: IpAddr,
    public: bool,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.shares.release(self.client, self.public);
    }
}

/// One connection's deadline watchdog: calls register their deadline and a flag that
/// their answer's end sets.
#[derive(Clone)]
pub struct Watchdog {
    calls: mpsc::UnboundedSender<(Instant, Weak<AtomicBool>)>,
}

/// Calls abandoned at their deadline (their connection closed), for the log's rate
/// limit.
static ABANDONED: AtomicU64 = AtomicU64::new(0);

impl Watchdog {
    /// A watchdog for the connection from `peer`; `close` fires when a call outlives
    /// its deadline by [`GRACE`].
    pub fn start(peer: IpAddr, close: Arc<Notify>) -> Self {
        let (calls, received) = mpsc::unbounded_channel();
        tokio::spawn(watch(received, close, peer));
        Self { calls }
    }

    /// Watches a call due at `ends`; `finished` is set when its answer has ended.
    pub fn watch(&self, ends: Instant, finished: &Arc<AtomicBool>) {
        let _ = self.calls.send((ends + GRACE, Arc::downgrade(finished)));
    }
}

async fn watch(
    mut calls: mpsc::UnboundedReceiver<(Instant, Weak<AtomicBool>)>,
    close: Arc<Notify>,
    peer: IpAddr,
) {
    let mut due: BTreeMap<(Instant, u64), Weak<AtomicBool>> = BTreeMap::new();
    let mut next_id = 0u64;
    let mut swept_at = 64usize;
    loop {
        let first = due.keys().next().map(|(at, _)| *at);
        tokio::select! {
            received = calls.recv() => {
                let Some((at, finished)) = received else { return };
                due.insert((at, next_id), finished);
                next_id += 1;
                // Calls that ended are gone from memory; forget them now and then so
                // the map holds about the calls in flight, not every call made.
                if due.len() > swept_at {
                    due.retain(|_, f| f.strong_count() > 0 && f.upgrade().is_some_and(|f| !f.load(Ordering::Acquire)));
                    swept_at = (due.len() * 2).max(64);
                }
            }
            () = tokio::time::sleep_until(first.unwrap_or_else(Instant::now)), if first.is_some() => {
                let Some((_, finished)) = due.pop_first() else { continue };
                let Some(finished) = finished.upgrade() else { continue };
                if finished.load(Ordering::Acquire) {
                    continue;
                }
                let count = ABANDONED.fetch_add(1, Ordering::Relaxed);
                // Logged for the first, then every 100th: an attacker must not fill the log.
                if count.is_multiple_of(100) {
                    tracing::warn!(%peer, abandoned = count + 1, "a call outlived its deadline undelivered (no window from the client): its connection is closed");
                }
                topsmile_kit::calls::count_abandoned();
                close.notify_one();
                return;
            }
        }
    }
}
