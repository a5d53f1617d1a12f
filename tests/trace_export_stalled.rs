//! Exporting traces never holds up a call: with the OTLP collector unreachable in the
//! worst way (it accepts the connection and then says nothing, so every export waits
//! for its timeout), a burst of calls through the gateway, more spans than the
//! exporter's queue holds, all succeed within a deadline far shorter than one export's
//! timeout. Spans that do not fit are dropped.
//!
//! It installs this process's one tracing subscriber, so it is a test binary of its own.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use support::{Bearer, Setup, TestSuite};
use topsmile_kit::telemetry::{self, BoxMakeWriter, EnvFilter, LogFormat, Otlp};
use topsmile_proto::topsmile::identity::v1 as identity;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_delays_no_call() {
    // The collector stand-in: accepts connections, holds them open, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    let telemetry = telemetry::init_with(
        LogFormat::Json,
        Some(Otlp {
            endpoint: format!("http://{collector}"),
            service_name: "topsmile-test".into(),
        }),
        EnvFilter::new("info"),
        BoxMakeWriter::new(std::io::sink),
        false,
    );
    assert!(
        telemetry.exports_traces(),
        "this test's subscriber is the process's"
    );

    let suite = TestSuite::with(Setup::default()).await;
    let token = suite.root_token().await;
    let clinic = suite.create_clinic("Exported").await;

    // 16 callers × 200 calls, two server spans each (gateway, identity): 6,400 spans,
    // over three times the batch exporter's queue (2,048). Each call must finish within
    // 2 s, less than half of one export's 5 s timeout.
    let channel = suite.channel().await;
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let mut clinics =
                identity::clinic_service_client::ClinicServiceClient::with_interceptor(
                    channel.clone(),
                    Bearer(Some(token.clone())),
                );
            let name = clinic.name.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for _ in 0..200 {
                    let mut request =
                        tonic::Request::new(identity::GetClinicRequest { name: name.clone() });
                    request.set_timeout(Duration::from_secs(2));
                    if let Err(status) = clinics.get_clinic(request).await {
                        failures.push(status);
                    }
                }
                failures
            })
        })
        .collect();
    let mut failures = Vec::new();
    for caller in callers {
        failures.extend(caller.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of 3,200 calls failed while the collector stalled: {:?}",
        failures.len(),
        failures.first()
    );

    // The exporter did try: the stalled collector was connected to.
    let flushing = tokio::task::spawn_blocking(move || telemetry.flush());
    for _ in 0..100 {
        if connections.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        connections.load(Ordering::SeqCst) > 0,
        "the exporter never reached the collector, so nothing was tested"
    );
    suite.stop().await;
    let _ = flushing.await;
}
