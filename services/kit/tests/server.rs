//! The server bootstrap, tested on a real server on port 0: health and reflection are
//! there, and shutdown drains (NOT_SERVING is announced to watchers still connected, then
//! the server stops and refuses new connections).

use std::{net::SocketAddr, time::Duration};

use tonic::{service::Routes, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use topsmile_kit::{
    access::{Guard, KeySource},
    config::ServerLimits,
    policy::PolicyTable,
    server, shutdown,
};

async fn channel(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
}

#[tokio::test]
async fn shutdown_announces_not_serving_then_drains_and_stops() {
    let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ServerLimits {
        drain_timeout_secs: 2,
        ..ServerLimits::default()
    };
    let (trigger, stop) = shutdown::channel();
    let names: &'static [&'static str] = &["topsmile.identity.v1.ClinicService"];
    let guard = std::sync::Arc::new(Guard::new(
        PolicyTable::builtin().unwrap(),
        KeySource::File(std::path::PathBuf::from("no-keys-needed-for-health.json")),
    ));
    let serving = tokio::spawn(async move {
        server::serve(listener, Routes::default(), names, &limits, guard, stop).await
    });

    let mut health = HealthClient::new(channel(addr).await.unwrap());
    let check = health
        .check(HealthCheckRequest {
            service: names[0].into(),
        })
        .await
        .unwrap();
    assert_eq!(check.into_inner().status, ServingStatus::Serving as i32);

    // A watch is a call that stays in flight until the server goes away.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    trigger.fire();
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(
        next.status,
        ServingStatus::NotServing as i32,
        "drain must announce NOT_SERVING first"
    );

    let stopped = tokio::time::timeout(Duration::from_secs(30), serving).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "server did not stop cleanly: {stopped:?}"
    );
    assert!(
        channel(addr).await.is_err(),
        "a stopped server still accepts connections"
    );
}

/// Answers `AuthService` calls only when the test lets one through, so calls stay in
/// flight as long as the test wants.
#[derive(Clone)]
struct HeldAuth(std::sync::Arc<tokio::sync::Semaphore>);

impl tonic::server::NamedService for HeldAuth {
    const NAME: &'static str = "topsmile.identity.v1.AuthService";
}

impl tower::Service<http::Request<tonic::body::Body>> for HeldAuth {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        let gate = self.0.clone();
        Box::pin(async move {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            Ok(tonic::Status::unavailable("released").into_http())
        })
    }
}

/// A raw unary call of `path` with an empty message: its status.
async fn call(channel: Channel, path: &'static str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return tonic::Status::unknown(e.to_string());
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc
        .unary(
            tonic::Request::new(()),
            http::uri::PathAndQuery::from_static(path),
            codec,
        )
        .await
    {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

#[tokio::test]
async fn a_full_server_sheds_calls_at_once_with_a_retry_hint_and_keeps_answering_health() {
    let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ServerLimits {
        concurrency_limit: 2,
        ..ServerLimits::default()
    };
    let (trigger, stop) = shutdown::channel();
    let names: &'static [&'static str] = &["topsmile.identity.v1.AuthService"];
    let guard = std::sync::Arc::new(Guard::new(
        PolicyTable::builtin().unwrap(),
        KeySource::File(std::path::PathBuf::from("no-keys-needed-for-sign-in.json")),
    ));
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let routes = Routes::new(HeldAuth(gate.clone()));
    let serving =
        tokio::spawn(
            async move { server::serve(listener, routes, names, &limits, guard, stop).await },
        );
    const LOGIN: &str = "/topsmile.identity.v1.AuthService/Login";
    let channel = channel(addr).await.unwrap();

    // Two calls fill the server (across two connections: the bound is the server's).
    let first = tokio::spawn(call(channel.clone(), LOGIN));
    let other_connection = self::channel(addr).await.unwrap();
    let second = tokio::spawn(call(other_connection, LOGIN));
    // The third is shed at once, with how long to wait; the full server still answers
    // health checks (a probe must not take an overloaded pod for a dead one).
    for _ in 0..500 {
        if topsmile_kit::calls::encode_metrics()
            .contains("topsmile_grpc_in_flight{component=\"identity\"} 2")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shed = call(channel.clone(), LOGIN).await;
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    let details = tonic_types::StatusExt::get_error_details(&shed);
    assert_eq!(
        details.retry_info().and_then(|r| r.retry_delay),
        Some(topsmile_kit::calls::SHED_RETRY_AFTER)
    );
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, ServingStatus::Serving as i32);

    // Once the calls in flight finish, calls are admitted again.
    gate.add_permits(2);
    assert_eq!(first.await.unwrap().code(), tonic::Code::Unavailable);
    assert_eq!(second.await.unwrap().code(), tonic::Code::Unavailable);
    gate.add_permits(1);
    assert_eq!(call(channel, LOGIN).await.code(), tonic::Code::Unavailable);
    trigger.fire();
    let _ = serving.await;
}
