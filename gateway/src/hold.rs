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
//!   gateway holds is bounded in all by [`EdgeSettings::max_buffered_bytes`], and for
//!   one address by its share ([`EdgeSettings::per_address_percent`]) of that; an
//!   answer that would go past either is dropped (the replica's stream reset) and the
//!   call shed with RESOURCE_EXHAUSTED.
//! - **Deadlines and stalls, polled or not.** Each connection has a watchdog that
//!   knows every ready answer on it. An answer the client has taken no frame of for
//!   [`STALL`] (no flow-control window), or a call still unfinished a grace period
//!   after its deadline, is counted and logged (rate-limited) as abandoned, and its
//!   connection is closed (GOAWAY, then dropped): dropping the connection drops every
//!   stream of it, so the slots are freed and the streams reset both ways. A client
//!   that reads its answers, however slowly, is never affected: its calls end at their
//!   deadline with DEADLINE_EXCEEDED (see `proxy::Proxy::forward`).
//!
//! Rejected: a timer task per call (a spawn on the hot path of every call), and
//! resetting only the stalled stream (hyper does not expose the stream to reset; the
//! connection is the unit it lets us end).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
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
    /// One address's share of the answer buffer.
    buffered: usize,
    /// Bytes of answers held now, over every address, and the most there may be.
    total_buffered: AtomicUsize,
    max_buffered: usize,
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
            total_buffered: AtomicUsize::new(0),
            max_buffered: edge.max_buffered_bytes,
        }
    }

    /// Takes `bytes` of the whole answer buffer; `false` (nothing taken) when full.
    fn take_total(&self, bytes: usize) -> bool {
        self.total_buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                now.checked_add(bytes)
                    .filter(|after| *after <= self.max_buffered)
            })
            .is_ok()
    }

    fn give_back_total(&self, bytes: usize) {
        let _ = self
            .total_buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(now.saturating_sub(bytes))
            });
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
    /// Takes `bytes` more of the answer buffer; `false` (nothing taken) when that would
    /// go past the address's share or past the whole buffer.
    pub fn buffer(&mut self, bytes: usize) -> bool {
        let Ok(mut held) = self.shares.held.lock() else {
            return false;
        };
        let Some(now) = held.get_mut(&self.client) else {
            return false;
        };
        if now.buffered.saturating_add(bytes) > self.shares.buffered
            || !self.shares.take_total(bytes)
        {
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
        self.shares.give_back_total(bytes);
        self.shares.change(self.client, |now| {
            now.buffered = now.buffered.saturating_sub(bytes)
        });
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let (public, buffered) = (self.public, self.buffered);
        self.shares.give_back_total(buffered);
        self.shares.change(self.client, |now| {
            now.calls = now.calls.saturating_sub(1);
            if public {
                now.public_calls = now.public_calls.saturating_sub(1);
            }
            now.buffered = now.buffered.saturating_sub(buffered);
        });
    }
}

/// How long an answer may wait with no frame taken by the client (no flow-control
/// window) before its connection is closed, deadline or not.
pub const STALL: Duration = Duration::from_secs(5);

/// How far a call's answer has got: whether it has ended, and when the client last
/// took a frame of it (milliseconds since the watchdog started; 0: not yet ready).
pub struct Progress {
    finished: AtomicBool,
    moved_at: AtomicU64,
    /// The call's deadline and the grace: unfinished by then, it is abandoned.
    abandon_at: Instant,
}

impl Progress {
    /// The progress of a call due at `ends`.
    pub fn new(ends: Instant) -> Self {
        Self {
            finished: AtomicBool::new(false),
            moved_at: AtomicU64::new(0),
            abandon_at: ends + GRACE,
        }
    }

    pub fn finish(&self) {
        self.finished.store(true, Ordering::Release);
    }

    fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }
}

/// One connection's deadline watchdog: calls register their deadline and their
/// [`Progress`], which their answer updates.
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
    /// When the watchdog started: `Progress::moved_at` counts from here.
    epoch: Instant,
    /// A deadline earlier than the one being slept on was added, or the connection ended.
    changed: Notify,
    ended: AtomicBool,
}

#[derive(Default)]
struct Due {
    calls: BTreeMap<(Instant, u64), Weak<Progress>>,
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
            epoch: Instant::now(),
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

