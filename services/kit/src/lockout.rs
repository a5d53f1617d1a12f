//! The lock on repeated failed sign-ins, shared by staff (identity) and patients.
//!
//! Failures are counted per account **and client address**, so whoever guesses from one
//! address locks only themselves out: the account's owner, signing in from elsewhere,
//! still gets in. A second, higher bound counts failures per account across every
//! address, so guessing from many addresses stays bounded too; its lock is short and
//! does not grow, so it is no lasting weapon either.
//!
//! Attempts are counted *before* the password is checked, in one atomic step per store
//! (see `store::sqlite::begin_sign_in` and `store::mongo::begin_sign_in`), so racing
//! guesses can never run more password checks than the bounds. The counters live in
//! their own collection (`signInLocks`, table `sign_in_locks`), shared by every replica:
//! no guarantee rests on one process's memory. A per-address lock lasts
//! [`LockPolicy::first_lock`], doubling with each further lock up to
//! [`LockPolicy::longest_lock`]; a success from an address clears that address's
//! counter and the account-wide one; an admin's unlock clears them all.
//!
//! ## Known devices
//!
//! An attacker with many addresses (cheap from an IPv6 /64) can still keep the
//! account-wide bound tripped, locking the owner out. So a successful sign-in hands the
//! client a **device token** (OWASP's "device cookie": signed by identity, bound to the
//! account); a sign-in that presents a valid one for the same account is counted under
//! that device alone ([`device_client`]), with the per-address threshold and growing
//! lock, and outside the account-wide bound. The owner keeps signing in from a client
//! where they signed in before, however many addresses guess; unknown clients stay
//! bounded per account across all addresses. A device's success clears only its own
//! counter: it does not reset the guessers' progress toward the account-wide lock.

use std::time::Duration;

/// When sign-in attempts lock an account, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct LockPolicy {
    /// Failed attempts allowed from one client address before the account locks for
    /// that address.
    pub threshold: i64,
    /// Length of the first per-address lock; each further lock doubles it.
    pub first_lock: Duration,
    /// The longest a per-address lock lasts.
    pub longest_lock: Duration,
    /// Failed attempts allowed from all addresses together before the account locks
    /// for everyone.
    pub account_threshold: i64,
    /// Length of that account-wide lock (it does not grow).
    pub account_lock: Duration,
}

impl Default for LockPolicy {
    fn default() -> Self {
        Self {
            threshold: 5,
            first_lock: Duration::from_secs(15 * 60),
            longest_lock: Duration::from_secs(24 * 60 * 60),
            account_threshold: 50,
            account_lock: Duration::from_secs(15 * 60),
        }
    }
}

/// How long counters of an account nobody has tried are kept: a day past the longest
/// lock.
pub const FORGET_AFTER: Duration = Duration::from_secs(48 * 60 * 60);

/// The prefix of a known device's client key (see [`device_client`]).
const DEVICE_PREFIX: &str = "device:";

/// The client an attempt with a *verified* device token of the account is counted as.
/// Only the sign-in code makes one, after checking the token: a client address never
/// has this form (an address that is not an IP is `unknown`).
pub fn device_client(device: &crate::names::ResourceId) -> String {
    format!("{DEVICE_PREFIX}{device}")
}

/// The counters one attempt passes through, each with its bound: the account from this
/// client address, then the account from anywhere; or, from a known device, the
/// account from that device alone.
pub fn scopes(account: &str, client: &str, policy: &LockPolicy) -> Vec<Scope> {
    let own = Scope {
        key: format!("{account}|{}", client_key(client)),
        threshold: policy.threshold,
        grows: true,
    };
    if is_device(client) {
        return vec![own];
    }
    vec![
        own,
        Scope {
            key: format!("{account}|*"),
            threshold: policy.account_threshold,
            grows: false,
        },
    ]
}

/// The keys of the counters a success from `client` clears: that address's and the
/// account-wide one; a device's own only.
pub fn cleared_by_success(account: &str, client: &str) -> Vec<String> {
    scopes(account, client, &LockPolicy::default())
        .into_iter()
        .map(|s| s.key)
        .collect()
}

