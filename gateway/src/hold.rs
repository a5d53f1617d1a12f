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
//! - **Answers held per address.** A replica's answer is read off its stream as it
//!   arrives, whether or not the client reads (see `proxy::read_answer`): a client
//!   that does not read must never hold the flow-control window of the connection to
//!   a replica, which every other client's calls to that service share. What the
//!   gateway holds for one address is bounded by its share
//!   ([`EdgeSettings::per_address_percent`]) of [`EdgeSettings::max_buffered_bytes`]; an
//!   answer that would go past it is dropped (the replica's stream reset) and the call
//!   shed with RESOURCE_EXHAUSTED.
//! - **Deadlines, polled or not.** Each connection has a watchdog that knows the
//!   deadline of every call on it. A call still unfinished a grace period after its
//!   deadline (its answer could not be delivered: the client gives no window) is
//!   counted and logged (rate-limited) as abandoned, and its connection is closed
//!   (GOAWAY, then dropped): dropping the connection drops every stream of it, so the
//!   slots are freed and the streams reset both ways. A client that reads its answers is never affected: its
//!   calls end at their deadline with DEADLINE_EXCEEDED (see `proxy::Proxy::forward`).
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

use tokio::{sync::Notify, time::Instant};

use crate::config::EdgeSettings;

/// How long past its deadline a call may still be finishing before its connection is
/// closed.
pub const GRACE: Duration = Duration::from_secs(1);

/// What one client address holds now.
#[derive(Default)]
struct Held {
    calls: usize,
    public_calls: usize,
    /// Bytes of answers read from replicas and not yet taken by the client.
    buffered: usize,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.calls == 0 && self.buffered == 0
    }
}

/// In-flight calls and buffered answers per client address.
pub struct AddressShares {
    held: Mutex<HashMap<IpAddr, Held>>,
    all: usize,
    public: usize,
    buffered: usize,
}

impl AddressShares {
    pub fn new(edge: &EdgeSettings) -> Self {
        let share = |percent: u8| (edge.max_in_flight * usize::from(percent.min(100)) / 100).max(1);
        Self {
            held: Mutex::new(HashMap::new()),
            all: share(edge.per_address_percent),
            public: share(edge.public_per_address_percent),
            buffered: (edge.max_buffered_bytes / 100)
                .saturating_mul(usize::from(edge.per_address_percent.min(100)))
                .max(1),
        }
    }

    /// The bytes of answers one address may have waiting at the gateway.
    pub fn buffered_share(&self) -> usize {
        self.buffered
    }

    /// A place for one more call from `client` (`public`: to a method without a token),
    /// or `None` when the address holds its share already.
    pub fn admit(self: &Arc<Self>, client: IpAddr, public: bool) -> Option<AddressSlot> {
        let mut held = self.held.lock().ok()?;
        let now = held.entry(client).or_default();
        if now.calls >= self.all || (public && now.public_calls >= self.public) {
            return None;
        }
        now.calls += 1;
        if public {
            now.public_calls += 1;
        }
        Some(AddressSlot {
            shares: self.clone(),
            client,
            public,
            buffered: 0,
        })
    }

    fn change(&self, client: IpAddr, change: impl FnOnce(&mut Held)) {
        if let Ok(mut held) = self.held.lock()
            && let Some(now) = held.get_mut(&client)
        {
            change(now);
            if now.is_empty() {
                held.remove(&client);
            }
        }
    }
}

/// One call's place in its address's share, and the bytes of its answer the gateway
/// holds; given back when dropped.
pub struct AddressSlot {
    shares: Arc<AddressShares>,
    client: IpAddr,
    public: bool,
    buffered: usize,
}

impl AddressSlot {
    /// Takes `bytes` more of the address's answer buffer; `false` (nothing taken) when
    /// that would go past its share.
    pub fn buffer(&mut self, bytes: usize) -> bool {
        let Ok(mut held) = self.shares.held.lock() else {
            return false;
        };
        let Some(now) = held.get_mut(&self.client) else {
            return false;
        };
        if now.buffered.saturating_add(bytes) > self.shares.buffered {
            return false;
        }
        now.buffered += bytes;
        self.buffered += bytes;
        true
    }

