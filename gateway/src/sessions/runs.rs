//! Background responses running on this instance (`/v1/responses` with
//! `background: true`): for each, the token that cancels it and the events
//! its stream has made so far, which any number of readers follow (the
//! client that created it with `stream: true`, and later `GET
//! ...?stream=true&starting_after=N` calls) without holding the run up.
//!
//! The store is the truth about a run's status; this registry only lets
//! this instance cancel its own runs at once and serve their live events.
//! A run removes itself once its final state is stored, so a reader that
//! finds no run here reads the store instead and never misses the end.
//!
//! Design choice: the events are kept whole in memory while the run lasts
//! (a few hundred bytes a token, dropped when it ends) rather than written
//! to the store piece by piece: a reader on this instance gets each event
//! as it is made, and the store is written twice per run, not per token.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Background runs at most on one instance: each holds an engine sequence
/// or an upstream connection and its events in memory; past this a new one
/// is refused (429) rather than queued without bound.
pub const MAX_RUNS: usize = 256;

/// One run's shared state.
pub struct Run {
    cancel: CancellationToken,
    /// Every event so far, in `sequence_number` order.
    log: Mutex<Vec<Value>>,
    /// The number of events logged, and whether the run has ended (its
    /// final state stored: nothing more will be logged).
    progress: watch::Sender<Progress>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    events: usize,
    ended: bool,
}

impl Run {
    /// Cancelled by `POST /v1/responses/{id}/cancel` or by shutdown.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Adds events to the log and wakes its readers.
    pub fn log(&self, events: impl IntoIterator<Item = Value>) {
        let mut log = lock(&self.log);
        log.extend(events);
        let n = log.len();
        drop(log);
        self.progress.send_modify(|p| p.events = n);
    }

    /// Says that nothing more will be logged: readers end after the last
    /// event. Called once the run's final state is stored.
    pub fn close(&self) {
        self.progress.send_modify(|p| p.ended = true);
    }

