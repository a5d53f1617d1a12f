//! gRPC-Web, for browsers: the same calls, token, policy and limits as gRPC, over
//! HTTP/1.1 or HTTP/2, with CORS.
//!
//! Browsers cannot read HTTP trailers or control HTTP/2 framing, so gRPC-Web (the
//! protocol of `grpc-web` and of Connect's `createGrpcWebTransport`) moves the
//! trailers into the body: after the messages comes one more length-prefixed frame
//! whose flag byte is `0x80` and whose payload is the trailers as `name: value\r\n`
//! lines. `application/grpc-web` and `application/grpc-web+proto` carry that body as
//! it is; `application/grpc-web-text` (and `-text+proto`) as base64, in both
//! directions.
//!
//! The gateway translates at its edge and forwards plain gRPC, so the services never
//! know: a gRPC-Web call is read (its body decoded when it is text), sent on as
//! `application/grpc`, and its answer re-framed on the way back ([`WebAnswer`]).
//! Server-streaming answers re-frame the same way, message by message.
//!
//! CORS: browsers send a preflight (`OPTIONS`) before a cross-origin call with an
//! `authorization` header. Only origins listed in `TOPSMILE_CORS_ORIGINS` are
//! answered (the allowed methods and headers, cached for ten minutes); any other
//! origin's preflight and calls are refused with 403 and no CORS headers, so the
//! browser stops them. The `grpc-status`, `grpc-message` and `grpc-status-details-bin`
//! headers are exposed to the page: that is where a trailers-only error's status is.
//! Calls with no `Origin` (a gRPC-Web client outside a browser) are served as any other.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use tonic::body::Body;
use topsmile_kit::ApiError;

/// What the preflight says the page may send.
const ALLOWED_HEADERS: &str = "authorization, content-type, grpc-timeout, x-grpc-web, x-user-agent, x-request-id, connect-protocol-version";
/// What the page may read of an answer.
const EXPOSED_HEADERS: &str = "grpc-status, grpc-message, grpc-status-details-bin";
/// How long a browser may reuse a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The flag of a gRPC-Web frame that holds the trailers.
const TRAILERS_FLAG: u8 = 0x80;

/// How a call arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Web {
        text: bool,
    },
    /// A CORS preflight.
    Preflight,
    /// Anything else (a browser's GET, plain gRPC over HTTP/1.1).
    Other,
}

impl Protocol {
    pub fn of<B>(req: &Request<B>) -> Self {
        if req.method() == Method::OPTIONS {
            return Self::Preflight;
        }
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/grpc-web" | "application/grpc-web+proto" => Self::Web { text: false },
            "application/grpc-web-text" | "application/grpc-web-text+proto" => {
                Self::Web { text: true }
            }
            "application/grpc" | "application/grpc+proto"
                if req.version() == http::Version::HTTP_2 =>
            {
                Self::Grpc
            }
            _ => Self::Other,
        }
    }
}

/// The origins whose pages may call (`TOPSMILE_CORS_ORIGINS`).
#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Vec<String>,
    any: bool,
}

impl Cors {
    /// Exact origins (`scheme://host[:port]`), comma-separated; `*` allows every
    /// origin (for development only: any page on the internet could call with a
    /// token it holds).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut cors = Self::default();
        for origin in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if origin == "*" {
                cors.any = true;
                continue;
            }
            let uri: http::Uri = origin
                .parse()
                .map_err(|e| format!("TOPSMILE_CORS_ORIGINS: {origin:?}: {e}"))?;
            let well_formed = matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some()
                && uri.path_and_query().is_none_or(|p| p.as_str() == "/")
                && !origin.ends_with('/');
            if !well_formed {
                return Err(format!(
                    "TOPSMILE_CORS_ORIGINS: {origin:?} is not an origin (scheme://host[:port], no path)"
                ));
            }
            cors.origins.push(origin.to_ascii_lowercase());
        }
        Ok(cors)
    }

    /// The request's `Origin` when it is allowed; `Err` when it is present and not
    /// allowed; `Ok(None)` when there is none.
    fn check(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, ()> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(None);
        };
        let allowed = origin.to_str().is_ok_and(|o| {
            self.any
                || self
                    .origins
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(o))
        });
        if allowed {
            Ok(Some(origin.clone()))
        } else {
            Err(())
        }
    }

    /// The answer to a preflight.
    pub fn preflight(&self, headers: &HeaderMap) -> Response<Body> {
        let origin = match self.check(headers) {
            Ok(Some(origin)) => origin,
            _ => return refused("this origin may not call the API"),
        };
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE),
        );
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        response
    }

    /// The origin to name in a call's answer (`None`: the call has no `Origin`), or
    /// `Err` for a call from an origin not allowed: answer it with [`refused`].
    pub fn admit(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, OriginRefused> {
        self.check(headers).map_err(|()| OriginRefused)
    }

    /// Adds the CORS headers for `origin` to an answer.
    pub fn decorate(origin: Option<HeaderValue>, headers: &mut HeaderMap) {
        if let Some(origin) = origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED_HEADERS),
            );
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
    }
}

