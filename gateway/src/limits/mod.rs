//! Rate limits that hold across instances: requests per minute, tokens per
//! minute and requests in parallel, per key ([`Principal::limits`]), per
//! team ([`Principal::team_limits`]) and per model (`[[limits.models]]`).
//!
//! A request is admitted by [`Limits::admit`], right after its model is
//! known and before any encoder or engine work:
//! 1. its token reservation is counted ([`tokens`]) when a tokens-per-minute
//!    limit applies;
//! 2. this process's own limiter ([`local`]) checks it: what this process
//!    alone has used up is refused without a Redis round trip;
//! 3. the shared limiter ([`shared`]) checks every scope and dimension in
//!    one atomic Redis script on Redis's clock, all or none.
//!
//! Admission leaves a [`Lease`]: when the answer ends (completed, failed,
//! or the client gone) the chain settles it, which gives back the tokens
//! reserved but not used and releases the parallel slot, locally at once and
//! in Redis through a bounded queue drained by [`SettleWorker`], which
//! settles everything queued in one script call.
//!
//! Redis away: `on_store_down = "open"` serves under the local limiter
//! (logged once, `sluice_limits_degraded` = 1), `"closed"` answers 503
//! `store_unavailable`; both recover by themselves when Redis answers again.
//!
//! Responses carry OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
//! from the tightest scope of each dimension; resets are written as OpenAI
//! writes durations (`250ms`, `1.5s`, `6m0s`). Design choice (see [`gcra`]):
//! requests are spread out (at most `burst + 1` at once), tokens may be
//! reserved a minute's worth at once.

mod gcra;
mod local;
mod scope;
mod shared;
mod tokens;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::mpsc;

use crate::audit::{actions, Audit, AuditEvent, AuditOutcome};
use crate::auth::Principal;
use crate::config::{LimitsSettings, OnStoreDown};
use crate::error::ApiError;
use crate::validate::Job;

pub use gcra::Rate;
pub use local::LocalLimiter;
pub use scope::{Check, Dimension, ScopeKind, Scopes};
pub use shared::{GiveBack, Release, SharedLimiter, Unavailable};
pub use tokens::TokenCounter;

/// Settlements waiting for Redis; past this they are dropped (counted),
/// and the parallel leases they held lapse at their expiry.
const SETTLE_QUEUE: usize = 4096;
/// Settle calls in flight to Redis at once.
const SETTLES_IN_FLIGHT: usize = 64;
/// Settlements in one settle call at most.
const SETTLE_BATCH: usize = 256;

/// What a limiter decided for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Per check: what remains, and µs until the scope is back to its
    /// initial state.
    Granted(Vec<(u64, u64)>),
    /// The first check that refused, and µs until it would grant.
    Refused { check: usize, retry_us: u64 },
}

/// What the stage is built from.
pub struct LimitsSetup {
    pub settings: LimitsSettings,
    /// How long a parallel lease outlives its instance at most (the request
    /// timeout and a margin).
    pub lease_ttl: Duration,
    pub audit: Audit,
    /// `None`: token limits reserve only `max_tokens` (or the estimate).
    pub counter: Option<TokenCounter>,
}

/// The rate-limit stage.
pub struct Limits {
    scopes: Scopes,
    local: Arc<LocalLimiter>,
    shared: Option<Arc<SharedLimiter>>,
    on_store_down: OnStoreDown,
    counter: Option<TokenCounter>,
    provider_estimate: u64,
    lease_ttl: Duration,
    settles: mpsc::Sender<Release>,
    audit: Audit,
    /// Whether Redis is away (logged and gauged on each change only).
    degraded: AtomicBool,
}

/// Drains settlements into Redis; runs until the stage is dropped.
pub struct SettleWorker {
    shared: Option<Arc<SharedLimiter>>,
    jobs: mpsc::Receiver<Release>,
}

/// A granted request's headers and its lease.
#[derive(Default)]
pub struct Admission {
    pub headers: RateHeaders,
    /// `None` when nothing needs settling (no token or parallel limit).
    pub lease: Option<Lease>,
}

