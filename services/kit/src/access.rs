//! Who is calling, and whether they may: the one check the gateway and every service run.
//!
//! [`Guard::authorize`] takes a call's path and headers, looks the method up in the
//! [`PolicyTable`] (the `topsmile.auth.v1.policy` options of the contracts), verifies the
//! bearer token and checks the caller's role against the policy. The gateway calls it
//! before forwarding; every service runs it again through [`GuardLayer`], so a call that
//! bypasses the gateway gains nothing. Handlers then read the [`Caller`] from the request
//! and check what only they can: the clinic of the record and whether a patient owns it.
//!
//! Public keys come from identity: from its key file for identity itself, from its
//! `GetJwks` method for everyone else. An unknown `kid` triggers one refetch, at most
//! once per [`REFRESH_INTERVAL`], so made-up `kid`s cannot turn into a flood of fetches.

use std::{
    path::PathBuf,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::HeaderMap;
use tonic::transport::Channel;
use topsmile_proto::topsmile::{
    auth::v1::{MethodPolicy, Role},
    identity::v1::{GetJwksRequest, auth_service_client::AuthServiceClient},
};

use crate::{
    ApiError,
    auth::{Claims, KeyRing, Kind, PublicKey, TokenError, TokenVerifier},
    names::ResourceId,
    policy::PolicyTable,
    sessions::{IdentitySessions, SessionAuthority, SessionCheck, SessionState},
};

/// The shortest time between two key fetches.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// The caller of a call, from its verified token. Handlers get it with [`Caller::of`].
#[derive(Debug, Clone)]
pub struct Caller {
    claims: Arc<Claims>,
    role: Role,
}

impl Caller {
    pub fn from_claims(claims: Arc<Claims>) -> Result<Self, ApiError> {
        let role = match (claims.kind, claims.role.as_str()) {
            (Kind::Service, _) => Role::Service,
            (Kind::Patient, _) => Role::Patient,
            (Kind::Staff, "super_admin") => Role::SuperAdmin,
            (Kind::Staff, "admin") => Role::Admin,
            (Kind::Staff, "provider") => Role::Provider,
            (Kind::Staff, "staff") => Role::Staff,
            _ => return Err(ApiError::Unauthenticated),
        };
        Ok(Self { claims, role })
    }

    /// The caller the guard put on this request; UNAUTHENTICATED if there is none (a
    /// handler of a non-public method mounted without the guard).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, ApiError> {
        request
            .extensions()
            .get::<Self>()
            .cloned()
            .ok_or(ApiError::Unauthenticated)
    }

    /// The caller's role now: the session check's answer, which may differ from the
    /// token's claim after a role change.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The same caller judged by `role`, its principal's role now. A staff token can
    /// only become another staff role, a patient's stays a patient's.
    pub fn with_current_role(mut self, role: Role) -> Result<Self, ApiError> {
        let fits = match self.claims.kind {
            Kind::Staff => matches!(
                role,
                Role::SuperAdmin | Role::Admin | Role::Provider | Role::Staff
            ),
            Kind::Patient => role == Role::Patient,
            Kind::Service => role == Role::Service,
        };
        if !fits {
            return Err(ApiError::Unauthenticated);
        }
        // A clinic's staff never become super admins by a role change: that would
        // reach every clinic with a token scoped to one.
        if role == Role::SuperAdmin && !self.claims.clinic.is_empty() {
            return Err(ApiError::Unauthenticated);
        }
        self.role = role;
        Ok(self)
    }

    pub fn kind(&self) -> Kind {
        self.claims.kind
    }

    /// The principal's resource name (`clinics/{clinic}/users/{user}`, ...).
    pub fn subject(&self) -> &str {
        &self.claims.sub
    }

    /// The caller's clinic id (empty for a super admin or a service).
    pub fn clinic(&self) -> &str {
        &self.claims.clinic
    }

    /// The session family of the token.
    pub fn session(&self) -> &str {
        &self.claims.sid
    }

    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    pub fn is_super_admin(&self) -> bool {
        self.role == Role::SuperAdmin
    }

    /// PERMISSION_DENIED unless the caller belongs to `clinic` (a super admin belongs to
    /// every clinic). Called before any read, so the answer is the same whether or not
    /// the record exists: existence never leaks across clinics.
    pub fn check_clinic(&self, clinic: &str) -> Result<(), ApiError> {
        if self.is_super_admin() || (!self.claims.clinic.is_empty() && self.claims.clinic == clinic)
        {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied)
        }
    }
}