    /// Gives back `bytes` of the answer buffer: the client has taken them.
    pub fn delivered(&mut self, bytes: usize) {
        let bytes = bytes.min(self.buffered);
        self.buffered -= bytes;
        self.shares.change(self.client, |now| {
            now.buffered = now.buffered.saturating_sub(bytes)
        });
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let (public, buffered) = (self.public, self.buffered);
        self.shares.change(self.client, |now| {
            now.calls = now.calls.saturating_sub(1);
            if public {
                now.public_calls = now.public_calls.saturating_sub(1);
            }
            now.buffered = now.buffered.saturating_sub(buffered);
        });
    }
}

/// One connection's deadline watchdog: calls register their deadline and a flag that
/// their answer's end sets.
///
/// A call registers under a lock, without waking anyone: the watchdog's task sleeps
/// until the earliest deadline and is woken only when a call's deadline comes before
/// it (a shorter `grpc-timeout`). Most calls carry the same capped deadline, later than
/// the ones before, so a busy connection costs its watchdog one wake-up per deadline
/// that passes, not one per call.
#[derive(Clone)]
pub struct Watchdog {
    shared: Arc<Watched>,
}

struct Watched {
    due: Mutex<Due>,
    /// A deadline earlier than the one being slept on was added, or the connection ended.
    changed: Notify,
    ended: AtomicBool,
}

#[derive(Default)]
struct Due {
    calls: BTreeMap<(Instant, u64), Weak<AtomicBool>>,
    next_id: u64,
    /// When the map is next cleared of calls that ended.
    sweep_at: usize,
}

/// Calls abandoned at their deadline (their connection closed), for the log's rate
/// limit.
static ABANDONED: AtomicU64 = AtomicU64::new(0);

impl Watchdog {
    /// A watchdog for the connection from `peer`; `close` fires when a call outlives
    /// its deadline by [`GRACE`]. [`Watchdog::stop`] ends it with the connection.
    pub fn start(peer: IpAddr, close: Arc<Notify>) -> Self {
        let shared = Arc::new(Watched {
            due: Mutex::new(Due {
                sweep_at: 64,
                ..Due::default()
            }),
            changed: Notify::new(),
            ended: AtomicBool::new(false),
        });
        tokio::spawn(watch(shared.clone(), close, peer));
        Self { shared }
    }

    /// Watches a call due at `ends`; `finished` is set when its answer has ended.
    pub fn watch(&self, ends: Instant, finished: &Arc<AtomicBool>) {
        let Ok(mut due) = self.shared.due.lock() else {
            return;
        };
        let at = ends + GRACE;
        let earliest = due.calls.keys().next().is_none_or(|(first, _)| at < *first);
        let id = due.next_id;
        due.next_id += 1;
        due.calls.insert((at, id), Arc::downgrade(finished));
        // Calls that ended are gone from memory; forget them now and then so the map
        // holds about the calls in flight, not every call made.
        if due.calls.len() > due.sweep_at {
            due.calls
                .retain(|_, f| f.upgrade().is_some_and(|f| !f.load(Ordering::Acquire)));
            due.sweep_at = (due.calls.len() * 2).max(64);
        }
        drop(due);
        if earliest {
            self.shared.changed.notify_one();
        }
    }

    /// Ends the watchdog: its connection has ended.
    pub fn stop(&self) {
        self.shared.ended.store(true, Ordering::Release);
        self.shared.changed.notify_one();
    }
}

async fn watch(shared: Arc<Watched>, close: Arc<Notify>, peer: IpAddr) {
    loop {
        if shared.ended.load(Ordering::Acquire) {
            return;
        }
        let first = shared
            .due
            .lock()
            .ok()
            .and_then(|due| due.calls.keys().next().map(|(at, _)| *at));
        let Some(first) = first else {
            shared.changed.notified().await;
            continue;
        };
        tokio::select! {
            () = shared.changed.notified() => continue,
            () = tokio::time::sleep_until(first) => {}
        }
        // Every call due by now: one still unfinished was never delivered.
        let now = Instant::now();
        let mut stalled = false;
        if let Ok(mut due) = shared.due.lock() {
            while let Some(entry) = due.calls.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let finished = entry.remove();
                stalled |= finished
                    .upgrade()
                    .is_some_and(|f| !f.load(Ordering::Acquire));
            }
        }
        if stalled {
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