fn is_device(client: &str) -> bool {
    client
        .strip_prefix(DEVICE_PREFIX)
        .and_then(crate::names::ResourceId::parse)
        .is_some()
}

/// One counter of [`scopes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub key: String,
    pub threshold: i64,
    /// Whether each further lock doubles (per address) or stays the same (account-wide).
    pub grows: bool,
}

impl Scope {
    /// When the lock this scope's failures just earned ends.
    pub fn lock_end(
        &self,
        policy: &LockPolicy,
        earlier_locks: i64,
        now: jiff::Timestamp,
    ) -> jiff::Timestamp {
        if self.grows {
            lock_until(policy, earlier_locks, now)
        } else {
            let lock = jiff::SignedDuration::try_from(policy.account_lock)
                .unwrap_or(jiff::SignedDuration::MAX);
            now.checked_add(lock).unwrap_or(now)
        }
    }
}

/// A client as a counter key: an IP address in its canonical form, a known device, or
/// `unknown` for anything else.
pub fn client_key(client: &str) -> String {
    if is_device(client) {
        return client.to_owned();
    }
    client
        .parse::<std::net::IpAddr>()
        .map_or_else(|_| "unknown".to_owned(), |ip| ip.to_string())
}

impl LockPolicy {
    /// How long the lock after `earlier_locks` previous ones lasts.
    pub fn lock_length(&self, earlier_locks: i64) -> Duration {
        let doublings = u32::try_from(earlier_locks.clamp(0, 16)).unwrap_or(16);
        self.first_lock
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.longest_lock)
    }
}

/// The outcome of counting a sign-in attempt, before any password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Check the password.
    Proceed,
    /// Refuse without checking: the account is locked (or just became locked).
    Locked,
}

/// The lock end after `policy`'s lock number `earlier_locks + 1`, from `now`.
pub fn lock_until(
    policy: &LockPolicy,
    earlier_locks: i64,
    now: jiff::Timestamp,
) -> jiff::Timestamp {
    let lock = jiff::SignedDuration::try_from(policy.lock_length(earlier_locks))
        .unwrap_or(jiff::SignedDuration::MAX);
    now.checked_add(lock).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_counter_and_the_account_one_more() {
        let p = LockPolicy::default();
        let [from_home, anywhere]: [Scope; 2] = scopes("u1", "203.0.113.9", &p).try_into().unwrap();
        let [from_elsewhere, _]: [Scope; 2] = scopes("u1", "198.51.100.1", &p).try_into().unwrap();
        assert_ne!(from_home.key, from_elsewhere.key);
        assert_eq!(anywhere.key, "u1|*");
        assert!(anywhere.threshold > from_home.threshold);
        let [forged, _]: [Scope; 2] = scopes("u1", "x|*", &p).try_into().unwrap();
        assert_eq!(forged.key, "u1|unknown");
    }

    #[test]
    fn a_known_device_is_counted_on_its_own_outside_the_account_bound() {
        let p = LockPolicy::default();
        let device = crate::names::ResourceId::generate();
        let scopes = scopes("u1", &device_client(&device), &p);
        assert_eq!(scopes.len(), 1);
        assert_eq!(scopes[0].key, format!("u1|device:{device}"));
        assert_eq!(scopes[0].threshold, p.threshold);
        assert_eq!(
            cleared_by_success("u1", &device_client(&device)),
            [scopes[0].key.clone()]
        );
        // Only a well-formed device id is a device; anything else is an unknown client.
        let fake = super::scopes("u1", "device:../*", &p);
        assert_eq!(fake.len(), 2);
        assert_eq!(fake[0].key, "u1|unknown");
    }

    #[test]
    fn locks_grow_but_never_past_the_longest() {
        let p = LockPolicy::default();
        assert_eq!(p.lock_length(0), Duration::from_secs(900));
        assert_eq!(p.lock_length(1), Duration::from_secs(1800));
        assert_eq!(p.lock_length(50), p.longest_lock);
    }
}
