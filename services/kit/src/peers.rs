//! Calls from one TopSmile service to another: each replica in turn until one answers,
//! with a bearer token (the caller's own, or the service's: [`ServiceTokens`]), within
//! what is left of the caller's deadline ([`Deadline`]).
//!
//! The other service's verdicts (not found, not allowed, bad request) are the answer;
//! a replica that fails otherwise (down, overloaded, broken) is skipped for the next,
//! and when none answers the call is UNAVAILABLE: worth retrying, nothing decided.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use secrecy::{ExposeSecret, SecretString};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use topsmile_proto::topsmile::identity::v1::{
    MintServiceTokenRequest, identity_internal_service_client::IdentityInternalServiceClient,
};

use crate::ApiError;

/// When the call being served must be answered by: its `grpc-timeout`, read when it
/// arrived. Calls it makes to other services get what is left, so a chain of calls
/// never outlives the first one.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Option<Instant>);

tokio::task_local! {
    /// The deadline of the call this task is serving, set by [`crate::calls`] for the
    /// handler's whole future.
    static CALL_DEADLINE: Option<Instant>;
}

/// Runs `future` (a call's handling) with `deadline` as the call's deadline: every
/// call it makes to another service gets at most what is left of it.
pub async fn within_deadline<F: std::future::Future>(
    deadline: Option<Instant>,
    future: F,
) -> F::Output {
    CALL_DEADLINE.scope(deadline, future).await
}

impl Deadline {
    /// The deadline of the call being served by this task (none outside a call).
    pub fn current() -> Self {
        Self(CALL_DEADLINE.try_with(|d| *d).ok().flatten())
    }

    /// Whichever of the two comes first.
    pub fn earliest(self, other: Self) -> Self {
        Self(match (self.0, other.0) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// The deadline of `request` (none if it carried no `grpc-timeout`).
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let timeout = grpc_timeout(request.metadata().as_ref());
        Self(timeout.and_then(|t| Instant::now().checked_add(t)))
    }

    /// No deadline: calls take as long as the other service's own limits allow.
    pub fn none() -> Self {
        Self(None)
    }

    /// What is left, `None` for no deadline; DEADLINE_EXCEEDED once it has passed.
    pub fn remaining(&self) -> Result<Option<Duration>, ApiError> {
        match self.0 {
            None => Ok(None),
            Some(at) => match at.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(ApiError::DeadlineExceeded),
            },
        }
    }
}