/// Whether `policy` lets `caller` call the method at all (ownership is the handler's).
pub fn permits(policy: &MethodPolicy, caller: &Caller) -> bool {
    if policy.internal {
        return caller.kind() == Kind::Service;
    }
    let role = caller.role() as i32;
    policy.roles.contains(&role) || (caller.role() == Role::Patient && policy.allow_patient_self)
}

/// Where the public keys come from.
pub enum KeySource {
    /// Identity's own key file.
    File(PathBuf),
    /// Identity's `GetJwks`, at one replica after another until one answers.
    Identity(Vec<Channel>),
}

impl KeySource {
    /// `GetJwks` at `addresses` (host:port), each over a lazily connected channel.
    pub fn identity(addresses: &[String]) -> Result<Self, crate::config::StartupError> {
        Ok(Self::Identity(crate::config::lazy_channels(
            "identity", addresses,
        )?))
    }

    async fn fetch(&self) -> Result<Vec<PublicKey>, ApiError> {
        match self {
            Self::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || KeyRing::load(&path))
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?
                    .map(|ring| ring.public_keys())
                    .map_err(|e| ApiError::Unavailable(e.to_string()))
            }
            Self::Identity(replicas) => {
                let mut last = ApiError::Unavailable("no identity replica".into());
                for channel in replicas {
                    match AuthServiceClient::new(channel.clone())
                        .get_jwks(GetJwksRequest {})
                        .await
                    {
                        Ok(jwks) => {
                            return Ok(jwks
                                .into_inner()
                                .keys
                                .into_iter()
                                .filter(|k| k.kty == "OKP" && k.crv == "Ed25519")
                                .map(|k| PublicKey { kid: k.kid, x: k.x })
                                .collect());
                        }
                        Err(s) => last = ApiError::Unavailable(format!("GetJwks: {}", s.message())),
                    }
                }
                Err(last)
            }
        }
    }
}

/// Where a service records the calls its guard refused for the caller's role (the
/// patients service keeps them in its audit trail). A failure to record fails the call
/// with that error instead.
pub trait Refusals: Send + Sync + 'static {
    fn refused<'a>(
        &'a self,
        path: &'a str,
        caller: &'a Caller,
        headers: &'a HeaderMap,
        error: &'a ApiError,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send + 'a>>;
}

/// The authentication and policy check of one process.
pub struct Guard {
    table: PolicyTable,
    verifier: TokenVerifier,
    keys: KeySource,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    refusals: Option<Arc<dyn Refusals>>,
    /// Whether each token's session and principal are still live (see
    /// [`crate::sessions`]); `None` only in unit tests of the guard itself.
    sessions: Option<SessionCheck>,
    /// At the edge, `audited` methods get only the token check: their service decides
    /// the role, so that it can record the refusal in its audit trail.
    at_edge: bool,
}

impl Guard {
    pub fn new(table: PolicyTable, keys: KeySource) -> Self {
        Self {
            table,
            verifier: TokenVerifier::new(&[]),
            keys,
            last_fetch: tokio::sync::Mutex::new(None),
            refusals: None,
            sessions: None,
            at_edge: false,
        }
    }

    /// Judges every call by the current state of its token's session and principal,
    /// as `authority` tells it (cached for [`crate::sessions::CACHE_FOR`]).
    pub fn with_sessions(mut self, authority: Arc<dyn SessionAuthority>) -> Self {
        self.sessions = Some(SessionCheck::new(authority));
        self
    }

    /// The gateway's guard: the full check, except that the role of an `audited`
    /// method is left to its service (which checks the same policy and records the
    /// refusal). The token is still required and verified here.
    pub fn at_edge(mut self) -> Self {
        self.at_edge = true;
        self
    }

    /// Records every call refused for its role (a valid token, a method the role may
    /// not call) with `refusals`.
    pub fn with_refusals(mut self, refusals: Arc<dyn Refusals>) -> Self {
        self.refusals = Some(refusals);
        self
    }

    /// The guard of a service other than identity: keys from identity's `GetJwks`.
    pub fn via_identity(
        identity_addresses: &[String],
    ) -> Result<Arc<Self>, crate::server::BoxError> {
        Ok(Arc::new(
            Self::new(
                PolicyTable::builtin()?,
                KeySource::identity(identity_addresses)?,
            )
            .with_sessions(identity_sessions(identity_addresses)?),
        ))
    }

