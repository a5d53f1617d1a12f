//! The edge: one request in (gRPC, or gRPC-Web re-framed by `web`), the same call out
//! to the owning service over HTTP/2.
//!
//! Messages are never decoded. The request message (every method is unary) is read
//! whole, up to the length its prefix declares, before it is sent, so a call a replica
//! turned away unstarted can go to another; the answer is read whole off the replica's
//! stream as it arrives, so a client that does not read never holds the connection to
//! the replica that everyone shares ([`Answer`]; hyper serves the clients, the replicas
//! are reached over the `h2` crate's client, see `upstream`). What the gateway reads is the path
//! (to route), the `grpc-timeout` header (to bound the call, and to hand the service
//! what is left of it) and the `x-topsmile-*` headers (to drop them: those are set by
//! TopSmile itself, never by a client).

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body::Frame;
use hyper::body::Incoming;
use tonic::{Code, body::Body, service::Routes};
use topsmile_kit::{ApiError, access::Guard, policy::PolicyTable};
use tower::ServiceExt;
use tracing::Instrument;

use crate::{
    upstream::Upstream,
    web::{Cors, Protocol, WebAnswer},
};

/// Headers only TopSmile components may set; a client's copies are removed.
pub const INTERNAL_HEADER_PREFIX: &str = "x-topsmile-";

/// Sign-in calls per client address.
pub type SignInLimiter = governor::DefaultKeyedRateLimiter<IpAddr>;

/// The methods that take passwords or refresh tokens: rate-limited per client address.
pub const SIGN_IN_METHODS: &[&str] = &[
    "/topsmile.identity.v1.AuthService/Login",
    "/topsmile.identity.v1.AuthService/LoginPatient",
    "/topsmile.identity.v1.AuthService/RefreshToken",
];

pub struct Proxy {
    pub(crate) table: PolicyTable,
    pub(crate) guard: Arc<Guard>,
    pub(crate) sign_in_limiter: Option<SignInLimiter>,
    pub(crate) upstreams: HashMap<String, Arc<Upstream>>,
    /// Health and reflection, served by the gateway itself.
    pub(crate) local: Routes,
    /// Admission, spans and metrics of every API call.
    pub(crate) calls: topsmile_kit::calls::Calls,
    pub(crate) max_deadline: Duration,
    /// The largest request message read (the services' own limit).
    pub(crate) max_message_bytes: usize,
    /// The largest answer relayed.
    pub(crate) max_answer_bytes: usize,
    /// Whose forwarding headers name the client.
    pub(crate) trusted: crate::forwarded::TrustedProxies,
    /// The gateway's proof, to the services, of the client address it forwards.
    pub(crate) voucher: crate::vouch::Voucher,
    /// In-flight calls per client address.
    pub(crate) shares: Arc<crate::hold::AddressShares>,
    /// Which web pages may call.
    pub(crate) cors: Cors,
}

/// A call's answer on its way to the client, telling the connection's watchdog when
/// it has ended.
struct Held {
    inner: Body,
    progress: Arc<crate::hold::Progress>,
    watchdog: crate::hold::Watchdog,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.progress.finish(),
            Poll::Ready(Some(_)) => self.watchdog.moved(&self.progress),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.progress.finish();
    }
}

/// A call's request body, as it came.
pub(crate) enum CallBody {
    /// gRPC, or binary gRPC-Web: length-prefixed messages.
    Framed(Incoming),
    /// gRPC-Web text: the same, in base64.
    Text(Incoming),
}

