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
//! Design choice: spans are our own small records ([`span`]), built with
//! explicit start and end times and written to OTLP's protobuf directly
//! ([`otlp`]), not through `tracing` and a bridge layer nor through the
//! OpenTelemetry SDK. The engine's stages (queue, prefill, decode) are
//! known only once the request finished, as timestamps the runtime
//! reports, which `tracing` spans cannot take; and the SDK's per-span cost
//! (building, converting to OTLP's types, encoding) was a third of a small
//! machine's throughput at full sampling. The `opentelemetry` API crate
//! still gives the attribute and span-kind types. Logs stay on `tracing`.

pub mod export;
pub mod genai;
pub mod http;
pub mod logs;
pub mod otlp;
pub mod semconv;
pub mod span;

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::http::HeaderMap;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

use crate::config::TelemetrySettings;
use span::{SpanIds, SpanRecord};

pub use opentelemetry::KeyValue as Attribute;

/// The W3C trace-context header.
pub const TRACEPARENT: &str = "traceparent";

/// The process's tracer; cheap to clone. `Telemetry::default()` is off.
#[derive(Clone, Default)]
pub struct Telemetry {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    sampling_ratio: f64,
    record_content: bool,
    /// Where sampled spans go when they end; `None` when spans exist only
    /// for their ids (JSON logs without a collector).
    queue: Option<export::SpanQueue>,
}

impl Shared {
    /// Whether spans with these ids are recorded at all.
    fn records(&self, ids: &SpanIds) -> bool {
        ids.sampled && self.queue.is_some()
    }