impl Limits {
    /// The stage and the worker that settles into Redis (the caller runs it).
    pub fn new(setup: LimitsSetup) -> Result<(Self, SettleWorker), String> {
        let LimitsSetup {
            settings,
            lease_ttl,
            audit,
            counter,
        } = setup;
        let shared = settings
            .redis_url
            .as_deref()
            .map(|url| SharedLimiter::new(url, &settings.redis_prefix).map(Arc::new))
            .transpose()?;
        let (settles, jobs) = mpsc::channel(SETTLE_QUEUE);
        metrics::gauge!("sluice_limits_degraded").set(0.0);
        let limits = Self {
            scopes: Scopes::new(&settings.models, settings.burst),
            local: Arc::new(LocalLimiter::default()),
            shared: shared.clone(),
            on_store_down: settings.on_store_down,
            counter,
            provider_estimate: settings.provider_token_estimate,
            lease_ttl,
            settles,
            audit,
            degraded: AtomicBool::new(false),
        };
        Ok((limits, SettleWorker { shared, jobs }))
    }

    /// Admits `principal`'s request for `model`, or refuses it (429 naming
    /// the scope, or 503 while Redis is away in `closed` mode).
    pub async fn admit(
        &self,
        principal: &Principal,
        model: &str,
        job: &Job,
    ) -> Result<Admission, ApiError> {
        let checks = self.scopes.checks(principal, model);
        if checks.is_empty() {
            return Ok(Admission::default());
        }
        let tokens = if checks.iter().any(|c| c.dimension == Dimension::Tokens) {
            match &self.counter {
                Some(counter) => counter.reservation(model, job).await,
                None => job
                    .sampling
                    .max_tokens
                    .map_or(self.provider_estimate, |m| m as u64),
            }
        } else {
            0
        };
        let local = match self.local.admit(&checks, tokens) {
            Outcome::Granted(standings) => standings,
            Outcome::Refused { check, retry_us } => {
                return Err(self.refuse(principal, &checks[check], retry_us))
            }
        };
        // Random per process and counted within it (no system call, unlike
        // a v4 UUID): unique among every instance's leases.
        let lease_id = crate::util::new_id("lease");
        let (standings, shared) = match &self.shared {
            None => (local, false),
            Some(shared) => match shared
                .admit(&checks, tokens, &lease_id, self.lease_ttl)
                .await
            {
                Ok(outcome) => {
                    self.reachable();
                    match outcome {
                        Outcome::Granted(standings) => (standings, true),
                        Outcome::Refused { check, retry_us } => {
                            self.local.give_back(&checks, tokens as i64, 1);
                            return Err(self.refuse(principal, &checks[check], retry_us));
                        }
                    }
                }
                Err(Unavailable(why)) => {
                    self.unreachable(&why);
                    // A call that timed out may still have run: Redis may
                    // hold this request's parallel lease, which nothing
                    // would release before its expiry (minutes of a slot
                    // lost). Queue its removal; the settle worker retries
                    // removals until Redis answers.
                    self.forget_lease(&checks, &lease_id);
                    match self.on_store_down {
                        OnStoreDown::Open => (local, false),
                        OnStoreDown::Closed => {
                            self.local.give_back(&checks, tokens as i64, 1);
                            return Err(ApiError::StoreUnavailable("The rate-limit store (Redis)"));
                        }
                    }
                }
            },
        };
        let headers = RateHeaders::tightest(&checks, &standings);
        let needs_lease = checks.iter().any(|c| c.dimension != Dimension::Requests);
        let lease = needs_lease.then(|| Lease {
            held: Some(Held {
                local: self.local.clone(),
                settles: shared.then(|| self.settles.clone()),
                checks,
                reserved: tokens,
                id: lease_id,
            }),
        });
        Ok(Admission { headers, lease })
    }

    fn forget_lease(&self, checks: &[Check], lease_id: &str) {
        let items = shared::give_backs(checks, 0);
        if items.is_empty() {
            return;
        }
        let release = Release {
            items,
            lease: lease_id.to_owned(),
        };
        if self.settles.try_send(release).is_err() {
            metrics::counter!("sluice_limit_settle_failures_total").increment(1);
        }
    }

