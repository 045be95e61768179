//! The answer the handlers get from the router: the chosen deployment's
//! answer, wrapped to measure it. It times every wait on the upstream (or
//! the engine), notes the first and last token, and when the answer ends
//! records the outcome for the strategies, the metrics and the spend log.
//!
//! Design choice: recording happens in the wrapper (at the end of `next`,
//! or in `Drop` for an answer abandoned by a departed client), not in the
//! handlers, so streams and whole answers, and every endpoint, are measured
//! the same way and the handlers stay one call into the router.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use metrics::Histogram;
use sluice_runtime::Usage;
use tokio::time::Instant;

use super::deployment::{format_cost, Deployment, InFlight};
use super::outcomes::{Outcome, OutcomeStore};
use crate::answer::{Answer, BoxAnswer, Step};
use crate::config::RewardScales;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Succeeded,
    Failed,
}

/// What the router knows when it hands an answer over.
pub(super) struct Measure {
    pub deployment: Arc<Deployment>,
    pub outcomes: Arc<dyn OutcomeStore>,
    pub scales: RewardScales,
    /// When the handler started on the request.
    pub request_started: Instant,
    /// When the chosen deployment's attempt started.
    pub attempt_started: Instant,
    /// Time already spent waiting on the deployment (its `chat` call).
    pub upstream: Duration,
    pub stream: bool,
    pub overhead: Histogram,
    pub _slot: InFlight,
}

pub(super) struct MeasuredAnswer {
    inner: BoxAnswer,
    m: Measure,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    tokens: usize,
    state: State,
}

impl MeasuredAnswer {
    pub fn new(inner: BoxAnswer, m: Measure) -> Self {
        Self {
            inner,
            m,
            first_token: None,
            last_token: None,
            tokens: 0,
            state: State::Running,
        }
    }

    async fn step(&mut self) -> Option<Step> {
        if self.state != State::Running {
            return None;
        }
        let waited = Instant::now();
        let step = self.inner.next().await;
        let now = Instant::now();
        self.m.upstream += now - waited;
        match &step {
            Some(Step::Token { .. } | Step::ToolCall { .. }) => {
                self.tokens += 1;
                if self.first_token.is_none() {
                    self.first_token = Some(now);
                    self.m
                        .deployment
                        .metrics
                        .ttft
                        .record(now - self.m.attempt_started);
                }
                self.last_token = Some(now);
            }
            Some(Step::Finished { .. }) => {}
            Some(Step::Failed(_)) => self.finish(false),
            None => self.finish(true),
        }
        step
    }

    fn finish(&mut self, success: bool) {
        self.state = if success {
            State::Succeeded
        } else {
            State::Failed
        };
        let usage = self.inner.usage();
        let d = &self.m.deployment;
        let cost = d.settings.price.cost(&usage);
        let per_output_token = match (self.first_token, self.last_token) {
            (Some(first), Some(last)) if self.tokens > 1 => {
                Some((last - first) / (self.tokens as u32 - 1).max(1))
            }
            _ => None,
        };
        let outcome = Outcome {
            success,
            ttft: self.first_token.map(|t| t - self.m.attempt_started),
            per_output_token,
            cost_usd: cost,
        };
        self.m
            .outcomes
            .record(&d.name, &outcome, self.m.scales.reward(&outcome));
        if success {
            d.metrics.success.increment(1);
        } else {
            d.metrics.failure.increment(1);
        }
        d.metrics.cost_usd.increment(cost);
        let Usage {
            prompt_tokens,
            completion_tokens,
            ..
        } = usage;
        // A stream's cost has no header to go to: the log line is its record.
        // A whole answer's is in `x-sluice-cost`, so its line is for debugging.
        if self.m.stream {
            tracing::info!(
                deployment = %d.name,
                success,
                prompt_tokens,
                completion_tokens,
                cost_usd = %format_cost(cost),
                "stream cost"
            );
        } else {
            tracing::debug!(
                deployment = %d.name,
                success,
                prompt_tokens,
                completion_tokens,
                cost_usd = %format_cost(cost),
                "answer cost"
            );
        }
    }
}

impl Answer for MeasuredAnswer {
    fn num_choices(&self) -> usize {
        self.inner.num_choices()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        Box::pin(self.step())
    }

    fn usage(&self) -> Usage {
        self.inner.usage()
    }
}

impl Drop for MeasuredAnswer {
    fn drop(&mut self) {
        if self.state == State::Running {
            // The client left (or the handler gave up) before the end: no
            // verdict on the deployment, but the request is counted.
            self.m.deployment.metrics.cancelled.increment(1);
        }
        if !self.m.stream {
            // A whole answer is dropped after its body was rendered: this is
            // the request's whole time in the gateway.
            let total = self.m.request_started.elapsed();
            self.m
                .overhead
                .record(total.saturating_sub(self.m.upstream).as_secs_f64());
        }
    }
}
