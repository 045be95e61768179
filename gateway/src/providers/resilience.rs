//! One deployment's resilience: the timeouts that detect a hang, bounded
//! retries with exponential backoff and full jitter (honouring a capped
//! `Retry-After`), and a circuit breaker that stops sending requests to an
//! upstream that keeps failing.
//!
//! Design choice: retries happen only inside [`Resilience::call`], which
//! resolves when the provider committed to an answer (its first content
//! chunk); after that nothing is retried, because a retry would repeat text
//! the client already has. The breaker ([`super::breaker`]) counts calls
//! (after their retries), not attempts, so one bad request with three
//! attempts is one failure.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rand::Rng;
use sluice_runtime::Usage;
use tokio::time::Instant;

use super::breaker::CircuitBreaker;
use super::{Provider, ProviderError, ProviderRequest, TimeoutPhase};
use crate::answer::{Answer, BoxAnswer, Step};
use crate::config::ResilienceConfig;

/// When and how long to wait before another attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based), or `None`
    /// when there is no further attempt: the error is not retryable, the
    /// attempts are spent, or the upstream asked for a longer wait than we
    /// accept. `unit` is a uniform sample in [0, 1) (full jitter).
    pub fn delay(&self, attempt: u32, err: &ProviderError, unit: f64) -> Option<Duration> {
        if attempt >= self.max_attempts || !err.is_retryable() {
            return None;
        }
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << (attempt - 1).min(20))
            .min(self.backoff_max);
        let jitter = exp.mul_f64(unit.clamp(0.0, 1.0));
        match err.retry_after() {
            Some(asked) if asked > self.max_retry_after => None,
            Some(asked) => Some(asked.max(jitter)),
            None => Some(jitter),
        }
    }
}

/// One deployment's resilience state and settings, shared by all its requests.
#[derive(Debug)]
pub struct Resilience {
    config: ResilienceConfig,
    policy: RetryPolicy,
    breaker: Arc<CircuitBreaker>,
}

impl Resilience {
    pub fn new(config: ResilienceConfig) -> Self {
        let policy = RetryPolicy {
            max_attempts: config.max_attempts.max(1),
            backoff_base: Duration::from_millis(config.backoff_base_ms),
            backoff_max: Duration::from_millis(config.backoff_max_ms),
            max_retry_after: Duration::from_millis(config.max_retry_after_ms),
        };
        let breaker = Arc::new(CircuitBreaker::new(
            config.breaker_failures,
            Duration::from_millis(config.breaker_cooldown_ms),
        ));
        Self {
            config,
            policy,
            breaker,
        }
    }

    pub fn config(&self) -> &ResilienceConfig {
        &self.config
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Runs `f` through the breaker with retries; each attempt is limited by
    /// the first-byte timeout.
    pub async fn call<'f, T>(
        &self,
        f: impl FnMut() -> BoxFuture<'f, Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let deadline = Instant::now() + Duration::from_millis(self.config.total_timeout_ms);
        let per_attempt = Duration::from_millis(self.config.first_byte_timeout_ms);
        self.call_until(per_attempt, deadline, f).await
    }

    async fn call_until<'f, T>(
        &self,
        per_attempt: Duration,
        deadline: Instant,
        mut f: impl FnMut() -> BoxFuture<'f, Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        if !self.breaker.allow() {
            return Err(ProviderError::CircuitOpen);
        }
        let total = Duration::from_millis(self.config.total_timeout_ms);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let (limit, phase) = if per_attempt < left {
                (per_attempt, TimeoutPhase::FirstByte)
            } else {
                (left, TimeoutPhase::Total)
            };
            let result = match tokio::time::timeout(limit, f()).await {
                Ok(result) => result,
                Err(_) => Err(ProviderError::Timeout {
                    phase,
                    limit: if phase == TimeoutPhase::Total {
                        total
                    } else {
                        limit
                    },
                }),
            };
            let err = match result {
                Ok(value) => {
                    self.breaker.record(true);
                    return Ok(value);
                }
                Err(err) => err,
            };
            let unit: f64 = rand::rng().random();
            let delay = self
                .policy
                .delay(attempt, &err, unit)
                .filter(|d| Instant::now() + *d < deadline);
            match delay {
                Some(d) => {
                    tracing::debug!(attempt, error = %err, delay_ms = d.as_millis() as u64, "retrying upstream call");
                    tokio::time::sleep(d).await;
                }
                None => {
                    self.breaker.record(!err.is_upstream_fault());
                    return Err(err);
                }
            }
        }
    }

    /// Asks `provider` through the breaker with retries, and wraps the
    /// answer so a silent upstream (between-chunk timeout) or an endless one
    /// (total timeout) ends it with an error step.
    pub async fn chat(
        &self,
        provider: &dyn Provider,
        req: &ProviderRequest,
    ) -> Result<BoxAnswer, ProviderError> {
        let total = Duration::from_millis(self.config.total_timeout_ms);
        let deadline = Instant::now() + total;
        // A non-streamed answer's first byte is its whole body.
        let per_attempt = if req.stream {
            Duration::from_millis(self.config.first_byte_timeout_ms)
        } else {
            total
        };
        let inner = self
            .call_until(per_attempt, deadline, || provider.chat(req))
            .await?;
        Ok(Box::new(TimedAnswer {
            inner,
            between_chunks: Duration::from_millis(self.config.between_chunks_timeout_ms),
            deadline,
            total,
            breaker: self.breaker.clone(),
            done: false,
        }))
    }
}

