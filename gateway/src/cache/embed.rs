//! The semantic tier's view of an embedding model: text in, a unit vector
//! out. The gateway's encoder pool implements [`Embedder`]; the cache only
//! compares vectors.
//!
//! Design choice: vectors travel as `Arc<[f32]>`, so the one embedding the
//! request's encoder pass made is shared by the cache lookup, the insert and
//! any other stage (the guard) without a copy or a second forward pass.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

/// Turns a user message into an L2-normalised embedding.
pub trait Embedder: Send + Sync {
    fn embed<'a>(&'a self, text: &'a str) -> BoxFuture<'a, Result<Arc<[f32]>, String>>;
    /// Names the model, for people (reports, logs).
    fn model_id(&self) -> &str;
    /// Names the vector space: the same for every process that loads the
    /// same weights, different for another model or another fine-tune of
    /// it, even of the same width. Stored with each entry; vectors of
    /// another embedder are never compared (two models' cosines mean
    /// nothing to each other).
    fn embedder_id(&self) -> &str;
}

/// Cosine similarity of two unit vectors (their dot product); 0 when the
/// lengths differ, so a vector from another model can never match.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Scales a vector to unit length (a zero vector stays zero).
pub fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// `embedder.embed(text)`, given up after `timeout`: a slow or stuck
/// encoder then costs a request the semantic tier, never its answer. A
/// timeout is counted (`sluice_cache_embed_timeouts_total`) and comes back
/// as an error like any other failure to embed.
pub async fn embed_within(
    embedder: &dyn Embedder,
    text: &str,
    timeout: Duration,
) -> Result<Arc<[f32]>, String> {
    match tokio::time::timeout(timeout, embedder.embed(text)).await {
        Ok(result) => result,
        Err(_) => {
            metrics::counter!("sluice_cache_embed_timeouts_total").increment(1);
            Err(format!("no embedding within {} ms", timeout.as_millis()))
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;
    use serde_json::json;

    use super::*;
    use crate::cache::{Cache, CacheSettings, Outcome, Request};

    /// An embedder that never answers (a stuck or hopelessly busy encoder).
    struct Silent;

    impl Embedder for Silent {
        fn embed<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Arc<[f32]>, String>> {
            Box::pin(std::future::pending())
        }
        fn model_id(&self) -> &str {
            "silent"
        }
        fn embedder_id(&self) -> &str {
            "silent@test"
        }
    }

    /// The outer bound only turns a hang (no timeout at all) into a failure.
    const HANG: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn embedding_gives_up_after_its_timeout() {
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(
            HANG,
            embed_within(&Silent, "hello", Duration::from_millis(200)),
        )
        .await
        .expect("embed_within gave up by itself");
        let err = result.expect_err("nothing was embedded");
        assert!(err.contains("200 ms"), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < HANG,
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_whose_embedding_never_comes_is_a_miss_that_still_records() {
        let settings = CacheSettings {
            enabled: true,
            embed_timeout: Duration::from_millis(200),
            ..CacheSettings::default()
        };
        let cache = Cache::in_memory(settings, Some(Arc::new(Silent)));
        let req = crate::validate::chat(
            serde_json::from_value(json!({"model": "m", "temperature": 0, "messages": [
                {"role": "user", "content": "What is the capital of France?"}
            ]}))
            .unwrap(),
        )
        .unwrap();
        let headers = HeaderMap::new();
        let lookup = cache.lookup(
            Request {
                tenant: "t",
                model: &req.model,
                job: &req.job,
                headers: &headers,
                sensitive: false,
                regulated: false,
                may_carry_pii: false,
            },
            None,
        );
        let decision = tokio::time::timeout(HANG, lookup)
            .await
            .expect("the lookup gave up on the embedding by itself");
        assert_eq!(decision.outcome, Outcome::Miss);
        assert!(decision.embedding().is_none());
        // The answer is still stored for the exact tier.
        assert!(decision.ticket.is_some());
    }
}
