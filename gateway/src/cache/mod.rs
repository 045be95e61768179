//! The response cache: a stage after auth and validation, before the
//! provider. An exact tier (a sha256 of tenant, model and the whole
//! validated request, see [`key`]) and a semantic tier (within the exact
//! scope of everything but the last user message, the nearest stored user
//! messages by embedding, each checked by [`verify`] before it is served).
//!
//! Main types: [`Cache`] (built once from [`CacheSettings`]), [`Decision`]
//! (what [`Cache::lookup`] found: a hit to serve, or a ticket to record the
//! answer that is about to be generated), the [`Embedder`] seam, and the
//! [`replay`] answers the handlers render like any other.
//!
//! Design choice: the lookup takes an embedding the caller may already
//! have (the shared encoder pass) and hands back the one it used in the
//! [`Decision`], so one forward pass serves cache lookup, cache insert and
//! any other stage. Backends: in-process ([`memory`], the default) and
//! Redis ([`redis`], shared by every instance); a Redis outage makes the
//! cache answer `bypass`, never fail a request.

pub mod admin;
pub mod embed;
pub mod key;
pub mod memory;
pub mod policy;
pub mod record;
pub mod redis;
pub mod replay;
pub mod testing;
pub mod verify;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue};
use sluice_runtime::{FinishReason, Usage};

use crate::answer::{BoxAnswer, StopNote};
pub use crate::config::{Backend, Bounds, CacheSettings};
use crate::validate::Job;
pub use embed::Embedder;
use key::Key;
use memory::{EntryMeta, MemoryStore};
use policy::PolicyInput;
pub use policy::CACHE_HEADER;
use replay::{Recorder, Replay};

pub const SIMILARITY_HEADER: &str = "x-sluice-cache-similarity";

/// One stored answer: each choice's whole text and why it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAnswer {
    pub choices: Vec<StoredChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredChoice {
    pub text: String,
    pub finish_reason: FinishReason,
    /// The stop string that ended the choice, when its producer said.
    pub stop_sequence: Option<String>,
    /// Whole calls, replayed as [`crate::answer::Step::ToolCall`] pieces.
    pub tool_calls: Vec<sluice_models::ToolCall>,
}

/// How a request met the cache, as the `x-sluice-cache` header says it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Miss,
    Exact,
    Semantic { similarity: f32 },
    Bypass,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Miss => "miss",
            Self::Exact => "exact",
            Self::Semantic { .. } => "semantic",
            Self::Bypass => "bypass",
        }
    }
}

/// Who asks, and what; borrowed for the lookup.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub tenant: &'a str,
    pub model: &'a str,
    pub job: &'a Job,
    pub headers: &'a HeaderMap,
    /// From [`crate::sensitivity::is_sensitive`].
    pub sensitive: bool,
    /// A regulated caller's request: cached only sealed (see [`policy`]).
    pub regulated: bool,
    /// The prompt carries personal data, or nobody looked (no PII stage):
    /// a regulated request is then never cached.
    pub may_carry_pii: bool,
}

/// What to store once the answer is complete.
#[derive(Debug, Clone)]
pub struct Ticket {
    exact: Key,
    meta: EntryMeta,
    /// Stored sealed under the tenant's data key (a regulated request).
    seal: bool,
}

/// What the lookup found.
pub struct Decision {
    pub outcome: Outcome,
    hit: Option<BoxAnswer>,
    ticket: Option<Ticket>,
    cache: Option<Arc<Cache>>,
    embedding: Option<Arc<[f32]>>,
}

impl Decision {
    fn bypass() -> Self {
        Self {
            outcome: Outcome::Bypass,
            hit: None,
            ticket: None,
            cache: None,
            embedding: None,
        }
    }

    /// The cached answer to serve, on a hit.
    pub fn take_hit(&mut self) -> Option<BoxAnswer> {
        self.hit.take()
    }

    /// Wraps a generated answer so it is stored when complete (when the
    /// policy allows writing); otherwise returns it unchanged.
    pub fn record(&mut self, answer: BoxAnswer) -> BoxAnswer {
        self.record_unless_stopped(answer, &StopNote::default())
    }

    /// [`Self::record`], except that an answer `stop` says was ended early
    /// (a stream analyser, the budget's cap) is never stored.
    pub fn record_unless_stopped(&mut self, answer: BoxAnswer, stop: &StopNote) -> BoxAnswer {
        match (self.ticket.take(), &self.cache) {
            (Some(ticket), Some(cache)) => {
                Box::new(Recorder::new(answer, cache.clone(), ticket, stop.clone()))
            }
            _ => answer,
        }
    }