/// An upstream answer under the between-chunk and total timeouts; a failure
/// after the answer was committed also counts against the breaker.
struct TimedAnswer {
    inner: BoxAnswer,
    between_chunks: Duration,
    deadline: Instant,
    total: Duration,
    breaker: Arc<CircuitBreaker>,
    done: bool,
}

impl TimedAnswer {
    fn fail(&mut self, err: ProviderError) -> Option<Step> {
        self.done = true;
        self.breaker.record(false);
        Some(Step::Failed(err.to_api_error()))
    }
}

impl Answer for TimedAnswer {
    fn num_choices(&self) -> usize {
        self.inner.num_choices()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        Box::pin(async move {
            if self.done {
                return None;
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            let (limit, phase) = if self.between_chunks < left {
                (self.between_chunks, TimeoutPhase::BetweenChunks)
            } else {
                (left, TimeoutPhase::Total)
            };
            match tokio::time::timeout(limit, self.inner.next()).await {
                Ok(Some(Step::Failed(err))) => {
                    self.done = true;
                    self.breaker.record(false);
                    Some(Step::Failed(err))
                }
                Ok(None) => {
                    self.done = true;
                    None
                }
                Ok(step) => step,
                Err(_) => {
                    let limit = if phase == TimeoutPhase::Total {
                        self.total
                    } else {
                        limit
                    };
                    self.fail(ProviderError::Timeout { phase, limit })
                }
            }
        })
    }

    fn usage(&self) -> Usage {
        self.inner.usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::BreakerState;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            backoff_base: ms(100),
            backoff_max: ms(350),
            max_retry_after: ms(2000),
        }
    }

    fn server_error() -> ProviderError {
        ProviderError::Status {
            status: 503,
            retry_after: None,
            message: String::new(),
        }
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap_with_full_jitter() {
        let p = policy();
        let e = server_error();
        assert_eq!(p.delay(1, &e, 0.999_999).map(|d| d.as_millis()), Some(99));
        assert_eq!(p.delay(2, &e, 0.5), Some(ms(100)));
        assert_eq!(p.delay(3, &e, 1.0), Some(ms(350)), "capped");
        assert_eq!(p.delay(1, &e, 0.0), Some(Duration::ZERO));
        assert_eq!(p.delay(4, &e, 0.5), None, "attempts spent");
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_cap() {
        let p = policy();
        let asked = |secs: f64| ProviderError::Status {
            status: 429,
            retry_after: Some(Duration::from_secs_f64(secs)),
            message: String::new(),
        };
        assert_eq!(p.delay(1, &asked(1.5), 0.5), Some(ms(1500)));
        assert_eq!(p.delay(1, &asked(5.0), 0.5), None, "longer than the cap");
    }

    #[test]
    fn non_retryable_errors_are_not_retried() {
        let p = policy();
        assert_eq!(p.delay(1, &ProviderError::Malformed("x".into()), 0.5), None);
        let bad_request = ProviderError::Status {
            status: 400,
            retry_after: None,
            message: String::new(),
        };
        assert_eq!(p.delay(1, &bad_request, 0.5), None);
    }

    fn fast_config(max_attempts: u32, breaker_failures: u32) -> ResilienceConfig {
        ResilienceConfig {
            max_attempts,
            backoff_base_ms: 1,
            backoff_max_ms: 2,
            breaker_failures,
            breaker_cooldown_ms: 60_000,
            ..ResilienceConfig::default()
        }
    }

    #[tokio::test]
    async fn call_retries_up_to_the_bound_then_fails() {
        let r = Resilience::new(fast_config(3, 10));
        let mut calls = 0;
        let result: Result<(), _> = r
            .call(|| {
                calls += 1;
                Box::pin(async { Err(server_error()) })
            })
            .await;
        assert_eq!(result, Err(server_error()));
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    async fn call_times_out_a_hanging_attempt_and_retries_it() {
        let r = Resilience::new(ResilienceConfig {
            first_byte_timeout_ms: 50,
            ..fast_config(2, 10)
        });
        let mut calls = 0;
        let result: Result<(), _> = r
            .call(|| {
                calls += 1;
                Box::pin(std::future::pending())
            })
            .await;
        assert!(matches!(
            result,
            Err(ProviderError::Timeout {
                phase: TimeoutPhase::FirstByte,
                ..
            })
        ));
        assert_eq!(calls, 2);
    }

    #[tokio::test]
    async fn open_breaker_rejects_without_calling() {
        let r = Resilience::new(fast_config(1, 2));
        for _ in 0..2 {
            let _: Result<(), _> = r.call(|| Box::pin(async { Err(server_error()) })).await;
        }
        assert_eq!(r.breaker().state(), BreakerState::Open);
        let mut calls = 0;
        let result: Result<(), _> = r
            .call(|| {
                calls += 1;
                Box::pin(async { Ok(()) })
            })
            .await;
        assert_eq!(result, Err(ProviderError::CircuitOpen));
        assert_eq!(calls, 0);
    }

    #[tokio::test]
    async fn client_errors_do_not_trip_the_breaker() {
        let r = Resilience::new(fast_config(1, 1));
        let bad_request = ProviderError::Status {
            status: 400,
            retry_after: None,
            message: String::new(),
        };
        let _: Result<(), _> = r
            .call(|| {
                let e = bad_request.clone();
                Box::pin(async move { Err(e) })
            })
            .await;
        assert_eq!(r.breaker().state(), BreakerState::Closed);
    }
}
