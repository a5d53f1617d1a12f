//! The one sign-in routine, for staff (identity) and portal patients (patients).
//!
//! Every way a sign-in can fail (no such account, no password set, inactive, locked,
//! wrong password, a password no account could have) is the same UNAUTHENTICATED and
//! costs the same: exactly one argon2id verification, against the dummy hash when there
//! is no real one to check. So neither the answer nor its timing tells a stranger which
//! accounts exist or are locked. Attempts are counted before the password is checked
//! (see [`crate::lockout`]), per account and client address.

use std::sync::Arc;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::{
    ApiError, StoreError,
    lockout::{Attempt, LockPolicy},
    password::Passwords,
    time::Clock,
};

/// An account that may sign in.
pub trait Account: Send + Sync {
    /// For logs: the account's id.
    fn id(&self) -> &str;
    /// The PHC string, if a password is set.
    fn password_hash(&self) -> Option<&str>;
    /// Whether the account may sign in at all (active, its clinic active).
    fn may_sign_in(&self) -> bool;
}

/// Where an account's sign-in counters live (each service's store).
#[async_trait]
pub trait SignInCounters<A: Account>: Send + Sync {
    /// Counts an attempt of `account` from `client` before its password is checked.
    async fn begin_sign_in(
        &self,
        account: &A,
        client: &str,
        now: jiff::Timestamp,
        policy: &LockPolicy,
    ) -> Result<Attempt, StoreError>;

    /// `account` signed in from `client`.
    async fn sign_in_succeeded(&self, account: &A, client: &str) -> Result<(), StoreError>;
}

/// Checks passwords under the lock policy.
#[derive(Clone)]
pub struct SignIn {
    pub passwords: Passwords,
    pub policy: LockPolicy,
    pub clock: Arc<dyn Clock>,
}

impl SignIn {
    pub fn new(passwords: Passwords, clock: Arc<dyn Clock>) -> Self {
        Self {
            passwords,
            policy: LockPolicy::default(),
            clock,
        }
    }

    /// Signs `found` (the account the caller named, if any) in with `password` from
    /// `client`; the account on success, UNAUTHENTICATED for every failure.
    pub async fn verify<A: Account>(
        &self,
        counters: &dyn SignInCounters<A>,
        found: Option<A>,
        password: &SecretString,
        client: &str,
    ) -> Result<A, ApiError> {
        // A password no account can have is checked like any other, so its answer
        // takes as long.
        let plausible = (1..=128).contains(&password.expose_secret().chars().count());
        let account = match found {
            Some(a) if plausible && a.may_sign_in() && a.password_hash().is_some() => a,
            _ => return self.refuse(password).await,
        };
        let attempt = counters
            .begin_sign_in(&account, client, self.clock.now(), &self.policy)
            .await?;
        if attempt == Attempt::Locked {
            tracing::warn!(account = account.id(), client, "sign-in refused: locked");
            return self.refuse(password).await;
        }
        if !self
            .passwords
            .verify(password, account.password_hash())
            .await?
        {
            return Err(ApiError::Unauthenticated);
        }
        counters.sign_in_succeeded(&account, client).await?;
        Ok(account)
    }

    /// Checks the current password of an account that is already signed in (a patient
    /// changing theirs): counted under the same lock, so it cannot be guessed without
    /// limit either.
    pub async fn confirm<A: Account>(
        &self,
        counters: &dyn SignInCounters<A>,
        account: A,
        password: &SecretString,
        client: &str,
    ) -> Result<A, ApiError> {
        self.verify(counters, Some(account), password, client).await
    }

    /// The same work as a real check, then the one answer.
    async fn refuse<A>(&self, password: &SecretString) -> Result<A, ApiError> {
        self.passwords.verify(password, None).await?;
        Err(ApiError::Unauthenticated)
    }
}
