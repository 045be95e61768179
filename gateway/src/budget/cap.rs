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
//!
//! The same stop serves a request's own `max_cost` ([`MaxCost`]): there the
//! cap is money at the serving deployment's price, so the tokens it allows
//! depend on the prompt's; it stops before the token that would cost more
//! than the request allows, noted as `max_cost`. Both caps may wrap one
//! answer: the lower one stops it first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sluice_runtime::{FinishReason, Usage};

use super::micros;
use crate::answer::{Answer, BoxAnswer, EarlyStop, Step, StopNote};
use crate::config::Price;

/// The reason a budget cap notes.
pub const BUDGET: &str = "budget";
/// The reason a request's `max_cost` notes.
pub const MAX_COST: &str = "max_cost";

/// A request's own ceiling on what its answer may cost, at the serving
/// deployment's price.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxCost {
    /// In the currency prices are configured in.
    pub amount: f64,
    pub price: Price,
    /// The prompt's tokens as estimated before the model; the producer's
    /// own count replaces it when larger (never undercounted).
    pub prompt_estimate: u64,
}

/// Where an answer is stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Limit {
    /// Output tokens over every choice.
    Tokens(u64),
    Cost(MaxCost),
}

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
    limit: Limit,
    /// The reason noted when the limit stops the answer.
    reason: &'static str,
    steps: u64,
    seen: Seen,
    finished: Vec<bool>,
    /// Set once the cap is reached: the inner answer is no longer read.
    stopped: bool,
    /// Whether the limit was checked before the first read (a prompt that
    /// alone uses up a `max_cost` gets no token).
    started: bool,
}

impl Capped {
    /// Stops `inner` after `cap` output tokens over every choice (a budget's).
    pub fn wrap(inner: BoxAnswer, cap: u64, seen: Seen, stop: StopNote) -> BoxAnswer {
        Self::boxed(inner, Limit::Tokens(cap), BUDGET, seen, stop)
    }

    /// Stops `inner` before the token that would make it cost more than
    /// `max_cost` allows.
    pub fn at_cost(inner: BoxAnswer, max_cost: MaxCost, stop: StopNote) -> BoxAnswer {
        Self::boxed(
            inner,
            Limit::Cost(max_cost),
            MAX_COST,
            Seen::default(),
            stop,
        )
    }

    fn boxed(
        inner: BoxAnswer,
        limit: Limit,
        reason: &'static str,
        seen: Seen,
        stop: StopNote,
    ) -> BoxAnswer {
        let choices = inner.num_choices();
        Box::new(Self {
            inner: Some(inner),
            frozen: Usage::default(),
            stop,
            limit,
            reason,
            steps: 0,
            seen,
            finished: vec![false; choices],
            stopped: false,
            started: false,
        })
    }

    fn generated(&self) -> u64 {
        (self.usage().completion_tokens as u64).max(self.steps)
    }

    /// Whether one more output token would pass the limit.
    fn full(&self) -> bool {
        let generated = self.generated();
        match self.limit {
            Limit::Tokens(cap) => generated >= cap,
            Limit::Cost(max) => {
                let prompt = (self.usage().prompt_tokens as u64).max(max.prompt_estimate);
                let next = Usage {
                    prompt_tokens: usize::try_from(prompt).unwrap_or(usize::MAX),
                    completion_tokens: usize::try_from(generated + 1).unwrap_or(usize::MAX),
                    cached_prompt_tokens: 0,
                };
                micros(max.price.cost(&next)) > micros(max.amount)
            }
        }
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
                reason: self.reason,
            });
            metrics::counter!(crate::metrics::catalog::STREAM_STOPS, "analyser" => self.reason)
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
            stop_sequence: None,
        })
    }
}

