//! The staff second factor, end to end: the sign-in challenge and its completion,
//! enrolment, disabling, recovery codes and an admin's reset (`MfaService` and
//! `AuthService.CompleteMfaSignIn` are thin wrappers over these). The rules are in
//! `domain::mfa`; every change is one compare-and-swap of the user record, so a code,
//! a recovery code and a challenge each work once whichever replica sees them.
//!
//! Policy: super admins and ADMINs must enrol, and every staff role of a clinic that
//! requires it (`SessionRules.require_mfa_for_all_staff`), after a grace period of
//! [`ENROLMENT_GRACE_SECS`] from the account's creation or the policy's start; inside it
//! sign-in says when enrolment is due, past it the tokens only allow enrolment.
//! Everyone else may enrol.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use topsmile_kit::{ApiError, StoreError, access::Caller, lockout::Attempt, names::ResourceId};

use crate::{
    accounts::{
        Accounts, Client, Continues, Method, Principal, StaffEvent, TokenPair, counted_as,
        presented_device,
    },
    domain::{
        clinic::SessionRules,
        mfa::{self, CHALLENGE_TTL_SECS, ENROLMENT_GRACE_SECS, Mfa, POLICY_START_SECS},
        user::{Role, User},
    },
};

/// When `user` must have enrolled by, if they must (super admins and ADMINs always,
/// everyone if their clinic says so: `rules`) and have not.
pub fn enrolment_due(user: &User, rules: &SessionRules) -> Option<jiff::Timestamp> {
    if user.mfa.is_enrolled() {
        return None;
    }
    let by_role = matches!(user.role, Role::SuperAdmin | Role::Admin);
    let policy_start = if by_role {
        POLICY_START_SECS
    } else if rules.require_mfa_for_all_staff {
        rules.all_staff_mfa_since
    } else {
        return None;
    };
    let start = user.create_time.as_second().max(policy_start);
    jiff::Timestamp::from_second(start + ENROLMENT_GRACE_SECS).ok()
}

