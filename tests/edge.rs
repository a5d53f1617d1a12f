//! The gateway's answers when a replica misbehaves, against a scripted HTTP/2 upstream
//! (the `h2` crate, so each case sends exactly the frames it names): UNAVAILABLE (worth
//! retrying) only when the replica refused the stream before starting it; INTERNAL,
//! with no retry hint, for any other failure; a failure after the response began
//! arrives as `grpc-status` trailers, not as a broken stream; and the call's deadline
//! covers a replica that never answers.
//!
//! `Login` is public, so the gateway forwards it without asking identity for keys: the
//! scripted upstream stands in for identity.

mod support;

use std::{net::SocketAddr, time::Duration};

use support::http1;

use tokio::net::TcpListener;
use tonic::Code;
use tonic_types::StatusExt;
use topsmile_kit::shutdown;
use topsmile_proto::topsmile::identity::v1::{
    self as identity, auth_service_client::AuthServiceClient,
};

/// What the scripted upstream does with each call.
#[derive(Clone, Copy)]
enum Script {
    /// RST_STREAM before any response: the call never started.
    Refuse(h2::Reason),
    /// A 200 with gRPC headers, then RST_STREAM in place of the body.
    StartThenReset(h2::Reason),
    /// Reads the request and never answers.
    Hang,
    /// A 200 with gRPC headers and part of a message, then nothing: the body stays open.
    StartThenHold,
    /// A whole answer at once: an empty message and `grpc-status: 0`.
    Answer,
    /// A whole answer with a message of this many bytes.
    Large(usize),
}

async fn scripted_upstream(script: Script) -> SocketAddr {
    scripted_upstream_counting(script).await.0
}

/// Calls a scripted upstream received, by path.
type Received = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

/// The same, counting the calls it receives by path.
async fn scripted_upstream_counting(script: Script) -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let counts = received.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let counts = counts.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    if let Ok(mut counts) = counts.lock() {
                        *counts.entry(request.uri().path().to_owned()).or_default() += 1;
                    }
                    match script {
                        Script::Refuse(reason) => respond.send_reset(reason),
                        Script::Answer | Script::Large(_) => {
                            let size = if let Script::Large(size) = script {
                                size
                            } else {
                                0
                            };
                            let response = http::Response::builder()
                                .status(200)
                                .header("content-type", "application/grpc")
                                .body(())
                                .unwrap();
                            if let Ok(mut body) = respond.send_response(response, false) {
                                tokio::spawn(async move {
                                    let _ = send_message(&mut body, size).await;
                                    let mut trailers = http::HeaderMap::new();
                                    trailers.insert("grpc-status", "0".parse().unwrap());
                                    let _ = body.send_trailers(trailers);
                                });
                            }
                        }
                        Script::StartThenReset(_) | Script::StartThenHold => {
                            let response = http::Response::builder()
                                .status(200)
                                .header("content-type", "application/grpc")
                                .body(())
                                .unwrap();
                            if let Ok(mut body) = respond.send_response(response, false) {
                                // Part of a message; the gateway passes the headers on.
                                let _ = body.send_data(
                                    bytes::Bytes::from_static(&[0, 0, 0, 0, 9, 10]),
                                    false,
                                );
                                tokio::spawn(async move {
                                    if let Script::StartThenReset(reason) = script {
                                        tokio::time::sleep(Duration::from_millis(100)).await;
                                        body.send_reset(reason);
                                    } else {
                                        tokio::time::sleep(Duration::from_secs(60)).await;
                                        drop(body);
                                    }
                                });
                            }
                        }
                        Script::Hang => {
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_secs(60)).await;
                                drop(respond);
                            });
                        }
                    }
                }
            });
        }
    });
    (addr, received)
}

/// Sends one gRPC message of `size` bytes (a `LoginResponse` whose `access_token` is a
/// string of [`token_len`]`(size)` bytes) on `body`, as the window allows.
async fn send_message(
    body: &mut h2::SendStream<bytes::Bytes>,
    size: usize,
) -> Result<(), h2::Error> {
    let mut message = Vec::with_capacity(size + 5);
    message.push(0);
    message.extend_from_slice(&u32::try_from(size).unwrap().to_be_bytes());
    if size > 0 {
        // Field 1, length-delimited: the tag, the length as a varint, the bytes.
        message.push(0x0a);
        let mut n = token_len(size);
        while n >= 0x80 {
            message.push((n & 0x7f) as u8 | 0x80);
            n >>= 7;
        }
        message.push(n as u8);
        message.resize(size + 5, b'a');
    }
    let mut rest = bytes::Bytes::from(message);
    while !rest.is_empty() {
        body.reserve_capacity(rest.len());
        let granted = std::future::poll_fn(|cx| body.poll_capacity(cx))
            .await
            .ok_or(h2::Reason::CANCEL)??;
        let chunk = rest.split_to(granted.min(rest.len()));
        body.send_data(chunk, false)?;
    }
    Ok(())
}

/// The length of the string that makes a one-field message `size` bytes long: what is
/// left after the tag and the varint length.
fn token_len(size: usize) -> usize {
    let varint = |n: usize| (usize::BITS - n.max(1).leading_zeros()).div_ceil(7) as usize;
    (1..=5)
        .map(|bytes| size - 1 - bytes)
        .find(|&len| varint(len) == size - 1 - len)
        .unwrap()
}

