//! The spend log: one row per generation request (who, which model and
//! deployment, tokens, cost, what it would have cost at the reference cloud
//! price, cache hit, local, latency, how it ended), and the reports read
//! from it ([`report`]).
//!
//! Rows are written off the request path: [`SpendLog::record`] puts a row
//! on a bounded queue and returns; the [`writer`] task inserts them in
//! batches. A full queue is never a silent drop: it is counted
//! (`sluice_spend_queue_full_total`) and reported to the audit log
//! (`spend.queue_full`), at most once per [`FULL_REPORT_EVERY`] with the
//! number of rows lost since the last report.

pub mod report;
pub mod stats;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_runtime::Usage;
use tokio::sync::mpsc;

use crate::audit::{actions, Audit, AuditEvent, AuditOutcome};
use crate::auth::Principal;
use crate::config::{Price, ReferencePrice, SpendSettings};

pub use writer::SpendWriter;

/// How often, at most, a full queue is written to the audit log.
pub const FULL_REPORT_EVERY: Duration = Duration::from_secs(10);

/// One row of the `spend` table.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendRow {
    pub request_id: String,
    pub at_ms: i64,
    pub key_prefix: Option<String>,
    pub tenant: String,
    pub team: Option<String>,
    pub user: Option<String>,
    pub model: String,
    pub deployment: Option<String>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cached_tokens: i64,
    pub cost: f64,
    pub reference_cost: f64,
    pub cache_hit: bool,
    pub local: bool,
    pub latency_ms: i64,
    /// `completed`, `failed_<status>` or `disconnected`.
    pub status: String,
}

/// What the chain knows of a request once its answer ended.
pub struct Served<'a> {
    pub principal: &'a Principal,
    /// The public model name the request asked for.
    pub model: &'a str,
    /// `None` for a cache hit.
    pub deployment: Option<&'a str>,
    pub local: bool,
    pub usage: Usage,
    pub cost: f64,
    pub latency: Duration,
    pub cache_hit: bool,
    pub status: String,
}

/// The handle the chain holds; cheap to clone.
#[derive(Clone)]
pub struct SpendLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<SpendRow>,
    reference: ReferencePrice,
    audit: Audit,
    /// Rows lost to a full queue since the process started.
    dropped: AtomicU64,
    /// When a full queue was last reported, and the rows lost since.
    last_report: Mutex<(Option<Instant>, u64)>,
}

impl SpendLog {
    /// The handle and its writer (started with [`SpendWriter::start`]).
    pub fn new(settings: &SpendSettings, audit: Audit) -> (Self, SpendWriter) {
        let (tx, rx) = mpsc::channel(settings.queue);
        let log = Self {
            inner: Arc::new(Inner {
                tx,
                reference: settings.reference.clone(),
                audit,
                dropped: AtomicU64::new(0),
                last_report: Mutex::new((None, 0)),
            }),
        };
        (log, SpendWriter::new(rx, settings))
    }

    /// What `usage` would have cost at the reference price of `model`.
    pub fn reference_cost(&self, model: &str, usage: &Usage) -> f64 {
        let Price {
            input_per_1k,
            output_per_1k,
        } = self.inner.reference.for_model(model);
        (usage.prompt_tokens as f64 * input_per_1k + usage.completion_tokens as f64 * output_per_1k)
            / 1000.0
    }

    /// Queues the request's row; never waits.
    pub fn record(&self, served: Served<'_>) {
        let Served {
            principal,
            model,
            deployment,
            local,
            usage,
            cost,
            latency,
            cache_hit,
            status,
        } = served;
        let at_ms = crate::util::unix_now_ms();
        let row = SpendRow {
            // Unique across instances without a system call per row (a v4
            // UUID reads the OS's randomness each time), and in time order,
            // so the key's index grows at its end (a random key dirtied a
            // different index page per row: most of the store's work).
            request_id: crate::util::new_ordered_id("spend", at_ms),
            at_ms,
            key_prefix: principal.key_prefix().map(str::to_string),
            tenant: principal.tenant.to_string(),
            team: principal.team.as_deref().map(str::to_string),
            user: principal.user.as_deref().map(str::to_string),
            model: model.to_string(),
            deployment: deployment.map(str::to_string),
            tokens_in: usage.prompt_tokens as i64,
            tokens_out: usage.completion_tokens as i64,
            cached_tokens: usage.cached_prompt_tokens as i64,
            cost: if cost.is_finite() { cost } else { 0.0 },
            reference_cost: self.reference_cost(model, &usage),
            cache_hit,
            local,
            latency_ms: i64::try_from(latency.as_millis()).unwrap_or(i64::MAX),
            status,
        };
        if self.inner.tx.try_send(row).is_err() {
            self.queue_full();
        }
    }

    /// Rows lost to a full queue since start.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    fn queue_full(&self) {
        self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_spend_queue_full_total").increment(1);
        let lost = {
            let Ok(mut last) = self.inner.last_report.lock() else {
                return;
            };
            last.1 += 1;
            let due = last.0.is_none_or(|at| at.elapsed() >= FULL_REPORT_EVERY);
            if !due {
                return;
            }
            let lost = last.1;
            *last = (Some(Instant::now()), 0);
            lost
        };
        tracing::error!(lost, "the spend queue is full: spend rows are being lost");
        // The audit's own failure (fail-closed, down) cannot be reported here
        // beyond the metric and the log line above.
        let _ = self.inner.audit.record(
            AuditEvent::new(actions::SPEND_QUEUE_FULL, "sluice", AuditOutcome::Failure).detail(
                format!("{lost} spend rows lost to a full queue since the last report"),
            ),
        );
    }
}

#[cfg(test)]
mod tests;
