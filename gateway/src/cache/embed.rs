//! The semantic tier's view of an embedding model: text in, a unit vector
//! out. The gateway's encoder pool implements [`Embedder`]; the cache only
//! compares vectors.
//!
//! Design choice: vectors travel as `Arc<[f32]>`, so the one embedding the
//! request's encoder pass made is shared by the cache lookup, the insert and
//! any other stage (the guard) without a copy or a second forward pass.

use std::sync::Arc;

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
