//! The OpenAI wire format's request types and the pieces every response
//! shares (`usage`, `stream_options`, the fingerprint). A leaf: it imports
//! nothing from the crate, so the validator ([`crate::validate`]) reads the
//! requests and the handlers ([`crate::openai`]) write the responses without
//! importing each other. Numbers are typed loosely (`i64`/`f64`) so that the
//! validator can say which bound a value breaks; every field not listed lands
//! in `other` and is refused by name.

pub mod responses;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// The request as sent. Known fields are typed loosely (numbers as `i64`/`f64`)
/// so that [`crate::validate::chat`] can say which bound a value breaks; every
/// field not listed lands in `other` and is refused by name.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<ChatMessageWire>>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub stop: Option<Value>,
    pub seed: Option<serde_json::Number>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    // vLLM's extras.
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub ignore_eos: Option<bool>,
    pub stop_token_ids: Option<Vec<i64>>,
    // Accepted; they change nothing about the answer.
    pub metadata: Option<BTreeMap<String, String>>,
    pub store: Option<bool>,
    pub parallel_tool_calls: Option<bool>,
    // Known, refused unless supported (see `validate`).
    pub response_format: Option<Value>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub modalities: Option<Vec<String>>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    pub audio: Option<Value>,
    pub prediction: Option<Value>,
    pub web_search_options: Option<Value>,
    pub reasoning_effort: Option<Value>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One message as sent; `content` is a string or an array of parts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessageWire {
    pub role: String,
    pub content: Option<Value>,
    pub name: Option<String>,
    pub tool_calls: Option<Value>,
    pub tool_call_id: Option<String>,
    pub function_call: Option<Value>,
    pub refusal: Option<Value>,
}

/// The request as sent; see [`ChatCompletionRequest`]
/// for why numbers are loosely typed.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<Value>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub stop: Option<Value>,
    pub seed: Option<serde_json::Number>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// Number of alternatives per token, 0..=20.
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    // vLLM's extras.
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub ignore_eos: Option<bool>,
    pub stop_token_ids: Option<Vec<i64>>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub response_format: Option<Value>,
    // vLLM's structured-output extras: a JSON schema (object or text), a
    // regular expression, a Lark grammar.
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_grammar: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}