impl Proxy {
    /// Serves one HTTP request: gRPC, gRPC-Web (re-framed both ways, see `web`), a CORS
    /// preflight, or a refusal of anything else.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: IpAddr,
        watchdog: &crate::hold::Watchdog,
    ) -> Response<Body> {
        match Protocol::of(&req) {
            Protocol::Grpc => {
                if topsmile_kit::calls::is_infrastructure(req.uri().path()) {
                    return match self.local.clone().oneshot(req).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                }
                let (parts, body) = req.into_parts();
                self.call(parts, CallBody::Framed(body), peer, watchdog)
                    .await
            }
            Protocol::Web { text } => {
                let origin = match self.cors.admit(req.headers()) {
                    Ok(origin) => origin,
                    Err(crate::web::OriginRefused) => {
                        return crate::web::refused("this origin may not call the API");
                    }
                };
                let (mut parts, body) = req.into_parts();
                crate::web::to_grpc(&mut parts.headers);
                let body = if text {
                    CallBody::Text(body)
                } else {
                    CallBody::Framed(body)
                };
                let response = self.call(parts, body, peer, watchdog).await;
                WebAnswer::response(response, text, origin)
            }
            Protocol::Preflight => self.cors.preflight(req.headers()),
            Protocol::Other => crate::web::not_grpc(),
        }
    }

    /// One API call, from the client's address share to the last frame of its answer.
    async fn call(
        &self,
        parts: http::request::Parts,
        body: CallBody,
        peer: IpAddr,
        watchdog: &crate::hold::Watchdog,
    ) -> Response<Body> {
        let req = &parts;
        let path = req.uri.path();
        // The client: the peer, or whom trusted proxies say they forward for.
        let client = self.trusted.client(peer, &req.headers);
        // One address holds at most its share (see `hold`), a smaller one of calls
        // that need no token.
        let public = self
            .table
            .get(path)
            .and_then(|m| m.policy.as_ref())
            .is_some_and(|p| p.public);
        let Some(slot) = self.shares.admit(client, public) else {
            topsmile_kit::calls::count_shed_per_address();
            return topsmile_kit::calls::Shed.into_response();
        };
        // Load shedding: past the in-flight bound, answer at once instead of queueing.
        // The call counts until its response's last frame.
        let call = match self.calls.admit(path, &req.headers) {
            Ok(call) => call,
            Err(shed) => return shed.into_response(),
        };
        let deadline =
            grpc_timeout(&req.headers).map_or(self.max_deadline, |d| d.min(self.max_deadline));
        // The deadline covers reading the request, choosing and connecting to a replica,
        // the call, and the response body to its last frame; the connection's watchdog
        // holds it to that even if nobody polls the answer.
        let ends = tokio::time::Instant::now() + deadline;
        let progress = Arc::new(crate::hold::Progress::new(ends));
        let span = call.span().clone();
        let forwarded = self.forward(parts, body, client, slot, ends);
        let response = match forwarded.instrument(span).await {
            Ok(response) => response,
            Err(e) => tonic::Status::from(e).into_http(),
        };
        watchdog.answer_ready(&progress);
        call.follow(response).map(|body| {
            Body::new(Held {
                inner: body,
                progress,
                watchdog: watchdog.clone(),
            })
        })
    }

    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: CallBody,
        peer: IpAddr,
        mut slot: crate::hold::AddressSlot,
        ends: tokio::time::Instant,
    ) -> Result<Response<Body>, ApiError> {
        let path = parts.uri.path().to_owned();
        let route = self
            .table
            .get(&path)
            .filter(|m| !m.is_internal())
            .ok_or_else(|| ApiError::Unimplemented(format!("method {path}")))?;
        if let Some(limiter) = &self.sign_in_limiter
            && SIGN_IN_METHODS.contains(&path.as_str())
            && let Err(not_until) = limiter.check_key(&peer)
        {
            return Err(ApiError::Overloaded {
                retry_after: not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                )),
            });
        }
        // Token and role policy, before anything reaches a service (which checks again).
        self.guard.authorize(&path, &parts.headers).await?;
        let upstream = self.upstreams.get(&route.area).ok_or_else(|| {
            ApiError::Unavailable(format!("no upstream configured for {}", route.area))
        })?;
        strip_internal_headers(&mut parts.headers);
        // The service's span is a child of this call's (the current span).
        topsmile_kit::telemetry::inject(&mut parts.headers);
        // The services key the sign-in lock on the client's address.
        parts.headers.insert(
            topsmile_kit::access::CLIENT_ADDRESS_HEADER,
            HeaderValue::from_str(&peer.to_string())
                .map_err(|e| ApiError::Internal(format!("client address header: {e}")))?,
        );
        if let Some(proof) = self.voucher.proof().await {
            parts
                .headers
                .insert(topsmile_kit::access::FORWARDER_HEADER, proof);
        }
        // One deadline for the whole exchange: reading the request, the call, and
        // reading the answer; after that the connection's watchdog holds the client to it.
        let limit = self.max_answer_bytes.saturating_add(5);
        let exchange = async {
            let (message, rest) = match body {
                CallBody::Framed(body) => {
                    let (message, rest) = read_message(body, self.max_message_bytes).await?;
                    (message, Some(rest))
                }
                CallBody::Text(body) => (read_text(body, self.max_message_bytes).await?, None),
            };
            let response = send(upstream, &parts, message, ends).await?;
            let (head, stream) = response.into_parts();
            let (data, trailers) = read_answer(stream, limit, &mut slot).await?;
            Ok::<_, ApiError>((head, data, trailers, rest))
        };
        let (head, data, trailers, rest) = tokio::time::timeout_at(ends, exchange)
            .await
            .map_err(|_| ApiError::DeadlineExceeded)??;
        Ok(Response::from_parts(
            head,
            Body::new(Answer {
                data,
                trailers,
                slot,
                _request_rest: rest,
            }),
        ))
    }
}

