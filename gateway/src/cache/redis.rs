//! The Redis store: entries shared by every gateway instance that points at
//! the same server and prefix.
//!
//! Keys (under `prefix`): `e:<exact hex>` holds one [`record`] with the
//! entry's TTL; `s:<scope hex>` is a sorted set of the scope's entry ids by
//! insertion time, trimmed to `max_per_scope` (the semantic search ranks
//! those ids' vectors in process, from a memo filled on first sight, and
//! fetches only the top-k records: no RediSearch needed); `t:<tenant>`
//! and `m:<model>` are sets of entry ids for purges. The index keys carry
//! the TTL too, refreshed on each insert, so nothing outlives its entries
//! by more than one TTL. The entry count and bytes are Redis's to bound
//! (`maxmemory` with an LRU policy); this store bounds only each scope.
//!
//! Design choice: Redis is a cache, never a dependency. Every command has a
//! short timeout; after a failure the store answers "unavailable" at once
//! for a second (no request waits on a reconnect), logs the outage once,
//! and tries again; the connection manager reconnects underneath.
//! `MODULE LIST` is read once to note whether RediSearch is present; the
//! KNN path through `FT.SEARCH` is a documented follow-up, the in-process
//! ranking is always used.
//!
//! A regulated request's entry is written sealed ([`record::encode_sealed`])
//! under its tenant's data key; reading opens it with the asking tenant's
//! key only, so another tenant's sealed entry is never opened, let alone
//! served (the entry ids are tenant-scoped hashes as well).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use super::embed::cosine;
use super::key::Key;
use super::memory::{Candidate, EntryMeta};
use super::record;
use super::{Bounds, StoredAnswer};
use crate::sealing::{Cipher, TenantKey};

/// How long one Redis command may take before the request goes on without it.
const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, how long requests skip Redis before one tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Redis could not answer in time; the cache is bypassed for this request.
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    bounds: Bounds,
    /// Milliseconds since `epoch` before which requests skip Redis.
    retry_at_ms: AtomicU64,
    epoch: Instant,
    down: AtomicBool,
    search_module: AtomicBool,
    /// Entry id → its question, vector, tenant and scope. An id is the
    /// hash of the whole request, so what it names never changes; the
    /// semantic search ranks from here and fetches only the winners'
    /// records (each still verified and checksummed) instead of the scope's.
    memo: Mutex<HashMap<String, EntryMeta>>,
    /// Seals regulated entries and opens them; `None`: none are written.
    cipher: Option<Cipher>,
}

/// One record as this store reads it for a tenant.
enum Read {
    Entry(record::Decoded),
    /// Sealed for another tenant, or no key to open it: skipped, kept.
    Unreadable,
    Corrupt(record::Corrupt),
}