    fn finish(&self, span: SpanRecord) {
        if let Some(queue) = &self.queue {
            queue.push(span);
        }
    }
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
        let resource = vec![
            KeyValue::new(semconv::SERVICE_NAME, settings.service_name.clone()),
            KeyValue::new(semconv::SERVICE_VERSION, env!("CARGO_PKG_VERSION")),
        ];
        let (queue, exporter) = match &settings.otlp {
            Some(otlp) => {
                let (queue, exporter) = export::start(otlp, resource)?;
                (Some(queue), Some(exporter))
            }
            // JSON logs without a collector: ids only, nothing exported.
            None => (None, None),
        };
        tracing::info!(
            endpoint = settings.otlp.as_ref().map(|o| o.endpoint.as_str()),
            sampling_ratio = settings.sampling_ratio,
            record_content = settings.record_content,
            "traces on"
        );
        Ok((
            Self {
                shared: Some(Arc::new(Shared {
                    sampling_ratio: settings.sampling_ratio,
                    record_content: settings.record_content,
                    queue,
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
        let remote_parent = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(SpanIds::parse_traceparent);
        let ids = span::root_ids(remote_parent, shared.sampling_ratio);
        let record = shared.records(&ids).then(|| {
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
            SpanRecord::open(
                ids,
                remote_parent.map(|p| (p.span_id, true)),
                name.into(),
                SpanKind::Server,
                SystemTime::now(),
                attributes,
            )
        });
        Trace::open(shared.clone(), ids, record)
    }
}

/// A span of a request's trace that other spans hang under: the request's
/// root, or a stage with stages of its own (the provider call, whose
/// children are the engine's). Clones share the span; it ends at
/// [`Trace::end`] or when the last clone is dropped. `Trace::default()`
/// is off: every method is a no-op.
#[derive(Clone, Default)]
pub struct Trace {
    scope: Option<Arc<Scope>>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ids() {
            Some((trace_id, span_id)) => write!(f, "Trace({trace_id}/{span_id})"),
            None => f.write_str("Trace(off)"),
        }
    }
}

struct Scope {
    ids: SpanIds,
    /// The span while it is open and recorded: `None` once it ended, and
    /// from the start when it is not sampled or nothing is exported.
    open: Mutex<Option<SpanRecord>>,
    shared: Arc<Shared>,
}

impl Scope {
    /// A new span under this one from `start`: its ids, and its record
    /// when it is recorded.
    fn open_child(
        &self,
        name: Cow<'static, str>,
        kind: SpanKind,
        start: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> (SpanIds, Option<SpanRecord>) {
        let ids = self.ids.child();
        let record = self.shared.records(&ids).then(|| {
            SpanRecord::open(
                ids,
                Some((self.ids.span_id, false)),
                name,
                kind,
                start,
                attributes,
            )
        });
        (ids, record)
    }

    fn with_open(&self, change: impl FnOnce(&mut SpanRecord)) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(record) = open.as_mut() {
            change(record);
        }
    }

    fn end(&self) {
        let taken = self.open.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut record) = taken {
            record.close(SystemTime::now());
            self.shared.finish(record);
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        self.end();
    }
}

impl Trace {
    fn open(shared: Arc<Shared>, ids: SpanIds, record: Option<SpanRecord>) -> Self {
        Self {
            scope: Some(Arc::new(Scope {
                ids,
                open: Mutex::new(record),
                shared,
            })),
        }
    }

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
            span: self.scope.as_ref().and_then(|s| {
                let (_, record) = s.open_child(
                    name.into(),
                    SpanKind::Internal,
                    SystemTime::now(),
                    Vec::new(),
                );
                record.map(|record| Recording {
                    record,
                    shared: s.shared.clone(),
                })
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
        let Some(s) = &self.scope else {
            return Trace::default();
        };
        let (ids, record) = s.open_child(name.into(), kind, SystemTime::now(), attributes);
        Trace::open(s.shared.clone(), ids, record)
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
        if let (_, Some(mut record)) =
            s.open_child(name.into(), SpanKind::Internal, start, attributes)
        {
            record.close(end);
            s.shared.finish(record);
        }
    }

    pub fn set(&self, attribute: KeyValue) {
        if let Some(s) = &self.scope {
            s.with_open(|r| r.set(attribute));
        }
    }

    pub fn set_all(&self, attributes: Vec<KeyValue>) {
        if let Some(s) = &self.scope {
            s.with_open(|r| r.set_all(attributes));
        }
    }

    /// Marks the span failed: `error.type` and an error status.
    pub fn fail(&self, error_type: &str, message: impl Into<Cow<'static, str>>) {
        if let Some(s) = &self.scope {
            s.with_open(|r| fail(r, error_type, message.into()));
        }
    }

    /// Ends the span now (later calls do nothing).
    pub fn end(&self) {
        if let Some(s) = &self.scope {
            s.end();
        }
    }

    /// The `traceparent` header that makes a downstream call this span's
    /// child; `None` when off.
    pub fn traceparent(&self) -> Option<String> {
        self.scope.as_ref().map(|s| s.ids.traceparent())
    }

    /// The (trace id, span id) in hex, for log lines.
    pub fn ids(&self) -> Option<(String, String)> {
        let s = self.scope.as_ref()?;
        Some((s.ids.trace_id_hex(), s.ids.span_id_hex()))
    }
}

fn fail(record: &mut SpanRecord, error_type: &str, message: Cow<'static, str>) {
    record.set(KeyValue::new(semconv::ERROR_TYPE, error_type.to_string()));
    record.error = Some(message);
}

/// A leaf span; ends when dropped (an early return ends it too).
#[derive(Default)]
pub struct Stage {
    span: Option<Recording>,
}

struct Recording {
    record: SpanRecord,
    shared: Arc<Shared>,
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Some(Recording { mut record, shared }) = self.span.take() {
            record.close(SystemTime::now());
            shared.finish(record);
        }
    }
}

impl Stage {
    /// Whether this stage is recorded (telemetry on, trace sampled, a
    /// collector configured): attributes worth computing.
    pub fn is_on(&self) -> bool {
        self.span.is_some()
    }

    pub fn set(&mut self, attribute: KeyValue) {
        if let Some(span) = &mut self.span {
            span.record.set(attribute);
        }
    }

    /// Marks the stage failed with `error.type` (an HTTP status, an error
    /// code) and an error status.
    pub fn fail(&mut self, error_type: &str, message: impl Into<Cow<'static, str>>) {
        if let Some(span) = &mut self.span {
            fail(&mut span.record, error_type, message.into());
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

#[cfg(test)]
mod tests;
