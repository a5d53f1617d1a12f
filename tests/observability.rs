//! Traces and metrics, as an operator meets them: one trace across every hop of a call,
//! log lines that name it, and Prometheus series on the admin port.
//!
//! The trace test installs this process's one tracing subscriber (exporting to an OTLP
//! collector stand-in served here, the opentelemetry-proto crate's collector service),
//! so it lives in a test binary of its own.

mod support;

use std::{
    collections::HashMap,
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use support::{Bearer, Setup, TestSuite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Request, Response, Status};
use topsmile_kit::telemetry::{self, BoxMakeWriter, EnvFilter, LogFormat, Otlp};
use topsmile_proto::topsmile::{identity::v1 as identity, patients::v1 as patients};

/// Every span exported to it.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Log lines, as the JSON formatter writes them.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The caller's own span: a trace the gateway must continue, not replace.
const CALLER_TRACE: &str = "5b8efff798038103d269b633813fc60c";
const CALLER_SPAN: &str = "eee19b7ec3c1b174";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_portal_sign_in_is_one_trace_through_gateway_identity_and_patients() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let serving = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(serving))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let logs = Logs::default();
    let writer = logs.clone();
    let telemetry = telemetry::init_with(
        LogFormat::Json,
        Some(Otlp {
            endpoint: format!("http://{collector_addr}"),
            service_name: "topsmile-test".into(),
        }),
        EnvFilter::new("info,topsmile_kit::calls=debug"),
        BoxMakeWriter::new(move || writer.clone()),
        false,
    );
    assert!(
        telemetry.exports_traces(),
        "this test's subscriber is the process's"
    );

    let suite = TestSuite::with(Setup::default()).await;
    let staff = suite.clinic_with_staff("Traced").await;
    let patient = support::create_patient(
        &suite,
        &staff,
        patients::Patient {
            given_name: "Ana".into(),
            family_name: "Traced".into(),
            email: "ana.traced@example.com".into(),
            ..Default::default()
        },
    )
    .await;
    patients::patient_service_client::PatientServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(staff.admin.clone())),
    )
    .set_patient_password(patients::SetPatientPasswordRequest {
        name: patient.name.clone(),
        new_password: "portal password, long enough".into(),
        current_password: String::new(),
    })
    .await
    .unwrap();

    let mut sign_in = Request::new(identity::LoginPatientRequest {
        clinic: staff.clinic.name.clone(),
        email: "ana.traced@example.com".into(),
        password: "portal password, long enough".into(),
        device_token: String::new(),
    });
    sign_in.metadata_mut().insert(
        "traceparent",
        format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
            .parse()
            .unwrap(),
    );
    identity::auth_service_client::AuthServiceClient::new(suite.channel().await)
        .login_patient(sign_in)
        .await
        .unwrap();

    // Spans end as their responses' last frames pass; wait for the batch to arrive.
    let mut trace: Vec<Span> = Vec::new();
    for _ in 0..100 {
        telemetry.flush();
        trace = collector
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| hex(&s.trace_id) == CALLER_TRACE)
            .cloned()
            .collect();
        let has = |component: &str| {
            trace
                .iter()
                .any(|s| attribute(s, "component").as_deref() == Some(component))
        };
        if has("gateway") && has("identity") && has("patients") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let by_id: HashMap<String, &Span> = trace.iter().map(|s| (hex(&s.span_id), s)).collect();
    let server_span = |component: &str, method: &str| -> &Span {
        let found: Vec<&Span> = trace
            .iter()
            .filter(|s| {
                attribute(s, "component").as_deref() == Some(component)
                    && attribute(s, "rpc.method").as_deref() == Some(method)
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {component} span for {method} in the caller's trace: {trace:#?}"
        );
        found[0]
    };
    // Whether `ancestor` is `span`'s parent, or its parent's, and so on.
    let descends_from = |span: &Span, ancestor: &Span| {
        let mut parent = hex(&span.parent_span_id);
        while let Some(next) = by_id.get(&parent) {
            if next.span_id == ancestor.span_id {
                return true;
            }
            parent = hex(&next.parent_span_id);
        }
        false
    };

    let gateway = server_span("gateway", "LoginPatient");
    assert_eq!(
        hex(&gateway.parent_span_id),
        CALLER_SPAN,
        "the gateway continues the caller's span"
    );
    assert_eq!(
        attribute(gateway, "rpc.service").as_deref(),
        Some("topsmile.identity.v1.AuthService")
    );
    assert_eq!(
        gateway.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32
    );
    let identity = server_span("identity", "LoginPatient");
    assert_eq!(
        hex(&identity.parent_span_id),
        hex(&gateway.span_id),
        "identity's server span is the gateway's child"
    );
    let patients = server_span("patients", "VerifyPatientCredentials");
    assert!(
        descends_from(patients, identity),
        "the patients call is made within identity's span: {trace:#?}"
    );
    assert_eq!(
        attribute(patients, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    // Nothing of this sign-in went into another trace.
    let elsewhere = collector
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|s| {
            hex(&s.trace_id) != CALLER_TRACE
                && attribute(s, "rpc.method").as_deref() == Some("LoginPatient")
        })
        .count();
    assert_eq!(elsewhere, 0, "a sign-in span outside the caller's trace");

    // The log lines written during the call name its trace and span.
    let written = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = written
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["message"] == "call ended"
                && l["span"]["component"] == "identity"
                && l["span"]["trace_id"] == CALLER_TRACE
        })
        .unwrap_or_else(|| panic!("no JSON log line of identity's call in:\n{written}"));
    assert_eq!(line["span"]["span_id"], hex(&identity.span_id));
    assert_eq!(line["code"], "OK");

    suite.stop().await;
    telemetry.shutdown();
}

