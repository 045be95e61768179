//! The budget's stop on the way out: an answer that reaches the output
//! tokens its reservation paid for is finished there, each choice still
//! open with `finish_reason: "length"`, so no answer runs past its budget.
//!
//! Tokens are counted as the larger of the producer's own usage and the
//! token steps seen (a provider's stream reports usage only at its end;
//! each of its deltas is at least one token).
//!
//! It is an early stop like the stream analysers' (`analyse`): the
//! producer is dropped at the cap (the engine frees the sequence, a
//! provider's connection closes), and the stop is noted as `budget`
//! (`x-sluice-stop-reason`, the final chunk's `sluice_stop_reason`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sluice_runtime::{FinishReason, Usage};

use crate::answer::{Answer, BoxAnswer, EarlyStop, Step, StopNote};

/// Output tokens seen so far, shared with the reservation's settle (which
/// charges them when a provider's usage never came).
#[derive(Debug, Clone, Default)]
pub struct Seen(Arc<AtomicU64>);

impl Seen {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct Capped {
    /// `None` once the cap is reached: dropped, so the producer stops.
    inner: Option<BoxAnswer>,
    /// The producer's usage when it was dropped.
    frozen: Usage,
    stop: StopNote,
    /// Output tokens, over every choice, the reservation covers.
    cap: u64,
    steps: u64,
    seen: Seen,
    finished: Vec<bool>,
    /// Set once the cap is reached: the inner answer is no longer read.
    stopped: bool,
}

impl Capped {
    pub fn wrap(inner: BoxAnswer, cap: u64, seen: Seen, stop: StopNote) -> BoxAnswer {
        let choices = inner.num_choices();
        Box::new(Self {
            inner: Some(inner),
            frozen: Usage::default(),
            stop,
            cap,
            steps: 0,
            seen,
            finished: vec![false; choices],
            stopped: false,
        })
    }

    fn generated(&self) -> u64 {
        (self.usage().completion_tokens as u64).max(self.steps)
    }

    /// The cap is reached: the producer is dropped and the stop noted.
    fn reach_cap(&mut self) {
        self.stopped = true;
        if let Some(inner) = self.inner.take() {
            self.frozen = inner.usage();
        }
        self.frozen.completion_tokens = self.frozen.completion_tokens.max(self.steps as usize);
        if self.finished.iter().any(|done| !done) {
            self.stop.set(EarlyStop {
                finish: FinishReason::Length,
                reason: "budget",
            });
            metrics::counter!(crate::metrics::catalog::STREAM_STOPS, "analyser" => "budget")
                .increment(1);
        }
    }

    /// The next choice to close after the cap, if any is still open.
    fn close_next(&mut self) -> Option<Step> {
        let choice = self.finished.iter().position(|done| !done)?;
        self.finished[choice] = true;
        Some(Step::Finished {
            choice,
            reason: FinishReason::Length,
            text: String::new(),
        })
    }
}

impl Answer for Capped {
    fn num_choices(&self) -> usize {
        self.finished.len()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        async move {
            let Some(inner) = self.inner.as_mut().filter(|_| !self.stopped) else {
                return self.close_next();
            };
            let step = inner.next().await;
            match &step {
                Some(Step::Token { .. } | Step::ToolCall { .. }) => {
                    self.steps += 1;
                    self.seen.0.store(self.generated(), Ordering::Relaxed);
                    if self.generated() >= self.cap {
                        self.reach_cap();
                    }
                }
                Some(Step::Finished { choice, .. }) => {
                    if let Some(done) = self.finished.get_mut(*choice) {
                        *done = true;
                    }
                }
                Some(Step::Failed(_)) | None => {}
            }
            step
        }
        .boxed()
    }

    fn usage(&self) -> Usage {
        match &self.inner {
            Some(inner) => inner.usage(),
            None => self.frozen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens for ever on one choice, counting its usage.
    struct Endless(Usage);

    impl Answer for Endless {
        fn num_choices(&self) -> usize {
            2
        }
        fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
            self.0.completion_tokens += 1;
            let choice = self.0.completion_tokens % 2;
            async move {
                Some(Step::Token {
                    choice,
                    text: "x".into(),
                    logprob: None,
                    token: None,
                })
            }
            .boxed()
        }
        fn usage(&self) -> Usage {
            self.0
        }
    }

    #[tokio::test]
    async fn an_answer_stops_at_its_cap_with_length_on_every_open_choice() {
        let seen = Seen::default();
        let stop = StopNote::default();
        let mut answer = Capped::wrap(
            Box::new(Endless(Usage::default())),
            5,
            seen.clone(),
            stop.clone(),
        );
        let mut tokens = 0;
        let mut finished = Vec::new();
        while let Some(step) = answer.next().await {
            match step {
                Step::Token { .. } => tokens += 1,
                Step::Finished { choice, reason, .. } => {
                    assert_eq!(reason, FinishReason::Length);
                    finished.push(choice);
                }
                Step::ToolCall { .. } => panic!("no tool calls here"),
                Step::Failed(e) => panic!("{e}"),
            }
            assert!(tokens <= 5, "ran past the cap");
        }
        assert_eq!(tokens, 5);
        assert_eq!(finished, [0, 1]);
        assert_eq!(seen.get(), 5);
        assert_eq!(stop.get().map(|s| s.reason), Some("budget"));
        assert_eq!(answer.usage().completion_tokens, 5);
    }
}
