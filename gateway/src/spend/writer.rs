//! The spend log's writer task: takes rows off the queue and inserts them
//! in batches (up to `batch_rows` per transaction, several rows per
//! statement), flushing a partial batch after `flush_ms`. A failed insert
//! is retried with the same rows (an insert that did land is not doubled:
//! `request_id` is the key). On shutdown it drains the queue first.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::SpendRow;
use crate::config::SpendSettings;
use crate::store::{Backend, Store, StoreError};

/// Rows per INSERT statement (17 parameters each): a batch is cut into the
/// largest of these that fit, so only these few statements are ever
/// prepared (each connection caches them) whatever a batch's size. On
/// SQLite the parameters are anonymous `?`s, bound by position: sqlx's
/// SQLite driver looks a `$N` parameter up by name, a cost quadratic in a
/// statement's parameters (at 100 rows of `$N`,
/// `sqlite3_bind_parameter_name` took 22% of the gateway's CPU at 8,000
/// requests/s; bench/RESULTS.md). Positional, a statement may be long;
/// each one costs a round trip to the driver's worker thread.
const STATEMENT_ROWS: [usize; 4] = [64, 16, 4, 1];
/// The columns of a row, in the order they are bound.
const COLUMNS: usize = 17;
/// Attempts at one batch before it is given up (and counted lost).
const ATTEMPTS: u32 = 5;
const RETRY_MIN: Duration = Duration::from_millis(200);

/// The queue's receiving end, until [`SpendWriter::start`].
pub struct SpendWriter {
    rx: mpsc::Receiver<SpendRow>,
    batch_rows: usize,
    flush: Duration,
}

/// The running writer.
pub struct SpendWorker {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl SpendWorker {
    /// Flushes what is queued and stops (at most `within`).
    pub async fn finish(self, within: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(within, self.handle).await.is_err() {
            tracing::warn!("the spend writer did not finish flushing in time");
        }
    }
}

impl SpendWriter {
    pub(super) fn new(rx: mpsc::Receiver<SpendRow>, settings: &SpendSettings) -> Self {
        Self {
            rx,
            batch_rows: settings.batch_rows,
            flush: settings.flush,
        }
    }

    pub fn start(self, store: Store) -> SpendWorker {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(self.run(store, stop.clone()));
        SpendWorker { stop, handle }
    }

    async fn run(mut self, store: Store, stop: CancellationToken) {
        let mut stopping = false;
        while !stopping {
            let mut batch = Vec::with_capacity(self.batch_rows);
            tokio::select! {
                n = self.rx.recv_many(&mut batch, self.batch_rows) => stopping = n == 0,
                () = stop.cancelled() => stopping = true,
            }
            // Fill the batch until it is full or its first row has waited `flush`.
            let deadline = Instant::now() + self.flush;
            while !stopping && batch.len() < self.batch_rows {
                let room = self.batch_rows - batch.len();
                tokio::select! {
                    n = self.rx.recv_many(&mut batch, room) => stopping = n == 0,
                    () = tokio::time::sleep_until(deadline) => break,
                    () = stop.cancelled() => stopping = true,
                }
            }
            if stopping {
                while let Ok(row) = self.rx.try_recv() {
                    batch.push(row);
                }
            }
            for chunk in batch.chunks(self.batch_rows) {
                write_with_retries(&store, chunk).await;
            }
        }
    }
}

async fn write_with_retries(store: &Store, rows: &[SpendRow]) {
    if rows.is_empty() {
        return;
    }
    let mut wait = RETRY_MIN;
    for attempt in 1..=ATTEMPTS {
        match insert(store, rows).await {
            Ok(()) => {
                metrics::counter!("sluice_spend_rows_total").increment(rows.len() as u64);
                return;
            }
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, rows = rows.len(), "writing spend rows failed; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => {
                metrics::counter!("sluice_spend_lost_total").increment(rows.len() as u64);
                tracing::error!(error = %e, rows = rows.len(), "spend rows could not be written and are lost");
            }
        }
    }
}

/// Inserts rows in one transaction, several per statement.
pub async fn insert(store: &Store, rows: &[SpendRow]) -> Result<(), StoreError> {
    let positional = store.backend() == Backend::Sqlite;
    let mut tx = store.pool().begin().await?;
    let mut rest = rows;
    while !rest.is_empty() {
        let take = STATEMENT_ROWS
            .into_iter()
            .find(|&n| n <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        let sql = statement(chunk.len(), positional);
        let mut query = sqlx::query(&sql);
        for r in chunk {
            // Borrowed: the rows outlive the statement (and are kept for a
            // retry), so no text is copied here.
            query = query
                .bind(r.request_id.as_str())
                .bind(r.at_ms)
                .bind(r.key_prefix.as_deref())
                .bind(r.tenant.as_str())
                .bind(r.team.as_deref())
                .bind(r.user.as_deref())
                .bind(r.model.as_str())
                .bind(r.deployment.as_deref())
                .bind(r.tokens_in)
                .bind(r.tokens_out)
                .bind(r.cached_tokens)
                .bind(r.cost)
                .bind(r.reference_cost)
                .bind(i64::from(r.cache_hit))
                .bind(i64::from(r.local))
                .bind(r.latency_ms)
                .bind(r.status.as_str());
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The INSERT of `rows` rows: `?` parameters (bound in order) or `$N`.
fn statement(rows: usize, positional: bool) -> String {
    let mut sql = String::from(
        "INSERT INTO spend (request_id, at_ms, key_prefix, tenant, team, user_id, model, \
         deployment, tokens_in, tokens_out, cached_tokens, cost, reference_cost, cache_hit, \
         local, latency_ms, status) VALUES ",
    );
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..COLUMNS {
            if column > 0 {
                sql.push_str(", ");
            }
            if positional {
                sql.push('?');
            } else {
                sql.push_str(&format!("${}", row * COLUMNS + column + 1));
            }
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (request_id) DO NOTHING");
    sql
}

#[cfg(test)]
mod statement_tests {
    use super::statement;

    #[test]
    fn parameters_are_numbered_for_postgres_and_positional_for_sqlite() {
        let numbered = statement(2, false);
        assert!(numbered.contains("VALUES ($1, $2, "), "{numbered}");
        assert!(numbered.contains(", $34)"), "{numbered}");
        assert!(!numbered.contains('?'));
        let positional = statement(2, true);
        assert_eq!(positional.matches('?').count(), 34);
        assert!(!positional.contains('$'));
    }
}