/// A second factor as a request presents it.
pub enum Proof<'a> {
    Code(&'a str),
    Recovery(&'a str),
}

impl<'a> Proof<'a> {
    /// Exactly one of `code` and `recovery_code`.
    pub fn of(code: &'a str, recovery: &'a str) -> Result<Self, ApiError> {
        match (code.trim().is_empty(), recovery.trim().is_empty()) {
            (false, true) => Ok(Self::Code(code)),
            (true, false) => Ok(Self::Recovery(recovery)),
            _ => Err(ApiError::invalid(
                "code",
                "set exactly one of code and recovery_code",
            )),
        }
    }
}

impl Accounts {
    /// Opens a sign-in challenge for `user`, whose password was right: the tokens wait
    /// for the second factor.
    pub(crate) async fn challenge(&self, user: User) -> Result<TokenPair, ApiError> {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let secret = URL_SAFE_NO_PAD.encode(bytes);
        let handle = format!("{}~{}~{secret}", user.clinic, user.id);
        let expires = self.clock.now().as_second() + CHALLENGE_TTL_SECS;
        self.change_mfa(user, |m| {
            m.challenge = mfa::digest(&secret);
            m.challenge_expires = expires;
            Ok(())
        })
        .await?;
        Ok(TokenPair {
            access_token: String::new(),
            refresh_token: String::new(),
            expires_in: 0,
            device_token: String::new(),
            mfa_challenge: handle,
            mfa_enrolment_due: None,
            mfa_enrolment_only: false,
        })
    }

    /// Completes a sign-in: `challenge` and a second factor; the tokens. Every failure
    /// (unknown, expired or spent challenge, wrong or replayed code, locked account) is
    /// the same UNAUTHENTICATED; failed factors count under the sign-in lock.
    pub async fn complete_mfa_sign_in(
        &self,
        challenge: &str,
        proof: Proof<'_>,
        from: &Client,
    ) -> Result<(TokenPair, usize), ApiError> {
        let device = presented_device(&from.device_token)?;
        let now = self.clock.now();
        let user = match parse_challenge(challenge) {
            Some((clinic, id, secret)) => match self.stores.users.get(&clinic, &id).await? {
                Some(u)
                    if u.is_active
                        && u.mfa.is_enrolled()
                        && !u.mfa.challenge.is_empty()
                        && u.mfa.challenge == mfa::digest(secret)
                        && u.mfa.challenge_expires > now.as_second()
                        && self.clinic_is_active(&u.clinic).await? =>
                {
                    Some(u)
                }
                _ => None,
            },
            None => None,
        };
        let Some(user) = user else {
            return Err(ApiError::Unauthenticated);
        };
        let known = self.known_device(device, user.id.as_str());
        let client = counted_as(known.as_ref(), &from.address);
        let policy = self.lock_policy;
        if self
            .stores
            .users
            .begin_sign_in(&user, &client, now, &policy)
            .await?
            == Attempt::Locked
        {
            return Err(ApiError::Unauthenticated);
        }
        let used_recovery = matches!(proof, Proof::Recovery(_));
        let name = user.name();
        let clinic = user.clinic.clone();
        let user = self
            .change_mfa(user, |m| {
                m.challenge.clear();
                m.challenge_expires = 0;
                accept(m, &proof, now.as_second())
            })
            .await
            .map_err(|_| ApiError::Unauthenticated)?;
        self.stores.users.sign_in_succeeded(&user, &client).await?;
        if used_recovery {
            self.record_mfa(&clinic, &name, &name, "MfaService/UseRecoveryCode")
                .await;
        }
        let mut pair = self
            .issue(
                &Principal::staff(&user),
                Continues::Starts(from, Method::SecondFactor),
            )
            .await?;
        pair.device_token = self.device_token(user.id.as_str(), known)?;
        Ok((pair, user.mfa.recovery_codes.len()))
    }

    /// Starts the caller's enrolment: a fresh secret and its `otpauth://` URI.
    pub async fn enroll_mfa(&self, caller: &Caller) -> Result<(String, String), ApiError> {
        let user = self.caller_user(caller).await?;
        if user.mfa.is_enrolled() {
            return Err(ApiError::FailedPrecondition {
                reason: "MFA_ALREADY_ENROLLED",
                message: "MFA is on for this account: disable it first to enrol again".into(),
            });
        }
        let secret = mfa::new_secret();
        let uri = mfa::otpauth_uri(&secret, &user.email)
            .ok_or_else(|| ApiError::Internal("otpauth uri".into()))?;
        let pending = secret.clone();
        self.change_mfa(user, move |m| {
            m.pending_secret = pending.clone();
            Ok(())
        })
        .await?;
        Ok((secret, uri))
    }

    /// Confirms the caller's enrolment with a first code; the recovery codes.
    pub async fn confirm_mfa(
        &self,
        caller: &Caller,
        code: &str,
        client: &str,
    ) -> Result<Vec<String>, ApiError> {
        let user = self.caller_user(caller).await?;
        if user.mfa.pending_secret.is_empty() {
            return Err(ApiError::FailedPrecondition {
                reason: "MFA_NOT_ENROLLING",
                message: "call EnrollMfa first".into(),
            });
        }
        self.count_factor(&user, client).await?;
        let now = self.clock.now().as_second();
        let (codes, hashes) = mfa::new_recovery_codes();
        let name = user.name();
        let clinic = user.clinic.clone();
        let code = code.to_owned();
        let stored = self
            .change_mfa(user, move |m| {
                let step =
                    mfa::accepted_step(&m.pending_secret, &code, now, 0).ok_or_else(|| {
                        ApiError::invalid("code", "is not the authenticator's current code")
                    })?;
                m.secret = std::mem::take(&mut m.pending_secret);
                m.last_step = step;
                m.recovery_codes = hashes.clone();
                Ok(())
            })
            .await?;
        self.factor_succeeded(&stored, client).await?;
        self.record_mfa(&clinic, &name, &name, "MfaService/ConfirmMfa")
            .await;
        Ok(codes)
    }

    /// Turns the caller's MFA off with a current code or a recovery code.
    pub async fn disable_mfa(
        &self,
        caller: &Caller,
        proof: Proof<'_>,
        client: &str,
    ) -> Result<(), ApiError> {
        let user = self.require_enrolled(caller).await?;
        self.count_factor(&user, client).await?;
        let now = self.clock.now().as_second();
        let (name, clinic) = (user.name(), user.clinic.clone());
        let stored = self
            .change_mfa(user, |m| {
                accept(m, &proof, now).map_err(|_| wrong_factor())?;
                *m = Mfa::default();
                Ok(())
            })
            .await?;
        self.factor_succeeded(&stored, client).await?;
        self.record_mfa(&clinic, &name, &name, "MfaService/DisableMfa")
            .await;
        Ok(())
    }

    /// New recovery codes for the caller, with a current code.
    pub async fn regenerate_recovery_codes(
        &self,
        caller: &Caller,
        code: &str,
        client: &str,
    ) -> Result<Vec<String>, ApiError> {
        let user = self.require_enrolled(caller).await?;
        self.count_factor(&user, client).await?;
        let now = self.clock.now().as_second();
        let (codes, hashes) = mfa::new_recovery_codes();
        let (name, clinic) = (user.name(), user.clinic.clone());
        let stored = self
            .change_mfa(user, |m| {
                accept(m, &Proof::Code(code), now).map_err(|_| wrong_factor())?;
                m.recovery_codes = hashes.clone();
                Ok(())
            })
            .await?;
        self.factor_succeeded(&stored, client).await?;
        self.record_mfa(&clinic, &name, &name, "MfaService/RegenerateRecoveryCodes")
            .await;
        Ok(codes)
    }

    /// An admin turns `user`'s MFA off (a lost phone).
    pub async fn reset_mfa(&self, caller: &Caller, user: User) -> Result<(), ApiError> {
        let (name, clinic) = (user.name(), user.clinic.clone());
        self.change_mfa(user, |m| {
            *m = Mfa::default();
            Ok(())
        })
        .await?;
        self.record_mfa(&clinic, caller.subject(), &name, "MfaService/ResetMfa")
            .await;
        Ok(())
    }

    async fn require_enrolled(&self, caller: &Caller) -> Result<User, ApiError> {
        let user = self.caller_user(caller).await?;
        if !user.mfa.is_enrolled() {
            return Err(ApiError::FailedPrecondition {
                reason: "MFA_NOT_ENROLLED",
                message: "MFA is not on for this account".into(),
            });
        }
        Ok(user)
    }

    /// A code check counts under the sign-in lock, like a password.
    async fn count_factor(&self, user: &User, client: &str) -> Result<(), ApiError> {
        let policy = self.lock_policy;
        match self
            .stores
            .users
            .begin_sign_in(user, client, self.clock.now(), &policy)
            .await?
        {
            Attempt::Proceed => Ok(()),
            Attempt::Locked => Err(ApiError::Unauthenticated),
        }
    }

    /// A factor checked right: its address's counter (and the account-wide one) clear,
    /// as after a sign-in.
    async fn factor_succeeded(&self, user: &User, client: &str) -> Result<(), ApiError> {
        Ok(self.stores.users.sign_in_succeeded(user, client).await?)
    }

    /// Applies `change` to `user`'s MFA state and stores it by compare-and-swap (once
    /// more on a race with another change of the user); the stored user.
    async fn change_mfa(
        &self,
        user: User,
        change: impl Fn(&mut Mfa) -> Result<(), ApiError>,
    ) -> Result<User, ApiError> {
        let mut current = user;
        for _ in 0..2 {
            let mut next = current.clone();
            change(&mut next.mfa)?;
            next.version += 1;
            next.update_time = self.clock.now();
            match self.stores.users.update_profile(&next).await {
                Ok(()) => return Ok(next),
                Err(StoreError::Stale) => {
                    current = self
                        .stores
                        .users
                        .get(&current.clinic, &current.id)
                        .await?
                        .ok_or(ApiError::Unauthenticated)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Stale)
    }

    /// An MFA event in the clinic's trail (best effort, as identity's sign-ins).
    async fn record_mfa(&self, clinic: &str, actor: &str, user: &str, action: &str) {
        let event = StaffEvent {
            actor,
            actor_kind: "staff",
            action,
            resource: user,
            outcome: "OK",
        };
        if let Err(e) = self.audit(clinic, event).await {
            tracing::warn!(error = %e, action, user, "MFA event not recorded in the audit trail");
        }
    }
}

/// Checks `proof` against `m` at `now` and consumes it: a code's step becomes the last
/// accepted, a recovery code is removed.
fn accept(m: &mut Mfa, proof: &Proof<'_>, now: i64) -> Result<(), ApiError> {
    match proof {
        Proof::Code(code) => {
            let step = mfa::accepted_step(&m.secret, code, now, m.last_step)
                .ok_or(ApiError::Unauthenticated)?;
            m.last_step = step;
        }
        Proof::Recovery(code) => {
            let hash = mfa::recovery_hash(code);
            let at = m
                .recovery_codes
                .iter()
                .position(|h| *h == hash)
                .ok_or(ApiError::Unauthenticated)?;
            m.recovery_codes.remove(at);
        }
    }
    Ok(())
}

fn wrong_factor() -> ApiError {
    ApiError::invalid("code", "is not a current code or an unused recovery code")
}

/// A challenge as handed out: `{clinic}~{user}~{secret}` (only the secret's hash is
/// stored, on the user).
fn parse_challenge(challenge: &str) -> Option<(String, ResourceId, &str)> {
    let mut parts = challenge.splitn(3, '~');
    let clinic = parts.next()?;
    let id = ResourceId::parse(parts.next()?)?;
    let secret = parts.next()?;
    let clinic_ok = clinic == crate::domain::user::NO_CLINIC || ResourceId::parse(clinic).is_some();
    (clinic_ok && secret.len() <= 64).then(|| (clinic.to_owned(), id, secret))
}
