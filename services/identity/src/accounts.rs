//! Signing in: passwords, the lock on repeated failures, access and refresh tokens,
//! and service tokens. The gRPC handlers of `AuthService` and
//! `IdentityInternalService` are thin wrappers over [`Accounts`].
//!
//! Every failure a stranger could learn from (unknown email, wrong password, locked or
//! deactivated account, spent or expired refresh token) is the same UNAUTHENTICATED.

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use topsmile_kit::{
    ApiError,
    access::Caller,
    auth::{ACCESS_TOKEN_TTL, AUDIENCE, Claims, ISSUER, Kind},
    names::ResourceId,
    password::Passwords,
    signin::SignIn,
    time::Clock,
};

pub use crate::patients_client::PatientDirectory;
use crate::patients_client::PortalCredentials;

use crate::{
    domain::{
        clinic::SessionRules,
        user::{self, LockPolicy, NO_CLINIC, User},
    },
    keys::SigningKeys,
    store::{CLIENT_LABEL_MAX, RefreshRecord, SessionRecord, Spend, Stores, Timeouts},
};

/// How long a refresh token (and so a session without activity) lives.
pub const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Live session families per user; a new sign-in evicts the oldest beyond this.
pub const MAX_SESSIONS: usize = 10;
/// How long a service token lives.
pub const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

/// An event of identity's for a clinic's audit trail.
#[derive(Debug, Clone, Copy)]
pub struct StaffEvent<'a> {
    /// A user's name, or `anonymous`.
    pub actor: &'a str,
    /// `staff` or `anonymous`.
    pub actor_kind: &'a str,
    /// The method, e.g. `AuthService/Login`.
    pub action: &'a str,
    pub resource: &'a str,
    /// `OK` or the refusal's reason.
    pub outcome: &'a str,
}

/// What a successful sign-in or refresh hands back.
#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i32,
    /// A sign-in's fresh device token (see `topsmile_kit::lockout`); empty on refresh.
    pub device_token: String,
    /// Set instead of tokens when the user has MFA: `CompleteMfaSignIn` takes it.
    pub mfa_challenge: String,
    /// When the user must have enrolled in MFA by, if they must and have not.
    pub mfa_enrolment_due: Option<jiff::Timestamp>,
    /// The tokens only allow enrolling in MFA.
    pub mfa_enrolment_only: bool,
}

/// Where a sign-in comes from: what its session records for its owner to see.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// The client address (see `topsmile_kit::access::client_address`); it also keys
    /// the sign-in lock.
    pub address: String,
    /// What the client calls itself (its `user-agent`), cut to a printable line.
    pub label: String,
    /// The device token it presented (`LoginRequest.device_token`), if any.
    pub device_token: String,
}

impl Client {
    /// The client of `request`: its address and its `user-agent`.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let label = request
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        Self {
            address: topsmile_kit::access::client_address(request),
            label: label
                .chars()
                .filter(|c| !c.is_control())
                .take(CLIENT_LABEL_MAX)
                .collect(),
            device_token: String::new(),
        }
    }
}

/// Who a session signs in: a staff user or a portal patient.
pub(crate) struct Principal {
    /// The `sub` claim: the resource name.
    name: String,
    /// What refresh records and session eviction key on.
    subject: String,
    kind: Kind,
    /// The clinic id (`-` for a super admin).
    clinic: String,
    role: String,
}

impl Principal {
    pub(crate) fn staff(user: &User) -> Self {
        Self {
            name: user.name(),
            subject: user.id.to_string(),
            kind: Kind::Staff,
            clinic: user.clinic.clone(),
            role: user.role.as_str().into(),
        }
    }

    fn patient(name: &str) -> Result<Self, ApiError> {
        let parsed = topsmile_kit::names::ClinicScopedName::parse("patient", "patients", name)
            .map_err(|_| ApiError::Internal(format!("patients answered a bad name {name:?}")))?;
        Ok(Self {
            name: name.to_owned(),
            subject: name.to_owned(),
            kind: Kind::Patient,
            clinic: parsed.clinic.to_string(),
            role: "patient".into(),
        })
    }
}