    /// A call's answer is ready to be sent (until then, the call's own deadline bounds
    /// it): from now on [`STALL`] without a frame taken by the client, or the deadline
    /// and the grace passing unfinished, close the connection. One entry per call,
    /// moved later while the answer moves.
    pub fn answer_ready(&self, progress: &Arc<Progress>) {
        self.moved(progress);
        self.insert((Instant::now() + STALL).min(progress.abandon_at), progress);
    }

    /// The client took a frame of the answer.
    pub fn moved(&self, progress: &Progress) {
        let since = self.shared.epoch.elapsed().as_millis();
        progress.moved_at.store(
            u64::try_from(since).unwrap_or(u64::MAX).max(1),
            Ordering::Release,
        );
    }

    fn insert(&self, at: Instant, progress: &Arc<Progress>) {
        let Ok(mut due) = self.shared.due.lock() else {
            return;
        };
        let earliest = due.calls.keys().next().is_none_or(|(first, _)| at < *first);
        let id = due.next_id;
        due.next_id += 1;
        due.calls.insert((at, id), Arc::downgrade(progress));
        // Calls that ended are gone from memory; forget them now and then so the map
        // holds about the calls in flight, not every call made.
        if due.calls.len() > due.sweep_at {
            due.calls
                .retain(|_, p| p.upgrade().is_some_and(|p| !p.is_finished()));
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
        // Every call due by now: one past its deadline unfinished was never delivered;
        // one whose answer has moved since its stall check is checked again later.
        let now = Instant::now();
        let mut stalled = None;
        if let Ok(mut due) = shared.due.lock() {
            let mut again = Vec::new();
            while let Some(entry) = due.calls.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let progress = entry.remove();
                let Some(live) = progress.upgrade().filter(|p| !p.is_finished()) else {
                    continue;
                };
                if live.abandon_at <= now {
                    stalled = Some("a call outlived its deadline undelivered");
                    break;
                }
                let moved =
                    shared.epoch + Duration::from_millis(live.moved_at.load(Ordering::Acquire));
                if moved + STALL <= now {
                    stalled =
                        Some("a ready answer was not read for 5 s (no window from the client)");
                    break;
                }
                again.push(((moved + STALL).min(live.abandon_at), progress));
            }
            for (at, progress) in again {
                let id = due.next_id;
                due.next_id += 1;
                due.calls.insert((at, id), progress);
            }
        }
        if let Some(why) = stalled {
            let count = ABANDONED.fetch_add(1, Ordering::Relaxed);
            // Logged for the first, then every 100th: an attacker must not fill the log.
            if count.is_multiple_of(100) {
                tracing::warn!(%peer, abandoned = count + 1, "{why}: its connection is closed with GOAWAY");
            }
            topsmile_kit::calls::count_abandoned();
            close.notify_one();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(max_buffered_bytes: usize) -> Arc<AddressShares> {
        Arc::new(AddressShares::new(&EdgeSettings {
            max_in_flight: 100,
            per_address_percent: 25,
            max_buffered_bytes,
            ..EdgeSettings::default()
        }))
    }

    fn address(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// One address holds at most its share of the answer buffer, and all addresses
    /// together at most the whole of it; what is delivered or dropped is given back.
    #[test]
    fn the_answer_buffer_is_bounded_per_address_and_in_all() {
        let shares = shares(1000);
        let mut first = shares.admit(address(1), false).unwrap();
        assert!(first.buffer(250), "a share is 25%");
        assert!(!first.buffer(1), "past the address's share");
        first.delivered(100);
        assert!(first.buffer(100), "delivered bytes are room again");

        // Four more addresses fill the rest; the fifth finds the whole buffer full.
        let mut others: Vec<AddressSlot> = (2..=4)
            .map(|last| {
                let mut slot = shares.admit(address(last), false).unwrap();
                assert!(slot.buffer(250));
                slot
            })
            .collect();
        let mut fifth = shares.admit(address(5), false).unwrap();
        assert!(!fifth.buffer(1), "1000 bytes held in all: full");
        others.pop();
        assert!(fifth.buffer(250), "a dropped slot gives its bytes back");
        drop((first, others, fifth));
        assert_eq!(shares.total_buffered.load(Ordering::Acquire), 0);
        assert!(
            shares.held.lock().unwrap().is_empty(),
            "nothing left per address"
        );
    }
}