    fn refuse(&self, principal: &Principal, check: &Check, retry_us: u64) -> ApiError {
        let (scope, dimension) = (check.kind.as_str(), check.dimension.as_str());
        metrics::counter!(crate::metrics::catalog::LIMIT_REFUSALS, "scope" => scope, "dimension" => dimension)
            .increment(1);
        // A refusal is refused either way: an audit that cannot be written
        // (fail_closed) changes nothing here.
        let _ = self.audit.record(
            AuditEvent::new(
                actions::LIMIT_REFUSED,
                principal.actor(),
                AuditOutcome::Denied,
            )
            .tenant(&*principal.tenant)
            .target(check.scope.clone())
            .detail(format!("{dimension} limit {}", check.limit)),
        );
        let retry_after = Duration::from_micros(retry_us);
        let what = match check.dimension {
            Dimension::Requests => "requests per minute",
            Dimension::Tokens => "tokens per minute",
            Dimension::Parallel => "requests in parallel",
        };
        let message = if check.dimension == Dimension::Tokens && retry_us > 60_000_000 {
            format!(
                "This request reserves more tokens than `{}` may use in a minute (limit {}); \
                 lower max_tokens or shorten the prompt.",
                check.scope, check.limit
            )
        } else {
            format!(
                "Rate limit reached for `{}` on {what} (limit {}); retry after {}.",
                check.scope,
                check.limit,
                duration_text(retry_us)
            )
        };
        ApiError::RateLimited {
            message,
            code: "rate_limit_exceeded",
            retry_after: Duration::from_secs(retry_after.as_secs_f64().ceil() as u64),
            headers: RateHeaders::refused(check, retry_us).0,
        }
    }

    fn unreachable(&self, why: &str) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            metrics::gauge!("sluice_limits_degraded").set(1.0);
            match self.on_store_down {
                OnStoreDown::Open => tracing::warn!(
                    error = %why,
                    "rate-limit Redis unavailable; each instance limits on its own until it returns"
                ),
                OnStoreDown::Closed => tracing::error!(
                    error = %why,
                    "rate-limit Redis unavailable; requests with limits are refused until it returns"
                ),
            }
        }
    }

    fn reachable(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            metrics::gauge!("sluice_limits_degraded").set(0.0);
            tracing::info!("rate-limit Redis reachable again; limits are shared again");
        }
    }
}

impl SettleWorker {
    /// Settles what is queued in one script call (up to [`SETTLE_BATCH`]),
    /// with up to [`SETTLES_IN_FLIGHT`] calls at once: one settlement per
    /// call, one call at a time, could not keep up with admissions at
    /// thousands of requests per second; the queue overflowed, settles were
    /// dropped and parallel leases leaked until their expiry (the
    /// gateway-overhead bench's 64-connection Redis row, bench/RESULTS.md;
    /// tests/tests/rate_limits.rs holds a test of it). A batch costs Redis
    /// one script run and the gateway one round trip.
    pub async fn run(mut self) {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(SETTLES_IN_FLIGHT));
        // Lease removals whose call failed, tried again every
        // `RETRY_AFTER`: an outage or a timed-out call must not hold a
        // parallel slot until the lease's expiry. Token give-backs are not
        // retried (a call that timed out may have applied them).
        let (retry, mut retries) = mpsc::channel::<Release>(SETTLE_QUEUE);
        let mut retry_tick = tokio::time::interval(shared::RETRY_AFTER);
        retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let mut batch = Vec::new();
            tokio::select! {
                received = self.jobs.recv_many(&mut batch, SETTLE_BATCH) => {
                    if received == 0 {
                        break;
                    }
                }
                _ = retry_tick.tick() => {}
            }
            let Some(shared) = self.shared.clone() else {
                continue;
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            // Whatever queued while waiting for the permit goes too, then
            // the removals waiting for another try.
            drain_into(&mut batch, &mut self.jobs);
            drain_into(&mut batch, &mut retries);
            if batch.is_empty() {
                continue;
            }
            let retry = retry.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(Unavailable(why)) = shared.settle(&batch).await {
                    metrics::counter!("sluice_limit_settle_failures_total")
                        .increment(batch.len() as u64);
                    tracing::debug!(error = %why, "rate-limit settlements did not reach Redis");
                    for removal in batch.into_iter().filter_map(Release::lease_removals) {
                        if retry.try_send(removal).is_err() {
                            // Past the retry queue's end the lease lapses at its expiry.
                            metrics::counter!("sluice_limit_leases_abandoned_total").increment(1);
                        }
                    }
                }
            });
        }
    }
}

