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