/// A gateway whose identity upstream is `upstream`, granting calls at most one second.
async fn gateway_in_front_of(upstream: SocketAddr) -> (SocketAddr, shutdown::Trigger) {
    gateway_with(upstream, 4096).await
}

/// The same, letting at most `max_in_flight` calls through at once.
async fn gateway_with(
    upstream: SocketAddr,
    max_in_flight: usize,
) -> (SocketAddr, shutdown::Trigger) {
    gateway_configured(
        upstream,
        topsmile_gateway::EdgeSettings {
            sign_in_per_minute: 0,
            max_deadline_secs: 1,
            max_in_flight,
            ..Default::default()
        },
    )
    .await
}

/// A gateway in front of `upstream` with these edge settings.
async fn gateway_configured(
    upstream: SocketAddr,
    edge: topsmile_gateway::EdgeSettings,
) -> (SocketAddr, shutdown::Trigger) {
    let config = topsmile_gateway::GatewayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        identity_upstreams: upstream.to_string(),
        edge,
        ..Default::default()
    };
    let gateway = topsmile_gateway::Gateway::new(&topsmile_gateway::GatewayConfig {
        service_secret: Some(secrecy::SecretString::from(
            "a test secret of at least 32 bytes",
        )),
        ..config.clone()
    })
    .unwrap();
    let listener = topsmile_kit::server::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(async move { gateway.serve(listener, stop).await });
    (addr, trigger)
}

/// `Login` through the gateway, with `grpc_timeout` as the call's deadline.
async fn login_through(gateway: SocketAddr, grpc_timeout: Option<&'static str>) -> tonic::Status {
    let channel = tonic::transport::Channel::from_shared(format!("http://{gateway}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(identity::LoginRequest {
        email: "someone@example.com".into(),
        password: "a password, long enough".into(),
        device_token: String::new(),
    });
    if let Some(timeout) = grpc_timeout {
        request.metadata_mut().insert(
            "grpc-timeout",
            tonic::metadata::MetadataValue::from_static(timeout),
        );
    }
    AuthServiceClient::new(channel)
        .login(request)
        .await
        .expect_err("the scripted upstream never answers OK")
}

#[tokio::test]
async fn a_refused_stream_is_unavailable_and_worth_retrying() {
    let (gateway, _stop) =
        gateway_in_front_of(scripted_upstream(Script::Refuse(h2::Reason::REFUSED_STREAM)).await)
            .await;
    let status = login_through(gateway, None).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.get_error_details().retry_info().is_some());
}

#[tokio::test]
async fn any_other_reset_is_internal_and_not_retryable() {
    for reason in [h2::Reason::INTERNAL_ERROR, h2::Reason::PROTOCOL_ERROR] {
        let (gateway, _stop) =
            gateway_in_front_of(scripted_upstream(Script::Refuse(reason)).await).await;
        let status = login_through(gateway, None).await;
        assert_eq!(status.code(), Code::Internal, "{reason:?}: {status:?}");
        assert!(status.get_error_details().retry_info().is_none());
        assert_eq!(
            status.message(),
            "internal error",
            "no upstream detail leaks"
        );
    }
}

#[tokio::test]
async fn a_failure_after_the_response_began_arrives_as_grpc_status_trailers() {
    let (gateway, _stop) = gateway_in_front_of(
        scripted_upstream(Script::StartThenReset(h2::Reason::INTERNAL_ERROR)).await,
    )
    .await;
    let status = login_through(gateway, None).await;
    // A gRPC status from trailers, not a transport error of tonic's ("h2 protocol
    // error", which clients read as retryable).
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(status.message(), "the service failed during the call");
    assert!(status.get_error_details().retry_info().is_none());
}

#[tokio::test]
async fn the_callers_deadline_covers_a_replica_that_never_answers() {
    let (gateway, _stop) = gateway_in_front_of(scripted_upstream(Script::Hang).await).await;
    // The client would wait 5 seconds; the gateway grants at most one and answers.
    let status = login_through(gateway, Some("5S")).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

/// A call counts against the in-flight limit until its response body ends, not only
/// until its headers arrive: with room for one call, a second one is shed while the
/// first is still streaming its answer.
#[tokio::test]
async fn a_call_holds_its_in_flight_place_until_its_body_ends() {
    let (gateway, _stop) = gateway_with(scripted_upstream(Script::StartThenHold).await, 1).await;
    let first = tokio::spawn(login_through(gateway, None));
    // Let the first call get its headers back (its body then stays open).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = login_through(gateway, None).await;
    assert_eq!(second.code(), Code::ResourceExhausted, "{second:?}");
    assert!(second.get_error_details().retry_info().is_some());
    // The first ends with the gateway's deadline, and then the place is free again.
    let first = first.await.unwrap();
    assert_eq!(first.code(), Code::DeadlineExceeded, "{first:?}");
    let third = login_through(gateway, None).await;
    assert_eq!(
        third.code(),
        Code::DeadlineExceeded,
        "admitted again: {third:?}"
    );
}

/// A `Login` straight over HTTP/2 from `conn`'s client, that is never read.
fn unread_login(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
) -> Option<h2::client::ResponseFuture> {
    let request = http::Request::builder()
        .method("POST")
        .uri("http://gateway/topsmile.identity.v1.AuthService/Login")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).ok()?;
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .ok()?;
    Some(response)
}

