//! What goes into the engine and what comes out of it.

use std::sync::Arc;
use std::time::Instant;

use crate::constraint::Grammar;

/// How to pick tokens and when to stop. Built by the gateway's validator;
/// the engine trusts that the values are in range.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// 0 means off.
    pub top_k: usize,
    /// 1.0 means off.
    pub top_p: f32,
    /// 0.0 means off.
    pub min_p: f32,
    /// 1.0 means off (llama.cpp / HF style: divide positive logits, multiply negative).
    pub repetition_penalty: f32,
    /// OpenAI style: subtract once if the token already appeared in the output.
    pub presence_penalty: f32,
    /// OpenAI style: subtract per occurrence in the output.
    pub frequency_penalty: f32,
    /// A seeded request draws from its own generator, so its output does not
    /// depend on what else shares the batch.
    pub seed: Option<u64>,
    /// Extra token ids that end generation (the model's EOS ids are added by the engine).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end generation; matched on the decoded text and never emitted.
    pub stop_strings: Vec<String>,
    /// Keep going past EOS (benchmarks).
    pub ignore_eos: bool,
    /// `Some(n)`: report the chosen token's log-probability and the top `n` alternatives.
    pub logprobs: Option<usize>,
    /// Added to the logits of these token ids before anything else (OpenAI's
    /// `logit_bias`: -100 bans a token, +100 all but forces it).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            logit_bias: Vec::new(),
        }
    }
}

/// A tokenised request, ready to schedule.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt_tokens: Vec<u32>,
    pub params: SamplingParams,
    /// A grammar the output must match (from
    /// [`crate::EngineHandle::compile_grammar`]); `None` means free text.
    pub constraint: Option<Arc<Grammar>>,
    /// The conversation this turn belongs to, if the caller said: once it
    /// finishes, the engine keeps its prompt + answer blocks warm for a
    /// while, so the next turn's prefix is still cached.
    pub session: Option<SessionKey>,
}

/// Names one conversation to the engine: opaque, compared whole. The
/// gateway scopes it (tenant, API and id) before it gets here, so two
/// tenants' sessions never share a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(Arc<str>);

impl SessionKey {
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        Self(key.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// An upstream provider's content filter withheld or cut the answer.
    /// The local engine never produces it; the gateway never caches it.
    ContentFilter,
    /// The answer is one or more tool calls. The engine never produces it:
    /// the gateway does, once it has parsed the model's text as calls.
    ToolCalls,
}

impl FinishReason {
    /// The OpenAI wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ContentFilter => "content_filter",
            Self::ToolCalls => "tool_calls",
        }
    }
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_prompt_tokens: usize,
}

/// When a request passed the engine's stages, in monotonic time: queued
/// from `arrived` to `scheduled`, prefilled until `first_token`, decoded
/// until `finished`. A stage the request skipped (no token generated)
/// takes no time: its bounds are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageTimes {
    /// Submitted to the engine (its queue wait starts).
    pub arrived: Instant,
    /// First scheduled: its prefill started.
    pub scheduled: Instant,
    /// Its first token was sampled: prefill done, decode starts.
    pub first_token: Instant,
    /// It left the engine (its last token was sampled and handled).
    pub finished: Instant,
}

/// Log-probabilities of one generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// The most likely alternatives, best first.
    pub top: Vec<(u32, f32)>,
}

/// One thing that happened to a request.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// A generated token and the text it completes. `text` may be empty while
    /// a partial UTF-8 character or a possible stop string is held back.
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The last event of a request.
    Finished {
        reason: FinishReason,
        /// Held-back text released at the end (never part of a stop string).
        text: String,
        usage: Usage,
        /// The stop string that ended generation (`reason` is then
        /// [`FinishReason::Stop`]); `None` for EOS, a stop token id, a
        /// finished grammar or a length stop.
        stop_sequence: Option<String>,
        /// When it passed the engine's stages (the gateway's traces read
        /// them; the engine knows no exporter).
        times: StageTimes,
    },
    /// The engine failed this request; no more events follow.
    Error(String),
}