pub struct Accounts {
    pub stores: Stores,
    pub passwords: Passwords,
    pub keys: Arc<SigningKeys>,
    pub clock: Arc<dyn Clock>,
    pub lock_policy: LockPolicy,
    /// The secret other services present to `MintServiceToken`; none disables it.
    pub service_secret: Option<SecretString>,
    /// The patients service, which checks portal credentials.
    pub patients: Option<PatientDirectory>,
}

impl Accounts {
    /// Staff sign-in by email and password, from the client at `client` (an address:
    /// failures are counted per account and address, see `topsmile_kit::lockout`).
    pub async fn login(
        &self,
        email: &str,
        password: &SecretString,
        from: &Client,
    ) -> Result<TokenPair, ApiError> {
        // Checked before anything is looked up: the same answer for every account.
        let device = presented_device(&from.device_token)?;
        let email = email.trim().to_lowercase();
        // A deactivated clinic's staff do not sign in (super admins have none); its
        // rules, read once, also say whether MFA is due.
        let (found, rules) = if email.is_empty() || email.len() > 254 {
            (None, None)
        } else {
            match self.stores.users.get_by_email(&email).await? {
                Some(user) => match self.clinic_sessions(&user.clinic).await? {
                    Some(rules) => (Some(user), Some(rules)),
                    None => (None, None),
                },
                None => (None, None),
            }
        };
        let target = found.as_ref().map(|u| (u.clinic.clone(), u.name()));
        let binding = found.as_ref().map(|u| u.id.to_string()).unwrap_or_default();
        let known = self.known_device(device, &binding);
        let client = counted_as(known.as_ref(), &from.address);
        let result = self
            .sign_in()
            .verify(self.stores.users.as_ref(), found, password, &client)
            .await;
        // Sign-ins to an account of a clinic go to that clinic's audit trail, failed
        // ones included (as `anonymous`: the caller is not known to be the owner).
        // Best effort: a staff sign-in is not an access to patient data, and must not
        // wait on the patients service.
        if let Some((clinic, name)) = target {
            let (actor, kind) = match &result {
                Ok(_) => (name.as_str(), "staff"),
                Err(_) => ("anonymous", "anonymous"),
            };
            let outcome = topsmile_kit::audit::outcome(&result);
            let event = StaffEvent {
                actor,
                actor_kind: kind,
                action: "AuthService/Login",
                resource: &name,
                outcome,
            };
            if let Err(e) = self.audit(&clinic, event).await {
                tracing::warn!(error = %e, account = %name, "sign-in not recorded in the audit trail");
            }
        }
        let user = result?;
        if user.mfa.is_enrolled() {
            // The password was right; the tokens wait for the second factor.
            return self.challenge(user).await;
        }
        let due = crate::mfa::enrolment_due(&user, &rules.unwrap_or_default());
        let only_enrolment = due.is_some_and(|due| self.clock.now() >= due);
        let method = if only_enrolment {
            Method::EnrolmentOnly
        } else {
            Method::Password
        };
        let mut pair = self
            .issue(&Principal::staff(&user), Continues::Starts(from, method))
            .await?;
        pair.device_token = self.device_token(&binding, known)?;
        pair.mfa_enrolment_due = due;
        pair.mfa_enrolment_only = only_enrolment;
        Ok(pair)
    }

    /// Appends a staff event to `clinic`'s audit trail (kept by the patients service).
    /// Super admins belong to no clinic: their events are logged, not recorded.
    pub async fn audit(&self, clinic: &str, event: StaffEvent<'_>) -> Result<(), ApiError> {
        let (Some(patients), false) = (&self.patients, clinic == NO_CLINIC) else {
            tracing::info!(
                action = event.action,
                resource = event.resource,
                outcome = event.outcome,
                "staff event"
            );
            return Ok(());
        };
        let (token, _) = self.sign_service_token("identity")?;
        patients
            .record(
                &token,
                &topsmile_proto::topsmile::patients::v1::RecordAuditEventRequest {
                    clinic: format!("clinics/{clinic}"),
                    actor: event.actor.to_owned(),
                    actor_role: String::new(),
                    actor_kind: event.actor_kind.to_owned(),
                    action: event.action.to_owned(),
                    resource: event.resource.to_owned(),
                    outcome: event.outcome.to_owned(),
                    trace_id: String::new(),
                },
            )
            .await
    }

