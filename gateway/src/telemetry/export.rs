//! Finished spans to the collector: a bounded queue the request path pushes
//! into without waiting, and one task that batches it and exports over
//! OTLP/gRPC (`tonic`).
//!
//! Design choice: our own span processor rather than the SDK's batch
//! processor. The SDK's keeps its drop count to itself (it logs it at
//! shutdown); ours counts every span it could not keep
//! (`sluice_telemetry_spans_dropped_total{reason}`: `queue_full` while the
//! collector is slow or down, `export_failed` for a batch it refused), so
//! an operator sees what a down collector cost. The request path only ever
//! `try_send`s: a full queue drops the span, never waits for room.

use std::time::Duration;

use metrics::Counter;
use opentelemetry::Context;
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::OtlpSettings;

/// A failed export is logged at most this often (a down collector fails
/// every batch).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The counters of what happened to finished spans.
#[derive(Debug, Clone)]
struct Counters {
    exported: Counter,
    queue_full: Counter,
    export_failed: Counter,
}

impl Counters {
    fn new() -> Self {
        Self {
            // Named as in `metrics::catalog` (not imported from there:
            // `metrics` imports `auth`, which opens a span here).
            exported: metrics::counter!("sluice_telemetry_spans_exported_total"),
            queue_full: metrics::counter!("sluice_telemetry_spans_dropped_total", "reason" => "queue_full"),
            export_failed: metrics::counter!("sluice_telemetry_spans_dropped_total", "reason" => "export_failed"),
        }
    }
}

/// The span processor: hands sampled spans to the export task.
#[derive(Debug)]
pub struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
    counters: Counters,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.try_send(span).is_err() {
            self.counters.queue_full.increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The export task; [`Exporter::finish`] exports what is queued and stops it.
pub struct Exporter {
    task: JoinHandle<()>,
    stop: tokio_util::sync::CancellationToken,
}

impl Exporter {
    /// Stops taking spans, exports what is queued (within `limit`), ends.
    pub async fn finish(self, limit: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!("the trace exporter did not finish in time; queued spans are lost");
        }
    }
}

/// The processor for the tracer provider and the task that exports what it
/// queues.
pub fn start(
    settings: &OtlpSettings,
    resource: &Resource,
) -> Result<(QueueProcessor, Exporter), String> {
    let mut headers = axum::http::HeaderMap::new();
    for (name, value) in &settings.headers {
        let key = axum::http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("telemetry.headers: `{name}` is not a gRPC metadata name"))?;
        let mut value = axum::http::HeaderValue::from_str(value.expose())
            .map_err(|_| format!("telemetry.headers: the value of `{name}` is not ASCII"))?;
        value.set_sensitive(true);
        headers.insert(key, value);
    }
    let metadata = opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
    let mut exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(settings.timeout)
        .with_metadata(metadata)
        .build()
        .map_err(|e| format!("telemetry.endpoint: {e}"))?;
    exporter.set_resource(resource);
    let (queue, spans) = mpsc::channel(settings.queue);
    let counters = Counters::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(run(
        exporter,
        spans,
        Batching {
            batch: settings.batch,
            flush: settings.flush,
            // The exporter's own deadline, plus room for a slow connect.
            limit: settings.timeout * 2,
        },
        counters.clone(),
        stop.clone(),
    ));
    Ok((QueueProcessor { queue, counters }, Exporter { task, stop }))
}

struct Batching {
    batch: usize,
    flush: Duration,
    limit: Duration,
}

/// Collects up to `batch` spans, or what came within `flush` of the first,
/// and exports them; on `stop`, exports what is left and ends.
async fn run(
    exporter: SpanExporter,
    mut spans: mpsc::Receiver<SpanData>,
    batching: Batching,
    counters: Counters,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut last_warning: Option<tokio::time::Instant> = None;
    let mut batch = Vec::with_capacity(batching.batch);
    loop {
        let stopping = tokio::select! {
            n = spans.recv_many(&mut batch, batching.batch) => {
                if n == 0 {
                    true
                } else {
                    // Wait a little for the batch to fill, unless it is full.
                    let deadline = tokio::time::Instant::now() + batching.flush;
                    let mut stopping = false;
                    while batch.len() < batching.batch {
                        let room = batching.batch - batch.len();
                        tokio::select! {
                            n = spans.recv_many(&mut batch, room) => if n == 0 { stopping = true; break },
                            () = tokio::time::sleep_until(deadline) => break,
                            () = stop.cancelled() => { stopping = true; break }
                        }
                    }
                    stopping
                }
            }
            () = stop.cancelled() => true,
        };
        if stopping {
            spans.close();
            while let Ok(span) = spans.try_recv() {
                batch.push(span);
            }
        }
        while !batch.is_empty() {
            let take = batch.len().min(batching.batch);
            let chunk: Vec<SpanData> = batch.drain(..take).collect();
            export(&exporter, chunk, &batching, &counters, &mut last_warning).await;
        }
        if stopping {
            let _ = exporter.shutdown();
            return;
        }
    }
}

async fn export(
    exporter: &SpanExporter,
    chunk: Vec<SpanData>,
    batching: &Batching,
    counters: &Counters,
    last_warning: &mut Option<tokio::time::Instant>,
) {
    let n = chunk.len() as u64;
    let failure = match tokio::time::timeout(batching.limit, exporter.export(chunk)).await {
        Ok(Ok(())) => {
            counters.exported.increment(n);
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {:?}", batching.limit),
    };
    counters.export_failed.increment(n);
    let now = tokio::time::Instant::now();
    if last_warning.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
        *last_warning = Some(now);
        tracing::warn!(
            spans = n,
            error = %failure,
            "cannot export spans to the collector; dropping them (counted in \
             sluice_telemetry_spans_dropped_total)"
        );
    }
}
