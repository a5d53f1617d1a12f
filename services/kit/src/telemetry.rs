//! Logs and traces: `tracing` everywhere, JSON lines by default so log collectors can
//! index them, a human format for a terminal; the filter comes from `RUST_LOG` (default
//! `info`).
//!
//! Traces go out over OTLP/gRPC when an endpoint is configured the standard way
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; the service
//! name from `OTEL_SERVICE_NAME`, the sampler from `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`, default: follow the caller, sample what has no caller).
//! With no endpoint nothing is exported and nothing is paid for it. Spans are exported
//! in batches from a bounded queue on a thread of their own: a slow or absent collector
//! drops spans, never delays or fails a call.
//!
//! Context crosses processes as W3C `traceparent` (and `tracestate`): [`server_span`]
//! continues the caller's trace, [`inject`] hands the current one to the next hop.

use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
pub use tracing_subscriber::{EnvFilter, fmt::writer::BoxMakeWriter};
use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, with span fields (among them `trace_id` and `span_id`
    /// of the call): for machines.
    #[default]
    Json,
    /// Coloured, multi-field lines: for people at a terminal.
    Pretty,
}

/// Where traces go: an OTLP/gRPC collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Otlp {
    /// `http://host:4317`.
    pub endpoint: String,
    /// `service.name` of every span this process exports.
    pub service_name: String,
}

impl Otlp {
    /// The standard OpenTelemetry variables: `None` when no endpoint is set or the SDK
    /// is disabled (`OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`).
    /// `default_name` names the service when `OTEL_SERVICE_NAME` does not.
    pub fn from_env(default_name: &str) -> Option<Self> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return None;
        }
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        Some(Self {
            endpoint,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| default_name.to_owned()),
        })
    }
}

/// What [`init`] set up; keep it until the process ends and call
/// [`shutdown`](Telemetry::shutdown) last, so the spans still queued are sent.
#[must_use = "dropping it is fine, but shutdown() sends the spans still queued"]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exports_traces(&self) -> bool {
        self.traces.is_some()
    }

    /// Sends every span ended so far (tests wait on this instead of the batch timer).
    pub fn flush(&self) {
        if let Some(provider) = &self.traces
            && let Err(e) = provider.force_flush()
        {
            tracing::warn!(error = %e, "flushing traces failed");
        }
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.traces
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "stopping the trace exporter failed");
        }
    }
}

/// Installs logging, and trace export as the environment says (see [`Otlp::from_env`]).
/// Must run inside the Tokio runtime (the exporter's gRPC channel lives on it).
pub fn init(format: LogFormat, default_service_name: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr, so a program's own output on stdout stays clean; colours only
    // when a person is watching.
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    init_with(
        format,
        Otlp::from_env(default_service_name),
        filter,
        BoxMakeWriter::new(std::io::stderr),
        on_terminal,
    )
}

/// Installs the global subscriber: logs in `format` through `filter` to `writer`, spans
/// to `otlp` if given. Calling it again (tests start many servers in one process) keeps
/// the first subscriber.
pub fn init_with(
    format: LogFormat,
    otlp: Option<Otlp>,
    filter: EnvFilter,
    writer: BoxMakeWriter,
    ansi: bool,
) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let logs = tracing_subscriber::fmt::layer()
        .with_target(true)
        .with_writer(writer)
        .with_ansi(ansi);
    let logs = match format {
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        LogFormat::Pretty => logs.compact().boxed(),
    };
    let traces = otlp.and_then(|otlp| match tracer_provider(&otlp) {
        Ok(provider) => Some(provider),
        Err(e) => {
            // No traces is better than no service: say so and go on.
            eprintln!(
                "traces are off: the OTLP exporter for {} failed: {e}",
                otlp.endpoint
            );
            None
        }
    });
    let export = traces.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("topsmile"))
            .with_error_records_to_exceptions(true)
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(export)
        .try_init()
        .is_ok();
    if !installed {
        // Another subscriber owns this process: its spans would never reach ours.
        if let Some(provider) = traces {
            let _ = provider.shutdown();
        }
        return Telemetry { traces: None };
    }
    Telemetry { traces }
}

fn tracer_provider(
    otlp: &Otlp,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(otlp.endpoint.clone())
        .with_timeout(std::time::Duration::from_secs(5))
        .build()?;
    let resource = Resource::builder()
        .with_service_name(otlp.service_name.clone())
        .build();
    // The sampler comes from OTEL_TRACES_SAMPLER (the SDK's default configuration
    // reads it); the batch processor's queue is bounded and drops when full.
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The span of one call served here, continuing the caller's trace from the request's
/// `traceparent`. `component` names the server (`gateway`, `identity`, ...), `path` the
/// method (`/package.Service/Method`), already checked to be one of the contracts' (an
/// unknown path is named `unknown`: a caller's text never becomes a span name).
///
/// Its `trace_id` and `span_id` fields are what the JSON logs show for every line
/// written during the call.
pub fn server_span(
    component: &'static str,
    path: &str,
    headers: &http::HeaderMap,
) -> tracing::Span {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("unknown", "unknown"));
    let span = tracing::info_span!(
        "rpc",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        component,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if span.is_disabled() {
        // No subscriber wants it (e.g. `RUST_LOG=warn`): skip the header parsing.
        return span;
    }
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(parent);
    let context = span.context();
    let ids = context.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    } else {
        // Traces are off here: the caller's trace id still ties the log lines together.
        let caller = crate::access::trace_id(headers);
        if !caller.is_empty() {
            span.record("trace_id", caller.as_str());
        }
    }
    span
}

/// Records how a call ended on its span (`code` is the gRPC status code).
pub fn record_outcome(span: &tracing::Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i32);
    if is_server_fault(code) {
        span.record("otel.status_code", "ERROR");
    }
}

/// The codes that mean the server failed, not the caller (OpenTelemetry's rule for gRPC
/// server spans).
fn is_server_fault(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

/// Writes the current span's trace context into `headers` (as `traceparent` and
/// `tracestate`) for the next hop. Without trace export there is no context and the
/// headers are left as they are (a caller's `traceparent` passes on unchanged).
pub fn inject(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// [`inject`] for a tonic request's metadata.
pub fn inject_metadata(metadata: &mut tonic::metadata::MetadataMap) {
    let mut headers = std::mem::take(metadata).into_headers();
    inject(&mut headers);
    *metadata = tonic::metadata::MetadataMap::from_headers(headers);
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_trace_export_a_callers_traceparent_passes_on_unchanged() {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static(caller));
        let span = server_span("test", "/a.B/C", &headers);
        let _entered = span.enter();
        let mut next = headers.clone();
        inject(&mut next);
        assert_eq!(
            next.get("traceparent").and_then(|v| v.to_str().ok()),
            Some(caller)
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type.
    fn the_otlp_endpoint_comes_from_the_standard_variables() {
        // figment's Jail restores the environment and serialises the tests that use it.
        figment::Jail::expect_with(|jail| {
            assert_eq!(Otlp::from_env("x"), None);
            jail.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
            assert_eq!(
                Otlp::from_env("topsmile-identity"),
                Some(Otlp {
                    endpoint: "http://collector:4317".into(),
                    service_name: "topsmile-identity".into()
                })
            );
            jail.set_env("OTEL_SERVICE_NAME", "identity-eu");
            assert_eq!(
                Otlp::from_env("x").map(|o| o.service_name),
                Some("identity-eu".into())
            );
            jail.set_env("OTEL_SDK_DISABLED", "true");
            assert_eq!(Otlp::from_env("x"), None);
            Ok(())
        });
    }
}
