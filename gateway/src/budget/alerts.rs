//! Off the request path: settling reservations, and the alerts that a
//! settle can set off.
//!
//! An alert goes out once per budget, period and threshold across all
//! instances: the instance that sees a threshold crossed inserts a row into
//! `budget_alerts` first, and only the one whose insert made the row posts
//! the webhook and writes the audit record. Each instance also remembers
//! what it has seen sent, so a budget past 80% costs no insert per request.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{book, from_micros, Held, Replace, Shared};
use crate::audit::{actions, AuditEvent, AuditOutcome};
use crate::util::unix_now_ms;

/// Webhook posts in flight at most; past it an alert's post waits for one
/// to finish (the row and the audit record are written regardless).
const MAX_POSTS: usize = 16;
/// Remembered (counter, threshold) pairs before the memory starts over
/// (the store's rows still stop a second alert).
const MAX_REMEMBERED: usize = 100_000;
/// A settle that fails is tried once more after this.
const SETTLE_RETRY: Duration = Duration::from_millis(200);
/// Reservations settled in one ledger call at most: what queued while the
/// last call was on its way goes in the next one.
const SETTLE_BATCH: usize = 256;

/// One reservation to replace by its actual cost.
pub(crate) struct Job {
    pub(crate) held: Vec<Held>,
    pub(crate) reserved: i64,
    pub(crate) actual: i64,
}

/// Settles reservations and sends alerts; run [`BudgetWorker::run`] on a
/// task of its own. It ends once every [`super::Budgets`] (and so every
/// sender) is gone, after the last settle.
pub struct BudgetWorker {
    shared: Arc<Shared>,
    jobs: mpsc::Receiver<Job>,
    /// Built only when a webhook is configured (a client needs the TLS
    /// provider the server installs at start).
    http: Option<reqwest::Client>,
    announced: HashSet<(String, u32)>,
    posts: JoinSet<()>,
}

impl BudgetWorker {
    pub(crate) fn new(shared: Arc<Shared>, jobs: mpsc::Receiver<Job>) -> Self {
        let http = shared.settings.alert_webhook.as_ref().and_then(|_| {
            reqwest::Client::builder()
                .timeout(shared.settings.alert_timeout)
                .build()
                .map_err(|e| tracing::error!(error = %e, "cannot build the budget alert webhook's client"))
                .ok()
        });
        Self {
            shared,
            jobs,
            http,
            announced: HashSet::new(),
            posts: JoinSet::new(),
        }
    }

    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(SETTLE_BATCH);
        while self.jobs.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
            self.handle(std::mem::take(&mut batch)).await;
            while self.posts.try_join_next().is_some() {}
        }
        while self.posts.join_next().await.is_some() {}
    }

    async fn handle(&mut self, jobs: Vec<Job>) {
        let replaces: Vec<Replace> = jobs.iter().map(Job::replace).collect();
        let Some(spent) = settle_only(&self.shared, &replaces).await else {
            return;
        };
        for (job, spent) in jobs.iter().zip(spent) {
            for (held, spent) in job.held.iter().zip(spent) {
                let Some(spent) = spent else { continue };
                self.check_thresholds(held, spent).await;
            }
        }
    }

    async fn check_thresholds(&mut self, held: &Held, spent: i64) {
        let shared = self.shared.clone();
        let thresholds = held
            .budget
            .alert_thresholds
            .as_deref()
            .unwrap_or(&shared.settings.alert_thresholds);
        for &pct in thresholds {
            let crossed =
                i128::from(spent) * 100 >= i128::from(held.counter.limit) * i128::from(pct);
            if !crossed {
                continue;
            }
            if self.announced.len() >= MAX_REMEMBERED {
                self.announced.clear();
            }
            if !self.announced.insert((held.counter.key.clone(), pct)) {
                continue;
            }
            match book::claim_alert(
                &self.shared.store,
                &held.budget,
                held.window.start_ms,
                pct,
                unix_now_ms(),
            )
            .await
            {
                Ok(true) => self.send(held, pct, spent).await,
                Ok(false) => {}
                Err(e) => {
                    // Not sent: let a later settle try the claim again.
                    self.announced.remove(&(held.counter.key.clone(), pct));
                    tracing::warn!(error = %e, budget = %held.budget.name(), "cannot record a budget alert");
                }
            }
        }
    }

    async fn send(&mut self, held: &Held, pct: u32, spent: i64) {
        let budget = &held.budget;
        let currency = &self.shared.settings.currency;
        tracing::warn!(budget = %budget.name(), pct, spent = from_micros(spent), "budget alert");
        let _ = self.shared.audit.record(
            AuditEvent::new(actions::BUDGET_ALERT, "sluice", AuditOutcome::Success)
                .target(budget.name())
                .detail(format!(
                    "{pct}% of {:.4} {currency} per {} reached: {:.4} spent",
                    budget.amount,
                    budget.period.as_str(),
                    from_micros(spent)
                )),
        );
        let (Some(url), Some(http)) = (
            self.shared.settings.alert_webhook.clone(),
            self.http.clone(),
        ) else {
            return;
        };
        let body = json!({
            "event": actions::BUDGET_ALERT,
            "scope": budget.scope.as_str(),
            "target": budget.target,
            "threshold_pct": pct,
            "spent": from_micros(spent),
            "amount": budget.amount,
            "currency": currency,
            "period": budget.period.as_str(),
            "period_start_ms": held.window.start_ms,
            "period_end_ms": held.window.end_ms,
        });
        if self.posts.len() >= MAX_POSTS {
            let _ = self.posts.join_next().await;
        }
        let name = budget.name();
        self.posts.spawn(async move {
            match http.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(status = r.status().as_u16(), budget = %name, "the budget alert webhook refused the alert"),
                Err(e) => tracing::warn!(error = %e, budget = %name, "the budget alert webhook failed"),
            }
        });
    }
}

impl Job {
    /// What the ledger needs of it.
    pub(crate) fn replace(&self) -> Replace {
        Replace {
            keys: self.held.iter().map(|h| h.counter.key.clone()).collect(),
            reserved: self.reserved,
            actual: self.actual,
        }
    }
}

/// Settles on the ledger (retrying once); per reservation, each counter's
/// spent afterwards, `None` when it failed twice (logged: those
/// reservations stay held until their period ends).
pub(crate) async fn settle_only(
    shared: &Shared,
    batch: &[Replace],
) -> Option<Vec<Vec<Option<i64>>>> {
    for attempt in 0..2 {
        match shared.ledger.settle(batch).await {
            Ok(spent) => return Some(spent),
            Err(e) if attempt == 0 => {
                tracing::warn!(error = %e, "budget settle failed; retrying");
                tokio::time::sleep(SETTLE_RETRY).await;
            }
            Err(e) => {
                tracing::error!(error = %e, reservations = batch.len(), "budget settle failed; the reservations stay held")
            }
        }
    }
    None
}
