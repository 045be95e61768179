//! Test doubles for the cache: a deterministic [`HashedEmbedder`] that makes
//! the semantic tier, the verifier and the stores testable (and the
//! `cache-pairs` evaluation runnable) without a real encoder model.
//!
//! It is NOT a semantic model: it hashes lowercased words and character
//! trigrams into a fixed number of buckets, so paraphrases that share words
//! land close and paraphrases that share none do not. Never configure it for
//! serving; it exists for tests and benchmarks.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::embed::{normalise, Embedder};

/// Hashed bag of words plus character trigrams, L2-normalised.
#[derive(Debug, Clone)]
pub struct HashedEmbedder {
    dims: usize,
    id: String,
}

impl HashedEmbedder {
    pub fn new(dims: usize) -> Self {
        Self {
            dims: dims.max(1),
            id: format!("test-hashed-bow-trigram/{dims}"),
        }
    }

    /// The same vectors under another [`Embedder::embedder_id`]: stands in
    /// for a second model of the same width.
    pub fn named(mut self, id: &str) -> Self {
        self.id = id.to_string();
        self
    }

    pub fn embed_now(&self, text: &str) -> Arc<[f32]> {
        let mut v = vec![0f32; self.dims];
        let lower = text.to_lowercase();
        let mut add = |feature: &str, weight: f32| {
            let h = Sha256::digest(feature.as_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[..8]);
            let bucket = (u64::from_le_bytes(b) % self.dims as u64) as usize;
            let sign = if h[8] & 1 == 0 { 1.0 } else { -1.0 };
            if let Some(slot) = v.get_mut(bucket) {
                *slot += sign * weight;
            }
        };
        for word in lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            add(&format!("w:{word}"), 1.0);
            let chars: Vec<char> = format!(" {word} ").chars().collect();
            for tri in chars.windows(3) {
                add(&format!("t:{}", tri.iter().collect::<String>()), 0.5);
            }
        }
        normalise(&mut v);
        v.into()
    }
}

impl Default for HashedEmbedder {
    fn default() -> Self {
        Self::new(384)
    }
}

impl Embedder for HashedEmbedder {
    fn embed<'a>(&'a self, text: &'a str) -> BoxFuture<'a, Result<Arc<[f32]>, String>> {
        let v = self.embed_now(text);
        Box::pin(async move { Ok(v) })
    }

    fn model_id(&self) -> &str {
        "test-hashed-bow-trigram"
    }

    fn embedder_id(&self) -> &str {
        &self.id
    }
}
