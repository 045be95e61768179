//! [`AuditLog`]: the [`AuditSink`] the server wires in. `submit` stamps
//! the record and hands it to one writer task per sink through a bounded
//! channel (`try_send`: it never waits). Each writer appends what it
//! receives to its sink's [`Spool`] (fsync per batch), then delivers from
//! the spool in order and acknowledges only what the sink took; a failing
//! sink is retried with backoff while new records keep spooling behind.
//!
//! `fail_closed`: while a spool cannot be written, or the store sink is
//! failing, [`AuditLog::available`] is false and `submit` refuses, so the
//! chain answers 503 rather than serve unaudited.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sinks::{Deliver, FileSink, StoreSink};
use super::spool::Spool;
use super::syslog::SyslogSink;
use super::{AuditEvent, AuditRecord, AuditSink, AuditUnavailable};
use crate::config::{AuditMode, AuditSettings, AuditSinkConfig};
use crate::store::Store;

/// Records waiting for one writer. Generous: the writer only falls this far
/// behind if the spool's disk stalls (a sink outage is absorbed by the spool).
const QUEUE: usize = 16_384;
/// Records per spool append and per delivery.
const BATCH: usize = 256;
/// Retry backoff for a failing sink.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A delivery that hangs this long counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Records kept in memory when the spool itself cannot be written.
const MAX_UNSPOOLED: usize = 100_000;

struct SinkHandle {
    name: &'static str,
    tx: mpsc::Sender<AuditRecord>,
    healthy: Arc<AtomicBool>,
}

/// The audit log's front: one channel per sink.
pub struct AuditLog {
    sinks: Vec<SinkHandle>,
    mode: AuditMode,
}

/// The writer tasks; [`AuditWriters::finish`] waits until they have
/// spooled what was queued and tried one last delivery.
pub struct AuditWriters {
    stop: CancellationToken,
    handles: Vec<JoinHandle<()>>,
}

impl AuditWriters {
    /// Stops the writers after they drain their queues (at most `within`).
    pub async fn finish(self, within: Duration) {
        self.stop.cancel();
        let all = futures_util::future::join_all(self.handles);
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!(
                "the audit writers did not finish in time; the spool keeps what they held"
            );
        }
    }
}

impl AuditLog {
    /// Opens every sink's spool and starts its writer.
    pub fn start(
        settings: &AuditSettings,
        store: &Store,
    ) -> Result<(Arc<Self>, AuditWriters), String> {
        let stop = CancellationToken::new();
        let mut sinks = Vec::new();
        let mut handles = Vec::new();
        for config in &settings.sinks {
            let name = config.name();
            let (deliver, critical): (Box<dyn Deliver>, bool) = match config {
                AuditSinkConfig::Store => (Box::new(StoreSink(store.clone())), true),
                AuditSinkConfig::File(path) => (Box::new(FileSink::new(path.clone())), false),
                AuditSinkConfig::Syslog(target) => {
                    (Box::new(SyslogSink::new(target.clone())), false)
                }
            };
            let (spool, pending) = Spool::open(&settings.spool_dir, name).map_err(|e| {
                format!(
                    "cannot open the audit spool in {} ({e}); set `[audit] spool_dir` to a writable folder",
                    settings.spool_dir.display()
                )
            })?;
            if !pending.is_empty() {
                tracing::info!(
                    sink = name,
                    records = pending.len(),
                    "delivering audit records spooled before the restart"
                );
            }
            let (tx, rx) = mpsc::channel(QUEUE);
            let healthy = Arc::new(AtomicBool::new(true));
            let writer = Writer {
                name,
                deliver,
                critical,
                spool: Arc::new(std::sync::Mutex::new(spool)),
                pending: pending.into_iter().map(|(r, end)| (r, Some(end))).collect(),
                healthy: healthy.clone(),
                spool_ok: true,
                sink_ok: true,
            };
            handles.push(tokio::spawn(writer.run(rx, stop.clone())));
            sinks.push(SinkHandle { name, tx, healthy });
        }
        let log = Arc::new(Self {
            sinks,
            mode: settings.mode,
        });
        Ok((log, AuditWriters { stop, handles }))
    }
}

impl AuditLog {
    /// Every sink's spool is writable and the store (if a sink) takes records.
    pub fn healthy(&self) -> bool {
        self.sinks.iter().all(|s| s.healthy.load(Ordering::Relaxed))
    }
}

impl AuditSink for AuditLog {
    fn submit(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        let closed = self.mode == AuditMode::FailClosed;
        if !self.available() {
            metrics::counter!("sluice_audit_refused_total").increment(1);
            return Err(AuditUnavailable);
        }
        let record = AuditRecord::stamp(event, crate::util::unix_now_ms());
        let mut lost = false;
        for sink in &self.sinks {
            if sink.tx.try_send(record.clone()).is_err() {
                lost = true;
                metrics::counter!("sluice_audit_lost_total", "sink" => sink.name).increment(1);
                tracing::error!(sink = sink.name, action = %record.action, "the audit queue is full; the record is lost for this sink");
            }
        }
        if lost && closed {
            return Err(AuditUnavailable);
        }
        Ok(())
    }

    fn available(&self) -> bool {
        self.mode == AuditMode::FailOpen || self.healthy()
    }