impl Answer for Capped {
    fn num_choices(&self) -> usize {
        self.finished.len()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        async move {
            if !std::mem::replace(&mut self.started, true) && self.full() {
                self.reach_cap();
            }
            let Some(inner) = self.inner.as_mut().filter(|_| !self.stopped) else {
                return self.close_next();
            };
            let step = inner.next().await;
            match &step {
                Some(Step::Token { .. } | Step::ToolCall { .. }) => {
                    self.steps += 1;
                    self.seen.0.store(self.generated(), Ordering::Relaxed);
                    if self.full() {
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

    /// Every step to the end: tokens out, the finish reasons.
    async fn drain(answer: &mut BoxAnswer) -> (usize, Vec<FinishReason>) {
        let mut tokens = 0;
        let mut finished = Vec::new();
        while let Some(step) = answer.next().await {
            match step {
                Step::Token { .. } => tokens += 1,
                Step::Finished { reason, .. } => finished.push(reason),
                Step::ToolCall { .. } => panic!("no tool calls here"),
                Step::Failed(e) => panic!("{e}"),
            }
        }
        (tokens, finished)
    }

    /// 1 per 1k tokens in and out: a token costs 0.001.
    fn max_cost(amount: f64, prompt_estimate: u64) -> MaxCost {
        MaxCost {
            amount,
            price: Price {
                input_per_1k: 1.0,
                output_per_1k: 1.0,
            },
            prompt_estimate,
        }
    }

    #[tokio::test]
    async fn max_cost_stops_before_the_token_that_would_pass_it() {
        let stop = StopNote::default();
        // 10 prompt tokens (0.010) leave 0.0155 room for 5 output tokens.
        let mut answer = Capped::at_cost(
            Box::new(Endless(Usage::default())),
            max_cost(0.0155, 10),
            stop.clone(),
        );
        let (tokens, finished) = drain(&mut answer).await;
        assert_eq!(tokens, 5);
        assert_eq!(finished, [FinishReason::Length; 2]);
        assert_eq!(stop.get().map(|s| s.reason), Some(MAX_COST));
        let usage = answer.usage();
        assert_eq!(usage.completion_tokens, 5);
        let cost = max_cost(0.0, 0).price.cost(&Usage {
            prompt_tokens: 10,
            ..usage
        });
        assert!(cost <= 0.0155, "charged {cost}");
        // Exactly affordable is allowed: 0.015 is 5 tokens, not 4.
        let mut answer = Capped::at_cost(
            Box::new(Endless(Usage::default())),
            max_cost(0.015, 10),
            StopNote::default(),
        );
        assert_eq!(drain(&mut answer).await.0, 5);
    }

    #[tokio::test]
    async fn max_cost_counts_the_producers_prompt_when_it_is_larger() {
        // The producer says 12 prompt tokens, the estimate 1: 0.012 + 3.
        let usage = Usage {
            prompt_tokens: 12,
            ..Usage::default()
        };
        let mut answer = Capped::at_cost(
            Box::new(Endless(usage)),
            max_cost(0.015, 1),
            StopNote::default(),
        );
        assert_eq!(drain(&mut answer).await.0, 3);
    }

    #[tokio::test]
    async fn a_prompt_that_uses_up_max_cost_gets_no_token() {
        let stop = StopNote::default();
        let mut answer = Capped::at_cost(
            Box::new(Endless(Usage::default())),
            max_cost(0.005, 10),
            stop.clone(),
        );
        let (tokens, finished) = drain(&mut answer).await;
        assert_eq!(tokens, 0);
        assert_eq!(finished, [FinishReason::Length; 2]);
        assert_eq!(stop.get().map(|s| s.reason), Some(MAX_COST));
    }

    #[tokio::test]
    async fn with_a_budget_cap_and_a_max_cost_the_lower_one_stops_the_answer() {
        for (budget_tokens, want_tokens, want_reason) in [(3, 3, BUDGET), (10, 5, MAX_COST)] {
            let stop = StopNote::default();
            let inner = Capped::at_cost(
                Box::new(Endless(Usage::default())),
                max_cost(0.0155, 10),
                stop.clone(),
            );
            let mut answer = Capped::wrap(inner, budget_tokens, Seen::default(), stop.clone());
            let (tokens, _) = drain(&mut answer).await;
            assert_eq!(tokens, want_tokens);
            assert_eq!(stop.get().map(|s| s.reason), Some(want_reason));
        }
    }
}
