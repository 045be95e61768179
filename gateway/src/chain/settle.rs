//! Settling after the answer: the stages that reserved something before
//! the model ran (tokens per minute, a budget, a concurrency slot) or
//! record what it cost (the spend log) learn how the answer ended, exactly
//! once: when it completes, when it fails, or when the client goes away
//! (the answer is dropped unfinished).

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sluice_runtime::Usage;
use tokio::time::Instant;

use crate::answer::{Answer, BoxAnswer, Step};
use crate::router::Provenance;
use crate::telemetry::{semconv, Attribute, Trace};

/// How an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    /// With the HTTP status the error would have had.
    Failed(u16),
    /// The client disconnected (or the response was dropped) first.
    Disconnected,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed(_) => "failed",
            Self::Disconnected => "disconnected",
        }
    }
}

/// What a settling stage is told.
pub struct Settlement<'a> {
    pub ending: Ending,
    /// Tokens so far (all of them once completed).
    pub usage: Usage,
    /// At the serving deployment's price; 0 for a cache hit.
    pub cost: f64,
    /// `None` for a cache hit, and for a request that failed before any
    /// deployment answered.
    pub provenance: Option<&'a Provenance>,
    /// From the handler's start to the end of the answer.
    pub elapsed: Duration,
    /// Answered from the cache.
    pub cache_hit: bool,
}

impl Settlement<'_> {
    pub fn cache_hit(&self) -> bool {
        self.cache_hit
    }
}

/// Settles a request that failed before any answer existed (no deployment
/// could take it): nothing was generated, and its stages learn so.
pub fn unanswered(settles: Vec<Box<dyn Settle>>, status: u16, started: Instant) {
    let settlement = Settlement {
        ending: Ending::Failed(status),
        usage: Usage::default(),
        cost: 0.0,
        provenance: None,
        elapsed: started.elapsed(),
        cache_hit: false,
    };
    for settle in settles {
        settle.settle(&settlement);
    }
}

/// A stage that settles once the answer ends.
pub trait Settle: Send {
    fn settle(self: Box<Self>, settlement: &Settlement<'_>);
}

/// An answer that tells its [`Settle`]s how it ended, exactly once.
pub struct Settled {
    inner: BoxAnswer,
    settles: Vec<Box<dyn Settle>>,
    provenance: Option<Provenance>,
    started: Instant,
    /// The recorders' span hangs under it.
    trace: Trace,
}

impl Settled {
    pub fn wrap(
        inner: BoxAnswer,
        settles: Vec<Box<dyn Settle>>,
        provenance: Option<Provenance>,
        started: Instant,
        trace: Trace,
    ) -> BoxAnswer {
        if settles.is_empty() {
            return inner;
        }
        Box::new(Self {
            inner,
            settles,
            provenance,
            started,
            trace,
        })
    }

    fn finish(&mut self, ending: Ending) {
        if self.settles.is_empty() {
            return;
        }
        let mut span = self.trace.stage(semconv::stage::RECORDERS);
        span.set(Attribute::new(semconv::SLUICE_ENDING, ending.as_str()));
        let usage = self.inner.usage();
        let cost = self.provenance.as_ref().map_or(0.0, |p| p.cost(&usage));
        let settlement = Settlement {
            ending,
            usage,
            cost,
            provenance: self.provenance.as_ref(),
            elapsed: self.started.elapsed(),
            cache_hit: self.provenance.is_none(),
        };
        for settle in std::mem::take(&mut self.settles) {
            settle.settle(&settlement);
        }
    }
}

impl Answer for Settled {
    fn num_choices(&self) -> usize {
        self.inner.num_choices()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        async move {
            let step = self.inner.next().await;
            match &step {
                None => self.finish(Ending::Completed),
                Some(Step::Failed(err)) => self.finish(Ending::Failed(err.status().as_u16())),
                Some(_) => {}
            }
            step
        }
        .boxed()
    }

    fn usage(&self) -> Usage {
        self.inner.usage()
    }
}

impl Drop for Settled {
    fn drop(&mut self) {
        self.finish(Ending::Disconnected);
    }
}

/// The rate limits' lease: the tokens the answer did not use go back (all
/// of them for a cache hit, which no model generated), the slot is freed.
impl Settle for crate::limits::Lease {
    fn settle(self: Box<Self>, settlement: &Settlement<'_>) {
        let used = if settlement.cache_hit() {
            0
        } else {
            settlement.usage.prompt_tokens + settlement.usage.completion_tokens
        };
        (*self).finish(used as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use sluice_runtime::FinishReason;
    use std::sync::{Arc, Mutex};

    struct Scripted(Vec<Step>, Usage);

    impl Answer for Scripted {
        fn num_choices(&self) -> usize {
            1
        }
        fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
            let step = if self.0.is_empty() {
                None
            } else {
                self.1.completion_tokens += 1;
                Some(self.0.remove(0))
            };
            async move { step }.boxed()
        }
        fn usage(&self) -> Usage {
            self.1
        }
    }

    /// Each settlement seen: how it ended and the completion tokens.
    type Seen = Arc<Mutex<Vec<(Ending, usize)>>>;

    struct Record(Seen);

    impl Settle for Record {
        fn settle(self: Box<Self>, s: &Settlement<'_>) {
            self.0
                .lock()
                .unwrap()
                .push((s.ending, s.usage.completion_tokens));
        }
    }

    fn token() -> Step {
        Step::Token {
            choice: 0,
            text: "x".into(),
            logprob: None,
            token: None,
        }
    }

    fn wrapped(steps: Vec<Step>) -> (BoxAnswer, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Settled::wrap(
            Box::new(Scripted(steps, Usage::default())),
            vec![Box::new(Record(seen.clone()))],
            None,
            Instant::now(),
            Trace::default(),
        );
        (answer, seen)
    }

    #[tokio::test]
    async fn a_completed_answer_settles_once_with_its_usage() {
        let finished = Step::Finished {
            choice: 0,
            reason: FinishReason::Stop,
            text: String::new(),
            stop_sequence: None,
        };
        let (mut answer, seen) = wrapped(vec![token(), token(), finished]);
        while answer.next().await.is_some() {}
        assert!(answer.next().await.is_none());
        drop(answer);
        assert_eq!(*seen.lock().unwrap(), [(Ending::Completed, 3)]);
    }

    #[tokio::test]
    async fn a_failure_and_a_disconnect_settle_too() {
        let (mut answer, seen) =
            wrapped(vec![token(), Step::Failed(ApiError::Internal("x".into()))]);
        while answer.next().await.is_some() {}
        drop(answer);
        assert_eq!(*seen.lock().unwrap(), [(Ending::Failed(500), 2)]);

        let (mut answer, seen) = wrapped(vec![token(), token(), token()]);
        answer.next().await;
        drop(answer);
        assert_eq!(*seen.lock().unwrap(), [(Ending::Disconnected, 1)]);
    }
}