    fn writable(&self) -> bool {
        self.healthy()
    }
}

/// One sink's writer: owns its spool and the records not yet delivered.
struct Writer {
    name: &'static str,
    deliver: Box<dyn Deliver>,
    /// Whether a failing delivery makes the log unavailable (the store: the
    /// chain of record). Other sinks' outages are what the spool is for.
    critical: bool,
    /// Shared with the blocking pool's file I/O, one call at a time.
    spool: Arc<std::sync::Mutex<Spool>>,
    /// Oldest first; the spool offset just past each, `None` when it could
    /// not be spooled.
    pending: VecDeque<(AuditRecord, Option<u64>)>,
    healthy: Arc<AtomicBool>,
    spool_ok: bool,
    sink_ok: bool,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<AuditRecord>, stop: CancellationToken) {
        let mut backoff = RETRY_MIN;
        let mut retry_at = (!self.pending.is_empty()).then(Instant::now);
        let mut stopping = false;
        while !stopping {
            let mut batch = Vec::new();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => stopping = n == 0,
                () = tokio::time::sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => {}
                () = stop.cancelled() => {
                    stopping = true;
                    while let Ok(r) = rx.try_recv() {
                        batch.push(r);
                    }
                }
            }
            if !batch.is_empty() {
                self.spool_batch(batch).await;
            }
            if retry_at.is_some_and(|t| t > Instant::now()) && !stopping {
                continue;
            }
            match self.deliver_pending().await {
                Ok(()) => {
                    retry_at = None;
                    backoff = RETRY_MIN;
                }
                Err(e) => {
                    if retry_at.is_none() || backoff == RETRY_MIN {
                        tracing::warn!(sink = self.name, error = %e, pending = self.pending.len(), "audit sink failing; records wait in the spool");
                    }
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
        if !self.pending.is_empty() {
            tracing::warn!(
                sink = self.name,
                pending = self.pending.len(),
                "stopping with audit records in the spool; they go out at the next start"
            );
        }
    }

    /// Runs spool file I/O on the blocking pool.
    fn with_spool<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Spool) -> std::io::Result<T> + Send + 'static,
    ) -> impl std::future::Future<Output = std::io::Result<T>> + Send + 'static {
        let spool = self.spool.clone();
        let blocking = tokio::task::spawn_blocking(move || {
            let mut spool = spool
                .lock()
                .map_err(|_| std::io::Error::other("the spool's lock is poisoned"))?;
            f(&mut spool)
        });
        async move { blocking.await.map_err(std::io::Error::other)? }
    }

    /// Appends to the spool; the records join `pending` either way (in
    /// memory only if the spool failed).
    async fn spool_batch(&mut self, batch: Vec<AuditRecord>) {
        let batch = Arc::new(batch);
        let records = batch.clone();
        let appended = self.with_spool(move |spool| spool.append(&records)).await;
        let batch = Arc::try_unwrap(batch).unwrap_or_else(|shared| (*shared).clone());
        match appended {
            Ok(ends) => {
                self.spool_ok = true;
                self.pending
                    .extend(batch.into_iter().zip(ends.into_iter().map(Some)));
            }
            Err(e) => {
                self.spool_ok = false;
                metrics::counter!("sluice_audit_spool_errors_total", "sink" => self.name)
                    .increment(1);
                tracing::error!(sink = self.name, error = %e, "cannot write the audit spool");
                let room = MAX_UNSPOOLED.saturating_sub(self.pending.len());
                if batch.len() > room {
                    metrics::counter!("sluice_audit_lost_total", "sink" => self.name)
                        .increment((batch.len() - room) as u64);
                }
                self.pending
                    .extend(batch.into_iter().take(room).map(|r| (r, None)));
            }
        }
        self.update_health();
    }

    /// Delivers everything pending, a batch at a time, in order.
    async fn deliver_pending(&mut self) -> Result<(), String> {
        while !self.pending.is_empty() {
            let n = self.pending.len().min(BATCH);
            let records: Vec<AuditRecord> = self
                .pending
                .iter()
                .take(n)
                .map(|(r, _)| r.clone())
                .collect();
            let delivered = match tokio::time::timeout(
                DELIVERY_TIMEOUT,
                self.deliver.deliver(&records),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {} s", DELIVERY_TIMEOUT.as_secs())),
            };
            if let Err(e) = delivered {
                self.sink_ok = false;
                self.update_health();
                metrics::counter!("sluice_audit_delivery_errors_total", "sink" => self.name)
                    .increment(1);
                return Err(e);
            }
            let end = self.pending.drain(..n).filter_map(|(_, end)| end).max();
            if let Some(end) = end {
                if let Err(e) = self.with_spool(move |spool| spool.ack(end)).await {
                    self.spool_ok = false;
                    tracing::error!(sink = self.name, error = %e, "cannot record the audit spool's progress");
                }
            }
            metrics::counter!("sluice_audit_records_total", "sink" => self.name)
                .increment(n as u64);
            self.sink_ok = true;
            self.update_health();
        }
        Ok(())
    }

    fn update_health(&self) {
        let ok = self.spool_ok && (self.sink_ok || !self.critical);
        self.healthy.store(ok, Ordering::Relaxed);
    }
}
