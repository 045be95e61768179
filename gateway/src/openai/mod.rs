//! The OpenAI wire format: request and response types, the handlers that
//! speak them, and the SSE framing of streamed answers.
//!
//! Wire types stay here; the rest of the gateway sees only the validated
//! request ([`crate::validate::ValidRequest`]) and the engine's events.

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod json;
pub mod logprobs;
pub mod models;
pub mod moderations;
pub mod sse;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    /// Accepted and without effect: chunks never carry OpenAI's random
    /// `obfuscation` padding here.
    pub include_obfuscation: Option<bool>,
}

/// `usage` in responses and in the last streamed chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UsageWire {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl From<sluice_runtime::Usage> for UsageWire {
    fn from(u: sluice_runtime::Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            // Upstream counts saturate at usize::MAX (providers::usage);
            // so must their sum.
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.cached_prompt_tokens,
            },
        }
    }
}

/// Identifies the serving stack, like OpenAI's `system_fingerprint`.
pub const SYSTEM_FINGERPRINT: &str = concat!("fp_sluice_", env!("CARGO_PKG_VERSION"));

/// Seconds since the Unix epoch, for `created`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh response id such as `chatcmpl-3f9a...`: unique, not secret.
pub fn new_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // `RandomState` is randomly keyed per process (and per call), so ids do
    // not repeat across restarts; the counter keeps them apart within one.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let a = h.finish();
    h.write_u64(a);
    let b = h.finish();
    format!("{prefix}-{a:016x}{:08x}", b as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_prefixed() {
        let a = new_id("chatcmpl");
        let b = new_id("chatcmpl");
        assert!(a.starts_with("chatcmpl-") && a.len() == "chatcmpl-".len() + 24);
        assert_ne!(a, b);
    }
}