/// `GET /metrics` on the admin port, as Prometheus scrapes it.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

/// The value of the series line that starts with `series` (name and labels).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_admin_port_counts_calls_errors_latency_in_flight_and_shed_by_method() {
    let suite = TestSuite::with(Setup {
        metrics: true,
        ..Setup::default()
    })
    .await;
    let metrics = suite.suite.metrics.expect("metrics are served");
    let staff = suite.clinic_with_staff("Counted").await;
    let mut users = identity::user_service_client::UserServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(staff.admin.clone())),
    );
    let before = scrape(metrics).await;
    // A method no other test in this binary calls, so the counts below are this test's.
    const GET_USER: &str = "/topsmile.identity.v1.UserService/GetUser";
    let requests = |component: &str| {
        format!("topsmile_grpc_requests_total{{component=\"{component}\",method=\"{GET_USER}\"}}")
    };
    for _ in 0..3 {
        users
            .get_user(identity::GetUserRequest {
                name: staff.admin_name.clone(),
            })
            .await
            .unwrap();
    }
    let refused = users
        .get_user(identity::GetUserRequest {
            name: format!(
                "{}/users/0190a0f0-0000-7000-8000-000000000000",
                staff.clinic.name
            ),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    let not_found = |component: &str| {
        format!(
            "topsmile_grpc_errors_total{{component=\"{component}\",method=\"{GET_USER}\",code=\"NOT_FOUND\"}}"
        )
    };

    let after = scrape(metrics).await;
    for component in ["gateway", "identity"] {
        assert_eq!(
            value(&after, &requests(component)) - value(&before, &requests(component)),
            4.0,
            "{component} counts each GetUser once:\n{after}"
        );
        assert_eq!(
            value(&after, &not_found(component)) - value(&before, &not_found(component)),
            1.0,
            "{component} counts the refusal by its code:\n{after}"
        );
        let histogram = format!(
            "topsmile_grpc_duration_seconds_count{{component=\"{component}\",method=\"{GET_USER}\"}}"
        );
        assert!(value(&after, &histogram) - value(&before, &histogram) >= 4.0);
        // The gauge is the process's: the other test of this binary may have calls in
        // flight right now, so only its presence is certain.
        let in_flight = format!("topsmile_grpc_in_flight{{component=\"{component}\"}} ");
        assert!(
            after
                .lines()
                .filter_map(|l| l.strip_prefix(in_flight.as_str()))
                .any(|v| v.trim().parse::<u64>().is_ok()),
            "no in-flight gauge for {component}:\n{after}"
        );
        assert!(after.contains(&format!(
            "topsmile_grpc_shed_total{{component=\"{component}\"}} 0"
        )));
    }
    assert!(after.contains("# TYPE topsmile_grpc_duration_seconds histogram"));
    suite.stop().await;
}