    /// The last user message's embedding, if the semantic tier computed or
    /// was given one (for other stages, so nobody embeds twice).
    pub fn embedding(&self) -> Option<&Arc<[f32]>> {
        self.embedding.as_ref()
    }

    /// Adds `x-sluice-cache` (and the similarity on a semantic hit).
    pub fn set_headers(&self, headers: &mut HeaderMap) {
        headers.insert(
            CACHE_HEADER,
            HeaderValue::from_static(self.outcome.as_str()),
        );
        if let Outcome::Semantic { similarity } = self.outcome {
            if let Ok(v) = HeaderValue::from_str(&format!("{similarity:.4}")) {
                headers.insert(SIMILARITY_HEADER, v);
            }
        }
    }
}

enum Store {
    Memory(MemoryStore),
    Redis(redis::RedisStore),
}

/// The cache: settings, the store and (optionally) an embedder.
pub struct Cache {
    settings: CacheSettings,
    store: Store,
    embedder: Option<Arc<dyn Embedder>>,
    /// Seals regulated requests' entries; `None`: they are never cached.
    sealing: bool,
}

impl Cache {
    /// Builds the configured backend. Redis connects lazily (on first use),
    /// so this fails only on a malformed URL. Call within a Tokio runtime.
    pub fn new(
        settings: CacheSettings,
        embedder: Option<Arc<dyn Embedder>>,
    ) -> Result<Arc<Self>, String> {
        Self::with_cipher(settings, embedder, None)
    }

    /// [`Cache::new`] that also caches regulated requests' answers, sealed
    /// with `cipher` in Redis (in process memory, which is not at rest,
    /// they are kept as any entry).
    pub fn with_cipher(
        settings: CacheSettings,
        embedder: Option<Arc<dyn Embedder>>,
        cipher: Option<crate::sealing::Cipher>,
    ) -> Result<Arc<Self>, String> {
        let sealing = cipher.is_some();
        let store = match &settings.backend {
            Backend::Memory => Store::Memory(MemoryStore::new(settings.bounds)),
            Backend::Redis { url, prefix } => Store::Redis(
                redis::RedisStore::new(url, prefix, settings.bounds)?.with_cipher(cipher),
            ),
        };
        Ok(Arc::new(Self {
            store,
            settings,
            embedder,
            sealing,
        }))
    }

    /// An in-process cache (no fallible backend to build).
    pub fn in_memory(
        mut settings: CacheSettings,
        embedder: Option<Arc<dyn Embedder>>,
    ) -> Arc<Self> {
        settings.backend = Backend::Memory;
        Arc::new(Self {
            store: Store::Memory(MemoryStore::new(settings.bounds)),
            settings,
            embedder,
            sealing: false,
        })
    }

    /// A cache that never stores anything.
    pub fn disabled() -> Arc<Self> {
        Self::in_memory(CacheSettings::default(), None)
    }