/// The attack of the issue: a client that advertises a zero stream window and opens
/// many public calls it never reads. It holds at most its address's share of the
/// gateway (the rest of its calls are shed at once), everyone else is answered
/// throughout, and a grace period after the deadline its connection is closed, the
/// calls counted as abandoned.
#[tokio::test]
async fn a_client_that_never_reads_cannot_hold_the_gateway() {
    let (gateway, _stop) = gateway_with(scripted_upstream(Script::Answer).await, 20).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(gateway).await.unwrap();
    let (mut attacker, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(stream)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut held = Vec::new();
    for _ in 0..40 {
        attacker = attacker.ready().await.unwrap();
        if let Some(response) = unread_login(&mut attacker) {
            held.push(response);
        }
    }
    // The answers' headers come back (HEADERS need no window), their bodies cannot.
    let mut admitted = 0;
    let mut shed = 0;
    // Kept, unread: dropping them would reset the streams and free the calls.
    let mut unread = Vec::new();
    for response in held.drain(..) {
        let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), response).await else {
            continue;
        };
        match response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap_or(""))
        {
            Some("8") => shed += 1,
            None => admitted += 1,
            Some(other) => panic!("unexpected status {other}"),
        }
        unread.push(response);
    }
    // Public calls: 10% of 20 in flight per address.
    assert_eq!(admitted, 2, "admitted {admitted}, shed {shed}");
    assert_eq!(shed, 38);
    // Everyone else is answered while the attacker holds its share.
    for _ in 0..10 {
        let channel = tonic::transport::Channel::from_shared(format!("http://{gateway}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        AuthServiceClient::new(channel)
            .login(identity::LoginRequest {
                email: "someone@example.com".into(),
                password: "a password, long enough".into(),
                device_token: String::new(),
            })
            .await
            .expect("another client is served");
    }
    // The deadline (1 s) plus the grace (1 s) later, the attacker's connection is gone.
    let closed = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(closed.is_ok(), "the stalled connection was closed");
    drop(unread);
    let metrics = topsmile_kit::calls::encode_metrics();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(value("topsmile_grpc_abandoned_total") >= 1.0, "{metrics}");
    assert!(
        value("topsmile_grpc_shed_per_address_total") >= 38.0,
        "{metrics}"
    );
}

/// The second attack of the issue: one client that never reads, with many large
/// answers under way. The gateway reads every answer off the connection to the replica
/// as it comes (that connection's window is shared by every client of the service),
/// holds at most the address's share of the answer buffer, sheds the calls past it
/// (the replica's streams reset), and every other client is answered normally all the
/// while, large answers included.
#[tokio::test]
async fn a_client_that_never_reads_large_answers_delays_nobody_else() {
    const ANSWER: usize = 1 << 20;
    let (gateway, _stop) = gateway_configured(
        scripted_upstream(Script::Large(ANSWER)).await,
        topsmile_gateway::EdgeSettings {
            sign_in_per_minute: 0,
            max_deadline_secs: 10,
            // An address may hold 25% of 32 MiB: 8 answers.
            max_buffered_bytes: 32 << 20,
            ..Default::default()
        },
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let stream = socket.connect(gateway).await.unwrap();
    let (mut attacker, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(stream)
        .await
        .unwrap();
    let _connection = tokio::spawn(connection);
    // Twelve 1 MiB answers unread: more than the 5 MiB window of the gateway's one
    // connection to the replica, so relayed frame by frame they would stall it.
    let mut held = Vec::new();
    for _ in 0..12 {
        attacker = attacker.ready().await.unwrap();
        held.push(unread_login(&mut attacker).expect("the stream opens"));
    }
    let mut waiting = 0;
    let mut shed = 0;
    let mut unread = Vec::new();
    for response in held {
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("the gateway answers the attacker's headers")
            .expect("a response");
        match response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap_or(""))
        {
            Some("8") => shed += 1,
            None => waiting += 1,
            Some(other) => panic!("unexpected status {other}"),
        }
        unread.push(response);
    }
    assert_eq!(
        waiting, 8,
        "the address's share of the buffer holds 8 answers"
    );
    assert_eq!(shed, 4, "the answers past the share are shed");
    // Everyone else is served, large answers and all, while the attacker holds on.
    let channel = tonic::transport::Channel::from_shared(format!("http://{gateway}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for _ in 0..8 {
        let answer = AuthServiceClient::new(channel.clone())
            .login(identity::LoginRequest {
                email: "someone@example.com".into(),
                password: "a password, long enough".into(),
                device_token: String::new(),
            })
            .await
            .expect("another client is served at once");
        assert_eq!(answer.get_ref().access_token.len(), token_len(ANSWER));
    }
    drop(unread);
    let metrics = topsmile_kit::calls::encode_metrics();
    let full = metrics
        .lines()
        .find(|l| l.starts_with("topsmile_grpc_answer_buffer_full_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(full >= 4.0, "{metrics}");
}

/// An answer larger than the gateway relays is RESOURCE_EXHAUSTED, with no retry hint
/// (trying again cannot make it smaller), and the next call is served as before.
#[tokio::test]
async fn an_answer_past_the_limit_is_resource_exhausted() {
    let (gateway, _stop) = gateway_configured(
        scripted_upstream(Script::Large(100 << 10)).await,
        topsmile_gateway::EdgeSettings {
            sign_in_per_minute: 0,
            max_answer_bytes: 64 << 10,
            ..Default::default()
        },
    )
    .await;
    for _ in 0..2 {
        let status = login_through(gateway, None).await;
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.get_error_details().retry_info().is_none());
        assert_eq!(
            status
                .get_error_details()
                .error_info()
                .map(|i| i.reason.as_str()),
            Some("ANSWER_TOO_LARGE")
        );
    }
}

/// A gateway in front of `upstream` serving TLS from `tls`.
async fn tls_gateway_in_front_of(
    upstream: SocketAddr,
    tls: topsmile_kit::tls::TlsFiles,
) -> (SocketAddr, shutdown::Trigger) {
    let config = topsmile_gateway::GatewayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        identity_upstreams: upstream.to_string(),
        edge: topsmile_gateway::EdgeSettings {
            sign_in_per_minute: 0,
            ..Default::default()
        },
        tls,
        service_secret: Some(secrecy::SecretString::from(
            "a test secret of at least 32 bytes",
        )),
        ..Default::default()
    };
    let gateway = topsmile_gateway::Gateway::new(&config).unwrap();
    assert!(gateway.is_tls());
    let listener = topsmile_kit::server::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(async move { gateway.serve(listener, stop).await });
    (addr, trigger)
}

/// A TLS client trusting `ca_pem`, presenting `identity` (certificate and key PEM).
fn tls_client(
    ca_pem: &str,
    identity: Option<&topsmile_kit::tls::Issued>,
) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(issued) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// An HTTP/2 connection over TLS to the gateway: the sender, and the server's
/// certificate as presented.
async fn tls_connect(
    gateway: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<(h2::client::SendRequest<bytes::Bytes>, Vec<u8>)> {
    let tcp = tokio::net::TcpStream::connect(gateway).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await?;
    let (_, session) = stream.get_ref();
    assert_eq!(
        session.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN chose HTTP/2"
    );
    let presented = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let (sender, connection) = h2::client::handshake(stream)
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok((sender, presented))
}

/// A `Login` on `sender`: the `grpc-status` its answer ends with.
async fn login_status(sender: h2::client::SendRequest<bytes::Bytes>) -> Result<String, h2::Error> {
    let mut sender = sender.ready().await?;
    let response = unread_login(&mut sender).expect("the stream opens");
    let response = response.await?;
    if let Some(status) = response.headers().get("grpc-status") {
        return Ok(status.to_str().unwrap_or("").to_owned());
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    Ok(trailers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned())
}

fn pem_certificate_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// TLS from a certificate and key file, with ALPN `h2`: a call is answered over it; a
/// certificate rotated on disk is what the next connection gets, while a connection
/// opened before goes on working with the old one.
#[tokio::test]
async fn the_gateway_serves_tls_and_picks_up_a_rotated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = topsmile_kit::tls::LocalCa::new("test CA").unwrap();
    let first = ca.server(&["localhost", "127.0.0.1"]).unwrap();
    let mut files = first.write_to(dir.path(), "gateway").unwrap();
    files.tls_reload_secs = 1;
    let (gateway, _stop) =
        tls_gateway_in_front_of(scripted_upstream(Script::Answer).await, files).await;
    let connector = tls_client(&ca.pem(), None);

    let (open, presented) = tls_connect(gateway, &connector).await.unwrap();
    assert_eq!(presented, pem_certificate_der(&first.cert_pem));
    assert_eq!(login_status(open.clone()).await.unwrap(), "0");

    // cert-manager renews: the files are replaced.
    let second = ca.server(&["localhost", "127.0.0.1"]).unwrap();
    second.write_to(dir.path(), "gateway").unwrap();
    let renewed = pem_certificate_der(&second.cert_pem);
    let waited = std::time::Instant::now();
    loop {
        let (fresh, presented) = tls_connect(gateway, &connector).await.unwrap();
        if presented == renewed {
            assert_eq!(login_status(fresh).await.unwrap(), "0");
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The connection from before the renewal still works.
    assert_eq!(login_status(open).await.unwrap(), "0");

    // A renewal caught half-written does not load: the last good certificate stays.
    std::fs::write(
        dir.path().join("gateway.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (fresh, presented) = tls_connect(gateway, &connector).await.unwrap();
    assert_eq!(presented, renewed, "the last good certificate is served");
    assert_eq!(login_status(fresh).await.unwrap(), "0");

    // A client that trusts another CA refuses the gateway.
    let stranger = topsmile_kit::tls::LocalCa::new("another CA").unwrap();
    assert!(
        tls_connect(gateway, &tls_client(&stranger.pem(), None))
            .await
            .is_err()
    );
}

/// With `TOPSMILE_TLS_CLIENT_CA`, only clients with a certificate that CA signed get
/// in: one from another CA, and none at all, are refused at the handshake.
#[tokio::test]
async fn with_a_client_ca_only_its_clients_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let ca = topsmile_kit::tls::LocalCa::new("test CA").unwrap();
    let partners = topsmile_kit::tls::LocalCa::new("partners CA").unwrap();
    let mut files = ca
        .server(&["localhost"])
        .unwrap()
        .write_to(dir.path(), "gateway")
        .unwrap();
    let client_ca = dir.path().join("partners.pem");
    std::fs::write(&client_ca, partners.pem()).unwrap();
    files.tls_client_ca = Some(client_ca);
    let (gateway, _stop) =
        tls_gateway_in_front_of(scripted_upstream(Script::Answer).await, files).await;

    let partner = partners.client("billing.partner.example").unwrap();
    let (sender, _) = tls_connect(gateway, &tls_client(&ca.pem(), Some(&partner)))
        .await
        .unwrap();
    assert_eq!(login_status(sender).await.unwrap(), "0");

    // TLS 1.3 reports a refused client certificate after the handshake: the first
    // call (or the handshake) fails either way.
    let impostor = ca.client("impostor.example").unwrap();
    for identity in [Some(&impostor), None] {
        let refused = match tls_connect(gateway, &tls_client(&ca.pem(), identity)).await {
            Err(_) => true,
            Ok((sender, _)) => login_status(sender).await.is_err(),
        };
        assert!(refused, "a client without a partner certificate got in");
    }
}

/// An empty `LoginRequest` as one gRPC frame.
const EMPTY_MESSAGE: &[u8] = &[0, 0, 0, 0, 0];

const LOGIN: &str = "/topsmile.identity.v1.AuthService/Login";

/// A gateway that lets pages from `origins` call.
async fn web_gateway(script: Script, origins: &str) -> (SocketAddr, shutdown::Trigger) {
    gateway_configured(
        scripted_upstream(script).await,
        topsmile_gateway::EdgeSettings {
            sign_in_per_minute: 0,
            cors_origins: origins.into(),
            ..Default::default()
        },
    )
    .await
}

/// gRPC-Web over HTTP/1.1, binary and text: the call goes to the service as gRPC and
/// its answer comes back re-framed, the message and then the trailers as the final
/// frame (base64 for text); a large answer arrives whole.
#[tokio::test]
async fn grpc_web_calls_over_http1_are_forwarded_as_grpc() {
    use base64::Engine;
    let (gateway, _stop) = web_gateway(Script::Answer, "").await;
    for content_type in ["application/grpc-web", "application/grpc-web+proto"] {
        let answer = http1(
            gateway,
            http::Method::POST,
            LOGIN,
            [("content-type", content_type), ("x-grpc-web", "1")],
            bytes::Bytes::from_static(EMPTY_MESSAGE),
        )
        .await;
        assert_eq!(answer.status, http::StatusCode::OK);
        assert_eq!(answer.headers["content-type"], "application/grpc-web+proto");
        let frames = answer.frames(false);
        assert_eq!(frames.len(), 2, "one message, then the trailers");
        assert_eq!(frames[0], (0, vec![]));
        assert_eq!(answer.grpc_status(false), "0");
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(EMPTY_MESSAGE);
    let answer = http1(
        gateway,
        http::Method::POST,
        LOGIN,
        [("content-type", "application/grpc-web-text")],
        bytes::Bytes::from(encoded.clone()),
    )
    .await;
    assert_eq!(answer.status, http::StatusCode::OK);
    assert_eq!(
        answer.headers["content-type"],
        "application/grpc-web-text+proto"
    );
    assert_eq!(answer.frames(true)[0], (0, vec![]));
    assert_eq!(answer.grpc_status(true), "0");

    let (gateway, _stop) = web_gateway(Script::Large(300_000), "").await;
    for text in [false, true] {
        let (content_type, body) = if text {
            (
                "application/grpc-web-text",
                bytes::Bytes::from(encoded.clone()),
            )
        } else {
            (
                "application/grpc-web",
                bytes::Bytes::from_static(EMPTY_MESSAGE),
            )
        };
        let answer = http1(
            gateway,
            http::Method::POST,
            LOGIN,
            [("content-type", content_type)],
            body,
        )
        .await;
        let frames = answer.frames(text);
        assert_eq!(frames[0].1.len(), 300_000, "text: {text}");
        assert_eq!(answer.grpc_status(text), "0");
    }
}

/// What bad gRPC-Web input gets: malformed base64 is INVALID_ARGUMENT, a body past the
/// message limit OUT_OF_RANGE, plain gRPC over HTTP/1.1 (which cannot carry trailers)
/// 415; the gateway serves the next call as before.
#[tokio::test]
async fn bad_grpc_web_input_gets_a_clear_answer() {
    let (gateway, _stop) = web_gateway(Script::Answer, "").await;
    let text = [("content-type", "application/grpc-web-text")];
    let bad = http1(
        gateway,
        http::Method::POST,
        LOGIN,
        text,
        bytes::Bytes::from_static(b"AAAA!AAA"),
    )
    .await;
    assert_eq!(bad.status, http::StatusCode::OK);
    assert_eq!(bad.grpc_status(true), "3", "INVALID_ARGUMENT");
    let huge = bytes::Bytes::from(vec![b'A'; 8 << 20]);
    let big = http1(gateway, http::Method::POST, LOGIN, text, huge).await;
    assert_eq!(big.grpc_status(true), "11", "OUT_OF_RANGE, as for gRPC");
    let grpc = http1(
        gateway,
        http::Method::POST,
        LOGIN,
        [("content-type", "application/grpc")],
        bytes::Bytes::from_static(EMPTY_MESSAGE),
    )
    .await;
    assert_eq!(grpc.status, http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let fine = http1(
        gateway,
        http::Method::POST,
        LOGIN,
        [("content-type", "application/grpc-web")],
        bytes::Bytes::from_static(EMPTY_MESSAGE),
    )
    .await;
    assert_eq!(fine.grpc_status(false), "0");
}

/// CORS from `TOPSMILE_CORS_ORIGINS`: an allowed origin's preflight is answered with
/// what it may send, and its calls carry the headers that let the page read the
/// status; any other origin's preflight and calls are refused with 403 and no CORS
/// headers.
#[tokio::test]
async fn cors_admits_the_configured_origins_only() {
    let allowed = "https://calendar.clinic.example";
    let (gateway, _stop) =
        web_gateway(Script::Answer, &format!("{allowed}, http://localhost:5173")).await;
    let preflight = |origin: &'static str| {
        http1(
            gateway,
            http::Method::OPTIONS,
            LOGIN,
            [
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization,content-type,x-grpc-web",
                ),
            ],
            bytes::Bytes::new(),
        )
    };
    let ok = preflight("https://calendar.clinic.example").await;
    assert_eq!(ok.status, http::StatusCode::NO_CONTENT);
    assert_eq!(ok.headers["access-control-allow-origin"], allowed);
    let allowed_headers = ok.headers["access-control-allow-headers"].to_str().unwrap();
    for header in [
        "authorization",
        "content-type",
        "x-grpc-web",
        "grpc-timeout",
    ] {
        assert!(allowed_headers.contains(header), "{allowed_headers}");
    }
    assert!(
        ok.headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );

    let evil = preflight("https://evil.example").await;
    assert_eq!(evil.status, http::StatusCode::FORBIDDEN);
    assert!(evil.headers.get("access-control-allow-origin").is_none());

    let call = |origin: &'static str| {
        http1(
            gateway,
            http::Method::POST,
            LOGIN,
            [
                ("content-type", "application/grpc-web+proto"),
                ("origin", origin),
            ],
            bytes::Bytes::from_static(EMPTY_MESSAGE),
        )
    };
    let ok = call("https://calendar.clinic.example").await;
    assert_eq!(ok.grpc_status(false), "0");
    assert_eq!(ok.headers["access-control-allow-origin"], allowed);
    let exposed = ok.headers["access-control-expose-headers"]
        .to_str()
        .unwrap();
    for header in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(header), "{exposed}");
    }
    let evil = call("https://evil.example").await;
    assert_eq!(evil.status, http::StatusCode::FORBIDDEN);
    assert!(evil.headers.get("access-control-allow-origin").is_none());
}

/// `topsmile dev --tls` makes a local CA and a localhost certificate in its data dir,
/// serves the gateway over TLS, and prints a grpcurl command that works as printed.
#[tokio::test]
async fn dev_with_tls_prints_a_grpcurl_command_that_works() {
    use std::io::BufRead;
    let grpcurl = std::process::Command::new("grpcurl")
        .arg("-version")
        .output();
    if grpcurl.is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "grpcurl is missing: scripts/test installs it"
        );
        eprintln!("skipped: grpcurl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_topsmile"))
        .args(["dev", "--tls", "--listen", &addr.to_string(), "--data-dir"])
        .arg(dir.path())
        .env(
            "TOPSMILE_BOOTSTRAP_ADMIN_PASSWORD",
            "a first password, long enough",
        )
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (found, printed) = std::sync::mpsc::channel();
    // Reads to the end: a closed pipe would fail dev's next line.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(command) = line.strip_prefix("Try:") {
                let _ = found.send(command.trim().to_owned());
            }
        }
    });
    let command =
        tokio::task::spawn_blocking(move || printed.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .expect("topsmile dev --tls prints how to call it");
    assert!(
        command.contains("-cacert") && !command.contains("-plaintext"),
        "{command}"
    );
    let listed = std::process::Command::new("bash")
        .args(["-c", &command])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && out.contains("topsmile.identity.v1.AuthService"),
        "{command}: {out} {}",
        String::from_utf8_lossy(&listed.stderr)
    );
}

