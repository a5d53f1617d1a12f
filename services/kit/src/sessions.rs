//! Whether a verified token may still be used: the revocation check every guard runs.
//!
//! A signature proves who a token was issued to, not that they may still act: a user
//! deactivated, demoted or signed out, a session ended by an admin or by a password
//! change elsewhere, a patient deactivated or a clinic closed must stop working long
//! before the token's 15 minutes are over. So after the signature, every guard (the
//! gateway's and each service's, on every replica) asks identity about the token's
//! session and principal: [`SessionState::Live`] with the principal's *current* role,
//! or [`SessionState::Ended`] (UNAUTHENTICATED).
//!
//! ## The bound, and why a cache
//!
//! Answers are reused for [`CACHE_FOR`] per session, so a change is seen everywhere
//! within that time plus one call to identity, well inside the promised 5 seconds; and
//! the cost per call is a map lookup, with one call to identity per live session per
//! replica every couple of seconds. Identity answers from its store, never from its
//! own memory, so no replica's memory holds the guarantee: a change written by any
//! identity replica is what every other replica's next look-up reads.
//!
//! Rejected alternatives:
//! - a per-principal "valid after" epoch carried in the token and compared with the
//!   store: still a store read per call (or the same cache), and it cannot express a
//!   role change or a patient deactivation, which live in other services' records;
//! - a revocation list every replica polls: a list ordered across replicas needs a
//!   sequence MongoDB cannot give without transactions (writes become visible out of
//!   order), and a poll that misses one entry misses it for good; a cache miss
//!   asks for the state as it is now, so nothing can be missed;
//! - identity pushing revocations: a replica that was down or partitioned would not
//!   hear of them.
//!
//! Concurrent calls of one session share one look-up (the cache's own single flight),
//! so a burst of calls cannot fan out into a burst of look-ups. When identity cannot be
//! reached, a call whose session has no fresh answer is UNAVAILABLE: fail closed.
//! Service tokens (`kind: service`) have no session; they live 5 minutes and are
//! minted only against the service secret.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use topsmile_proto::topsmile::{
    auth::v1::Role,
    identity::v1::{
        CheckSessionRequest, identity_internal_service_client::IdentityInternalServiceClient,
    },
};

use crate::{
    ApiError,
    auth::Claims,
    peers::{Deadline, Replicas},
};

/// How long an answer about one session is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(2);

/// Sessions whose answers one process keeps at most.
pub const MAX_CACHED: u64 = 100_000;

/// What identity says of a token's session and principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Calls may go on, judged by this role (the principal's role now).
    Live(Role),
    /// The session ended, or its principal or clinic was deactivated.
    Ended,
}

/// Whoever can tell a session's state: identity's own store (in identity) or
/// identity's `CheckSession` (everywhere else).
#[async_trait]
pub trait SessionAuthority: Send + Sync + 'static {
    /// The state of the session of `claims`, the verified claims of `token`.
    async fn state(&self, token: &str, claims: &Claims) -> Result<SessionState, ApiError>;
}

/// Identity's `CheckSession`, asked with the token itself as the credential.
pub struct IdentitySessions {
    identity: Replicas,
}

impl IdentitySessions {
    pub fn new(identity: Replicas) -> Self {
        Self { identity }
    }
}

#[async_trait]
impl SessionAuthority for IdentitySessions {
    async fn state(&self, token: &str, _claims: &Claims) -> Result<SessionState, ApiError> {
        let answer = self
            .identity
            .call(None, Deadline::none(), "session", |channel, request| {
                let request = request.map(|()| CheckSessionRequest {
                    access_token: token.to_owned(),
                });
                async move {
                    IdentityInternalServiceClient::new(channel)
                        .check_session(request)
                        .await
                }
            })
            .await?;
        Ok(match Role::try_from(answer.role) {
            Ok(role) if answer.live && role != Role::Unspecified => SessionState::Live(role),
            _ => SessionState::Ended,
        })
    }
}

/// The check with its cache: what a [`Guard`](crate::access::Guard) holds.
pub struct SessionCheck {
    authority: Arc<dyn SessionAuthority>,
    cache: moka::future::Cache<String, SessionState>,
}

impl SessionCheck {
    pub fn new(authority: Arc<dyn SessionAuthority>) -> Self {
        Self::caching_for(authority, CACHE_FOR)
    }