    /// Patient portal sign-in to `clinic`'s portal: the patients service checks the
    /// credentials (the same kit routine, lock and answers); identity issues the tokens.
    pub async fn login_patient(
        &self,
        clinic: &str,
        email: &str,
        password: &SecretString,
        from: &Client,
    ) -> Result<TokenPair, ApiError> {
        let device = presented_device(&from.device_token)?;
        let clinic = topsmile_kit::names::ClinicName::parse("clinic", clinic)?;
        // A portal account is its clinic and email (the patient's id is the patients
        // service's to find).
        let binding = format!("portal|{}|{}", clinic.clinic, email.trim().to_lowercase());
        let known = self.known_device(device, &binding);
        let counted = counted_as(known.as_ref(), &from.address);
        let client = counted.as_str();
        let patients = self
            .patients
            .as_ref()
            .ok_or_else(|| ApiError::Unavailable("patient sign-in is not configured".into()))?;
        let (token, _) = self.sign_service_token("identity")?;
        let credentials = PortalCredentials {
            clinic: clinic.to_string(),
            email,
            password,
            client,
        };
        let name = patients.verify(&token, &credentials).await?;
        if !self.clinic_is_active(clinic.clinic.as_str()).await? {
            return Err(ApiError::Unauthenticated);
        }
        let mut pair = self
            .issue(
                &Principal::patient(&name)?,
                Continues::Starts(from, Method::Password),
            )
            .await?;
        pair.device_token = self.device_token(&binding, known)?;
        Ok(pair)
    }

    /// Whether the clinic `id` (or `-`, no clinic) lets its people sign in.
    pub async fn clinic_is_active(&self, id: &str) -> Result<bool, ApiError> {
        Ok(self.clinic_sessions(id).await?.is_some())
    }

    pub(crate) fn sign_in(&self) -> SignIn {
        SignIn {
            passwords: self.passwords.clone(),
            policy: self.lock_policy,
            clock: self.clock.clone(),
        }
    }

    /// An admin lifts every sign-in lock of `user`.
    pub async fn unlock(&self, user: &User) -> Result<(), ApiError> {
        self.stores.users.unlock_sign_in(user).await?;
        Ok(())
    }

