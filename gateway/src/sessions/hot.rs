//! The Redis hot layer. A session is two keys: `<prefix>:s:<id>`, a hash
//! with `v` (its version), `l` (its last item's seq), `u` (its last
//! change, ms) and `m` (the rest of its row as JSON), and
//! `<prefix>:s:<id>:i`, a list of its items as JSON, in order. A deleted
//! session is a tombstone: the hash with `v = gone` and nothing else. Both
//! keys carry the hot TTL, refreshed on every read.
//!
//! Every write is version-guarded in one script run: a whole copy is
//! stored only over an older one (never over a newer copy or a tombstone;
//! a bare version marker, left by an append to an uncached session, lets
//! only that version or a newer one in);
//! an append is applied in place only when Redis holds exactly the version
//! before it (so an append costs its own items, not the session's length),
//! and otherwise the caller stores a whole copy from the durable store.
//! Redis is never the truth: every operation has a short timeout, a
//! failure is logged once and skips Redis for a second (reads go to the
//! durable store), and a write that failed tries to drop the keys so no
//! stale copy outlives it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Item, Kind, Session, Snapshot};

/// How long one Redis command may take before the store answers instead.
const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, how long operations skip Redis before one tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// KEYS: hash, list; ARGV: ttl seconds. nil, {"gone"} or
/// {v, l, u, m, items...}.
const GET: &str = r#"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return nil end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if v == 'gone' then return {'gone'} end
redis.call('EXPIRE', KEYS[2], ARGV[1])
local head = redis.call('HMGET', KEYS[1], 'v', 'l', 'u', 'm')
for i = 1, 4 do if not head[i] then return nil end end
local items = redis.call('LRANGE', KEYS[2], 0, -1)
for _, item in ipairs(items) do table.insert(head, item) end
return head
"#;

/// KEYS: hash, list; ARGV: version, last seq, updated, meta, ttl, items...
/// 1 when stored.
const PUT: &str = r#"
local v = redis.call('HGET', KEYS[1], 'v')
if v then
  if v == 'gone' or tonumber(v) > tonumber(ARGV[1]) then return 0 end
  if tonumber(v) == tonumber(ARGV[1]) and redis.call('HEXISTS', KEYS[1], 'm') == 1 then
    return 0
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'l', ARGV[2], 'u', ARGV[3], 'm', ARGV[4])
for i = 6, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"#;

/// KEYS: hash, list; ARGV: version, last seq, updated, ttl, items...
/// 1: applied; 0: no copy (a version marker is left, so a reader that
/// loaded an older row cannot store it afterwards); -1: another version is
/// there.
const APPEND: &str = r#"
local v = redis.call('HGET', KEYS[1], 'v')
if v == 'gone' then return -1 end
if (not v) or redis.call('HEXISTS', KEYS[1], 'm') == 0 then
  if v and tonumber(v) > tonumber(ARGV[1]) then return 0 end
  redis.call('HSET', KEYS[1], 'v', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return 0
end
if tonumber(v) ~= tonumber(ARGV[1]) - 1 then return -1 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'l', ARGV[2], 'u', ARGV[3])
for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"#;

/// KEYS: hash, list; ARGV: ttl seconds.
const BURY: &str = r#"
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'v', 'gone')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"#;

/// A session's row without what an append changes (Redis's `m`).
#[derive(Serialize, Deserialize)]
struct Meta {
    id: String,
    tenant: String,
    user: Option<String>,
    kind: Kind,
    parent: Option<String>,
    conversation: Option<String>,
    body: Value,
    created_at: i64,
}