    /// The gateway's guard (see [`at_edge`](Self::at_edge)), keys from identity.
    pub fn edge_via_identity(
        identity_addresses: &[String],
    ) -> Result<Arc<Self>, crate::server::BoxError> {
        Ok(Arc::new(
            Self::new(
                PolicyTable::builtin()?,
                KeySource::identity(identity_addresses)?,
            )
            .with_sessions(identity_sessions(identity_addresses)?)
            .at_edge(),
        ))
    }

    /// Fetches the keys now (at start-up), so the first call doesn't wait for them.
    pub async fn prefetch(&self) -> Result<(), ApiError> {
        self.refresh(true).await
    }

    pub fn table(&self) -> &PolicyTable {
        &self.table
    }

    /// Checks one call. `Ok(None)` for public methods and paths that are not TopSmile
    /// methods (health, reflection, unknown: routing answers those); `Ok(Some(caller))`
    /// when the token is valid and the role may call the method.
    pub async fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Caller>, ApiError> {
        let Some(method) = self.table.get(path) else {
            return Ok(None);
        };
        let Some(policy) = &method.policy else {
            // The contract tests forbid this; refuse rather than guess.
            return Err(ApiError::PermissionDenied);
        };
        if policy.public {
            return Ok(None);
        }
        let token = bearer(headers).ok_or(ApiError::Unauthenticated)?;
        let caller = self.caller(token).await?;
        if caller.claims.scope == crate::auth::SCOPE_MFA_ENROLMENT
            && !MFA_ENROLMENT_METHODS.contains(&path)
        {
            return Err(ApiError::FailedPrecondition {
                reason: "MFA_ENROLMENT_REQUIRED",
                message:
                    "enrol in MFA first (MfaService.EnrollMfa, then ConfirmMfa), then sign in again"
                        .into(),
            });
        }
        if policy.step_up {
            require_step_up(&caller)?;
        }
        if self.at_edge && policy.audited {
            return Ok(Some(caller));
        }
        if !permits(policy, &caller) {
            let refused = ApiError::PermissionDenied;
            if let Some(refusals) = &self.refusals {
                refusals.refused(path, &caller, headers, &refused).await?;
            }
            return Err(refused);
        }
        Ok(Some(caller))
    }

    /// The caller a token speaks for: its signature verified, then its session and
    /// principal checked (UNAUTHENTICATED once ended) and its role the current one.
    pub async fn caller(&self, token: &str) -> Result<Caller, ApiError> {
        let claims = self.verify(token).await?;
        let caller = Caller::from_claims(claims.clone())?;
        if claims.kind == Kind::Service {
            return Ok(caller);
        }
        let Some(sessions) = &self.sessions else {
            return Ok(caller);
        };
        match sessions.state(token, &claims).await? {
            SessionState::Live(role) => caller.with_current_role(role),
            SessionState::Ended => {
                tracing::debug!(subject = %claims.sub, "token of an ended session refused");
                Err(ApiError::Unauthenticated)
            }
        }
    }

    /// The client address the gateway forwarded, if this hop carries the gateway's own
    /// valid service token beside it ([`FORWARDER_HEADER`]); `None` otherwise, and the
    /// header is then ignored.
    pub async fn forwarded_client(&self, headers: &HeaderMap) -> Option<std::net::IpAddr> {
        let address = headers
            .get(CLIENT_ADDRESS_HEADER)?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        let proof = headers.get(FORWARDER_HEADER)?.to_str().ok()?;
        match self.verify(proof).await {
            Ok(claims) if claims.kind == Kind::Service && claims.sub == FORWARDER_SUBJECT => {
                Some(address)
            }
            _ => {
                tracing::debug!("a forwarded client address without the gateway's proof: ignored");
                None
            }
        }
    }

    /// Verifies a token (cached), refetching the keys once if its `kid` is new.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, ApiError> {
        match self.verifier.verify(token) {
            Ok(claims) => Ok(claims),
            Err(TokenError::UnknownKey) => {
                if let Err(e) = self.refresh(false).await {
                    tracing::warn!(error = %e, "could not refresh the public keys");
                }
                self.verifier.verify(token).map_err(refused)
            }
            Err(e) => Err(refused(e)),
        }
    }

    async fn refresh(&self, force: bool) -> Result<(), ApiError> {
        let mut last = self.last_fetch.lock().await;
        if !force && last.is_some_and(|at| at.elapsed() < REFRESH_INTERVAL) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let keys = self.keys.fetch().await?;
        self.verifier.set_keys(&keys);
        Ok(())
    }

    /// A full signature check, skipping the cache (for the benchmark).
    pub fn verify_uncached(&self, token: &str) -> Result<Claims, ApiError> {
        self.verifier.verify_uncached(token).map_err(refused)
    }
}