    /// The Redis store, when that is the backend (for tests and admin).
    pub fn redis(&self) -> Option<&redis::RedisStore> {
        match &self.store {
            Store::Redis(r) => Some(r),
            Store::Memory(_) => None,
        }
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// Looks the request up: exact first, then semantic. `embedding` is the
    /// last user message's embedding when the caller already has one.
    pub async fn lookup(
        self: &Arc<Self>,
        req: Request<'_>,
        embedding: Option<Arc<[f32]>>,
    ) -> Decision {
        if !self.settings.enabled {
            return Decision::bypass();
        }
        let (_, sampling, n, _) = req.job.parts();
        let access = policy::decide(
            PolicyInput {
                headers: req.headers,
                sensitive: req.sensitive,
                regulated: req.regulated,
                may_carry_pii: req.may_carry_pii,
                sealing: self.sealing,
                cache_nondeterministic: self.settings.cache_nondeterministic,
            },
            sampling,
            n,
        );
        if !access.read && !access.write {
            tracing::debug!(reason = access.reason, "cache bypassed");
            return Decision::bypass();
        }
        let keys = key::keys(req.tenant, req.model, req.job);
        let now = Instant::now();
        let mut decision = Decision {
            outcome: Outcome::Miss,
            hit: None,
            ticket: None,
            cache: Some(self.clone()),
            embedding,
        };
        if access.read {
            let found = match &self.store {
                Store::Memory(m) => Ok(m.get(&keys.exact, now)),
                Store::Redis(r) => r.get(&keys.exact, req.tenant).await,
            };
            let Ok(found) = found else {
                // Redis is unreachable: serve without the cache, store nothing.
                return Decision::bypass();
            };
            if let Some(answer) = found {
                decision.outcome = Outcome::Exact;
                decision.hit = Some(Box::new(Replay::new(&answer)));
                metrics::counter!(crate::metrics::catalog::CACHE_REQUESTS, "outcome" => "exact")
                    .increment(1);
                return decision;
            }
        }
        let semantic = match (&keys.semantic, &self.embedder, self.settings.semantic) {
            (Some(sk), Some(embedder), true) => Some((sk, embedder)),
            _ => None,
        };
        if let Some((sk, embedder)) = semantic {
            if decision.embedding.is_none() {
                match embed::embed_within(embedder.as_ref(), &sk.text, self.settings.embed_timeout)
                    .await
                {
                    Ok(v) => decision.embedding = Some(v),
                    Err(e) => {
                        tracing::warn!(error = %e, "embedding failed; semantic cache skipped")
                    }
                }
            }
            if let (true, Some(v)) = (access.read, &decision.embedding) {
                let (threshold, top_k) = (self.settings.similarity_threshold, self.settings.top_k);
                let by = embedder.embedder_id();
                let candidates = match &self.store {
                    Store::Memory(m) => m.nearest(&sk.scope, by, v, threshold, top_k, now),
                    Store::Redis(r) => r
                        .nearest(&sk.scope, req.tenant, by, v, threshold, top_k)
                        .await
                        .unwrap_or_default(),
                };
                for c in candidates {
                    match verify::verify(&sk.text, &c.text) {
                        None => {
                            decision.outcome = Outcome::Semantic {
                                similarity: c.similarity,
                            };
                            decision.hit = Some(Box::new(Replay::new(&c.answer)));
                            metrics::counter!(crate::metrics::catalog::CACHE_REQUESTS, "outcome" => "semantic")
                                .increment(1);
                            return decision;
                        }
                        Some(m) => {
                            tracing::debug!(
                                similarity = c.similarity,
                                rejected = m.as_str(),
                                "semantic candidate rejected"
                            );
                            metrics::counter!("sluice_cache_verifier_rejections_total", "reason" => m.as_str())
                                .increment(1);
                        }
                    }
                }
            }
        }
        metrics::counter!(crate::metrics::catalog::CACHE_REQUESTS, "outcome" => "miss")
            .increment(1);
        if access.write {
            decision.ticket = Some(Ticket {
                exact: keys.exact,
                meta: EntryMeta {
                    tenant: Arc::from(req.tenant),
                    model: Arc::from(req.model),
                    scope: keys.semantic.as_ref().map(|s| s.scope),
                    text: keys.semantic.map(|s| s.text),
                    embedding: decision.embedding.clone(),
                    // Only this cache's embedder makes the vectors it
                    // stores; with none, the entry is exact-only.
                    embedder: match (&decision.embedding, &self.embedder) {
                        (Some(_), Some(e)) => Some(Arc::from(e.embedder_id())),
                        _ => None,
                    },
                },
                seal: req.regulated,
            });
        }
        decision
    }

    /// Stores a complete answer under its ticket. With Redis this is one
    /// pipelined round trip under a short timeout; a failure is logged by
    /// the store and the answer is simply not cached.
    pub async fn insert(&self, ticket: Ticket, answer: StoredAnswer) {
        let Ticket { exact, meta, seal } = ticket;
        match &self.store {
            Store::Memory(m) => m.insert(
                exact,
                meta,
                Arc::new(answer),
                Instant::now() + self.settings.ttl,
            ),
            Store::Redis(r) => {
                let _ = r
                    .insert(&exact, &meta, &answer, self.settings.ttl, seal)
                    .await;
            }
        }
    }

    /// Removes a tenant's and/or a model's entries; the count removed.
    pub async fn purge(
        &self,
        tenant: Option<&str>,
        model: Option<&str>,
    ) -> Result<usize, redis::Unavailable> {
        match &self.store {
            Store::Memory(m) => Ok(m.purge(tenant, model)),
            Store::Redis(r) => r.purge(tenant, model).await,
        }
    }

    /// (entries, bytes) held in process now ((0, 0) with Redis).
    pub fn usage(&self) -> (usize, usize) {
        match &self.store {
            Store::Memory(m) => m.usage(),
            Store::Redis(_) => (0, 0),
        }
    }
}
