//! What every server (each service and the gateway) does with each API call before
//! anything else: admit it or shed it, give it a span, count it.
//!
//! - **Admission.** A server bounds the calls it runs at once, across all connections.
//!   Past the bound a call is refused at once with RESOURCE_EXHAUSTED and a RetryInfo
//!   hint, instead of queueing where it would only time out later and hold memory
//!   meanwhile.
//! - **Span.** Each admitted call runs inside [`telemetry::server_span`], which continues
//!   the caller's trace; the call's log lines carry its `trace_id` and `span_id`.
//! - **Metrics.** Prometheus series, labelled by component (`gateway`, `identity`, ...)
//!   and method: calls started, calls that ended with a code other than OK (by code), a
//!   latency histogram to the call's last frame, calls in flight, calls shed. Served as
//!   text by [`serve_metrics`] on the admin port.
//!
//! Health checks and reflection pass untouched: a probe must never be shed, and they are
//! not the API.
//!
//! Method labels come from the contracts, never from the request: a path that is not one
//! of their methods counts as `unknown`, so a caller cannot grow the series without bound.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body::Frame;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::{ApiError, telemetry};

/// How long a shed caller is asked to wait before trying again.
pub const SHED_RETRY_AFTER: Duration = Duration::from_millis(100);

/// The label a path gets when it is not one of the contracts' methods.
const UNKNOWN_METHOD: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    component: &'static str,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    component: &'static str,
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    component: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 us to ~13 s: a cached read at the bottom, a deadline at the top.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 18,
    ))
}

/// The process's series, shared by every server in it (`topsmile dev` runs them all in
/// one process; the `component` label keeps them apart).
struct Series {
    registry: Registry,
    requests: Family<MethodLabels, Counter>,
    errors: Family<CodeLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<ComponentLabels, Gauge>,
    shed: Family<ComponentLabels, Counter>,
    shed_per_address: Counter,
    abandoned: Counter,
    answer_buffer_full: Counter,
}

fn series() -> &'static Series {
    static SERIES: OnceLock<Series> = OnceLock::new();
    SERIES.get_or_init(|| {
        let mut registry = Registry::with_prefix("topsmile_grpc");
        let requests = Family::<MethodLabels, Counter>::default();
        let errors = Family::<CodeLabels, Counter>::default();
        let latency = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let in_flight = Family::<ComponentLabels, Gauge>::default();
        let shed = Family::<ComponentLabels, Counter>::default();
        registry.register("requests", "Calls started, by method", requests.clone());
        registry.register(
            "errors",
            "Calls that ended with a code other than OK, by method and code",
            errors.clone(),
        );
        registry.register(
            "duration_seconds",
            "Time from a call's arrival to its last frame",
            latency.clone(),
        );
        registry.register("in_flight", "Calls being served now", in_flight.clone());
        registry.register(
            "shed",
            "Calls refused with RESOURCE_EXHAUSTED because the server was full",
            shed.clone(),
        );
        let shed_per_address = Counter::default();
        registry.register(
            "shed_per_address",
            "Calls refused with RESOURCE_EXHAUSTED at the edge because their client address held its share",
            shed_per_address.clone(),
        );
        let abandoned = Counter::default();
        registry.register(
            "abandoned",
            "Calls at the edge that outlived their deadline undelivered (their connection was closed)",
            abandoned.clone(),
        );
        let answer_buffer_full = Counter::default();
        registry.register(
            "answer_buffer_full",
            "Calls at the edge shed because their client address's unread answers filled its share of the answer buffer",
            answer_buffer_full.clone(),
        );
        Series {
            registry,
            requests,
            errors,
            latency,
            in_flight,
            shed,
            shed_per_address,
            abandoned,
            answer_buffer_full,
        }
    })
}

/// Counts a call the edge shed because its client address held its share.
pub fn count_shed_per_address() {
    series().shed_per_address.inc();
}

/// Counts a call the edge abandoned past its deadline.
pub fn count_abandoned() {
    series().abandoned.inc();
}

/// Counts a call the edge shed because its address's unread answers filled its share.
pub fn count_answer_buffer_full() {
    series().answer_buffer_full.inc();
}

/// Every series in Prometheus' text format.
pub fn encode_metrics() -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &series().registry);
    text
}