    /// A reader of the events after `starting_after` (a sequence number;
    /// -1 for all), in order, ending when the run does.
    pub fn follow(self: &Arc<Self>, starting_after: i64) -> Follower {
        Follower {
            run: self.clone(),
            next: usize::try_from(starting_after.saturating_add(1)).unwrap_or(0),
            progress: self.progress.subscribe(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding it left a whole Vec (pushes do not tear).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads a run's events as they come.
pub struct Follower {
    run: Arc<Run>,
    /// Index (= sequence number) of the next event to hand out.
    next: usize,
    progress: watch::Receiver<Progress>,
}

impl Follower {
    /// The next events, waiting for some; empty once the run has ended and
    /// everything was read.
    pub async fn next_batch(&mut self) -> Vec<Value> {
        loop {
            let Progress { events, ended } = *self.progress.borrow_and_update();
            // `ended` is set after the last event was logged, so an ended
            // run's count is final.
            if events > self.next {
                let log = lock(&self.run.log);
                let batch: Vec<Value> = log.get(self.next..).unwrap_or_default().to_vec();
                drop(log);
                self.next += batch.len();
                return batch;
            }
            if ended || self.progress.changed().await.is_err() {
                return Vec::new();
            }
        }
    }
}

/// This instance's background runs.
#[derive(Default)]
pub struct Runs {
    runs: Mutex<HashMap<String, Arc<Run>>>,
    tasks: Mutex<JoinSet<()>>,
    /// Set at shutdown: no new run starts.
    closed: CancellationToken,
}

/// Why a run could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// [`MAX_RUNS`] are running.
    Full,
    /// The server is shutting down.
    Closed,
}

impl Runs {
    /// Registers a run under `id` and spawns `work(run)`, which must call
    /// [`Runs::end`] for `id` once the run's final state is stored (the
    /// registry also forgets it if the task ends without saying so).
    pub fn start<F, Fut>(self: &Arc<Self>, id: &str, work: F) -> Result<Arc<Run>, Refused>
    where
        F: FnOnce(Arc<Run>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.closed.is_cancelled() {
            return Err(Refused::Closed);
        }
        let (progress, _) = watch::channel(Progress::default());
        let run = Arc::new(Run {
            cancel: self.closed.child_token(),
            log: Mutex::new(Vec::new()),
            progress,
        });
        {
            let mut runs = lock(&self.runs);
            if runs.len() >= MAX_RUNS {
                return Err(Refused::Full);
            }
            runs.insert(id.to_string(), run.clone());
        }
        let fut = work(run.clone());
        let (runs, id) = (self.clone(), id.to_string());
        let mut tasks = lock(&self.tasks);
        // Reap finished tasks so the set holds only live ones.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            fut.await;
            runs.end(&id);
        });
        Ok(run)
    }

    /// The run of `id`, while it runs here.
    pub fn get(&self, id: &str) -> Option<Arc<Run>> {
        lock(&self.runs).get(id).cloned()
    }

    /// Forgets a run: its readers see the end of its events. Called once
    /// its final state is stored.
    pub fn end(&self, id: &str) {
        if let Some(run) = lock(&self.runs).remove(id) {
            run.close();
        }
    }

    /// Runs here now.
    pub fn len(&self) -> usize {
        lock(&self.runs).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// At shutdown: refuses new runs, cancels the running ones (each stores
    /// itself as failed) and waits up to `grace` for them to end.
    pub async fn shut_down(&self, grace: Duration) {
        self.closed.cancel();
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        let all = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("background responses still storing their end at shutdown; dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_follower_gets_every_event_after_its_start_and_ends_with_the_run() {
        let runs = Arc::new(Runs::default());
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let run = runs
            .start("resp_1", move |run| async move {
                run.log([json!({"n": 0}), json!({"n": 1})]);
                let _ = wait.await;
                run.log([json!({"n": 2})]);
            })
            .unwrap();
        let mut late = run.follow(0);
        let mut all = run.follow(-1);
        assert_eq!(all.next_batch().await.len(), 2);
        let first = late.next_batch().await;
        assert_eq!(first, vec![json!({"n": 1})]);
        go.send(()).unwrap();
        assert_eq!(late.next_batch().await, vec![json!({"n": 2})]);
        assert_eq!(all.next_batch().await, vec![json!({"n": 2})]);
        // The run's task ended and forgot it: the followers end.
        assert!(late.next_batch().await.is_empty());
        assert!(runs.get("resp_1").is_none());
        // A follower that starts past the end gets nothing, and ends.
        assert!(all.next_batch().await.is_empty());
    }

    #[tokio::test]
    async fn shutdown_cancels_runs_and_refuses_new_ones() {
        let runs = Arc::new(Runs::default());
        let run = runs
            .start("resp_2", |run| async move {
                run.cancel_token().cancelled().await;
                run.log([json!({"cancelled": true})]);
            })
            .unwrap();
        runs.shut_down(Duration::from_secs(5)).await;
        assert!(run.cancel_token().is_cancelled());
        assert_eq!(run.follow(-1).next_batch().await.len(), 1);
        assert!(runs.is_empty());
        assert!(matches!(
            runs.start("resp_3", |_| async {}),
            Err(Refused::Closed)
        ));
    }

    #[tokio::test]
    async fn more_than_the_cap_is_refused() {
        let runs = Arc::new(Runs::default());
        let stop = CancellationToken::new();
        for i in 0..MAX_RUNS {
            let stop = stop.clone();
            runs.start(
                &format!("r{i}"),
                move |_| async move { stop.cancelled().await },
            )
            .unwrap();
        }
        assert!(matches!(
            runs.start("one-more", |_| async {}),
            Err(Refused::Full)
        ));
        stop.cancel();
        runs.shut_down(Duration::from_secs(5)).await;
        assert!(runs.is_empty());
    }
}