/// Moves what `queue` holds now into `batch`, up to [`SETTLE_BATCH`].
fn drain_into(batch: &mut Vec<Release>, queue: &mut mpsc::Receiver<Release>) {
    while batch.len() < SETTLE_BATCH {
        match queue.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// An admitted request's claim on its limits. Settled once the answer
/// ends ([`Lease::finish`]); one dropped unsettled (the request failed
/// before its answer started) gives back everything but the request itself.
pub struct Lease {
    held: Option<Held>,
}

struct Held {
    local: Arc<LocalLimiter>,
    /// `Some` when Redis granted the request too.
    settles: Option<mpsc::Sender<Release>>,
    checks: Vec<Check>,
    reserved: u64,
    id: String,
}

impl Lease {
    /// The answer ended having used `used` tokens (prompt and completion).
    pub fn finish(mut self, used: u64) {
        self.release(used);
    }

    fn release(&mut self, used: u64) {
        let Some(held) = self.held.take() else { return };
        let back = held.reserved as i64 - used as i64;
        held.local.give_back(&held.checks, back, 0);
        if let Some(settles) = held.settles {
            let items = shared::give_backs(&held.checks, back);
            if !items.is_empty()
                && settles
                    .try_send(Release {
                        items,
                        lease: held.id,
                    })
                    .is_err()
            {
                metrics::counter!("sluice_limit_settle_failures_total").increment(1);
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release(0);
    }
}

/// OpenAI's `x-ratelimit-*` headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateHeaders(pub Vec<(&'static str, String)>);

impl RateHeaders {
    /// The tightest scope's standing in each dimension.
    fn tightest(checks: &[Check], standings: &[(u64, u64)]) -> Self {
        let mut headers = Vec::new();
        for (dimension, suffix) in [(Dimension::Requests, 0), (Dimension::Tokens, 1)] {
            let tightest = checks
                .iter()
                .zip(standings)
                .filter(|(c, _)| c.dimension == dimension)
                .min_by_key(|(_, (remaining, _))| *remaining);
            if let Some((check, &(remaining, reset_us))) = tightest {
                let [limit, left, reset] = NAMES[suffix];
                headers.push((limit, check.limit.to_string()));
                headers.push((left, remaining.to_string()));
                headers.push((reset, duration_text(reset_us)));
            }
        }
        Self(headers)
    }

    /// A refusal's headers: the refusing dimension, nothing left.
    fn refused(check: &Check, retry_us: u64) -> Self {
        let names = match check.dimension {
            Dimension::Requests => NAMES[0],
            Dimension::Tokens => NAMES[1],
            Dimension::Parallel => return Self::default(),
        };
        let [limit, left, reset] = names;
        Self(vec![
            (limit, check.limit.to_string()),
            (left, "0".into()),
            (reset, duration_text(retry_us)),
        ])
    }

    pub fn set_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.0 {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
    }
}

const NAMES: [[&str; 3]; 2] = [
    [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ],
    [
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ],
];

/// A duration as OpenAI writes it in `x-ratelimit-reset-*`: `250ms`,
/// `1.5s`, `6m0s`.
fn duration_text(us: u64) -> String {
    let ms = us.div_ceil(1000);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        let text = format!("{:.3}", ms as f64 / 1000.0);
        let text = text.trim_end_matches('0').trim_end_matches('.');
        return format!("{text}s");
    }
    let secs = ms.div_ceil(1000);
    format!("{}m{}s", secs / 60, secs % 60)
}

#[cfg(test)]
mod tests;
