//! The gateway's answers when a replica misbehaves, against a scripted HTTP/2 upstream
//! (the `h2` crate, so each case sends exactly the frames it names): UNAVAILABLE (worth
//! retrying) only when the replica refused the stream before starting it; INTERNAL,
//! with no retry hint, for any other failure; a failure after the response began
//! arrives as `grpc-status` trailers, not as a broken stream; and the call's deadline
//! covers a replica that never answers.
//!
//! `Login` is public, so the gateway forwards it without asking identity for keys: the
//! scripted upstream stands in for identity.

use std::{net::SocketAddr, time::Duration};

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
}

async fn scripted_upstream(script: Script) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = connection.accept().await {
                    match script {
                        Script::Refuse(reason) => respond.send_reset(reason),
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
    addr
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
    let config = topsmile_gateway::GatewayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        identity_upstreams: upstream.to_string(),
        edge: topsmile_gateway::EdgeSettings {
            sign_in_per_minute: 0,
            max_deadline_secs: 1,
            max_in_flight,
            ..Default::default()
        },
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
