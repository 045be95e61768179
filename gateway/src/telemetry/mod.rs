//! Traces and logs: OpenTelemetry spans for every stage a request passes,
//! exported over OTLP/gRPC ([`export`]), and the process's log lines, as
//! text or JSON with the request's trace id ([`logs`]).
//!
//! [`Telemetry`] is built once at start from `[telemetry]`. Per request,
//! [`Telemetry::request`] opens the root (server) span, continuing the
//! client's trace when a W3C `traceparent` came with it, and hands back a
//! [`Trace`]: the handle stages hang their spans under. A `Trace` is cheap
//! to clone and a no-op when telemetry is off, so the chain calls it
//! unconditionally and pays nothing then.
//!
//! Design choice: spans are built with the OpenTelemetry API directly, not
//! through `tracing` and a bridge layer. The engine's stages (queue,
//! prefill, decode) are known only once the request finished, as
//! timestamps the runtime reports; the API takes explicit start and end
//! times, `tracing` spans cannot. Logs stay on `tracing`.

pub mod export;
pub mod genai;
pub mod http;
pub mod logs;
pub mod semconv;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::TelemetrySettings;

pub use opentelemetry::KeyValue as Attribute;

/// The W3C trace-context header.
pub const TRACEPARENT: &str = "traceparent";

/// The process's tracer; cheap to clone. `Telemetry::default()` is off.
#[derive(Clone, Default)]
pub struct Telemetry {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    tracer: SdkTracer,
    /// Held, never read: the span processor lives as long as it does.
    _provider: SdkTracerProvider,
    record_content: bool,
    propagator: TraceContextPropagator,
}

impl Telemetry {
    /// Spans are built when traces are exported or log lines want trace ids;
    /// otherwise telemetry is off. Must run inside the tokio runtime (the
    /// exporter's task starts here). The returned [`export::Exporter`], when
    /// there is one, flushes at shutdown.
    pub fn start(settings: &TelemetrySettings) -> Result<(Self, Option<export::Exporter>), String> {
        let wants_ids = settings.log_format == crate::config::LogFormat::Json;
        if settings.otlp.is_none() && !wants_ids {
            return Ok((Self::default(), None));
        }
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let sampler = if settings.sampling_ratio >= 1.0 {
            Sampler::AlwaysOn
        } else {
            Sampler::TraceIdRatioBased(settings.sampling_ratio)
        };
        // A client's sampled flag is followed, so a trace it started is
        // never cut in half here.
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(sampler)))
            .with_resource(resource.clone());
        let exporter = match &settings.otlp {
            Some(otlp) => {
                let (processor, exporter) = export::start(otlp, &resource)?;
                builder = builder.with_span_processor(processor);
                Some(exporter)
            }
            // JSON logs without a collector: ids only, nothing exported.
            None => None,
        };
        let provider = builder.build();
        let tracer = provider.tracer("sluice");
        tracing::info!(
            endpoint = settings.otlp.as_ref().map(|o| o.endpoint.as_str()),
            sampling_ratio = settings.sampling_ratio,
            record_content = settings.record_content,
            "traces on"
        );
        Ok((
            Self {
                shared: Some(Arc::new(Shared {
                    tracer,
                    _provider: provider,
                    record_content: settings.record_content,
                    propagator: TraceContextPropagator::new(),
                })),
            },
            exporter,
        ))
    }

    pub fn is_on(&self) -> bool {
        self.shared.is_some()
    }

    /// Opens a request's root span, `"{method} {route}"` (the method alone
    /// for an empty route), as the child of the client's `traceparent` when
    /// it sent a valid one.
    pub fn request(&self, method: &str, route: &str, headers: &HeaderMap) -> Trace {
        let Some(shared) = &self.shared else {
            return Trace::default();
        };
        let parent = shared
            .propagator
            .extract_with_context(&Context::new(), &HeaderExtractor(headers));
        let mut attributes = vec![KeyValue::new(
            semconv::HTTP_REQUEST_METHOD,
            method.to_string(),
        )];
        let name = if route.is_empty() {
            method.to_string()
        } else {
            attributes.push(KeyValue::new(semconv::HTTP_ROUTE, route.to_string()));
            format!("{method} {route}")
        };
        let span = shared
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&shared.tracer, &parent);
        Trace {
            scope: Some(Scope {
                cx: parent.with_span(span),
                shared: shared.clone(),
            }),
        }
    }
}