/// The request's body: one length-prefixed gRPC message (every method is unary), read
/// whole so it can go to another replica if the first never starts the call.
///
/// Reading stops as soon as the message is complete, without waiting for the frame
/// that ends the client's side (clients often send END_STREAM in an empty frame of its
/// own, which would cost the call a wake-up). The rest of the body comes back with the
/// message, to be held until the call ends, so the stream closes cleanly. More than one
/// message is read to the end and passed on as it is: the service judges it.
async fn read_message(
    mut body: Incoming,
    max_message_bytes: usize,
) -> Result<(Bytes, Incoming), ApiError> {
    use http_body_util::BodyExt;
    let too_large = ApiError::TooLarge {
        limit: max_message_bytes,
    };
    // The message and its 5-byte prefix (compressed flag, length).
    let max_body = max_message_bytes.saturating_add(5);
    let mut first = Bytes::new();
    // Only when the message spans frames.
    let mut joined: Option<bytes::BytesMut> = None;
    loop {
        let held: &[u8] = joined.as_deref().unwrap_or(&first);
        if held.len() > max_body {
            return Err(too_large);
        }
        if let Some(&[_, a, b, c, d]) = held.get(..5) {
            let declared = u32::from_be_bytes([a, b, c, d]) as usize;
            if declared > max_message_bytes {
                return Err(too_large);
            }
            if held.len() == 5 + declared {
                break;
            }
        }
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                // Trailers from a client mean nothing to a unary call.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                match joined.as_mut() {
                    Some(buffer) => buffer.extend_from_slice(&data),
                    None if first.is_empty() => first = data,
                    None => {
                        let mut buffer = bytes::BytesMut::with_capacity(first.len() + data.len());
                        buffer.extend_from_slice(&first);
                        buffer.extend_from_slice(&data);
                        joined = Some(buffer);
                    }
                }
            }
            // The client reset its own stream or went away.
            Some(Err(_)) => return Err(ApiError::Cancelled),
        }
    }
    let message = joined.map_or(first, bytes::BytesMut::freeze);
    Ok((message, body))
}

/// A gRPC-Web text request body, read whole (at most what `max_message_bytes` takes in
/// base64, with room for line breaks) and decoded.
async fn read_text(body: Incoming, max_message_bytes: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let too_large = || ApiError::TooLarge {
        limit: max_message_bytes,
    };
    let encoded_limit = max_message_bytes
        .saturating_add(5)
        .div_ceil(3)
        .saturating_mul(4)
        .saturating_add(1024);
    let collected = http_body_util::Limited::new(body, encoded_limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::Cancelled
            }
        })?;
    let message = crate::web::decode_text(&collected.to_bytes())?;
    if message.len() > max_message_bytes.saturating_add(5) {
        return Err(too_large());
    }
    Ok(message)
}

