//! The process's log lines: text for people, or one JSON object per line
//! for log pipelines, each line of a request carrying its `trace_id` and
//! `span_id` so logs and traces join.
//!
//! [`init`] installs the subscriber before the configuration is read (in
//! `main`), in the format `SLUICE_LOG_FORMAT` asks for; [`set_format`]
//! switches it once `[telemetry] log_format` is known. The ids come from
//! the `request` span's `trace_id` / `span_id` fields (the server records
//! them when traces are on): [`TraceIdLayer`] keeps them in the span's
//! extensions, where the JSON formatter finds them for every line logged
//! inside the request.

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// The span field names the ids travel in.
pub const TRACE_ID_FIELD: &str = "trace_id";
pub const SPAN_ID_FIELD: &str = "span_id";

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

static HANDLE: OnceLock<reload::Handle<BoxedLayer, Registry>> = OnceLock::new();

/// Installs the process's subscriber: the filter from `SLUICE_LOG` (or
/// `RUST_LOG`, else `info`), lines to stderr in the format of
/// `SLUICE_LOG_FORMAT` (text when unset or unknown: the configuration, read
/// later, reports a bad value).
pub fn init() {
    let filter = EnvFilter::try_from_env("SLUICE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let format = std::env::var("SLUICE_LOG_FORMAT")
        .ok()
        .and_then(|v| LogFormat::parse("SLUICE_LOG_FORMAT", &v).ok())
        .unwrap_or_default();
    let (lines, handle) = reload::Layer::new(lines_layer(format));
    let _ = HANDLE.set(handle);
    let _ = tracing_subscriber::registry()
        .with(lines)
        .with(TraceIdLayer)
        .with(filter)
        .try_init();
}

/// Switches the format of the lines written from now on.
pub fn set_format(format: LogFormat) {
    if let Some(handle) = HANDLE.get() {
        if let Err(e) = handle.reload(lines_layer(format)) {
            tracing::warn!(error = %e, "cannot switch the log format");
        }
    }
}

fn lines_layer(format: LogFormat) -> BoxedLayer {
    let layer = tracing_subscriber::fmt::layer::<Registry>()
        .with_writer(std::io::stderr)
        // A failed write would be reported with `eprint!`, which panics when
        // stderr is closed (a supervisor that died): every log line would
        // then panic the task or thread that wrote it. Lose the line instead.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => Box::new(layer.with_ansi(std::io::stderr().is_terminal())),
        LogFormat::Json => Box::new(layer.with_ansi(false).event_format(JsonLines)),
    }
}

/// The ids a `request` span was given.
#[derive(Debug, Clone, Default)]
struct TraceIds {
    trace_id: Option<String>,
    span_id: Option<String>,
}

impl Visit for TraceIds {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            TRACE_ID_FIELD => self.trace_id = Some(value.to_string()),
            SPAN_ID_FIELD => self.span_id = Some(value.to_string()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if matches!(field.name(), TRACE_ID_FIELD | SPAN_ID_FIELD) {
            // `%value` arrives as Display through Debug: no quotes.
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

/// Keeps the trace ids of spans that carry them in the span's extensions.
pub struct TraceIdLayer;

impl<S> Layer<S> for TraceIdLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().fields().field(TRACE_ID_FIELD).is_none() {
            return;
        }
        let mut ids = TraceIds::default();
        attrs.record(&mut ids);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(ids);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(ids) = extensions.get_mut::<TraceIds>() {
            values.record(ids);
        }
    }
}

/// One JSON object per line: `timestamp`, `level`, `target`, the event's
/// fields (`message` among them), and the request's `trace_id`/`span_id`
/// when the line was logged inside one.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(jiff::Timestamp::now().to_string()),
        );
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_string()));
        let mut fields = JsonFields(Map::new());
        event.record(&mut fields);
        line.extend(fields.0);
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                let extensions = span.extensions();
                if let Some(ids) = extensions.get::<TraceIds>() {
                    if let Some(t) = &ids.trace_id {
                        line.insert(TRACE_ID_FIELD.into(), Value::String(t.clone()));
                    }
                    if let Some(s) = &ids.span_id {
                        line.insert(SPAN_ID_FIELD.into(), Value::String(s.clone()));
                    }
                    break;
                }
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// An event's fields as JSON values.
struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_string(), Value::String(value.to_string()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::Bool(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            Value::String(format!("{value:?}")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Collects what the formatter writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_inside_a_request_carry_its_trace_and_span_ids() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::registry().with(TraceIdLayer).with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .event_format(JsonLines),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before");
            let span = tracing::info_span!(
                "request",
                path = "/v1/x",
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty
            );
            span.record(TRACE_ID_FIELD, "0af7651916cd43dd8448eb211c80319c");
            span.record(SPAN_ID_FIELD, tracing::field::display("b7ad6b7169203331"));
            let _in = span.enter();
            let inner = tracing::info_span!("inner");
            let _inner = inner.enter();
            tracing::warn!(status = 200u64, "answered");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "before");
        assert!(lines[0].get(TRACE_ID_FIELD).is_none());
        assert_eq!(lines[1]["message"], "answered");
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["status"], 200);
        assert_eq!(lines[1][TRACE_ID_FIELD], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(lines[1][SPAN_ID_FIELD], "b7ad6b7169203331");
    }
}
