//! The in-process store: exact entries by key, bounded by count and bytes
//! with least-recently-used eviction, each entry with an expiry; semantic
//! candidates by brute-force cosine over one scope's entries.
//!
//! Design choice: brute force, not an ANN index. A scope (tenant, model,
//! parameters, earlier turns) holds at most `max_per_scope` vectors
//! (default 1000); 1000 dot products of 384 floats take tens of
//! microseconds, less than building or locking an index would cost, and
//! the result is exact. One `std::sync::Mutex` guards everything: every
//! critical section is short and never awaits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::embed::cosine;
use super::key::Key;
use super::{Bounds, StoredAnswer};

/// What an entry carries besides its answer, for the semantic tier and purges.
#[derive(Debug, Clone)]
pub struct EntryMeta {
    pub tenant: Arc<str>,
    pub model: Arc<str>,
    pub scope: Option<Key>,
    /// The last user message, for the verifier.
    pub text: Option<String>,
    pub embedding: Option<Arc<[f32]>>,
    /// [`super::Embedder::embedder_id`] of whoever made `embedding`.
    pub embedder: Option<Arc<str>>,
}

#[derive(Debug)]
struct Entry {
    meta: EntryMeta,
    answer: Arc<StoredAnswer>,
    bytes: usize,
    expires: Instant,
    tick: u64,
}

/// A semantic neighbour, best first.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub similarity: f32,
    pub text: String,
    pub answer: Arc<StoredAnswer>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Recency order: tick → key; the smallest tick is evicted first.
    lru: BTreeMap<u64, Key>,
    /// Keys of each scope's entries, oldest first.
    scopes: HashMap<Key, VecDeque<Key>>,
    bytes: usize,
    next_tick: u64,
}

/// Entries in this process only.
#[derive(Debug)]
pub struct MemoryStore {
    bounds: Bounds,
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new(bounds: Bounds) -> Self {
        Self {
            bounds,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that serves a wrong answer (entries are whole values), so
        // a poisoned lock is taken over rather than failing every request.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry under `key`, unless it has expired (then it is removed).
    pub fn get(&self, key: &Key, now: Instant) -> Option<Arc<StoredAnswer>> {
        let mut inner = self.lock();
        let expired = inner.entries.get(key)?.expires <= now;
        if expired {
            inner.remove(key);
            return None;
        }
        let tick = inner.bump();
        let entry = inner.entries.get_mut(key)?;
        let old = std::mem::replace(&mut entry.tick, tick);
        let answer = entry.answer.clone();
        inner.lru.remove(&old);
        inner.lru.insert(tick, *key);
        Some(answer)
    }

    /// Up to `top_k` live entries of `scope` at least `threshold` similar to
    /// `embedding`, best first; only entries `embedder` made are compared.
    pub fn nearest(
        &self,
        scope: &Key,
        embedder: &str,
        embedding: &[f32],
        threshold: f32,
        top_k: usize,
        now: Instant,
    ) -> Vec<Candidate> {
        let inner = self.lock();
        let Some(keys) = inner.scopes.get(scope) else {
            return Vec::new();
        };
        let mut found: Vec<Candidate> = keys
            .iter()
            .filter_map(|k| inner.entries.get(k))
            .filter(|e| e.expires > now)
            .filter(|e| e.meta.embedder.as_deref() == Some(embedder))
            .filter_map(|e| {
                let v = e.meta.embedding.as_deref()?;
                let similarity = cosine(embedding, v);
                (similarity >= threshold).then(|| Candidate {
                    similarity,
                    text: e.meta.text.clone().unwrap_or_default(),
                    answer: e.answer.clone(),
                })
            })
            .collect();
        found.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        found.truncate(top_k);
        found
    }

    /// Stores an entry, evicting the least recently used ones until the
    /// bounds hold. An entry larger than the byte bound is not stored.
    pub fn insert(&self, key: Key, meta: EntryMeta, answer: Arc<StoredAnswer>, expires: Instant) {
        let bytes = entry_bytes(&meta, &answer);
        if bytes > self.bounds.max_bytes || self.bounds.max_entries == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.remove(&key);
        if let Some(scope) = meta.scope {
            let keys = inner.scopes.entry(scope).or_default();
            keys.push_back(key);
            let over = keys.len().saturating_sub(self.bounds.max_per_scope);
            let dropped: Vec<Key> = keys.drain(..over).collect();
            for k in dropped {
                inner.remove(&k);
            }
        }
        let tick = inner.bump();
        inner.lru.insert(tick, key);
        inner.bytes += bytes;
        inner.entries.insert(
            key,
            Entry {
                meta,
                answer,
                bytes,
                expires,
                tick,
            },
        );
        while inner.entries.len() > self.bounds.max_entries || inner.bytes > self.bounds.max_bytes {
            let Some((_, oldest)) = inner.lru.pop_first() else {
                break;
            };
            inner.remove(&oldest);
        }
    }

    /// Removes the entries of a tenant and/or a model (both `None`: all).
    pub fn purge(&self, tenant: Option<&str>, model: Option<&str>) -> usize {
        let mut inner = self.lock();
        let doomed: Vec<Key> = inner
            .entries
            .iter()
            .filter(|(_, e)| tenant.is_none_or(|t| &*e.meta.tenant == t))
            .filter(|(_, e)| model.is_none_or(|m| &*e.meta.model == m))
            .map(|(k, _)| *k)
            .collect();
        for k in &doomed {
            inner.remove(k);
        }
        doomed.len()
    }

    /// (entries, bytes) now held.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }
}

impl Inner {
    fn bump(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    fn remove(&mut self, key: &Key) {
        let Some(e) = self.entries.remove(key) else {
            return;
        };
        self.lru.remove(&e.tick);
        self.bytes = self.bytes.saturating_sub(e.bytes);
        if let Some(scope) = e.meta.scope {
            if let Some(keys) = self.scopes.get_mut(&scope) {
                // Oldest first, and eviction takes the oldest: the key is
                // almost always at the front (a full scan per eviction was
                // 1.2% of a proxied request's CPU with a full cache).
                if let Some(at) = keys.iter().position(|k| k == key) {
                    keys.remove(at);
                }
                if keys.is_empty() {
                    self.scopes.remove(&scope);
                }
            }
        }
    }
}

/// What an entry costs, counted as the heap it holds plus a fixed overhead
/// for the maps' slots.
fn entry_bytes(meta: &EntryMeta, answer: &StoredAnswer) -> usize {
    const OVERHEAD: usize = 256;
    OVERHEAD
        + meta.tenant.len()
        + meta.model.len()
        + meta.embedder.as_ref().map_or(0, |e| e.len())
        + meta.text.as_ref().map_or(0, String::len)
        + meta.embedding.as_ref().map_or(0, |v| v.len() * 4)
        + answer
            .choices
            .iter()
            .map(|c| c.text.len() + 16)
            .sum::<usize>()
}
