//! The counters behind every budget: per (budget, period), what was spent
//! and what is reserved by requests in flight, in millionths of the
//! currency (integers: no float drift across millions of increments).
//!
//! Two ledgers with one behaviour: Redis, shared by every instance (one Lua
//! script checks and reserves against every budget of a request at once,
//! all or none), and an in-process map for a single instance without Redis.
//!
//! Design choice: a counter that does not exist is never read as zero. The
//! reservation reports it missing, the caller rebuilds it from the store's
//! spend log and seeds it (only if still absent, so racing instances agree),
//! then tries again: a Redis restart never resets a budget.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long one Redis call may take; past it the request is refused with
/// 503 rather than waiting (budgets fail closed).
const OP_TIMEOUT: Duration = Duration::from_millis(500);

/// One budget's counter for its current period.
#[derive(Debug, Clone)]
pub struct Counter {
    pub key: String,
    /// The budget's amount, in millionths.
    pub limit: i64,
    /// When the counter may go (its period's end plus a day), ms.
    pub expire_at_ms: i64,
}

/// What a request asks to reserve: its prompt, plus `per_token` for each
/// output token, between `min_tokens` and `max_tokens` of them (`min` =
/// `max` when the request named `max_tokens`; otherwise as many as every
/// budget still allows, at least one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ask {
    pub prompt: i64,
    pub per_token: f64,
    pub min_tokens: u64,
    pub max_tokens: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reserved {
    /// Reserved `amount` (millionths) for up to `tokens` output tokens on
    /// every counter.
    Granted { tokens: u64, amount: i64 },
    /// The counter at this index has no room; nothing was reserved.
    Refused {
        index: usize,
        spent: i64,
        reserved: i64,
    },
    /// The counter at this index does not exist (a new period, or Redis
    /// lost it): seed it, then ask again. Nothing was reserved.
    Missing(usize),
}

#[derive(Debug, thiserror::Error)]
#[error("the budget counters are unavailable: {0}")]
pub struct LedgerError(pub String);

pub enum Ledger {
    Redis(RedisLedger),
    Memory(MemoryLedger),
}

/// Reserve, over KEYS (one hash per budget: `spent`, `reserved`), with
/// ARGV = prompt, per_token, min_tokens, max_tokens, then each key's limit.
/// Mirrors [`decide`].
const RESERVE: &str = r"
local prompt = tonumber(ARGV[1])
local per_token = tonumber(ARGV[2])
local min_tokens = tonumber(ARGV[3])
local max_tokens = tonumber(ARGV[4])
local room = max_tokens
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  if not v[1] then return {-1, i} end
  local spent = tonumber(v[1])
  local reserved = tonumber(v[2] or '0')
  local free = tonumber(ARGV[4 + i]) - spent - reserved - prompt
  local tokens = max_tokens
  if free < 0 then
    tokens = -1
  elseif per_token > 0 then
    tokens = math.min(max_tokens, math.floor(free / per_token + 1e-9))
  end
  if tokens < min_tokens then return {0, i, spent, reserved} end
  if tokens < room then room = tokens end
end
local amount = prompt + math.ceil(room * per_token)
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'reserved', string.format('%.0f', amount))
end
return {1, room, amount}
";

/// Seeds KEYS[1] with spent = ARGV[1] unless it exists; expires at ARGV[2].
const SEED: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', 0)
  redis.call('PEXPIREAT', KEYS[1], ARGV[2])
end
return 1
";

/// Settles over KEYS, any number of reservations in one call (a
/// reservation's keys in a row): for KEYS[i], reserved += ARGV[2i - 1] (the
/// reservation, negated), spent += ARGV[2i]; returns each key's spent
/// afterwards, -1 for a key that is gone (Redis restarted meanwhile: its
/// rebuild from the spend log will count this request).
const SETTLE: &str = r"
local out = {}
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local r = redis.call('HINCRBY', KEYS[i], 'reserved', ARGV[2 * i - 1])
    if r < 0 then redis.call('HSET', KEYS[i], 'reserved', 0) end
    out[i] = redis.call('HINCRBY', KEYS[i], 'spent', ARGV[2 * i])
  else
    out[i] = -1
  end