/// What a token of [`SCOPE_MFA_ENROLMENT`](crate::auth::SCOPE_MFA_ENROLMENT) may call.
pub const MFA_ENROLMENT_METHODS: &[&str] = &[
    "/topsmile.identity.v1.MfaService/EnrollMfa",
    "/topsmile.identity.v1.MfaService/ConfirmMfa",
    "/topsmile.identity.v1.AuthService/Logout",
];

/// How recent a sign-in a sensitive method (policy `step_up`) needs.
pub const STEP_UP_WITHIN_SECS: i64 = 15 * 60;

/// A sensitive call's check: a staff caller authenticated within
/// [`STEP_UP_WITHIN_SECS`] (with their second factor if they have one: a user with MFA
/// only ever gets tokens through it). FAILED_PRECONDITION `STEP_UP_REQUIRED` otherwise:
/// sign in again and retry. Patients acting on their own records and services are not
/// asked.
pub fn require_step_up(caller: &Caller) -> Result<(), ApiError> {
    if caller.kind() != Kind::Staff {
        return Ok(());
    }
    let age = crate::time::unix_seconds() - caller.claims.auth_time;
    if caller.claims.auth_time > 0 && age <= STEP_UP_WITHIN_SECS {
        return Ok(());
    }
    Err(ApiError::FailedPrecondition {
        reason: "STEP_UP_REQUIRED",
        message: "this needs a sign-in within the last 15 minutes (with your second factor if you have one): sign in again, then retry".into(),
    })
}

/// Identity's `CheckSession` at `addresses`: what every service but identity gives
/// [`Guard::with_sessions`].
pub fn identity_sessions(
    addresses: &[String],
) -> Result<Arc<dyn SessionAuthority>, crate::config::StartupError> {
    Ok(Arc::new(IdentitySessions::new(
        crate::peers::Replicas::new("identity", addresses)?,
    )))
}

fn refused(e: TokenError) -> ApiError {
    tracing::debug!(error = %e, "token refused");
    ApiError::Unauthenticated
}

/// The header in which the gateway passes on the client's address (it strips any
/// client-sent `x-topsmile-*` header first).
pub const CLIENT_ADDRESS_HEADER: &str = "x-topsmile-client-address";

/// The header that proves a forwarded client address came from the gateway: the
/// gateway's own service token (`sub: services/gateway`), which only the holder of the
/// service secret can have minted.
pub const FORWARDER_HEADER: &str = "x-topsmile-forwarder";

/// The one service whose token vouches for [`CLIENT_ADDRESS_HEADER`].
pub const FORWARDER_SUBJECT: &str = "services/gateway";

/// The client address of a call, as the gateway vouched for it (see
/// [`Guard::forwarded_client`]); the guard puts it on the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedClient(pub std::net::IpAddr);

