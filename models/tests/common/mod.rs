//! Helpers shared by the tokenizer test files.

use sluice_models::{IncrementalDecoder, Tokenizer};

/// Feeds `ids` one at a time; returns each push's output and the final flush.
pub fn stream(tok: &Tokenizer, ids: &[u32]) -> (Vec<String>, String) {
    let mut dec = IncrementalDecoder::new();
    let chunks = ids
        .iter()
        .map(|&id| dec.push(tok, id).expect("push"))
        .collect();
    let tail = dec.finish(tok).expect("finish");
    (chunks, tail)
}