end
return out
";

/// One reservation to replace by the actual cost, on each of its counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Replace {
    pub keys: Vec<String>,
    /// What was reserved (millionths).
    pub reserved: i64,
    /// What the answer cost (millionths).
    pub actual: i64,
}

/// The reservation rule itself, over (spent, reserved, limit) per counter;
/// the Lua script above is its twin.
pub fn decide(levels: &[(i64, i64, i64)], ask: &Ask) -> Reserved {
    let mut room = ask.max_tokens as f64;
    for (index, &(spent, reserved, limit)) in levels.iter().enumerate() {
        let free = (limit - spent - reserved - ask.prompt) as f64;
        let tokens = if free < 0.0 {
            -1.0
        } else if ask.per_token > 0.0 {
            (ask.max_tokens as f64).min((free / ask.per_token + 1e-9).floor())
        } else {
            ask.max_tokens as f64
        };
        if tokens < ask.min_tokens as f64 {
            return Reserved::Refused {
                index,
                spent,
                reserved,
            };
        }
        room = room.min(tokens);
    }
    let amount = ask.prompt + (room * ask.per_token).ceil() as i64;
    Reserved::Granted {
        tokens: room as u64,
        amount,
    }
}

impl Ledger {
    pub fn redis(url: &str) -> Result<Self, LedgerError> {
        let client = redis::Client::open(url).map_err(|e| LedgerError(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| LedgerError(e.to_string()))?;
        Ok(Self::Redis(RedisLedger {
            conn,
            reserve: redis::Script::new(RESERVE),
            seed: redis::Script::new(SEED),
            settle: redis::Script::new(SETTLE),
        }))
    }

    pub fn memory() -> Self {
        Self::Memory(MemoryLedger::default())
    }

    pub async fn reserve(&self, counters: &[Counter], ask: &Ask) -> Result<Reserved, LedgerError> {
        match self {
            Self::Redis(r) => r.reserve(counters, ask).await,
            Self::Memory(m) => Ok(m.reserve(counters, ask)),
        }
    }

    /// Creates the counter with `spent` unless it exists already.
    pub async fn seed(&self, counter: &Counter, spent: i64) -> Result<(), LedgerError> {
        match self {
            Self::Redis(r) => r.seed(counter, spent).await,
            Self::Memory(m) => {
                m.seed(counter, spent);
                Ok(())
            }
        }
    }

    /// Replaces each reservation by its actual cost, in order, in one step;
    /// per reservation, each key's spent afterwards (`None`: the counter is
    /// gone).
    pub async fn settle(&self, batch: &[Replace]) -> Result<Vec<Vec<Option<i64>>>, LedgerError> {
        match self {
            Self::Redis(r) => r.settle(batch).await,
            Self::Memory(m) => Ok(batch
                .iter()
                .map(|r| m.settle(&r.keys, r.reserved, r.actual))
                .collect()),
        }
    }

    /// (spent, reserved) of a counter, if it exists.
    pub async fn read(&self, key: &str) -> Result<Option<(i64, i64)>, LedgerError> {
        match self {
            Self::Redis(r) => r.read(key).await,
            Self::Memory(m) => Ok(m.read(key)),
        }
    }
}

pub struct RedisLedger {
    conn: ConnectionManager,
    reserve: redis::Script,
    seed: redis::Script,
    settle: redis::Script,
}

fn redis_err(e: redis::RedisError) -> LedgerError {
    LedgerError(e.to_string())
}

impl RedisLedger {
    async fn reserve(&self, counters: &[Counter], ask: &Ask) -> Result<Reserved, LedgerError> {
        let mut call = self.reserve.prepare_invoke();
        call.arg(ask.prompt)
            .arg(ask.per_token)
            .arg(ask.min_tokens)
            .arg(ask.max_tokens);
        for c in counters {
            call.key(&c.key);
        }
        for c in counters {
            call.arg(c.limit);
        }
        let mut conn = self.conn.clone();
        let out: Vec<i64> = call.invoke_async(&mut conn).await.map_err(redis_err)?;
        let at = |i: usize| out.get(i).copied().unwrap_or(0);
        let index = |i: usize| usize::try_from(at(i) - 1).unwrap_or(0);
        Ok(match at(0) {
            1 => Reserved::Granted {
                tokens: u64::try_from(at(1)).unwrap_or(0),
                amount: at(2),
            },
            0 => Reserved::Refused {
                index: index(1),
                spent: at(2),
                reserved: at(3),
            },
            _ => Reserved::Missing(index(1)),
        })
    }