    /// Like [`new`](Self::new), reusing answers for `cache_for`.
    pub fn caching_for(authority: Arc<dyn SessionAuthority>, cache_for: Duration) -> Self {
        Self {
            authority,
            cache: moka::future::Cache::builder()
                .max_capacity(MAX_CACHED)
                .time_to_live(cache_for.max(Duration::from_millis(1)))
                .build(),
        }
    }

    /// The state of the session of `claims` (verified claims of `token`), asked of the
    /// authority at most once per [`CACHE_FOR`] per session in this process.
    pub async fn state(&self, token: &str, claims: &Claims) -> Result<SessionState, ApiError> {
        // Subject and session together: a session id is only ever issued to one
        // subject, but the key must not let one principal's answer serve another's.
        let key = format!("{}\n{}", claims.sub, claims.sid);
        self.cache
            .try_get_with(key, self.authority.state(token, claims))
            .await
            .map_err(|e: Arc<ApiError>| match e.as_ref() {
                ApiError::Unauthenticated => ApiError::Unauthenticated,
                ApiError::DeadlineExceeded => ApiError::DeadlineExceeded,
                other => {
                    tracing::warn!(error = %other, "session state unknown: call refused");
                    ApiError::Unavailable("the identity service is unavailable".into())
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::auth::{AUDIENCE, ISSUER, Kind};

    struct Counting {
        asked: AtomicUsize,
        answer: std::sync::Mutex<SessionState>,
    }

    #[async_trait]
    impl SessionAuthority for Counting {
        async fn state(&self, _: &str, _: &Claims) -> Result<SessionState, ApiError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(*self.answer.lock().unwrap())
        }
    }

    fn claims(sub: &str, sid: &str) -> Claims {
        Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: sub.into(),
            exp: 0,
            iat: 0,
            jti: "j".into(),
            clinic: "c".into(),
            role: "admin".into(),
            kind: Kind::Staff,
            sid: sid.into(),
            amr: Vec::new(),
            auth_time: 0,
            scope: String::new(),
        }
    }

    #[tokio::test]
    async fn a_burst_of_calls_of_one_session_asks_once_and_a_change_is_seen_after_the_cache_time() {
        let authority = Arc::new(Counting {
            asked: AtomicUsize::new(0),
            answer: std::sync::Mutex::new(SessionState::Live(Role::Admin)),
        });
        let check = Arc::new(SessionCheck::caching_for(
            authority.clone(),
            Duration::from_millis(300),
        ));
        let c = claims("clinics/c/users/u", "s1");
        let answers = futures_lite_join(&check, &c, 50).await;
        assert!(
            answers
                .iter()
                .all(|a| *a == SessionState::Live(Role::Admin))
        );
        assert_eq!(
            authority.asked.load(Ordering::SeqCst),
            1,
            "one look-up for 50 calls"
        );

        *authority.answer.lock().unwrap() = SessionState::Ended;
        assert_eq!(
            check.state("t", &c).await.unwrap(),
            SessionState::Live(Role::Admin),
            "still the cached answer"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(check.state("t", &c).await.unwrap(), SessionState::Ended);

        let other = claims("clinics/c/users/v", "s1");
        check.state("t", &other).await.unwrap();
        assert_eq!(
            authority.asked.load(Ordering::SeqCst),
            3,
            "another subject with the same session id is asked for on its own"
        );
    }

    async fn futures_lite_join(
        check: &Arc<SessionCheck>,
        c: &Claims,
        n: usize,
    ) -> Vec<SessionState> {
        let mut handles = Vec::new();
        for _ in 0..n {
            let (check, c) = (check.clone(), c.clone());
            handles.push(tokio::spawn(
                async move { check.state("t", &c).await.unwrap() },
            ));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }

    struct Down;

    #[async_trait]
    impl SessionAuthority for Down {
        async fn state(&self, _: &str, _: &Claims) -> Result<SessionState, ApiError> {
            Err(ApiError::Unavailable("down".into()))
        }
    }

    #[tokio::test]
    async fn an_unreachable_authority_refuses_the_call_as_unavailable() {
        let check = SessionCheck::new(Arc::new(Down));
        let err = check.state("t", &claims("s", "f")).await.unwrap_err();
        assert!(matches!(err, ApiError::Unavailable(_)), "{err:?}");
    }
}
