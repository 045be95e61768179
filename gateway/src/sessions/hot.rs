//! The Redis hot layer: one hash per session, `<prefix>:s:<id>` with
//! `v` (its version) and `d` (the [`Snapshot`] as JSON), or `v = gone` for
//! a tombstone. Every key carries the hot TTL, refreshed on each read.
//!
//! Writes are version-guarded in one script run: a copy is stored only
//! when Redis holds none, or an older one; never over a newer copy or a
//! tombstone. Redis is never the truth: every operation has a short
//! timeout, a failure is logged once and skips Redis for a second (reads
//! go to the durable store), and a write that failed tries to drop the key
//! so no stale copy outlives it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::Snapshot;

/// How long one Redis command may take before the store answers instead.
const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, how long operations skip Redis before one tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// KEYS[1]; ARGV: ttl seconds. Returns nil, {"gone"} or {version, data}.
const GET: &str = r#"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return nil end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if v == 'gone' then return {'gone'} end
return {v, redis.call('HGET', KEYS[1], 'd')}
"#;

/// KEYS[1]; ARGV: version, data, ttl seconds. 1 when stored.
const PUT: &str = r#"
local v = redis.call('HGET', KEYS[1], 'v')
if v and (v == 'gone' or tonumber(v) >= tonumber(ARGV[1])) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// KEYS[1]; ARGV: ttl seconds.
const BURY: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', 'gone')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"#;

/// What Redis holds for a session.
#[derive(Debug)]
pub enum Entry {
    Live(Box<Snapshot>),
    /// Deleted (a tombstone).
    Gone,
}

pub struct Hot {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    get: Script,
    put: Script,
    bury: Script,
    /// Milliseconds since `epoch` before which operations skip Redis.
    retry_at_ms: AtomicU64,
    epoch: Instant,
    down: AtomicBool,
}

impl Hot {
    /// Connects lazily: a Redis that is down at start is not an error.
    pub fn new(url: &str, prefix: &str, ttl: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("sessions.redis_url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("sessions redis: {e}"))?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            ttl,
            get: Script::new(GET),
            put: Script::new(PUT),
            bury: Script::new(BURY),
            retry_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            down: AtomicBool::new(false),
        })
    }

    /// The Redis key of a session (tests read Redis directly).
    pub fn key(&self, id: &str) -> String {
        format!("{}:s:{id}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs().max(1)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs one operation under the timeout and the outage rules; `None`
    /// when Redis did not answer.
    async fn run<T, F>(&self, op: F) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.now_ms() < self.retry_at_ms.load(Ordering::Relaxed) {
            return None;
        }
        let failure = match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok(v)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("sessions' redis reachable again");
                }
                return Some(v);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", OP_TIMEOUT.as_millis()),
        };
        self.retry_at_ms.store(
            self.now_ms() + u64::try_from(RETRY_AFTER.as_millis()).unwrap_or(1000),
            Ordering::Relaxed,
        );
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %failure, "sessions' redis unavailable; reading the durable store until it returns");
        }
        metrics::counter!("sluice_sessions_redis_errors_total").increment(1);
        None
    }

    /// The session's entry, refreshing its TTL; `None` on a miss or when
    /// Redis is unavailable (or holds an unreadable copy).
    pub async fn get(&self, id: &str) -> Option<Entry> {
        let mut conn = self.conn.clone();
        let mut call = self.get.prepare_invoke();
        call.key(self.key(id)).arg(self.ttl_secs());
        let reply: Option<Vec<String>> = self.run(call.invoke_async(&mut conn)).await?;
        match reply?.as_slice() {
            [gone] if gone == "gone" => Some(Entry::Gone),
            [_, data] => match serde_json::from_str::<Snapshot>(data) {
                Ok(snapshot) => Some(Entry::Live(Box::new(snapshot))),
                Err(e) => {
                    tracing::warn!(error = %e, id, "unreadable session copy in redis; reading the store");
                    None
                }
            },
            _ => None,
        }
    }

    /// Stores a copy unless Redis holds a newer one (or a tombstone).
    pub async fn put(&self, snapshot: &Snapshot) {
        let id = &snapshot.session.id;
        let data = match serde_json::to_string(snapshot) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, id, "cannot encode a session for redis");
                return;
            }
        };
        let mut conn = self.conn.clone();
        let mut call = self.put.prepare_invoke();
        call.key(self.key(id))
            .arg(snapshot.session.version)
            .arg(data)
            .arg(self.ttl_secs());
        let stored: Option<i64> = self.run(call.invoke_async(&mut conn)).await;
        if stored.is_none() {
            // An older copy may still be there: drop it if Redis answers.
            self.forget(id).await;
        }
    }

    /// Replaces the session's copy with a tombstone.
    pub async fn bury(&self, id: &str) {
        let mut conn = self.conn.clone();
        let mut call = self.bury.prepare_invoke();
        call.key(self.key(id)).arg(self.ttl_secs());
        let _: Option<i64> = self.run(call.invoke_async(&mut conn)).await;
    }

    /// Drops the session's copy (the next read loads the store).
    pub async fn forget(&self, id: &str) {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(id));
        // Tried once even while Redis is marked down: a stale copy is worse
        // than a slow write.
        let _ = tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<i64>(&mut conn)).await;
    }
}