    async fn seed(&self, counter: &Counter, spent: i64) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .seed
            .key(&counter.key)
            .arg(spent)
            .arg(counter.expire_at_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    async fn settle(&self, batch: &[Replace]) -> Result<Vec<Vec<Option<i64>>>, LedgerError> {
        let mut call = self.settle.prepare_invoke();
        let mut count = 0;
        for r in batch {
            for k in &r.keys {
                call.key(k).arg(-r.reserved).arg(r.actual);
                count += 1;
            }
        }
        if count == 0 {
            return Ok(batch.iter().map(|_| Vec::new()).collect());
        }
        let mut conn = self.conn.clone();
        let out: Vec<i64> = call.invoke_async(&mut conn).await.map_err(redis_err)?;
        if out.len() != count {
            return Err(LedgerError(format!(
                "the settle script answered {} values for {count} counters",
                out.len()
            )));
        }
        let mut spent = out.into_iter().map(|s| (s >= 0).then_some(s));
        Ok(batch
            .iter()
            .map(|r| spent.by_ref().take(r.keys.len()).collect())
            .collect())
    }

    async fn read(&self, key: &str) -> Result<Option<(i64, i64)>, LedgerError> {
        let mut conn = self.conn.clone();
        let (spent, reserved): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(key)
            .arg("spent")
            .arg("reserved")
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(spent.map(|s| (s, reserved.unwrap_or(0))))
    }
}

/// The in-process ledger: the same rule under one mutex (never held across
/// an await; every operation is a few map lookups).
#[derive(Default)]
pub struct MemoryLedger {
    counters: Mutex<HashMap<String, MemoryCounter>>,
}

#[derive(Debug, Clone, Copy)]
struct MemoryCounter {
    spent: i64,
    reserved: i64,
    expire_at_ms: i64,
}

impl MemoryLedger {
    fn reserve(&self, counters: &[Counter], ask: &Ask) -> Reserved {
        let mut map = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let mut levels = Vec::with_capacity(counters.len());
        for (i, c) in counters.iter().enumerate() {
            match map.get(&c.key) {
                Some(m) => levels.push((m.spent, m.reserved, c.limit)),
                None => return Reserved::Missing(i),
            }
        }
        let decision = decide(&levels, ask);
        if let Reserved::Granted { amount, .. } = decision {
            for c in counters {
                if let Some(m) = map.get_mut(&c.key) {
                    m.reserved += amount;
                }
            }
        }
        decision
    }

    fn seed(&self, counter: &Counter, spent: i64) {
        let now = crate::util::unix_now_ms();
        let mut map = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        // A new period is the moment to forget the ones that are over.
        map.retain(|_, m| m.expire_at_ms > now);
        map.entry(counter.key.clone()).or_insert(MemoryCounter {
            spent,
            reserved: 0,
            expire_at_ms: counter.expire_at_ms,
        });
    }

    fn settle(&self, keys: &[String], reserved: i64, actual: i64) -> Vec<Option<i64>> {
        let mut map = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        keys.iter()
            .map(|k| {
                map.get_mut(k).map(|m| {
                    m.reserved = (m.reserved - reserved).max(0);
                    m.spent += actual;
                    m.spent
                })
            })
            .collect()
    }

    fn read(&self, key: &str) -> Option<(i64, i64)> {
        let map = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key).map(|m| (m.spent, m.reserved))
    }
}