/// Sends the call (`parts` and `message`) to a replica of `upstream`, and to another
/// when a replica turned it away without starting it: its connection was not ready,
/// it refused the stream, or its GOAWAY said it would not process it. A call a replica
/// may have started is never sent twice.
///
/// UNAVAILABLE (worth retrying) when no replica could be reached, the connection died
/// during the call, or every replica turned it away; any other failure of the exchange
/// is INTERNAL, because retrying a call the service rejected cannot help.
async fn send(
    upstream: &Upstream,
    parts: &http::request::Parts,
    message: Bytes,
    ends: tokio::time::Instant,
) -> Result<Response<h2::RecvStream>, ApiError> {
    let mut turned_away: Vec<String> = Vec::new();
    loop {
        let picked = match upstream.pick(&turned_away).await {
            Ok(picked) => picked,
            Err(e) if turned_away.is_empty() => return Err(ApiError::Unavailable(e.to_string())),
            Err(_) => {
                return Err(ApiError::Unavailable(format!(
                    "every replica turned the call away ({})",
                    turned_away.join(", ")
                )));
            }
        };
        let req = outgoing(parts, &picked.authority, ends)?;
        // Nothing reached the replica unless the stream was opened: a connection that
        // ended before that turns the call away unstarted.
        let opened = picked
            .connection
            .sender()
            .ready()
            .await
            .and_then(|mut sender| sender.send_request(req, message.is_empty()));
        let (response, mut request_body) = match opened {
            Ok(opened) => opened,
            Err(e) if connection_lost(&e) || picked.connection.is_closed() => {
                upstream.report_failure(&picked.authority);
                tracing::debug!(replica = %picked.authority, error = %e, "replica's connection was gone; trying another");
                turned_away.push(picked.authority);
                continue;
            }
            // h2 refused to send the request itself: no replica would take it.
            Err(e) => {
                return Err(ApiError::Internal(format!(
                    "request to {} not sent: {e}",
                    picked.authority
                )));
            }
        };
        if !message.is_empty() {
            // Buffered by the connection; a stream that fails meanwhile says so through
            // the response below.
            let _ = request_body.send_data(message.clone(), true);
        }
        match response.await {
            Ok(response) => return Ok(response),
            Err(e) => {
                if picked.connection.is_closed() {
                    upstream.report_failure(&picked.authority);
                }
                if never_processed(&e) {
                    tracing::debug!(replica = %picked.authority, error = %e, "replica turned the call away; trying another");
                    turned_away.push(picked.authority);
                    continue;
                }
                return Err(match transport_code(&e) {
                    Code::Internal => {
                        ApiError::Internal(format!("{} failed the call: {e}", picked.authority))
                    }
                    Code::Cancelled => ApiError::Cancelled,
                    _ => ApiError::Unavailable(format!("{}: {e}", picked.authority)),
                });
            }
        }
    }
}

/// The request's head as it goes to `authority`: the client's headers (minus what the
/// edge removed) and what is left of the deadline.
fn outgoing(
    parts: &http::request::Parts,
    authority: &str,
    ends: tokio::time::Instant,
) -> Result<Request<()>, ApiError> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = authority.parse().ok();
    uri.path_and_query = parts.uri.path_and_query().cloned();
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    // gRPC-Web may have come over HTTP/1.1; the replica is spoken to in HTTP/2.
    *req.version_mut() = http::Version::HTTP_2;
    *req.uri_mut() =
        Uri::from_parts(uri).map_err(|e| ApiError::Internal(format!("upstream uri: {e}")))?;
    *req.headers_mut() = parts.headers.clone();
    strip_hop_by_hop(req.headers_mut());
    // The service gets what is left of the call's deadline, not what the client asked.
    let left = ends.saturating_duration_since(tokio::time::Instant::now());
    req.headers_mut().insert(
        "grpc-timeout",
        topsmile_kit::peers::grpc_timeout_value(left),
    );
    Ok(req)
}

/// Whether HTTP/2 says the replica did not process the stream: REFUSED_STREAM, or a
/// stream past the last one its GOAWAY accepted (RFC 9113, 8.7).
fn never_processed(e: &h2::Error) -> bool {
    e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote())
}

/// Whether the error is the connection's, not the stream's: I/O, or a GOAWAY (either
/// side's).
fn connection_lost(e: &h2::Error) -> bool {
    e.is_io() || e.is_go_away()
}

/// The gRPC code of a call the transport failed after it was sent (gRPC's mapping of
/// HTTP/2 errors): the connection lost (I/O, GOAWAY, closed) is UNAVAILABLE; a stream
/// the replica reset is INTERNAL, unless its code says otherwise.
fn transport_code(e: &h2::Error) -> Code {
    if connection_lost(e) {
        return Code::Unavailable;
    }
    match e.reason() {
        Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        // Any other reset, or a request h2 itself refused to send.
        _ => Code::Internal,
    }
}