impl RedisStore {
    /// Connects lazily: a server that is down at start-up is not an error.
    pub fn new(url: &str, prefix: &str, bounds: Bounds) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis_url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("redis: {e}"))?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            bounds,
            retry_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            down: AtomicBool::new(false),
            search_module: AtomicBool::new(false),
            memo: Mutex::new(HashMap::new()),
            cipher: None,
        })
    }

    /// Seals regulated entries with `cipher` (and opens them).
    pub fn with_cipher(mut self, cipher: Option<Cipher>) -> Self {
        self.cipher = cipher;
        self
    }

    /// A record decoded; a sealed one opened with `tenant`'s key (kept in
    /// `key` for the other records of the same call).
    async fn read(
        &self,
        id: &str,
        tenant: &str,
        bytes: &[u8],
        key: &mut Option<TenantKey>,
    ) -> Read {
        let sealed = match record::decode_any(bytes) {
            Err(why) => return Read::Corrupt(why),
            Ok(record::Record::Plain(d)) => return Read::Entry(d),
            Ok(record::Record::Sealed(s)) => s,
        };
        // Another tenant's entry is not this request's to open.
        if sealed.tenant != tenant {
            return Read::Unreadable;
        }
        let Some(cipher) = &self.cipher else {
            return Read::Unreadable;
        };
        if key.is_none() {
            match cipher.tenant(tenant).await {
                Ok(k) => *key = Some(k),
                Err(e) => {
                    tracing::warn!(error = %e, "a sealed cache entry cannot be opened; not served");
                    return Read::Unreadable;
                }
            }
        }
        match key.as_ref().map(|k| sealed.open(k, id)) {
            Some(Ok(d)) => Read::Entry(d),
            Some(Err(why)) => Read::Corrupt(why),
            None => Read::Unreadable,
        }
    }

    fn k(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs one Redis operation under the timeout and the outage rules.
    async fn run<T, F>(&self, op: F) -> Result<T, Unavailable>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.now_ms() < self.retry_at_ms.load(Ordering::Relaxed) {
            return Err(Unavailable("redis is down; retrying shortly".into()));
        }
        let result = match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", OP_TIMEOUT.as_millis())),
        };
        match result {
            Ok(v) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis cache reachable again");
                    self.detect_search_module().await;
                }
                Ok(v)
            }
            Err(e) => {
                self.retry_at_ms.store(
                    self.now_ms() + RETRY_AFTER.as_millis() as u64,
                    Ordering::Relaxed,
                );
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "redis cache unavailable; requests bypass the cache until it returns");
                }
                metrics::counter!("sluice_cache_redis_errors_total").increment(1);
                Err(Unavailable(e))
            }
        }
    }

    /// Notes whether the server has RediSearch (`MODULE LIST` names `search`).
    pub async fn detect_search_module(&self) -> bool {
        let mut c = self.conn.clone();
        let reply: Result<redis::Value, _> = tokio::time::timeout(
            OP_TIMEOUT,
            redis::cmd("MODULE").arg("LIST").query_async(&mut c),
        )
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timeout"))));
        let found = reply.is_ok_and(|v| format!("{v:?}").to_ascii_lowercase().contains("search"));
        self.search_module.store(found, Ordering::Relaxed);
        found
    }

    pub fn has_search_module(&self) -> bool {
        self.search_module.load(Ordering::Relaxed)
    }

    pub async fn get(
        &self,
        key: &Key,
        tenant: &str,
    ) -> Result<Option<Arc<StoredAnswer>>, Unavailable> {
        let id = key.hex();
        let mut c = self.conn.clone();
        let bytes: Option<Vec<u8>> = self.run(c.get(self.k("e", &id))).await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        match self.read(&id, tenant, &bytes, &mut None).await {
            // The tenant is in the key already; checking it again costs
            // nothing and makes a cross-tenant answer impossible even if
            // a record were written under the wrong key.
            Read::Entry(d) if &*d.meta.tenant == tenant => Ok(Some(Arc::new(d.answer))),
            Read::Entry(_) | Read::Unreadable => Ok(None),
            Read::Corrupt(why) => {
                self.drop_corrupt(&id, None, why).await;
                Ok(None)
            }
        }
    }

    async fn drop_corrupt(&self, id: &str, scope: Option<&str>, why: record::Corrupt) {
        tracing::warn!(entry = id, reason = ?why, "corrupt cache record deleted, not served");
        metrics::counter!("sluice_cache_corrupt_records_total").increment(1);
        let mut pipe = redis::pipe();
        pipe.del(self.k("e", id)).ignore();
        if let Some(scope) = scope {
            pipe.zrem(self.k("s", scope), id).ignore();
        }
        let mut c = self.conn.clone();
        let _ = self.run(pipe.query_async::<()>(&mut c)).await;
    }

    pub async fn nearest(
        &self,
        scope: &Key,
        tenant: &str,
        embedder: &str,
        embedding: &[f32],
        threshold: f32,
        top_k: usize,
    ) -> Result<Vec<Candidate>, Unavailable> {
        let scope_id = scope.hex();
        let mut c = self.conn.clone();
        let ids: Vec<String> = self
            .run(c.zrevrange(
                self.k("s", &scope_id),
                0,
                self.bounds.max_per_scope as isize - 1,
            ))
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Vectors of ids seen before come from the memo; only new ids cost
        // a record transfer.
        let unknown: Vec<String> = {
            let memo = self.memo();
            ids.iter()
                .filter(|id| !memo.contains_key(*id))
                .cloned()
                .collect()
        };
        let mut stale = Vec::new();
        let mut tenant_key = None;
        if !unknown.is_empty() {
            let keys: Vec<String> = unknown.iter().map(|id| self.k("e", id)).collect();
            let records: Vec<Option<Vec<u8>>> = self.run(c.mget(&keys)).await?;
            for (id, bytes) in unknown.iter().zip(records) {
                let Some(bytes) = bytes else {
                    stale.push(id.clone());
                    continue;
                };
                match self.read(id, tenant, &bytes, &mut tenant_key).await {
                    Read::Entry(d) => self.remember(id, &d.meta),
                    Read::Unreadable => {}
                    Read::Corrupt(why) => self.drop_corrupt(id, Some(&scope_id), why).await,
                }
            }
        }
        let mut ranked: Vec<(f32, String, String)> = {
            let memo = self.memo();
            ids.iter()
                .filter_map(|id| {
                    let m = memo.get(id)?;
                    if &*m.tenant != tenant
                        || m.scope != Some(*scope)
                        || m.embedder.as_deref() != Some(embedder)
                    {
                        return None;
                    }
                    let similarity = cosine(embedding, m.embedding.as_deref()?);
                    (similarity >= threshold)
                        .then(|| (similarity, id.clone(), m.text.clone().unwrap_or_default()))
                })
                .collect()
        };
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranked.truncate(top_k);
        let mut found = Vec::with_capacity(ranked.len());
        if !ranked.is_empty() {
            let keys: Vec<String> = ranked.iter().map(|(_, id, _)| self.k("e", id)).collect();
            let records: Vec<Option<Vec<u8>>> = self.run(c.mget(&keys)).await?;
            for ((similarity, id, text), bytes) in ranked.into_iter().zip(records) {
                let Some(bytes) = bytes else {
                    self.forget(&id);
                    stale.push(id);
                    continue;
                };
                match self.read(&id, tenant, &bytes, &mut tenant_key).await {
                    Read::Entry(d)
                        if &*d.meta.tenant == tenant
                            && d.meta.scope == Some(*scope)
                            && d.meta.embedder.as_deref() == Some(embedder) =>
                    {
                        found.push(Candidate {
                            similarity,
                            text,
                            answer: Arc::new(d.answer),
                        })
                    }
                    Read::Entry(_) | Read::Unreadable => self.forget(&id),
                    Read::Corrupt(why) => {
                        self.forget(&id);
                        self.drop_corrupt(&id, Some(&scope_id), why).await;
                    }
                }
            }
        }
        if !stale.is_empty() {
            // Expired entries leave their ids behind in the scope set.
            let _ = self
                .run(c.zrem::<_, _, ()>(self.k("s", &scope_id), stale))
                .await;
        }
        Ok(found)
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, HashMap<String, EntryMeta>> {
        // Entries are whole values; a panic elsewhere cannot leave one half-written.
        self.memo.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, id: &str, meta: &EntryMeta) {
        let mut memo = self.memo();
        // Bounded: when full, start over (a memo miss costs one MGET).
        if memo.len() >= self.bounds.max_entries.max(1) {
            memo.clear();
        }
        memo.insert(id.to_string(), meta.clone());
    }

    fn forget(&self, id: &str) {
        self.memo().remove(id);
    }

    /// Stores an entry; `seal`: a regulated request's, sealed under its
    /// tenant's data key (not stored at all when it cannot be sealed).
    pub async fn insert(
        &self,
        key: &Key,
        meta: &EntryMeta,
        answer: &StoredAnswer,
        ttl: Duration,
        seal: bool,
    ) -> Result<(), Unavailable> {
        let id = key.hex();
        let value = if seal {
            let sealed = match &self.cipher {
                Some(cipher) => match cipher.tenant(&meta.tenant).await {
                    Ok(k) => record::encode_sealed(meta, answer, &k, &id),
                    Err(e) => Err(e),
                },
                None => Err(crate::sealing::SealError::Master(
                    "no master key configured".into(),
                )),
            };
            match sealed {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "a regulated answer could not be sealed; not cached");
                    return Ok(());
                }
            }
        } else {
            record::encode(meta, answer)
        };
        let ttl_s = ttl.as_secs().max(1);
        let score = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.set_ex(self.k("e", &id), value, ttl_s).ignore();
        if let Some(scope) = meta.scope {
            let s = self.k("s", &scope.hex());
            pipe.zadd(&s, &id, score).ignore();
            // Keep the newest `max_per_scope` ids.
            pipe.zremrangebyrank(&s, 0, -(self.bounds.max_per_scope as isize) - 1)
                .ignore();
            pipe.expire(&s, ttl_s as i64).ignore();
        }
        for (kind, name) in [("t", &*meta.tenant), ("m", &*meta.model)] {
            let k = self.k(kind, name);
            pipe.sadd(&k, &id).ignore();
            pipe.expire(&k, ttl_s as i64).ignore();
        }
        let mut c = self.conn.clone();
        self.run(pipe.query_async::<()>(&mut c)).await
    }

    /// Deletes a tenant's and/or a model's entries; how many existed.
    pub async fn purge(
        &self,
        tenant: Option<&str>,
        model: Option<&str>,
    ) -> Result<usize, Unavailable> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = match (tenant, model) {
            (Some(t), Some(m)) => {
                self.run(c.sinter(&[self.k("t", t), self.k("m", m)]))
                    .await?
            }
            (Some(t), None) => self.run(c.smembers(self.k("t", t))).await?,
            (None, Some(m)) => self.run(c.smembers(self.k("m", m))).await?,
            (None, None) => return Ok(0),
        };
        let mut removed = 0usize;
        for batch in ids.chunks(256) {
            let keys: Vec<String> = batch.iter().map(|id| self.k("e", id)).collect();
            let n: usize = self.run(c.del(&keys)).await?;
            removed += n;
            for id in batch {
                self.forget(id);
            }
            let mut pipe = redis::pipe();
            for (kind, name) in [("t", tenant), ("m", model)] {
                if let Some(name) = name {
                    pipe.srem(self.k(kind, name), batch).ignore();
                }
            }
            self.run(pipe.query_async::<()>(&mut c)).await?;
        }
        Ok(removed)
    }

    /// Raw access for tests that corrupt a record on purpose.
    pub fn entry_key(&self, key: &Key) -> String {
        self.k("e", &key.hex())
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}