/// A call from a page whose origin may not call.
#[derive(Debug)]
pub struct OriginRefused;

/// A plain HTTP refusal (no gRPC status: the caller is not speaking gRPC yet).
pub fn refused(why: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::new(http_body_util::Full::new(Bytes::from_static(
        why.as_bytes(),
    ))));
    *response.status_mut() = StatusCode::FORBIDDEN;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// The answer to a request that is neither gRPC over HTTP/2 nor gRPC-Web.
pub fn not_grpc() -> Response<Body> {
    let mut response = Response::new(Body::new(http_body_util::Full::new(Bytes::from_static(
        b"this is a gRPC endpoint: use gRPC over HTTP/2, or gRPC-Web",
    ))));
    *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Decodes a `grpc-web-text` request body: base64, possibly in several padded pieces
/// (each chunk a client sent, encoded on its own), whitespace ignored.
pub fn decode_text(body: &[u8]) -> Result<Bytes, ApiError> {
    let bad = || ApiError::invalid("body", "the gRPC-Web text body is not valid base64");
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if !compact.len().is_multiple_of(4) {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(compact.len() / 4 * 3);
    let mut start = 0;
    // A piece ends at a quantum with padding, or at the end.
    for (i, quantum) in compact.chunks(4).enumerate() {
        let end = (i + 1) * 4;
        if quantum.contains(&b'=') || end == compact.len() {
            STANDARD
                .decode_vec(&compact[start..end], &mut out)
                .map_err(|_| bad())?;
            start = end;
        }
    }
    Ok(Bytes::from(out))
}

/// Turns a gRPC request's head into the gRPC one the services get.
pub fn to_grpc(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    for name in ["x-grpc-web", "x-user-agent"] {
        headers.remove(name);
    }
}

/// A gRPC answer re-framed as gRPC-Web: its messages as they are (or base64), then its
/// trailers as the final frame.
pub struct WebAnswer {
    inner: Body,
    text: bool,
    /// Up to two bytes not yet encoded (text: base64 goes in three-byte groups, so
    /// only the last piece is padded).
    carry: BytesMut,
    done: bool,
}

impl WebAnswer {
    /// Re-frames `response` (gRPC) for a call that came as gRPC-Web (`text`: base64).
    pub fn response(
        response: Response<Body>,
        text: bool,
        origin: Option<HeaderValue>,
    ) -> Response<Body> {
        let (mut parts, body) = response.into_parts();
        let content_type = if text {
            "application/grpc-web-text+proto"
        } else {
            "application/grpc-web+proto"
        };
        parts
            .headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        parts.headers.remove(header::CONTENT_LENGTH);
        Cors::decorate(origin, &mut parts.headers);
        Response::from_parts(
            parts,
            Body::new(Self {
                inner: body,
                text,
                carry: BytesMut::new(),
                done: false,
            }),
        )
    }

    fn encode(&mut self, data: &[u8], last: bool) -> Bytes {
        if !self.text {
            return Bytes::copy_from_slice(data);
        }
        self.carry.extend_from_slice(data);
        let whole = if last {
            self.carry.len()
        } else {
            self.carry.len() / 3 * 3
        };
        let ready = self.carry.split_to(whole);
        Bytes::from(STANDARD.encode(&ready))
    }
}

/// The trailers as a gRPC-Web frame's payload: `name: value\r\n` lines.
fn trailer_frame(trailers: &HeaderMap) -> BytesMut {
    let mut payload = BytesMut::new();
    for (name, value) in trailers {
        payload.put_slice(name.as_str().as_bytes());
        payload.put_slice(b": ");
        payload.put_slice(value.as_bytes());
        payload.put_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    frame.put_u8(TRAILERS_FLAG);
    frame.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    frame.put_slice(&payload);
    frame
}

impl http_body::Body for WebAnswer {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    let encoded = self.encode(&data, false);
                    Poll::Ready(Some(Ok(Frame::data(encoded))))
                }
                Err(frame) => {
                    self.done = true;
                    let trailers = frame.into_trailers().unwrap_or_default();
                    let encoded = self.encode(&trailer_frame(&trailers), true);
                    Poll::Ready(Some(Ok(Frame::data(encoded))))
                }
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                self.done = true;
                // A trailers-only answer (its status in the headers) ends here; for
                // text, whatever is left of the last group goes out padded.
                if self.carry.is_empty() {
                    return Poll::Ready(None);
                }
                let rest = self.encode(&[], true);
                Poll::Ready(Some(Ok(Frame::data(rest))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_bodies_decode_whole_or_in_padded_pieces() {
        let message = b"\x00\x00\x00\x00\x03abc";
        let whole = STANDARD.encode(message);
        assert_eq!(&decode_text(whole.as_bytes()).unwrap()[..], message);
        // Two pieces, each encoded (and padded) on its own, with a line break between.
        let pieces = format!(
            "{}\r\n{}",
            STANDARD.encode(&message[..4]),
            STANDARD.encode(&message[4..])
        );
        assert_eq!(&decode_text(pieces.as_bytes()).unwrap()[..], message);
        for bad in ["abc", "ab!d", "====", "YQ==YQ"] {
            assert!(decode_text(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    /// A gRPC answer with two messages (a server stream) and its trailers, re-framed:
    /// the messages as they came, then the trailers as the last frame; for text, the
    /// same bytes in base64 that decodes as one piece.
    #[tokio::test]
    async fn answers_are_re_framed_message_by_message_then_trailers() {
        use http_body_util::BodyExt;
        let grpc_answer = || {
            let (mut sender, body) =
                http_body_util::channel::Channel::<Bytes, tonic::Status>::new(4);
            tokio::spawn(async move {
                for message in [
                    &b"\x00\x00\x00\x00\x01a"[..],
                    &b"\x00\x00\x00\x00\x02bc"[..],
                ] {
                    let _ = sender.send_data(Bytes::from_static(message)).await;
                }
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let _ = sender.send_trailers(trailers).await;
            });
            Response::new(Body::new(body))
        };
        let expected: &[u8] =
            b"\x00\x00\x00\x00\x01a\x00\x00\x00\x00\x02bc\x80\x00\x00\x00\x10grpc-status: 0\r\n";
        let binary = WebAnswer::response(grpc_answer(), false, None);
        assert_eq!(
            binary.headers()[header::CONTENT_TYPE],
            "application/grpc-web+proto"
        );
        let body = binary.into_body().collect().await.unwrap();
        assert!(
            body.trailers().is_none(),
            "no HTTP trailers: they are in the body"
        );
        assert_eq!(&body.to_bytes()[..], expected);

        let text = WebAnswer::response(grpc_answer(), true, None);
        let body = text.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            STANDARD.decode(&body).unwrap(),
            expected,
            "one base64 piece"
        );
    }

    #[test]
    fn origins_are_parsed_strictly() {
        let cors = Cors::parse("https://app.example.com, http://localhost:5173").unwrap();
        let headers = |origin: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ORIGIN, origin.parse().unwrap());
            h
        };
        assert!(
            cors.check(&headers("https://app.example.com"))
                .unwrap()
                .is_some()
        );
        assert!(
            cors.check(&headers("http://localhost:5173"))
                .unwrap()
                .is_some()
        );
        assert!(cors.check(&headers("https://evil.example.com")).is_err());
        assert!(
            cors.check(&headers("https://app.example.com.evil.com"))
                .is_err()
        );
        assert!(cors.check(&HeaderMap::new()).unwrap().is_none());
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "ftp://x",
            "https://a.com/",
        ] {
            assert!(Cors::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Cors::parse("")
                .unwrap()
                .check(&headers("https://app.example.com"))
                .is_err()
        );
    }
}