/// A replica's whole answer, read off its stream as it arrived, on its way to the
/// client: its DATA, then its trailers.
///
/// Read whole, not relayed frame by frame: flow-control credit goes back to the
/// replica as the gateway reads, not as the client does, so a client that does not
/// read holds nothing of the connection to the replica that every other call to that
/// service shares (HTTP/2's connection window). What the gateway holds instead is
/// counted against the client address's share of the answer buffer (see `hold`).
/// Every method is unary: the answer is one message, at most the message limit.
struct Answer {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// The call's place in its address's share, and the bytes of this answer held.
    slot: crate::hold::AddressSlot,
    /// What is left of the client's request body (its end), held until the call ends.
    _request_rest: Option<Incoming>,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.pop_front() {
            self.slot.delivered(data.len());
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let left: usize = self.data.iter().map(Bytes::len).sum();
        http_body::SizeHint::with_exact(left as u64)
    }
}

/// Reads a replica's answer (`stream`) whole, each DATA frame's credit handed back as
/// it is read, and each frame counted against `slot`'s share of the answer buffer.
///
/// An answer past `limit` bytes is RESOURCE_EXHAUSTED; one past the address's share,
/// RESOURCE_EXHAUSTED with a retry hint (its earlier answers, once read, make room).
/// Either way the replica's stream is reset (dropped unfinished). A transport failure
/// once the answer began becomes `grpc-status` trailers: the client reads a gRPC
/// status, not a broken HTTP/2 stream that it would take for "retry"
/// (linkerd2-proxy's `grpc_rescue`).
async fn read_answer(
    mut stream: h2::RecvStream,
    limit: usize,
    slot: &mut crate::hold::AddressSlot,
) -> Result<(VecDeque<Bytes>, Option<HeaderMap>), ApiError> {
    let mut data = VecDeque::new();
    let mut total = 0usize;
    let failed = loop {
        match stream.data().await {
            None => break None,
            Some(Ok(chunk)) => {
                let _ = stream.flow_control().release_capacity(chunk.len());
                total = total.saturating_add(chunk.len());
                if total > limit {
                    return Err(ApiError::AnswerTooLarge { limit });
                }
                if !slot.buffer(chunk.len()) {
                    topsmile_kit::calls::count_answer_buffer_full();
                    return Err(ApiError::Overloaded {
                        retry_after: ANSWER_BUFFER_RETRY,
                    });
                }
                data.push_back(chunk);
            }
            Some(Err(e)) => break Some(e),
        }
    };
    let failed = match failed {
        Some(e) => e,
        None => match stream.trailers().await {
            Ok(trailers) => return Ok((data, trailers)),
            Err(e) => e,
        },
    };
    // The call was under way: it may have run, so no RetryInfo either way.
    let code = transport_code(&failed);
    let message = if code == Code::Unavailable {
        "the service's connection closed during the call"
    } else {
        "the service failed during the call"
    };
    tracing::warn!(error = %failed, "upstream answer failed mid-call");
    slot.delivered(total);
    Ok((VecDeque::new(), Some(status_trailers(code, message))))
}

/// When a client whose answers filled its share may try again.
const ANSWER_BUFFER_RETRY: Duration = Duration::from_secs(1);

/// `grpc-status` and `grpc-message` trailers; `message` is plain ASCII, so it needs no
/// percent-encoding.
fn status_trailers(code: Code, message: &'static str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code as i32));
    trailers.insert("grpc-message", HeaderValue::from_static(message));
    trailers
}

/// Removes what belongs to the client's connection, not to the call (HTTP/1.1's
/// connection headers, which HTTP/2 forbids, and a length that the re-framing of a
/// gRPC-Web body no longer matches), and says trailers are expected.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in [
        http::header::CONNECTION,
        http::header::HOST,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
        http::header::CONTENT_LENGTH,
        http::header::HeaderName::from_static("keep-alive"),
        http::header::HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
}

fn strip_internal_headers(headers: &mut HeaderMap) {
    let internal: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(INTERNAL_HEADER_PREFIX))
        .cloned()
        .collect();
    for key in internal {
        headers.remove(key);
    }
}

/// The one `grpc-timeout` parser, the services' too.
pub use topsmile_kit::peers::grpc_timeout;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarded::tests::headers;

    #[test]
    fn client_sent_internal_headers_are_stripped() {
        let mut h = headers(&[
            ("x-topsmile-caller", "forged"),
            ("x-topsmile-clinic", "c"),
            ("x-request-id", "keep"),
        ]);
        strip_internal_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-request-id"));
    }
}