/// With TLS on, Kubernetes' gRPC probes (which cannot speak TLS) ask a second,
/// plaintext listener that serves health and nothing else: the API is not reachable
/// through it, and plaintext on the TLS port gets no answer.
#[tokio::test]
async fn a_tls_gateway_answers_plaintext_probes_on_its_health_port_only() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let dir = tempfile::tempdir().unwrap();
    let ca = topsmile_kit::tls::LocalCa::new("test CA").unwrap();
    let files = ca
        .server(&["localhost"])
        .unwrap()
        .write_to(dir.path(), "gateway")
        .unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let health = free.local_addr().unwrap();
    drop(free);
    let upstream = scripted_upstream(Script::Answer).await;
    let config = topsmile_gateway::GatewayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        identity_upstreams: upstream.to_string(),
        health_listen: Some(health),
        tls: files,
        service_secret: Some(secrecy::SecretString::from(
            "a test secret of at least 32 bytes",
        )),
        ..Default::default()
    };
    let gateway = topsmile_gateway::Gateway::new(&config).unwrap();
    let listener = topsmile_kit::server::bind(config.listen).await.unwrap();
    let api = listener.local_addr().unwrap();
    let (_stop, stop) = shutdown::channel();
    tokio::spawn(async move { gateway.serve(listener, stop).await });

    let mut probe = None;
    for _ in 0..100 {
        if let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{health}"))
            .unwrap()
            .connect()
            .await
        {
            probe = Some(channel);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let probe = probe.expect("the health listener serves");
    let serving = HealthClient::new(probe.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(
        serving.get_ref().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let api_call = AuthServiceClient::new(probe)
        .login(identity::LoginRequest::default())
        .await
        .expect_err("the health port serves health only");
    assert_eq!(api_call.code(), Code::Unimplemented, "{api_call:?}");
    let plaintext = tonic::transport::Channel::from_shared(format!("http://{api}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await;
        assert!(answer.is_err(), "plaintext on the TLS port was answered");
    }
}

/// A connection that gives no window for an answer that is ready is closed with
/// GOAWAY a few seconds later (`hold::STALL`), long before the call's 30 s deadline;
/// a client on the same address that reads is not touched.
#[tokio::test]
async fn a_connection_that_stalls_a_ready_answer_is_sent_goaway() {
    let (gateway, _stop) = gateway_configured(
        scripted_upstream(Script::Large(100 << 10)).await,
        topsmile_gateway::EdgeSettings {
            sign_in_per_minute: 0,
            max_deadline_secs: 30,
            ..Default::default()
        },
    )
    .await;
    let stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (mut attacker, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(stream)
        .await
        .unwrap();
    attacker = attacker.ready().await.unwrap();
    let response = unread_login(&mut attacker).expect("the stream opens");
    let started = std::time::Instant::now();
    // Ends when the gateway closes the connection.
    let driven = tokio::spawn(connection);
    // A reading client meanwhile, before and after the stall is seen.
    let reader = tonic::transport::Channel::from_shared(format!("http://{gateway}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let read = |channel: tonic::transport::Channel| async move {
        AuthServiceClient::new(channel)
            .login(identity::LoginRequest::default())
            .await
            .map(|answer| answer.into_inner().access_token.len())
    };
    assert_eq!(read(reader.clone()).await.unwrap(), token_len(100 << 10));
    let headers = tokio::time::timeout(Duration::from_secs(5), response).await;
    assert!(
        matches!(headers, Ok(Ok(_))),
        "the answer's headers come back"
    );
    let closed = tokio::time::timeout(Duration::from_secs(15), driven).await;
    let waited = started.elapsed();
    assert!(
        closed.is_ok(),
        "the stalled connection is still open after 15 s"
    );
    assert!(
        waited < Duration::from_secs(15),
        "closed for the stall, not at the 30 s deadline"
    );
    assert_eq!(read(reader).await.unwrap(), token_len(100 << 10));
}

/// A free loopback address.
fn free_address() -> SocketAddr {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    free.local_addr().unwrap()
}

/// Every hop encrypted without a mesh: an identity replica serving TLS (its probes on a
/// plaintext health-only port) and a gateway that verifies it against
/// `TOPSMILE_TLS_CA`, each in a process of its own as a deployment runs them. A
/// sign-in and a read through the gateway work; plaintext to identity's port does not.
#[tokio::test]
async fn the_gateway_and_a_service_speak_tls_verified_by_a_ca() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let dir = tempfile::tempdir().unwrap();
    let ca = topsmile_kit::tls::LocalCa::new("cluster CA").unwrap();
    let identity_tls = ca
        .server(&["localhost"])
        .unwrap()
        .write_to(dir.path(), "identity")
        .unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (identity, probes, gateway) = (free_address(), free_address(), free_address());
    let secret = "a cluster secret of at least 32 bytes";
    let spawn = |role: &str, env: Vec<(&str, String)>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_topsmile"));
        command
            .args(["serve", role])
            .env_remove("TOPSMILE_TEST_MONGODB_URI")
            .env("TOPSMILE_SERVICE_SECRET", secret)
            .env("TOPSMILE_TLS_CA", &ca_file)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        command.spawn().unwrap()
    };
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().unwrap().display().to_string();
    let mut children = vec![
        spawn(
            "identity",
            vec![
                ("TOPSMILE_LISTEN", identity.to_string()),
                ("TOPSMILE_HEALTH_LISTEN", probes.to_string()),
                ("TOPSMILE_TLS_CERT", path(&identity_tls.tls_cert)),
                ("TOPSMILE_TLS_KEY", path(&identity_tls.tls_key)),
                (
                    "TOPSMILE_DATA_DIR",
                    dir.path().join("data").display().to_string(),
                ),
                (
                    "TOPSMILE_KEY_FILE",
                    dir.path().join("keys.json").display().to_string(),
                ),
                ("TOPSMILE_BOOTSTRAP_ADMIN_EMAIL", "root@tls.example".into()),
                (
                    "TOPSMILE_BOOTSTRAP_ADMIN_PASSWORD",
                    "a root password, long enough".into(),
                ),
            ],
        ),
        spawn(
            "gateway",
            vec![
                ("TOPSMILE_LISTEN", gateway.to_string()),
                (
                    "TOPSMILE_IDENTITY_UPSTREAMS",
                    format!("localhost:{}", identity.port()),
                ),
                ("TOPSMILE_SIGN_IN_PER_MINUTE", "0".into()),
            ],
        ),
    ];
    let channel = tonic::transport::Channel::from_shared(format!("http://{gateway}")).unwrap();
    let mut signed_in = None;
    for _ in 0..200 {
        if let Ok(connected) = channel.clone().connect().await {
            let answer = AuthServiceClient::new(connected)
                .login(identity::LoginRequest {
                    email: "root@tls.example".into(),
                    password: "a root password, long enough".into(),
                    device_token: String::new(),
                })
                .await;
            if let Ok(answer) = answer {
                signed_in = Some(answer.into_inner().access_token);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A caller that opens a connection to identity and never starts its handshake.
    let silent = tokio::net::TcpStream::connect(identity).await.ok();
    let outcome = async {
        let token = signed_in.expect("a sign-in through the gateway, over TLS to identity");
        // A read the gateway authorizes with keys it fetched from identity over TLS.
        let mut request = tonic::Request::new(identity::ListClinicsRequest::default());
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        identity::clinic_service_client::ClinicServiceClient::new(channel.connect().await.unwrap())
            .list_clinics(request)
            .await
            .expect("an authorized read through the gateway");
        // Plaintext to identity's own port: nothing; its probe port: health only.
        let plaintext = tonic::transport::Channel::from_shared(format!("http://{identity}"))
            .unwrap()
            .timeout(Duration::from_secs(2))
            .connect()
            .await;
        if let Ok(plaintext) = plaintext {
            assert!(
                HealthClient::new(plaintext)
                    .check(HealthCheckRequest::default())
                    .await
                    .is_err(),
                "identity answered plaintext on its TLS port"
            );
        }
        let probe = tonic::transport::Channel::from_shared(format!("http://{probes}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        HealthClient::new(probe)
            .check(HealthCheckRequest::default())
            .await
            .expect("the probe port answers health in plaintext");
    };
    let result = tokio::time::timeout(Duration::from_secs(60), outcome).await;
    // A caller that never starts its handshake with the service is dropped too.
    let silent = silent.expect("identity accepted a connection");
    assert!(
        closed_within(silent, Duration::from_secs(15)).await,
        "identity kept a half-open TLS connection"
    );
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    result.expect("the TLS hops answered in time");
}

/// When identity will not mint the gateway's forwarder token, calls go on without it
/// and the gateway asks again only after a pause: a failing mint costs one round trip
/// per few seconds, not one per call.
#[tokio::test]
async fn a_failing_forwarder_token_is_not_asked_for_on_every_call() {
    let (upstream, received) =
        scripted_upstream_counting(Script::Refuse(h2::Reason::INTERNAL_ERROR)).await;
    let (gateway, _stop) = gateway_in_front_of(upstream).await;
    for _ in 0..10 {
        let status = login_through(gateway, None).await;
        assert_eq!(status.code(), Code::Internal, "{status:?}");
    }
    let counts = received.lock().unwrap().clone();
    assert_eq!(
        counts.get("/topsmile.identity.v1.AuthService/Login"),
        Some(&10)
    );
    let mints = counts
        .get("/topsmile.identity.v1.IdentityInternalService/MintServiceToken")
        .copied()
        .unwrap_or(0);
    assert!(
        (1..=2).contains(&mints),
        "{mints} mints for 10 calls: {counts:?}"
    );
}

/// gRPC-Web over HTTP/2 (a browser on an `h2` connection) is re-framed the same way.
#[tokio::test]
async fn grpc_web_over_http2_is_re_framed_too() {
    let (gateway, _stop) = web_gateway(Script::Answer, "").await;
    let stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://gateway{LOGIN}"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(EMPTY_MESSAGE), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/grpc-web+proto"
    );
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap();
    assert!(
        trailers.is_none(),
        "no HTTP/2 trailers: they are in the body"
    );
    let expected = b"\x00\x00\x00\x00\x00\x80\x00\x00\x00\x10grpc-status: 0\r\n";
    assert_eq!(bytes, expected);
}

/// Reads until the peer closes `socket` or `within` passes: whether it was closed.
async fn closed_within(mut socket: tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 64];
    tokio::time::timeout(within, async {
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A client that opens a TCP connection to the TLS port and never starts its
/// handshake (half-open) holds nothing: others are served meanwhile, and its socket is
/// closed after the 10 s handshake bound.
#[tokio::test]
async fn a_half_open_tls_connection_is_dropped_after_the_handshake_bound() {
    let dir = tempfile::tempdir().unwrap();
    let ca = topsmile_kit::tls::LocalCa::new("test CA").unwrap();
    let files = ca
        .server(&["localhost"])
        .unwrap()
        .write_to(dir.path(), "gateway")
        .unwrap();
    let (gateway, _stop) =
        tls_gateway_in_front_of(scripted_upstream(Script::Answer).await, files).await;
    let silent = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (sender, _) = tls_connect(gateway, &tls_client(&ca.pem(), None))
        .await
        .unwrap();
    assert_eq!(
        login_status(sender).await.unwrap(),
        "0",
        "others are served"
    );
    assert!(
        closed_within(silent, Duration::from_secs(15)).await,
        "the half-open connection is still open"
    );
}