/// What an in-place append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patched {
    /// Applied: Redis holds the new version.
    Applied,
    /// Redis holds no copy: nothing to keep fresh.
    NoCopy,
    /// Redis holds another version (or Redis did not answer): store a
    /// whole copy instead.
    Stale,
}

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
    append: Script,
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
            append: Script::new(APPEND),
            bury: Script::new(BURY),
            retry_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            down: AtomicBool::new(false),
        })
    }

    /// The Redis key of a session's hash (tests read Redis directly).
    pub fn key(&self, id: &str) -> String {
        format!("{}:s:{id}", self.prefix)
    }

    /// The Redis key of a session's item list.
    pub fn items_key(&self, id: &str) -> String {
        format!("{}:s:{id}:i", self.prefix)
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
        call.key(self.key(id))
            .key(self.items_key(id))
            .arg(self.ttl_secs());
        let reply: Option<Vec<String>> = self.run(call.invoke_async(&mut conn)).await?;
        let reply = reply?;
        match reply.as_slice() {
            [gone] if gone == "gone" => Some(Entry::Gone),
            [v, l, u, m, items @ ..] => match decode(v, l, u, m, items) {
                Ok(snapshot) => Some(Entry::Live(Box::new(snapshot))),
                Err(e) => {
                    tracing::warn!(error = %e, id, "unreadable session copy in redis; reading the store");
                    None
                }
            },
            _ => None,
        }
    }

    /// Stores a whole copy unless Redis holds a newer one (or a tombstone).
    pub async fn put(&self, snapshot: &Snapshot) {
        let id = &snapshot.session.id;
        let encoded = encode_meta(&snapshot.session).and_then(|meta| {
            let items = snapshot
                .items
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((meta, items))
        });
        let (meta, items) = match encoded {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, id, "cannot encode a session for redis");
                return;
            }
        };
        let s = &snapshot.session;
        let mut conn = self.conn.clone();
        let mut call = self.put.prepare_invoke();
        call.key(self.key(id))
            .key(self.items_key(id))
            .arg(s.version)
            .arg(s.last_seq)
            .arg(s.updated_at)
            .arg(meta)
            .arg(self.ttl_secs());
        for item in items {
            call.arg(item);
        }
        let stored: Option<i64> = self.run(call.invoke_async(&mut conn)).await;
        if stored.is_none() {
            // An older copy may still be there: drop it if Redis answers.
            self.forget(id).await;
        }
    }

    /// Applies an append in place when Redis holds the version before it.
    pub async fn append(
        &self,
        id: &str,
        version: i64,
        last_seq: i64,
        updated_at: i64,
        items: &[Item],
    ) -> Patched {
        let encoded = match items
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(e) => e,
            Err(_) => return Patched::Stale,
        };
        let mut conn = self.conn.clone();
        let mut call = self.append.prepare_invoke();
        call.key(self.key(id))
            .key(self.items_key(id))
            .arg(version)
            .arg(last_seq)
            .arg(updated_at)
            .arg(self.ttl_secs());
        for item in encoded {
            call.arg(item);
        }
        match self.run(call.invoke_async::<i64>(&mut conn)).await {
            Some(1) => Patched::Applied,
            Some(0) => Patched::NoCopy,
            _ => Patched::Stale,
        }
    }

    /// Replaces the session's copy with a tombstone.
    pub async fn bury(&self, id: &str) {
        let mut conn = self.conn.clone();
        let mut call = self.bury.prepare_invoke();
        call.key(self.key(id))
            .key(self.items_key(id))
            .arg(self.ttl_secs());
        let _: Option<i64> = self.run(call.invoke_async(&mut conn)).await;
    }

    /// Drops the session's copy (the next read loads the store).
    pub async fn forget(&self, id: &str) {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(id)).arg(self.items_key(id));
        // Tried once even while Redis is marked down: a stale copy is worse
        // than a slow write.
        let _ = tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<i64>(&mut conn)).await;
    }
}

fn encode_meta(s: &Session) -> Result<String, serde_json::Error> {
    serde_json::to_string(&Meta {
        id: s.id.clone(),
        tenant: s.tenant.clone(),
        user: s.user.clone(),
        kind: s.kind,
        parent: s.parent.clone(),
        conversation: s.conversation.clone(),
        body: s.body.clone(),
        created_at: s.created_at,
    })
}

fn decode(v: &str, l: &str, u: &str, m: &str, items: &[String]) -> Result<Snapshot, String> {
    let number = |text: &str| text.parse::<i64>().map_err(|e| e.to_string());
    let meta: Meta = serde_json::from_str(m).map_err(|e| e.to_string())?;
    let items = items
        .iter()
        .map(|i| serde_json::from_str::<Item>(i).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Snapshot {
        session: Session {
            id: meta.id,
            tenant: meta.tenant,
            user: meta.user,
            kind: meta.kind,
            version: number(v)?,
            last_seq: number(l)?,
            parent: meta.parent,
            conversation: meta.conversation,
            body: meta.body,
            created_at: meta.created_at,
            updated_at: number(u)?,
        },
        items,
    })
}