    /// A new access token and a new refresh token, for a new session or one that
    /// continues (a refresh).
    pub(crate) async fn issue(
        &self,
        principal: &Principal,
        session: Continues<'_>,
    ) -> Result<TokenPair, ApiError> {
        let now = self.clock.now();
        let session = match session {
            Continues::Session(session) => session.clone(),
            Continues::Starts(client, method) => {
                let session = SessionRecord {
                    id: ResourceId::generate().to_string(),
                    subject: principal.subject.clone(),
                    kind: principal.kind,
                    clinic: principal.clinic.clone(),
                    created: now,
                    last_used: now,
                    ended: None,
                    client_address: client.address.clone(),
                    client_label: client.label.clone(),
                    method: method.as_str().to_owned(),
                };
                self.stores.sessions.start(&session).await?;
                self.evict_beyond_limit(principal, now).await?;
                session
            }
        };
        let issued_at = topsmile_kit::time::unix_seconds();
        let ttl = i64::try_from(ACCESS_TOKEN_TTL.as_secs()).unwrap_or(900);
        let (amr, scope) = Method::parse(&session.method).claims();
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: principal.name.clone(),
            exp: issued_at + ttl,
            iat: issued_at,
            jti: ResourceId::generate().to_string(),
            clinic: if principal.clinic == NO_CLINIC {
                String::new()
            } else {
                principal.clinic.clone()
            },
            role: principal.role.clone(),
            kind: principal.kind,
            sid: session.id.clone(),
            amr,
            // When the session signed in, on the real clock the verifiers use (the
            // service's clock may be a test's: the session's age is measured on it).
            auth_time: issued_at - (now.as_second() - session.created.as_second()).max(0),
            scope,
        };
        let access_token = self
            .keys
            .issuer()?
            .sign(&claims)
            .map_err(|e| ApiError::Internal(format!("sign: {e}")))?;
        let refresh_token = random_token();
        self.stores
            .refresh_tokens
            .insert(&RefreshRecord {
                hash: digest(&refresh_token),
                subject: principal.subject.clone(),
                kind: principal.kind,
                clinic: principal.clinic.clone(),
                family: session.id,
                family_created: session.created,
                expires_at: add(now, REFRESH_TOKEN_TTL),
            })
            .await?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            expires_in: i32::try_from(ttl).unwrap_or(900),
            device_token: String::new(),
            mfa_challenge: String::new(),
            mfa_enrolment_due: None,
            mfa_enrolment_only: false,
        })
    }

    /// The device of a presented token, if it verifies and is bound to `binding` (the
    /// account signing in); `None` otherwise: then the attempt is counted by address.
    pub(crate) fn known_device(
        &self,
        presented: Option<&str>,
        binding: &str,
    ) -> Option<ResourceId> {
        let token = presented?;
        let keys = self.keys.public_keys().ok()?;
        match topsmile_kit::auth::verify_device_token(&keys, token) {
            Ok(claims) if !binding.is_empty() && claims.sub == binding => {
                ResourceId::parse(&claims.sid)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "device token not accepted: counted by address");
                None
            }
        }
    }

    /// A fresh device token bound to `binding`, for `device` (a new one if `None`).
    pub(crate) fn device_token(
        &self,
        binding: &str,
        device: Option<ResourceId>,
    ) -> Result<String, ApiError> {
        let now = topsmile_kit::time::unix_seconds();
        let ttl = i64::try_from(topsmile_kit::auth::DEVICE_TOKEN_TTL.as_secs()).unwrap_or(0);
        let claims = Claims {
            iss: ISSUER.into(),
            aud: topsmile_kit::auth::DEVICE_AUDIENCE.into(),
            sub: binding.to_owned(),
            exp: now + ttl,
            iat: now,
            jti: ResourceId::generate().to_string(),
            clinic: String::new(),
            role: String::new(),
            kind: Kind::Staff,
            sid: device.unwrap_or_else(ResourceId::generate).to_string(),
            amr: Vec::new(),
            auth_time: 0,
            scope: String::new(),
        };
        self.keys
            .issuer()?
            .sign(&claims)
            .map_err(|e| ApiError::Internal(format!("sign: {e}")))
    }

    /// Ends the oldest sessions of `principal` beyond [`MAX_SESSIONS`].
    async fn evict_beyond_limit(
        &self,
        principal: &Principal,
        now: jiff::Timestamp,
    ) -> Result<(), ApiError> {
        let live = self
            .stores
            .sessions
            .list(&principal.clinic, &principal.subject, MAX_SESSIONS + 20)
            .await?;
        for old in live.iter().skip(MAX_SESSIONS) {
            self.end_session(old, now).await?;
        }
        Ok(())
    }

    /// Ends `session` and revokes its refresh tokens.
    pub(crate) async fn end_session(
        &self,
        session: &SessionRecord,
        now: jiff::Timestamp,
    ) -> Result<bool, ApiError> {
        let ended = self
            .stores
            .sessions
            .end(&session.clinic, &session.subject, &session.id, now)
            .await?;
        self.stores
            .refresh_tokens
            .revoke_family(&session.id, now)
            .await?;
        Ok(ended)
    }

    /// The session rules of `clinic` (`-`: the defaults), and whether it is active.
    pub(crate) async fn clinic_sessions(
        &self,
        clinic: &str,
    ) -> Result<Option<SessionRules>, ApiError> {
        if clinic == NO_CLINIC {
            return Ok(Some(SessionRules::default()));
        }
        let Some(id) = ResourceId::parse(clinic) else {
            return Ok(None);
        };
        Ok(self
            .stores
            .clinics
            .get(&id)
            .await?
            .filter(|c| c.is_active)
            .map(|c| c.fields.session_rules))
    }

    /// When sessions of `kind` under `rules` count as timed out, at `now`.
    pub(crate) fn timeouts(rules: &SessionRules, kind: Kind, now: jiff::Timestamp) -> Timeouts {
        let (idle, lifetime) = rules.of(kind);
        let before = |secs: i64| {
            now.checked_sub(jiff::SignedDuration::from_secs(secs))
                .unwrap_or(now)
        };
        Timeouts {
            idle_before: before(idle),
            started_before: before(lifetime),
        }
    }

    /// Whether the session of a verified token may go on, and its principal's role
    /// now: what `CheckSession` answers and identity's own guard asks. Reads the
    /// session, the clinic and the user (for a patient, the patients service): the
    /// store, never this process's memory.
    pub async fn session_state(
        &self,
        claims: &Claims,
    ) -> Result<topsmile_kit::sessions::SessionState, ApiError> {
        use topsmile_kit::sessions::SessionState;
        let clinic = if claims.clinic.is_empty() {
            NO_CLINIC
        } else {
            claims.clinic.as_str()
        };
        let subject = match claims.kind {
            Kind::Staff => match user_id_of(&claims.sub) {
                Some(id) => id.to_string(),
                None => return Ok(SessionState::Ended),
            },
            Kind::Patient => claims.sub.clone(),
            Kind::Service => return Ok(SessionState::Ended),
        };
        let Some(session) = self.stores.sessions.get(clinic, &claims.sid).await? else {
            return Ok(SessionState::Ended);
        };
        if session.subject != subject || session.kind != claims.kind {
            return Ok(SessionState::Ended);
        }
        let Some(rules) = self.clinic_sessions(clinic).await? else {
            return Ok(SessionState::Ended);
        };
        let now = self.clock.now();
        if !session.is_live(Self::timeouts(&rules, session.kind, now)) {
            return Ok(SessionState::Ended);
        }
        match claims.kind {
            Kind::Staff => {
                let Some(id) = ResourceId::parse(&subject) else {
                    return Ok(SessionState::Ended);
                };
                Ok(match self.stores.users.get(clinic, &id).await? {
                    Some(u) if u.is_active && u.name() == claims.sub => {
                        SessionState::Live(auth_role(u.role))
                    }
                    _ => SessionState::Ended,
                })
            }
            _ => {
                let Some(patients) = &self.patients else {
                    return Ok(SessionState::Ended);
                };
                let (token, _) = self.sign_service_token("identity")?;
                let live = patients
                    .has_portal_access(&token, &subject, (&session.id, session.created))
                    .await?;
                Ok(if live {
                    SessionState::Live(topsmile_proto::topsmile::auth::v1::Role::Patient)
                } else {
                    SessionState::Ended
                })
            }
        }
    }

    /// Rotates a refresh token. A token presented a second time means it leaked (or a
    /// client raced itself): the whole session family is revoked.
    pub async fn refresh(&self, token: &str) -> Result<TokenPair, ApiError> {
        let now = self.clock.now();
        let record = match self
            .stores
            .refresh_tokens
            .spend(&digest(token), now)
            .await?
        {
            Spend::Fresh(record) => record,
            Spend::Reused(record) => {
                tracing::warn!(family = %record.family, subject = %record.subject, "refresh token replayed: session revoked");
                self.stores
                    .refresh_tokens
                    .revoke_family(&record.family, now)
                    .await?;
                return Err(ApiError::Unauthenticated);
            }
            Spend::Unknown => return Err(ApiError::Unauthenticated),
        };
        // The session goes on only while it is live: not ended, not idle past its
        // clinic's idle timeout, not past its lifetime. One conditional update.
        let session = match self.clinic_sessions(&record.clinic).await? {
            Some(rules) => {
                let timeouts = Self::timeouts(&rules, record.kind, now);
                if self
                    .stores
                    .sessions
                    .touch(&record.clinic, &record.family, now, timeouts)
                    .await?
                {
                    self.stores
                        .sessions
                        .get(&record.clinic, &record.family)
                        .await?
                } else {
                    None
                }
            }
            None => None,
        };
        let Some(session) = session else {
            self.stores
                .refresh_tokens
                .revoke_family(&record.family, now)
                .await?;
            return Err(ApiError::Unauthenticated);
        };
        // The session lives only while its principal may still sign in.
        let principal = match record.kind {
            // A deactivated clinic's sessions end with their next refresh.
            Kind::Staff => match ResourceId::parse(&record.subject) {
                // (The clinic was found active above, with its session rules.)
                Some(id) => match self.stores.users.get(&record.clinic, &id).await? {
                    Some(u) if u.is_active => Some(Principal::staff(&u)),
                    _ => None,
                },
                None => None,
            },
            Kind::Patient => match &self.patients {
                Some(patients) => {
                    let (token, _) = self.sign_service_token("identity")?;
                    let session = (record.family.as_str(), record.family_created);
                    if patients
                        .has_portal_access(&token, &record.subject, session)
                        .await?
                    {
                        Some(Principal::patient(&record.subject)?)
                    } else {
                        None
                    }
                }
                _ => None,
            },
            Kind::Service => None,
        };
        match principal {
            Some(principal) => self.issue(&principal, Continues::Session(&session)).await,
            None => {
                self.end_session(&session, now).await?;
                Err(ApiError::Unauthenticated)
            }
        }
    }

    /// Ends the caller's session: its refresh token stops working at once, its access
    /// tokens within the revocation bound (`topsmile_kit::sessions`).
    pub async fn logout(&self, caller: &Caller) -> Result<(), ApiError> {
        let (clinic, subject) = session_owner(caller)?;
        let now = self.clock.now();
        self.stores
            .sessions
            .end(&clinic, &subject, caller.session(), now)
            .await?;
        self.stores
            .refresh_tokens
            .revoke_family(caller.session(), now)
            .await?;
        Ok(())
    }

    /// Ends every session of `user` (deactivation): refresh tokens at once, access
    /// tokens within the revocation bound.
    pub async fn end_all_sessions(&self, user: &User) -> Result<u64, ApiError> {
        let now = self.clock.now();
        let ended = self
            .stores
            .sessions
            .end_all(&user.clinic, user.id.as_str(), None, now)
            .await?;
        self.stores
            .refresh_tokens
            .revoke_subject(user.id.as_str(), now)
            .await?;
        Ok(ended)
    }

    /// Changes the caller's own password (the current one is checked like a sign-in,
    /// lock included) and ends every other session of theirs: whoever knew the old
    /// password is signed out, the caller goes on.
    pub async fn change_password(
        &self,
        caller: &Caller,
        current: &SecretString,
        new: &SecretString,
        client: &str,
    ) -> Result<(), ApiError> {
        user::password("new_password", new.expose_secret())?;
        let user = self.caller_user(caller).await?;
        let user = self
            .sign_in()
            .confirm(self.stores.users.as_ref(), user, current, client)
            .await?;
        let mut next = user.clone();
        next.password_hash = self.passwords.hash(new).await?;
        next.update_time = self.clock.now();
        next.version += 1;
        // The other sessions end first, in one write: a call cut short between the two
        // writes leaves them ended and the old password in place, never the new
        // password with the old sessions still live. (Their refresh tokens then fail at
        // the session check.)
        self.stores
            .sessions
            .end_all(
                &user.clinic,
                user.id.as_str(),
                Some(caller.session()),
                self.clock.now(),
            )
            .await?;
        self.stores.users.update_profile(&next).await?;
        tracing::info!(user = %user.id, "password changed; every other session ended");
        Ok(())
    }

    pub(crate) async fn caller_user(&self, caller: &Caller) -> Result<User, ApiError> {
        let id = caller
            .subject()
            .rsplit('/')
            .next()
            .and_then(ResourceId::parse)
            .ok_or(ApiError::Unauthenticated)?;
        // A super admin's token names no clinic; they are stored under `-`.
        let clinic = match caller.clinic() {
            "" => NO_CLINIC,
            clinic => clinic,
        };
        match self.stores.users.get(clinic, &id).await? {
            Some(user) if user.is_active && user.name() == caller.subject() => Ok(user),
            _ => Err(ApiError::Unauthenticated),
        }
    }

    /// A short-lived token for another TopSmile service, against the shared secret.
    pub async fn mint_service_token(
        &self,
        service: &str,
        secret: &SecretString,
    ) -> Result<(String, i32), ApiError> {
        let Some(expected) = &self.service_secret else {
            return Err(ApiError::Unauthenticated);
        };
        // Comparing digests: equal-length inputs, and timing reveals nothing useful.
        if digest(expected.expose_secret()) != digest(secret.expose_secret()) {
            return Err(ApiError::Unauthenticated);
        }
        self.sign_service_token(service)
    }

    /// Signs a service token for `service` (identity signs its own this way).
    pub fn sign_service_token(&self, service: &str) -> Result<(String, i32), ApiError> {
        let service = ResourceId::parse(service).ok_or_else(|| {
            ApiError::invalid("service", "must be a service name such as \"patients\"")
        })?;
        let now = topsmile_kit::time::unix_seconds();
        let ttl = i64::try_from(SERVICE_TOKEN_TTL.as_secs()).unwrap_or(300);
        let jti = ResourceId::generate().to_string();
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: format!("services/{service}"),
            exp: now + ttl,
            iat: now,
            jti: jti.clone(),
            clinic: String::new(),
            role: "service".into(),
            kind: Kind::Service,
            sid: jti,
            amr: Vec::new(),
            auth_time: now,
            scope: String::new(),
        };
        let token = self
            .keys
            .issuer()?
            .sign(&claims)
            .map_err(|e| ApiError::Internal(format!("sign: {e}")))?;
        Ok((token, i32::try_from(ttl).unwrap_or(300)))
    }

    /// Creates the first super admin if there is none (idempotent, never overwrites).
    /// Returns whether it created one.
    pub async fn bootstrap_admin(
        &self,
        email: &str,
        password: &SecretString,
    ) -> Result<bool, ApiError> {
        if self.stores.users.any_super_admin().await? {
            return Ok(false);
        }
        let fields = user::validate_fields(
            "bootstrap_admin",
            user::UserInput {
                email: email.to_owned(),
                display_name: "Administrator".into(),
                role: Some(user::Role::SuperAdmin),
            },
        )?;
        user::password("bootstrap_admin_password", password.expose_secret())?;
        let now = self.clock.now();
        let admin = User::new(
            fields,
            NO_CLINIC.into(),
            self.passwords.hash(password).await?,
            now,
        );
        match self
            .stores
            .users
            .create(admin, Some("bootstrap-admin"))
            .await
        {
            Ok(admin) => {
                tracing::info!(user = %admin.name(), "bootstrap super admin created");
                Ok(true)
            }
            // Another replica bootstrapped at the same time, or the email is taken.
            Err(topsmile_kit::StoreError::Duplicate(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Identity's own guard's session check: [`Accounts::session_state`], from the store.
pub struct OwnSessions(pub Arc<Accounts>);

#[async_trait::async_trait]
impl topsmile_kit::sessions::SessionAuthority for OwnSessions {
    async fn state(
        &self,
        _token: &str,
        claims: &Claims,
    ) -> Result<topsmile_kit::sessions::SessionState, ApiError> {
        self.0.session_state(claims).await
    }
}

/// How [`Accounts::issue`] finds its session.
pub(crate) enum Continues<'a> {
    /// A sign-in from this client, authenticated so: a new session.
    Starts(&'a Client, Method),
    /// A refresh of this live session.
    Session(&'a SessionRecord),
}

/// How a session signed in: what its tokens' `amr` and `scope` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// A password.
    Password,
    /// A password and a second factor.
    SecondFactor,
    /// A password, from a user who must enrol in MFA and is past the grace period:
    /// the tokens only allow enrolling.
    EnrolmentOnly,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Self::Password => topsmile_kit::auth::AMR_PASSWORD,
            Self::SecondFactor => topsmile_kit::auth::AMR_OTP,
            Self::EnrolmentOnly => topsmile_kit::auth::SCOPE_MFA_ENROLMENT,
        }
    }

    fn parse(stored: &str) -> Self {
        match stored {
            topsmile_kit::auth::AMR_OTP => Self::SecondFactor,
            topsmile_kit::auth::SCOPE_MFA_ENROLMENT => Self::EnrolmentOnly,
            _ => Self::Password,
        }
    }

    /// The token's `amr` and `scope`.
    fn claims(self) -> (Vec<String>, String) {
        let password = topsmile_kit::auth::AMR_PASSWORD.to_owned();
        match self {
            Self::Password => (vec![password], String::new()),
            Self::SecondFactor => (
                vec![password, topsmile_kit::auth::AMR_OTP.to_owned()],
                String::new(),
            ),
            Self::EnrolmentOnly => (
                vec![password],
                topsmile_kit::auth::SCOPE_MFA_ENROLMENT.to_owned(),
            ),
        }
    }
}

/// A presented device token, if any: INVALID_ARGUMENT if it is not a token at all
/// (too long, or no token header), before any account is looked up.
pub(crate) fn presented_device(token: &str) -> Result<Option<&str>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let malformed = || ApiError::invalid("device_token", "is not a device token TopSmile issued");
    if token.len() > topsmile_kit::auth::DEVICE_TOKEN_MAX_BYTES {
        return Err(malformed());
    }
    match topsmile_kit::auth::TokenVerifier::kid_of(token) {
        Ok(_) | Err(topsmile_kit::auth::TokenError::UnknownKey) => Ok(Some(token)),
        Err(_) => Err(malformed()),
    }
}

/// What an attempt is counted as: the known device, or the client's address.
pub(crate) fn counted_as(device: Option<&ResourceId>, address: &str) -> String {
    device.map_or_else(|| address.to_owned(), topsmile_kit::lockout::device_client)
}

/// The policy role of a staff role.
fn auth_role(role: user::Role) -> topsmile_proto::topsmile::auth::v1::Role {
    use topsmile_proto::topsmile::auth::v1::Role as Policy;
    match role {
        user::Role::SuperAdmin => Policy::SuperAdmin,
        user::Role::Admin => Policy::Admin,
        user::Role::Provider => Policy::Provider,
        user::Role::Staff => Policy::Staff,
    }
}

/// The user id in a staff resource name `clinics/{clinic}/users/{user}` (or
/// `users/{user}` for a super admin).
fn user_id_of(name: &str) -> Option<ResourceId> {
    name.rsplit('/').next().and_then(ResourceId::parse)
}

/// The (clinic, subject) a caller's sessions are stored under.
fn session_owner(caller: &Caller) -> Result<(String, String), ApiError> {
    let clinic = match caller.clinic() {
        "" => NO_CLINIC.to_owned(),
        clinic => clinic.to_owned(),
    };
    let subject = match caller.kind() {
        Kind::Staff => user_id_of(caller.subject())
            .ok_or(ApiError::Unauthenticated)?
            .to_string(),
        Kind::Patient => caller.subject().to_owned(),
        Kind::Service => return Err(ApiError::Unauthenticated),
    };
    Ok((clinic, subject))
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Hex SHA-256: what the store keeps of a refresh token.
pub fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn add(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(t)
}
