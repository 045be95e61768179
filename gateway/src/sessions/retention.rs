//! Retention: a background task that purges sessions untouched for longer
//! than `[sessions] retention_days`, from the store and from Redis, once at
//! start and then every `purge_interval_seconds`, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{SessionStore, Sessions};
use crate::util::unix_now_ms;

/// One purge: sessions whose last change is older than `keep`; how many.
pub async fn purge_once(sessions: &Sessions, keep: Duration) -> usize {
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    let cutoff = unix_now_ms().saturating_sub(keep_ms);
    match sessions.purge_before(cutoff).await {
        Ok(ids) => {
            if !ids.is_empty() {
                tracing::info!(purged = ids.len(), "sessions past retention purged");
                metrics::counter!("sluice_sessions_purged_total").increment(ids.len() as u64);
            }
            ids.len()
        }
        Err(e) => {
            tracing::warn!(error = %e, "session purge failed; retrying at the next interval");
            0
        }
    }
}

/// Purges every `every` until `shutdown` is cancelled.
pub async fn run(
    sessions: Arc<Sessions>,
    keep: Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        purge_once(&sessions, keep).await;
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
