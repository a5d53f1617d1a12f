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

/// The counters one attempt passes through, each with its bound: the account from this
/// client address, then the account from anywhere.
pub fn scopes(account: &str, client: &str, policy: &LockPolicy) -> [Scope; 2] {
    [
        Scope {
            key: format!("{account}|{}", client_key(client)),
            threshold: policy.threshold,
            grows: true,
        },
        Scope {
            key: format!("{account}|*"),
            threshold: policy.account_threshold,
            grows: false,
        },
    ]
}

/// The keys of the counters a success from `client` clears: that address's and the
/// account-wide one.
pub fn cleared_by_success(account: &str, client: &str) -> Vec<String> {
    scopes(account, client, &LockPolicy::default())
        .into_iter()
        .map(|s| s.key)
        .collect()
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

/// A client address as a counter key: an IP address in its canonical form, or
/// `unknown` for anything else (it comes from a header a direct caller could set).
pub fn client_key(client: &str) -> String {
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
        let [from_home, anywhere] = scopes("u1", "203.0.113.9", &p);
        let [from_elsewhere, _] = scopes("u1", "198.51.100.1", &p);
        assert_ne!(from_home.key, from_elsewhere.key);
        assert_eq!(anywhere.key, "u1|*");
        assert!(anywhere.threshold > from_home.threshold);
        let [forged, _] = scopes("u1", "x|*", &p);
        assert_eq!(forged.key, "u1|unknown");
    }

    #[test]
    fn locks_grow_but_never_past_the_longest() {
        let p = LockPolicy::default();
        assert_eq!(p.lock_length(0), Duration::from_secs(900));
        assert_eq!(p.lock_length(1), Duration::from_secs(1800));
        assert_eq!(p.lock_length(50), p.longest_lock);
    }
}