/// The address of the client behind a call: the one the gateway forwarded, when the
/// gateway's token vouched for it on this hop; otherwise the peer's own address. A
/// caller that reaches a service directly cannot choose it: an unproven header is
/// ignored. `unknown` when neither is known. It keys the sign-in lock.
pub fn client_address<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<ForwardedClient>()
        .map(|f| f.0)
        .or_else(|| request.remote_addr().map(|a| a.ip()))
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// The token of `authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The trail an event about `resource` goes to: the caller's own clinic, unless the
/// resource names a well-formed clinic the caller may address (their own; any, for a
/// super admin or a service acting for the suite). A probe of another clinic's (or a
/// made-up) name therefore lands in the prober's trail, never in the target's.
pub fn trail_clinic(caller: &Caller, resource: &str) -> String {
    let named = match resource.split('/').collect::<Vec<_>>().as_slice() {
        ["clinics", clinic, ..] => ResourceId::parse(clinic),
        _ => None,
    };
    match named {
        Some(clinic)
            if clinic.as_str() == caller.clinic()
                || caller.is_super_admin()
                || caller.kind() == Kind::Service =>
        {
            clinic.to_string()
        }
        _ => caller.clinic().to_owned(),
    }
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(headers: &http::HeaderMap) -> String {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_default()
        .to_owned()
}

/// Everything a handler needs to know about the call it serves: who called (the
/// caller the guard admitted), their own token (to ask another service on their behalf
/// with no more rights than they have), where they called from, how to find the call
/// in the traces, and when it must be answered.
#[derive(Debug, Clone)]
pub struct Actor {
    pub caller: Caller,
    /// The caller's own bearer token (empty if none).
    pub bearer: String,
    /// The client's address (see [`client_address`]).
    pub client: String,
    /// The W3C trace id of the call's `traceparent` (empty if none).
    pub trace_id: String,
    pub deadline: crate::peers::Deadline,
}

impl Actor {
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, ApiError> {
        Ok(Self {
            caller: Caller::of(request)?,
            bearer: bearer_of(request),
            client: client_address(request),
            trace_id: trace_id(request.metadata().as_ref()),
            deadline: crate::peers::Deadline::of(request),
        })
    }

    /// Whether the caller is a patient (portal token).
    pub fn is_patient(&self) -> bool {
        self.caller.role() == Role::Patient
    }
}

/// The caller's own bearer token (empty if none), for a service that asks another on
/// the caller's behalf with no more rights than the caller has.
pub fn bearer_of<T>(request: &tonic::Request<T>) -> String {
    bearer(request.metadata().as_ref())
        .unwrap_or_default()
        .to_owned()
}

/// Runs [`Guard::authorize`] in front of a tonic server's routes; a refused call is
/// answered here and never reaches a handler.
#[derive(Clone)]
pub struct GuardLayer(pub Arc<Guard>);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            guard: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Arc<Guard>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is the ready one's twin; the ready one goes into the future (tower's
        // rule for services called from a future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            if let Some(client) = guard.forwarded_client(request.headers()).await {
                request.extensions_mut().insert(ForwardedClient(client));
            }
            match guard
                .authorize(request.uri().path(), request.headers())
                .await
            {
                Ok(caller) => {
                    if let Some(caller) = caller {
                        request.extensions_mut().insert(caller);
                    }
                    inner.call(request).await
                }
                Err(e) => Ok(tonic::Status::from(e).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AUDIENCE, ISSUER};

    fn caller(kind: Kind, role: &str, clinic: &str) -> Caller {
        Caller::from_claims(Arc::new(Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "s".into(),
            exp: 0,
            iat: 0,
            jti: "j".into(),
            clinic: clinic.into(),
            role: role.into(),
            kind,
            sid: "f".into(),
            amr: Vec::new(),
            auth_time: 0,
            scope: String::new(),
        }))
        .unwrap()
    }

    #[test]
    fn roles_come_from_kind_and_role_together() {
        assert_eq!(caller(Kind::Staff, "admin", "c").role(), Role::Admin);
        assert_eq!(
            caller(Kind::Patient, "admin", "c").role(),
            Role::Patient,
            "a patient token never acts as staff"
        );
        assert_eq!(caller(Kind::Service, "admin", "").role(), Role::Service);
    }

    #[test]
    fn clinic_check_admits_own_clinic_and_super_admins_only() {
        assert!(
            caller(Kind::Staff, "admin", "c1")
                .check_clinic("c1")
                .is_ok()
        );
        assert!(
            caller(Kind::Staff, "admin", "c1")
                .check_clinic("c2")
                .is_err()
        );
        assert!(
            caller(Kind::Staff, "admin", "").check_clinic("").is_err(),
            "an empty clinic matches nothing"
        );
        assert!(
            caller(Kind::Staff, "super_admin", "")
                .check_clinic("c2")
                .is_ok()
        );
    }

    #[test]
    fn internal_methods_admit_service_tokens_only() {
        let internal = MethodPolicy {
            internal: true,
            ..Default::default()
        };
        assert!(permits(&internal, &caller(Kind::Service, "service", "")));
        assert!(!permits(&internal, &caller(Kind::Staff, "super_admin", "")));
        let staff_only = MethodPolicy {
            roles: vec![Role::Staff as i32],
            ..Default::default()
        };
        assert!(!permits(
            &staff_only,
            &caller(Kind::Patient, "patient", "c")
        ));
        assert!(!permits(&staff_only, &caller(Kind::Service, "service", "")));
    }

    #[test]
    fn bearer_parses_the_authorization_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
