//! The shared limiter: every instance's counters in one Redis, each request
//! admitted by one atomic script (`admit.lua`) that checks every scope and
//! dimension together on Redis's clock and commits all or none, and
//! settled by another (`settle.lua`), which takes every request that ended
//! since the last call at once: one round trip and one script run for a
//! batch, not one per request.
//!
//! Counters (under the prefix): `<scope>:rpm` and `<scope>:tpm` hold a
//! theoretical arrival time with a TTL of the time it is ahead of now;
//! `<scope>:max_parallel` is a sorted set of request leases scored by
//! their expiry, so the leases of an instance that died lapse on their own.
//!
//! Outages: every call has a short timeout; after a failure the limiter
//! answers "unavailable" at once for a second (no request waits on a
//! reconnect) and then tries again; the connection manager reconnects
//! underneath, and `redis::Script` reloads the scripts into a restarted
//! server by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::local::cost;
use super::scope::{Check, Dimension};
use super::Outcome;

/// How long one script may take before the request goes on without Redis.
const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, how long requests skip Redis before one tries again.
pub(super) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Redis did not answer (in time).
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

pub struct SharedLimiter {
    conn: ConnectionManager,
    prefix: String,
    admit: Script,
    settle: Script,
    /// Milliseconds since `epoch` before which calls skip Redis.
    retry_at_ms: AtomicU64,
    epoch: Instant,
}

/// One settled dimension: a counter and what goes back to it.
#[derive(Debug, Clone, PartialEq)]
pub struct GiveBack {
    pub key: String,
    /// `None`: a parallel lease to release.
    pub tokens: Option<(f64, i64)>,
}

/// One ended request's settlement: what goes back to its counters, and the
/// lease it held.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub items: Vec<GiveBack>,
    pub lease: String,
}

impl Release {
    /// What of this release may be sent again after a call whose outcome is
    /// unknown: only the lease removals. Removing a lease twice, or one that
    /// was never added, changes nothing; giving tokens back twice would
    /// hand out more than the limit.
    pub fn lease_removals(self) -> Option<Release> {
        let items: Vec<GiveBack> = self
            .items
            .into_iter()
            .filter(|item| item.tokens.is_none())
            .collect();
        (!items.is_empty()).then_some(Release {
            items,
            lease: self.lease,
        })
    }
}

impl SharedLimiter {
    /// Connects lazily: a server that is down at start-up is not an error.
    pub fn new(url: &str, prefix: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("limits.redis_url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("limits redis: {e}"))?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            admit: Script::new(include_str!("admit.lua")),
            settle: Script::new(include_str!("settle.lua")),
            retry_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn key(&self, counter: &str) -> String {
        format!("{}:{counter}", self.prefix)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Checks every limit with `tokens` reserved under lease `lease`.
    pub async fn admit(
        &self,
        checks: &[Check],
        tokens: u64,
        lease: &str,
        lease_ttl: Duration,
    ) -> Result<Outcome, Unavailable> {
        let mut invocation = self.admit.prepare_invoke();
        invocation.arg(lease).arg(lease_ttl.as_millis() as u64);
        for check in checks {
            invocation.key(self.key(&check.key()));
            match check.rate {
                Some(rate) => invocation
                    .arg("r")
                    .arg(rate.interval_us)
                    .arg(rate.window_us)
                    .arg(cost(check, tokens)),
                None => invocation.arg("p").arg(check.limit).arg(0).arg(0),
            };
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = self.run(invocation.invoke_async(&mut conn)).await?;
        parse_admit(&reply, checks.len())
    }

    /// Gives back what settled requests did not use and releases their
    /// leases, in order, in one script run.
    pub async fn settle(&self, releases: &[Release]) -> Result<(), Unavailable> {
        if releases.iter().all(|r| r.items.is_empty()) {
            return Ok(());
        }
        let mut invocation = self.settle.prepare_invoke();
        for release in releases {
            for item in &release.items {
                invocation.key(self.key(&item.key));
                match item.tokens {
                    Some((interval_us, units)) => {
                        invocation.arg("r").arg(interval_us).arg(units).arg(0)
                    }
                    None => invocation.arg("p").arg(0).arg(0).arg(&release.lease),
                };
            }
        }
        let mut conn = self.conn.clone();
        let _: i64 = self.run(invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Runs one call under the timeout and the outage rules.
    async fn run<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        if self.now_ms() < self.retry_at_ms.load(Ordering::Relaxed) {
            return Err(Unavailable("redis is down; retrying shortly".into()));
        }
        let result = match tokio::time::timeout(OP_TIMEOUT, call).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", OP_TIMEOUT.as_millis()),
        };
        self.retry_at_ms.store(
            self.now_ms() + RETRY_AFTER.as_millis() as u64,
            Ordering::Relaxed,
        );
        Err(Unavailable(result))
    }
}

/// The settle items of an admitted request: its token checks with what
/// goes back, and its parallel leases.
pub fn give_backs(checks: &[Check], tokens_back: i64) -> Vec<GiveBack> {
    checks
        .iter()
        .filter_map(|check| match (check.dimension, check.rate) {
            (Dimension::Tokens, Some(rate)) if tokens_back != 0 => Some(GiveBack {
                key: check.key(),
                tokens: Some((rate.interval_us, tokens_back)),
            }),
            (Dimension::Parallel, _) => Some(GiveBack {
                key: check.key(),
                tokens: None,
            }),
            _ => None,
        })
        .collect()
}

fn parse_admit(reply: &[i64], checks: usize) -> Result<Outcome, Unavailable> {
    let malformed = || Unavailable(format!("the admit script answered {reply:?}"));
    match reply {
        [1, rest @ ..] if rest.len() == checks * 2 => Ok(Outcome::Granted(
            rest.chunks_exact(2)
                .map(|pair| (pair[0].max(0) as u64, pair[1].max(0) as u64))
                .collect(),
        )),
        [0, index, retry_us] if (1..=checks as i64).contains(index) => Ok(Outcome::Refused {
            check: *index as usize - 1,
            retry_us: (*retry_us).max(0) as u64,
        }),
        _ => Err(malformed()),
    }
}