/// One method's handles, looked up once per server rather than once per call.
struct MethodSeries {
    method: String,
    requests: Counter,
    latency: Histogram,
}

/// One server's admission bound and series.
pub struct Calls {
    component: &'static str,
    methods: HashMap<String, Arc<MethodSeries>>,
    unknown: Arc<MethodSeries>,
    in_flight: Gauge,
    shed: Counter,
    admission: Arc<Semaphore>,
}

impl Calls {
    /// `component` names the server in spans and series; `max_in_flight` bounds the
    /// calls it runs at once.
    pub fn new(component: &'static str, max_in_flight: usize) -> Self {
        let s = series();
        let handles = |method: &str| {
            let labels = MethodLabels {
                component,
                method: method.to_owned(),
            };
            Arc::new(MethodSeries {
                method: method.to_owned(),
                requests: s.requests.get_or_create(&labels).clone(),
                latency: s.latency.get_or_create(&labels).clone(),
            })
        };
        let methods = crate::policy::PolicyTable::builtin()
            .map(|table| {
                table
                    .methods()
                    .map(|m| (m.path.clone(), handles(&m.path)))
                    .collect()
            })
            .unwrap_or_default();
        let component_labels = ComponentLabels { component };
        Self {
            component,
            methods,
            unknown: handles(UNKNOWN_METHOD),
            in_flight: s.in_flight.get_or_create(&component_labels).clone(),
            shed: s.shed.get_or_create(&component_labels).clone(),
            admission: Arc::new(Semaphore::new(max_in_flight.max(1))),
        }
    }

    /// Admits a call and opens its span, or sheds it when the server is full.
    pub fn admit(&self, path: &str, headers: &http::HeaderMap) -> Result<Call, Shed> {
        let Ok(permit) = self.admission.clone().try_acquire_owned() else {
            self.shed.inc();
            return Err(Shed);
        };
        let series = self.methods.get(path).unwrap_or(&self.unknown).clone();
        series.requests.inc();
        self.in_flight.inc();
        Ok(Call {
            span: telemetry::server_span(self.component, &series.method, headers),
            component: self.component,
            series,
            in_flight: self.in_flight.clone(),
            started: Instant::now(),
            _permit: permit,
            ended: false,
        })
    }
}

/// A call refused because the server was full.
#[derive(Debug)]
pub struct Shed;

impl Shed {
    /// The answer: RESOURCE_EXHAUSTED, with a RetryInfo saying when to try again.
    pub fn into_response(self) -> http::Response<tonic::body::Body> {
        let status: tonic::Status = ApiError::Overloaded {
            retry_after: SHED_RETRY_AFTER,
        }
        .into();
        status.into_http()
    }
}

/// One admitted call: it holds its admission permit and counts as in flight until it
/// ends (its last frame, or dropped unfinished: CANCELLED).
pub struct Call {
    span: tracing::Span,
    component: &'static str,
    series: Arc<MethodSeries>,
    in_flight: Gauge,
    started: Instant,
    _permit: OwnedSemaphorePermit,
    ended: bool,
}

impl Call {
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Follows `response` to its end: a trailers-only answer ends the call now, any
    /// other when its body's trailers (or its end) come.
    pub fn follow<B>(mut self, response: http::Response<B>) -> http::Response<tonic::body::Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<crate::server::BoxError>,
    {
        if let Some(code) = grpc_status(response.headers()) {
            self.end(code);
        }
        response.map(|body| {
            tonic::body::Body::new(Followed {
                inner: body,
                call: self,
            })
        })
    }

    fn end(&mut self, code: tonic::Code) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.in_flight.dec();
        self.series
            .latency
            .observe(self.started.elapsed().as_secs_f64());
        if code != tonic::Code::Ok {
            series()
                .errors
                .get_or_create(&CodeLabels {
                    component: self.component,
                    method: self.series.method.clone(),
                    code: code_name(code),
                })
                .inc();
        }
        telemetry::record_outcome(&self.span, code);
        let _in_call = self.span.enter();
        tracing::debug!(
            code = code_name(code),
            elapsed_us = self.started.elapsed().as_micros() as u64,
            "call ended"
        );
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped before its last frame: the client went away.
        self.end(tonic::Code::Cancelled);
    }
}

