//! The gateway's word for the client address it forwards.
//!
//! The services key sign-in locks on the client's address, which only the gateway
//! sees (it is the services' peer). A header alone would let anyone who reaches a
//! service directly choose their address and guess past the per-address bound, so
//! beside `x-topsmile-client-address` the gateway sends its own service token
//! (`x-topsmile-forwarder`), minted by identity against the service secret; a service
//! believes the address only when that token verifies as `services/gateway`
//! (`topsmile_kit::access::Guard::forwarded_client`), and otherwise uses its peer's.
//!
//! Rejected: an HMAC of the address under the service secret, which would need the
//! secret in every service (today only identity and appointments hold it), and a TLS
//! client identity, which needs the mesh's certificates on every hop.
//!
//! The header value is built once a minute and reused (a clone is a reference count):
//! the token itself lives 5 minutes and is renewed a minute before it ends. When
//! identity cannot mint one, calls go on without it: the services then count every
//! client under the gateway's own address, which can only lock sooner, never later.

use std::{sync::RwLock, time::Duration};

use http::HeaderValue;
use secrecy::SecretString;
use tokio::time::Instant;
use topsmile_kit::peers::{Deadline, Replicas, ServiceTokens};

/// How long one header value is reused before the token source is asked again.
const REUSE_FOR: Duration = Duration::from_secs(60);

/// The longest a call waits for identity to mint the token; past it the call goes on
/// without the proof (a slow identity must not slow every call down).
const MINT_WAIT: Duration = Duration::from_secs(1);

pub struct Voucher {
    tokens: ServiceTokens,
    current: RwLock<Option<(HeaderValue, Instant)>>,
    /// Until when, after identity refused or failed to mint one, calls go on without
    /// asking again: a failure must not cost every call a round trip (and a log line).
    failed_until: RwLock<Option<Instant>>,
}

/// How long a failed mint is not retried.
const RETRY_MINT_AFTER: Duration = Duration::from_secs(5);

impl Voucher {
    pub fn new(secret: SecretString, identity: Replicas) -> Self {
        Self {
            tokens: ServiceTokens::new("gateway", secret, identity),
            current: RwLock::new(None),
            failed_until: RwLock::new(None),
        }
    }

    /// The `x-topsmile-forwarder` value: the gateway's service token.
    pub async fn proof(&self) -> Option<HeaderValue> {
        if let Ok(current) = self.current.read()
            && let Some((value, until)) = current.as_ref()
            && Instant::now() < *until
        {
            return Some(value.clone());
        }
        if let Ok(failed) = self.failed_until.read()
            && failed.is_some_and(|until| Instant::now() < until)
        {
            return None;
        }
        let minted = tokio::time::timeout(MINT_WAIT, self.tokens.token(Deadline::none())).await;
        match minted.unwrap_or(Err(topsmile_kit::ApiError::DeadlineExceeded)) {
            Ok(token) => {
                let value = HeaderValue::from_str(&token).ok()?;
                if let Ok(mut current) = self.current.write() {
                    *current = Some((value.clone(), Instant::now() + REUSE_FOR));
                }
                Some(value)
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?RETRY_MINT_AFTER, "no gateway token: client addresses forwarded unproven");
                if let Ok(mut failed) = self.failed_until.write() {
                    *failed = Some(Instant::now() + RETRY_MINT_AFTER);
                }
                None
            }
        }
    }
}
