//! The lock on repeated failed sign-ins, shared by staff (identity) and patients.
//!
//! Attempts are counted *before* the password is checked, in one atomic step per store
//! (see `store::sqlite::begin_login_attempt` and `store::mongo::begin_login_attempt`),
//! so racing guesses can never run more password checks than the threshold. A lock
//! lasts [`LockPolicy::first_lock`], doubling with each further lock up to
//! [`LockPolicy::longest_lock`], so nobody can lock a colleague out for good; a success
//! resets everything.

use std::time::Duration;

/// When sign-in attempts lock an account, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct LockPolicy {
    /// Failed attempts allowed before the account locks.
    pub threshold: i64,
    /// Length of the first lock; each further lock doubles it.
    pub first_lock: Duration,
    /// The longest a lock lasts, so nobody can lock a colleague out for good.
    pub longest_lock: Duration,
}

impl Default for LockPolicy {
    fn default() -> Self {
        Self {
            threshold: 5,
            first_lock: Duration::from_secs(15 * 60),
            longest_lock: Duration::from_secs(24 * 60 * 60),
        }
    }
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
    fn locks_grow_but_never_past_the_longest() {
        let p = LockPolicy::default();
        assert_eq!(p.lock_length(0), Duration::from_secs(900));
        assert_eq!(p.lock_length(1), Duration::from_secs(1800));
        assert_eq!(p.lock_length(50), p.longest_lock);
    }
}