/// A response body that ends its [`Call`] when its last frame passes.
struct Followed<B> {
    inner: B,
    call: Call,
}

impl<B> http_body::Body for Followed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status(trailers).unwrap_or(tonic::Code::Unknown);
                    self.call.end(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.call.end(tonic::Code::Internal),
            // A body that ends without trailers broke the protocol.
            Poll::Ready(None) => self.call.end(tonic::Code::Unknown),
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

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(tonic::Code::from)
}

/// The code's name as gRPC spells it (`NOT_FOUND`), a bounded label value.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether `path` is a health check or reflection call, which [`Calls`] lets through
/// untouched.
pub fn is_infrastructure(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// The tower layer a service's server runs outermost: [`Calls`] around every API call.
#[derive(Clone)]
pub struct CallsLayer(pub Arc<Calls>);

impl<S> tower::Layer<S> for CallsLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed {
            inner,
            calls: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    calls: Arc<Calls>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Observed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    R::Error: Into<crate::server::BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if is_infrastructure(path) {
            return Box::pin(async move {
                inner
                    .call(request)
                    .await
                    .map(|r| r.map(tonic::body::Body::new))
            });
        }
        let call = match self.calls.admit(path, request.headers()) {
            Ok(call) => call,
            Err(shed) => return Box::pin(async move { Ok(shed.into_response()) }),
        };
        let span = call.span().clone();
        // The call's deadline, which calls it makes to other services inherit.
        let deadline = std::time::Instant::now().checked_add(
            crate::peers::grpc_timeout(request.headers())
                .unwrap_or(crate::server::DEFAULT_DEADLINE)
                .min(crate::server::DEFAULT_DEADLINE),
        );
        Box::pin(
            crate::peers::within_deadline(deadline, async move {
                match inner.call(request).await {
                    Ok(response) => Ok(call.follow(response)),
                    Err(e) => Err(e),
                }
            })
            .instrument(span),
        )
    }
}

/// Serves `GET /metrics` (Prometheus text) on `listener` until `shutdown` fires.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                encode_metrics(),
            )
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

/// Binds the admin port and serves metrics there in the background; the address bound
/// (tests pass port 0).
pub async fn spawn_metrics(
    addr: SocketAddr,
    shutdown: crate::shutdown::Shutdown,
) -> Result<SocketAddr, crate::server::ServeError> {
    let listener = crate::server::bind(addr).await?;
    let bound = listener
        .local_addr()
        .map_err(|source| crate::server::ServeError::Bind { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = serve_metrics(listener, shutdown).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_server_sheds_at_once_with_a_retry_hint_and_counts_it() {
        let calls = Calls::new("shed-test", 1);
        let headers = http::HeaderMap::new();
        let first = calls.admit("/topsmile.identity.v1.ClinicService/GetClinic", &headers);
        assert!(first.is_ok());
        let Err(shed) = calls.admit("/topsmile.identity.v1.ClinicService/GetClinic", &headers)
        else {
            panic!("a second call past a bound of one was admitted");
        };
        let shed = shed.into_response();
        let status = tonic::Status::from_header_map(shed.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let details = tonic_types::StatusExt::get_error_details(&status);
        assert_eq!(
            details.retry_info().and_then(|r| r.retry_delay),
            Some(SHED_RETRY_AFTER)
        );
        assert!(encode_metrics().contains("topsmile_grpc_shed_total{component=\"shed-test\"} 1"));
        drop(first);
        assert!(
            calls
                .admit("/topsmile.identity.v1.ClinicService/GetClinic", &headers)
                .is_ok(),
            "the permit comes back when the call ends"
        );
    }

    #[test]
    fn a_path_outside_the_contracts_is_counted_as_unknown() {
        let calls = Calls::new("label-test", 8);
        let headers = http::HeaderMap::new();
        let mut call = calls
            .admit("/evil.Service/Method-with-a-new-name-each-time", &headers)
            .expect("admitted");
        call.end(tonic::Code::Unimplemented);
        let text = encode_metrics();
        assert!(text.contains(
            "topsmile_grpc_errors_total{component=\"label-test\",method=\"unknown\",code=\"UNIMPLEMENTED\"} 1"
        ));
        assert!(!text.contains("evil"));
    }
}