/// The `grpc-timeout` of a call (gRPC over HTTP/2: up to 8 digits and a unit H, M, S,
/// m, u, n); `None` if absent or malformed.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `grpc-timeout` for `left` (at least a millisecond), in the coarsest unit that keeps
/// it within the protocol's 8 digits: what [`grpc_timeout`] reads back.
pub fn grpc_timeout_value(left: Duration) -> http::HeaderValue {
    let ms = left.as_millis().max(1);
    let (n, unit) = if ms <= 99_999_999 {
        (ms, 'm')
    } else if left.as_secs() <= 99_999_999 {
        (u128::from(left.as_secs()), 'S')
    } else {
        (u128::from(left.as_secs() / 3600).min(99_999_999), 'H')
    };
    // Digits and a letter are always a valid header value.
    http::HeaderValue::from_str(&format!("{n}{unit}"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("1m"))
}

/// The replicas of one service, each over a lazily connected channel.
#[derive(Clone)]
pub struct Replicas {
    what: &'static str,
    channels: Vec<Channel>,
}

impl Replicas {
    /// `what` names the service in errors and logs ("identity", "patients", ...).
    pub fn new(
        what: &'static str,
        addresses: &[String],
    ) -> Result<Self, crate::config::StartupError> {
        Ok(Self {
            what,
            channels: crate::config::lazy_channels(what, addresses)?,
        })
    }

    /// Makes one call (`call(channel, request)`, the request carrying `bearer` and the
    /// deadline) on each replica in turn until one answers. NOT_FOUND becomes
    /// `NotFound(missing)`; UNAUTHENTICATED, PERMISSION_DENIED and DEADLINE_EXCEEDED
    /// are passed on; any other failure tries the next replica, then is UNAVAILABLE.
    pub async fn call<T, F, Fut>(
        &self,
        bearer: Option<&str>,
        deadline: Deadline,
        missing: &'static str,
        call: F,
    ) -> Result<T, ApiError>
    where
        F: Fn(Channel, tonic::Request<()>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let authorization = bearer
            .map(|token| {
                format!("Bearer {token}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| ApiError::Unauthenticated)
            })
            .transpose()?;
        // Never past the deadline of the call being served, whatever the caller passed.
        let deadline = deadline.earliest(Deadline::current());
        let mut last = ApiError::Unavailable(format!("no {} replica", self.what));
        for channel in &self.channels {
            let mut request = tonic::Request::new(());
            if let Some(value) = &authorization {
                request
                    .metadata_mut()
                    .insert("authorization", value.clone());
            }
            on_behalf_of_the_call(&mut request, deadline)?;
            match call(channel.clone(), request).await {
                Ok(answer) => return Ok(answer.into_inner()),
                Err(status) => match status.code() {
                    tonic::Code::NotFound => return Err(ApiError::NotFound(missing)),
                    tonic::Code::Unauthenticated => return Err(ApiError::Unauthenticated),
                    tonic::Code::PermissionDenied => return Err(ApiError::PermissionDenied),
                    tonic::Code::DeadlineExceeded => return Err(ApiError::DeadlineExceeded),
                    tonic::Code::InvalidArgument => {
                        // Our own request was malformed: a bug here, not the caller's.
                        return Err(ApiError::Internal(format!(
                            "{} refused a request: {}",
                            self.what,
                            status.message()
                        )));
                    }
                    code => {
                        tracing::warn!(
                            ?code,
                            message = status.message(),
                            service = self.what,
                            "call to a replica failed"
                        );
                        last = ApiError::Unavailable(format!(
                            "the {} service is unavailable",
                            self.what
                        ));
                    }
                },
            }
        }
        Err(last)
    }
}

/// Stamps a request to another service with what the call being served hands on:
/// what is left of its deadline (or of `deadline`, if earlier) as `grpc-timeout`, and
/// its trace context (the callee's span is a child of this call's).
/// DEADLINE_EXCEEDED when nothing is left.
pub fn on_behalf_of_the_call<T>(
    request: &mut tonic::Request<T>,
    deadline: Deadline,
) -> Result<(), ApiError> {
    if let Some(left) = deadline.earliest(Deadline::current()).remaining()? {
        request.set_timeout(left);
    }
    crate::telemetry::inject_metadata(request.metadata_mut());
    Ok(())
}

/// How long before its expiry a service token is replaced.
const RENEW_BEFORE: Duration = Duration::from_secs(60);

/// This service's own token (`kind: service`) for calls to other services' internal
/// methods, minted by identity for the shared service secret and reused until shortly
/// before it expires.
pub struct ServiceTokens {
    service: String,
    secret: SecretString,
    identity: Replicas,
    cached: Mutex<Option<(String, Instant)>>,
}

impl ServiceTokens {
    pub fn new(service: &str, secret: SecretString, identity: Replicas) -> Self {
        Self {
            service: service.to_owned(),
            secret,
            identity,
            cached: Mutex::new(None),
        }
    }

    /// A token that is valid for at least another minute.
    pub async fn token(&self, deadline: Deadline) -> Result<String, ApiError> {
        if let Ok(cached) = self.cached.lock()
            && let Some((token, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let service = self.service.clone();
        let secret = self.secret.expose_secret().to_owned();
        let minted = self
            .identity
            .call(None, deadline, "service", |channel, request| {
                let request = request.map(|()| MintServiceTokenRequest {
                    service: service.clone(),
                    service_secret: secret.clone(),
                });
                async move {
                    IdentityInternalServiceClient::new(channel)
                        .mint_service_token(request)
                        .await
                }
            })
            .await
            .map_err(|e| match e {
                // A wrong secret is this deployment's mistake, not the caller's.
                ApiError::Unauthenticated => {
                    ApiError::Unavailable("identity refused this service's secret".into())
                }
                other => other,
            })?;
        let lifetime = Duration::from_secs(u64::try_from(minted.expires_in).unwrap_or(0));
        let renew_at = Instant::now() + lifetime.saturating_sub(RENEW_BEFORE);
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some((minted.access_token.clone(), renew_at));
        }
        Ok(minted.access_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(value: &'static str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", http::HeaderValue::from_static(value));
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        assert_eq!(timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout("100u"), Some(Duration::from_micros(100)));
        assert_eq!(timeout("10n"), Some(Duration::from_nanos(10)));
    }

    #[test]
    fn a_deadline_passes_on_what_is_left_and_then_refuses() {
        let mut request = tonic::Request::new(());
        request.metadata_mut().insert(
            "grpc-timeout",
            tonic::metadata::MetadataValue::from_static("200m"),
        );
        let deadline = Deadline::of(&request);
        let left = deadline.remaining().unwrap().unwrap();
        assert!(
            left <= Duration::from_millis(200) && left > Duration::ZERO,
            "{left:?}"
        );
        assert_eq!(Deadline::none().remaining().unwrap(), None);
        for left in [
            Duration::ZERO,
            Duration::from_millis(1500),
            Duration::from_secs(200_000),
            Duration::from_secs(u64::MAX / 2),
        ] {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", grpc_timeout_value(left));
            let read = grpc_timeout(&headers).expect("a valid grpc-timeout");
            assert!(
                read <= left.max(Duration::from_millis(1)),
                "{left:?} -> {read:?}"
            );
        }
        assert_eq!(
            Deadline::of(&tonic::Request::new(())).remaining().unwrap(),
            None
        );
        let passed = Deadline(Instant::now().checked_sub(Duration::from_millis(1)));
        assert!(matches!(
            passed.remaining(),
            Err(ApiError::DeadlineExceeded)
        ));
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        for bad in ["", "S", "5", "5x", "123456789S", "-5S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
