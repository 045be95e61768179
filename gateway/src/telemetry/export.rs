//! Finished spans to the collector: a bounded queue the request path pushes
//! into without waiting, and one task that batches it, writes each batch as
//! one OTLP export request ([`super::otlp`]) and sends it over gRPC
//! (`tonic`).
//!
//! Every span the queue could not keep is counted
//! (`sluice_telemetry_spans_dropped_total{reason}`: `queue_full` while the
//! collector is slow or down, `export_failed` for a batch it refused), so
//! an operator sees what a down collector cost. The request path only ever
//! `try_send`s: a full queue drops the span, never waits for room.

use std::time::Duration;

use axum::http::uri::PathAndQuery;
use bytes::{Buf as _, BufMut as _};
use metrics::Counter;
use opentelemetry::KeyValue;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::otlp;
use super::span::SpanRecord;
use crate::config::OtlpSettings;

/// The instrumentation scope every span is exported under.
const SCOPE: &str = "sluice";

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

/// Where sampled spans go when they end: the export task's queue.
#[derive(Debug)]
pub struct SpanQueue {
    queue: mpsc::Sender<SpanRecord>,
    counters: Counters,
}

impl SpanQueue {
    /// A queue whose spans the caller reads itself (no export task).
    #[cfg(test)]
    pub(super) fn for_tests(capacity: usize) -> (Self, mpsc::Receiver<SpanRecord>) {
        let (queue, spans) = mpsc::channel(capacity);
        let counters = Counters::new();
        (Self { queue, counters }, spans)
    }

    pub fn push(&self, span: SpanRecord) {
        if self.queue.try_send(span).is_err() {
            self.counters.queue_full.increment(1);
        }
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

/// The queue spans are pushed into and the task that exports what it
/// holds, with `resource` (the process's attributes) on every request.
pub fn start(
    settings: &OtlpSettings,
    resource: Vec<KeyValue>,
) -> Result<(SpanQueue, Exporter), String> {
    let mut headers = axum::http::HeaderMap::new();
    for (name, value) in &settings.headers {
        let key = axum::http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("telemetry.headers: `{name}` is not a gRPC metadata name"))?;
        let mut value = axum::http::HeaderValue::from_str(value.expose())
            .map_err(|_| format!("telemetry.headers: the value of `{name}` is not ASCII"))?;
        value.set_sensitive(true);
        headers.insert(key, value);
    }
    let collector = Collector {
        channel: channel(&settings.endpoint, settings.timeout)?,
        metadata: MetadataMap::from_headers(headers),
        resource,
    };
    let (queue, spans) = mpsc::channel(settings.queue);
    let counters = Counters::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(run(
        collector,
        spans,
        Batching {
            batch: settings.batch,
            flush: settings.flush,
            // The request's own deadline, plus room for a slow connect.
            limit: settings.timeout * 2,
        },
        counters.clone(),
        stop.clone(),
    ));
    Ok((SpanQueue { queue, counters }, Exporter { task, stop }))
}

/// A lazily connected channel to `endpoint` (TLS with the system's roots
/// for `https://`); a collector that is down costs failed exports, never a
/// failed start.
fn channel(endpoint: &str, timeout: Duration) -> Result<Channel, String> {
    let mut builder = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| format!("telemetry.endpoint: `{endpoint}`: {e}"))?
        .timeout(timeout)
        .connect_timeout(timeout);
    if endpoint.starts_with("https://") {
        builder = builder
            .tls_config(ClientTlsConfig::new().with_enabled_roots())
            .map_err(|e| format!("telemetry.endpoint: TLS for `{endpoint}`: {e}"))?;
    }
    Ok(builder.connect_lazy())
}

/// The collector's address and what every request to it carries.
struct Collector {
    channel: Channel,
    metadata: MetadataMap,
    resource: Vec<KeyValue>,
}

impl Collector {
    async fn export(&self, spans: &[SpanRecord]) -> Result<(), String> {
        let body = otlp::export_request(&self.resource, SCOPE, spans);
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| format!("the collector is not reachable: {e}"))?;
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.metadata.clone();
        grpc.unary(
            request,
            PathAndQuery::from_static(otlp::EXPORT_PATH),
            EncodedExport,
        )
        .await
        .map(|_| ())
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
    }
}

/// A gRPC codec for a request already encoded ([`otlp::export_request`]);
/// the answer (`ExportTraceServiceResponse`, whose only content is an
/// optional partial-success count) is read and set aside.
struct EncodedExport;

impl Codec for EncodedExport {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for EncodedExport {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for EncodedExport {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

struct Batching {
    batch: usize,
    flush: Duration,
    limit: Duration,
}

/// Collects up to `batch` spans, or what came within `flush` of the first,
/// and exports them; on `stop`, exports what is left and ends.
async fn run(
    collector: Collector,
    mut spans: mpsc::Receiver<SpanRecord>,
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
            export(
                &collector,
                &batch[..take],
                &batching,
                &counters,
                &mut last_warning,
            )
            .await;
            batch.drain(..take);
        }
        if stopping {
            return;
        }
    }
}

async fn export(
    collector: &Collector,
    chunk: &[SpanRecord],
    batching: &Batching,
    counters: &Counters,
    last_warning: &mut Option<tokio::time::Instant>,
) {
    let n = chunk.len() as u64;
    let failure = match tokio::time::timeout(batching.limit, collector.export(chunk)).await {
        Ok(Ok(())) => {
            counters.exported.increment(n);
            return;
        }
        Ok(Err(e)) => e,
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