/// A span of a request's trace that other spans hang under: the request's
/// root, or a stage with stages of its own (the provider call, whose
/// children are the engine's). Clones share the span. `Trace::default()`
/// is off: every method is a no-op.
#[derive(Clone, Default)]
pub struct Trace {
    scope: Option<Scope>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ids() {
            Some((trace_id, span_id)) => write!(f, "Trace({trace_id}/{span_id})"),
            None => f.write_str("Trace(off)"),
        }
    }
}

#[derive(Clone)]
struct Scope {
    /// Holds the span (`cx.span()`), shared by the clones.
    cx: Context,
    shared: Arc<Shared>,
}

impl Trace {
    pub fn is_on(&self) -> bool {
        self.scope.is_some()
    }

    /// Prompts and answers may be put on spans (`record_content = true`).
    pub fn records_content(&self) -> bool {
        self.scope.as_ref().is_some_and(|s| s.shared.record_content)
    }

    /// A leaf span under this one, started now; it ends when dropped.
    pub fn stage(&self, name: &'static str) -> Stage {
        Stage {
            span: self.scope.as_ref().map(|s| {
                s.shared
                    .tracer
                    .span_builder(name)
                    .with_kind(SpanKind::Internal)
                    .start_with_context(&s.shared.tracer, &s.cx)
            }),
        }
    }

    /// A span under this one that has spans of its own.
    pub fn child(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Trace {
        Trace {
            scope: self.scope.as_ref().map(|s| {
                let span = s
                    .shared
                    .tracer
                    .span_builder(name)
                    .with_kind(kind)
                    .with_attributes(attributes)
                    .start_with_context(&s.shared.tracer, &s.cx);
                Scope {
                    cx: s.cx.with_span(span),
                    shared: s.shared.clone(),
                }
            }),
        }
    }

    /// A finished span under this one, from `start` to `end` (stages timed
    /// elsewhere: the engine's, converted with one [`WallClock`]).
    pub fn span_between(
        &self,
        name: &'static str,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<KeyValue>,
    ) {
        let Some(s) = &self.scope else { return };
        let mut span = s
            .shared
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&s.shared.tracer, &s.cx);
        span.end_with_timestamp(end);
    }

    pub fn set(&self, attribute: KeyValue) {
        if let Some(s) = &self.scope {
            s.cx.span().set_attribute(attribute);
        }
    }

    pub fn set_all(&self, attributes: Vec<KeyValue>) {
        if let Some(s) = &self.scope {
            s.cx.span().set_attributes(attributes);
        }
    }

    /// Marks the span failed: `error.type` and an error status.
    pub fn fail(&self, error_type: &str, message: impl Into<Cow<'static, str>>) {
        if let Some(s) = &self.scope {
            let span = s.cx.span();
            span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type.to_string()));
            span.set_status(Status::error(message));
        }
    }

    /// Ends the span now (later calls do nothing).
    pub fn end(&self) {
        if let Some(s) = &self.scope {
            s.cx.span().end();
        }
    }

    /// The `traceparent` header that makes a downstream call this span's
    /// child; `None` when off.
    pub fn traceparent(&self) -> Option<String> {
        let s = self.scope.as_ref()?;
        let span = s.cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| traceparent(sc))
    }

    /// The (trace id, span id) in hex, for log lines.
    pub fn ids(&self) -> Option<(String, String)> {
        let s = self.scope.as_ref()?;
        let span = s.cx.span();
        let sc = span.span_context();
        sc.is_valid()
            .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
    }
}

