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
    domain::user::{self, LockPolicy, NO_CLINIC, User},
    keys::SigningKeys,
    store::{RefreshRecord, Spend, Stores},
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
}

/// Who a session signs in: a staff user or a portal patient.
struct Principal {
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
    fn staff(user: &User) -> Self {
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
        client: &str,
    ) -> Result<TokenPair, ApiError> {
        let email = email.trim().to_lowercase();
        let found = if email.is_empty() || email.len() > 254 {
            None
        } else {
            match self.stores.users.get_by_email(&email).await? {
                // A deactivated clinic's staff do not sign in (super admins have none).
                Some(user) if self.clinic_is_active(&user.clinic).await? => Some(user),
                _ => None,
            }
        };
        let target = found.as_ref().map(|u| (u.clinic.clone(), u.name()));
        let result = self
            .sign_in()
            .verify(self.stores.users.as_ref(), found, password, client)
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
            let outcome = result.as_ref().map_or_else(ApiError::reason, |_| "OK");
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
        self.issue(&Principal::staff(&user), None).await
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
        client: &str,
    ) -> Result<TokenPair, ApiError> {
        let clinic = topsmile_kit::names::ClinicName::parse("clinic", clinic)?;
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
        self.issue(&Principal::patient(&name)?, None).await
    }

    /// Whether the clinic `id` (or `-`, no clinic) lets its people sign in.
    pub async fn clinic_is_active(&self, id: &str) -> Result<bool, ApiError> {
        if id == NO_CLINIC {
            return Ok(true);
        }
        let Some(id) = ResourceId::parse(id) else {
            return Ok(false);
        };
        Ok(self
            .stores
            .clinics
            .get(&id)
            .await?
            .is_some_and(|c| c.is_active))
    }

    fn sign_in(&self) -> SignIn {
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

    /// A new access token and a new refresh token; `family` continues a session
    /// (refresh), `None` starts one (sign-in).
    async fn issue(
        &self,
        principal: &Principal,
        family: Option<(String, jiff::Timestamp)>,
    ) -> Result<TokenPair, ApiError> {
        let now = self.clock.now();
        let started = family.is_none();
        let (family, family_created) =
            family.unwrap_or_else(|| (ResourceId::generate().to_string(), now));
        let issued_at = topsmile_kit::time::unix_seconds();
        let ttl = i64::try_from(ACCESS_TOKEN_TTL.as_secs()).unwrap_or(900);
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
            sid: family.clone(),
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
                family,
                family_created,
                expires_at: add(now, REFRESH_TOKEN_TTL),
            })
            .await?;
        if started {
            self.stores
                .refresh_tokens
                .evict_oldest(&principal.subject, MAX_SESSIONS, now)
                .await?;
        }
        Ok(TokenPair {
            access_token,
            refresh_token,
            expires_in: i32::try_from(ttl).unwrap_or(900),
        })
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
        // The session lives only while its principal may still sign in.
        let principal = match record.kind {
            // A deactivated clinic's sessions end with their next refresh.
            Kind::Staff => match ResourceId::parse(&record.subject) {
                Some(id) => match self.stores.users.get(&record.clinic, &id).await? {
                    Some(u) if u.is_active && self.clinic_is_active(&u.clinic).await? => {
                        Some(Principal::staff(&u))
                    }
                    _ => None,
                },
                None => None,
            },
            Kind::Patient => match &self.patients {
                Some(patients) if self.clinic_is_active(&record.clinic).await? => {
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
            Some(principal) => {
                self.issue(&principal, Some((record.family, record.family_created)))
                    .await
            }
            None => {
                self.stores
                    .refresh_tokens
                    .revoke_family(&record.family, now)
                    .await?;
                Err(ApiError::Unauthenticated)
            }
        }
    }

    /// Ends the caller's session: its refresh tokens stop working.
    pub async fn logout(&self, caller: &Caller) -> Result<(), ApiError> {
        self.stores
            .refresh_tokens
            .revoke_family(caller.session(), self.clock.now())
            .await?;
        Ok(())
    }

    /// Changes the caller's own password (the current one is checked like a sign-in,
    /// lock included) and ends every session of theirs.
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
        self.stores.users.update_profile(&next).await?;
        self.stores
            .refresh_tokens
            .revoke_subject(user.id.as_str(), self.clock.now())
            .await?;
        tracing::info!(user = %user.id, "password changed; every session ended");
        Ok(())
    }

    async fn caller_user(&self, caller: &Caller) -> Result<User, ApiError> {
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