/// A leaf span; ends when dropped (an early return ends it too).
#[derive(Default)]
pub struct Stage {
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl Stage {
    pub fn is_on(&self) -> bool {
        self.span.is_some()
    }

    pub fn set(&mut self, attribute: KeyValue) {
        if let Some(span) = &mut self.span {
            span.set_attribute(attribute);
        }
    }

    /// Marks the stage failed with `error.type` (an HTTP status, an error
    /// code) and an error status.
    pub fn fail(&mut self, error_type: &str, message: impl Into<Cow<'static, str>>) {
        if let Some(span) = &mut self.span {
            span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type.to_string()));
            span.set_status(Status::error(message));
        }
    }

    /// Ends it now with the outcome of `result` (a failure's status as its
    /// `error.type`).
    pub fn end_with<T>(mut self, result: &Result<T, crate::error::ApiError>) {
        if let (true, Err(e)) = (self.is_on(), result) {
            self.fail(e.status().as_str(), e.to_string());
        }
    }
}

/// `00-{trace id}-{span id}-{flags}` (W3C trace context, version 00).
fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// Monotonic instants as wall-clock times (spans carry wall-clock times;
/// the engine measures with `Instant`). One reading of both clocks converts
/// a set of instants, so equal instants stay equal and order is kept.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    instant: Instant,
    wall: SystemTime,
}

impl WallClock {
    pub fn now() -> Self {
        Self {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    pub fn at(&self, at: Instant) -> SystemTime {
        if at <= self.instant {
            self.wall - self.instant.duration_since(at)
        } else {
            self.wall + at.duration_since(self.instant)
        }
    }
}

/// Reads propagation headers from a request.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;

    fn on() -> Telemetry {
        // JSON logs alone turn spans on (ids, no exporter): enough to test
        // propagation without a collector.
        let settings = TelemetrySettings {
            log_format: LogFormat::Json,
            ..TelemetrySettings::default()
        };
        Telemetry::start(&settings).unwrap().0
    }

    fn headers(traceparent: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, traceparent.parse().unwrap());
        h
    }

    #[test]
    fn a_clients_traceparent_is_continued() {
        let t = on();
        let trace = t.request(
            "POST",
            "/v1/chat/completions",
            &headers("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        let (trace_id, span_id) = trace.ids().unwrap();
        assert_eq!(trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_ne!(span_id, "b7ad6b7169203331", "the root is a new span");
        let call = trace.child("chat m", SpanKind::Client, Vec::new());
        let sent = call.traceparent().unwrap();
        let (_, call_span) = call.ids().unwrap();
        assert_eq!(
            sent,
            format!("00-0af7651916cd43dd8448eb211c80319c-{call_span}-01")
        );
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        let t = on();
        let trace = t.request("POST", "/v1/completions", &headers("00-zz-11-01"));
        let (trace_id, _) = trace.ids().unwrap();
        assert_eq!(trace_id.len(), 32);
        assert_ne!(trace_id, "00000000000000000000000000000000");
    }

    #[test]
    fn off_is_a_no_op() {
        let trace = Telemetry::default().request("POST", "/v1/x", &HeaderMap::new());
        assert!(!trace.is_on());
        assert!(trace.traceparent().is_none());
        let mut stage = trace.stage(semconv::stage::AUTH);
        stage.set(KeyValue::new("k", 1));
        assert!(!trace.records_content());
    }

    #[test]
    fn one_wall_clock_keeps_gaps_between_instants_exact() {
        let clock = WallClock::now();
        let a = Instant::now();
        let b = a + std::time::Duration::from_millis(5);
        let before = a - std::time::Duration::from_millis(3);
        let gap = clock.at(b).duration_since(clock.at(a)).unwrap();
        assert_eq!(gap, std::time::Duration::from_millis(5));
        let gap = clock.at(a).duration_since(clock.at(before)).unwrap();
        assert_eq!(gap, std::time::Duration::from_millis(3));
        assert_eq!(clock.at(a), clock.at(a));
    }
}
