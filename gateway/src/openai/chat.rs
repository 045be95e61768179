//! `POST /v1/chat/completions`: the wire types and the handler.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_models::Tokenizer;
use sluice_runtime::{FinishReason, TokenLogprob};

use crate::answer::{self, ChoiceOutput};
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::openai::json::ApiJson;
use crate::openai::logprobs::{self, ChatLogprobs};
use crate::openai::sse::{self, Framing};
use crate::openai::{new_id, unix_now, StreamOptions, UsageWire, SYSTEM_FINGERPRINT};
use crate::pipeline::{self, Answered, Caller};
use crate::sensitivity::Sensitivity;
use crate::server::AppState;
use crate::validate;

/// The request as sent. Known fields are typed loosely (numbers as `i64`/`f64`)
/// so that [`validate::chat`] can say which bound a value breaks; every
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
    // Known, refused unless harmless (see `validate`).
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

#[derive(Debug, Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<Choice>,
    usage: UsageWire,
}

#[derive(Debug, Serialize)]
struct Choice {
    index: usize,
    message: AssistantMessage,
    logprobs: Option<ChatLogprobs>,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct AssistantMessage {
    role: &'static str,
    content: String,
    refusal: Option<String>,
}

#[derive(Debug, Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<ChunkChoice<'a>>,
    /// Absent unless `include_usage`; then `null` on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageWire>>,
}

#[derive(Debug, Serialize)]
struct ChunkChoice<'a> {
    index: usize,
    delta: Delta<'a>,
    logprobs: Option<ChatLogprobs>,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

/// `POST /v1/chat/completions`.
pub async fn create(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    headers: HeaderMap,
    Sensitivity(sensitive): Sensitivity,
    ApiJson(body): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let started = tokio::time::Instant::now();
    let req = validate::chat(body)?;
    tracing::debug!(model = %req.model, user = req.user.as_deref(), stream = req.stream, "chat completion");
    let caller = Caller {
        tenant: tenant.as_deref(),
        headers: &headers,
        sensitive,
        started,
    };
    let (req, answered) = pipeline::answer(&state, caller, req).await?;
    let Answered {
        answer: mut generation,
        tokenizer,
        stamp,
    } = answered;
    let id = new_id("chatcmpl");
    let created = unix_now();
    if req.stream {
        let framing = ChatFraming {
            id,
            created,
            model: req.model,
            include_usage: req.include_usage,
            tokenizer,
        };
        let mut response = sse::respond(generation, framing, req.include_usage);
        stamp.apply(response.headers_mut(), None);
        return Ok(response);
    }
    let outputs = answer::collect(generation.as_mut()).await?;
    let choices = outputs
        .into_iter()
        .enumerate()
        .map(|(index, out)| {
            let ChoiceOutput {
                text,
                finish_reason,
                logprobs: lps,
            } = out;
            Choice {
                index,
                message: AssistantMessage {
                    role: "assistant",
                    content: text,
                    refusal: None,
                },
                logprobs: tokenizer.as_deref().map(|t| logprobs::chat(t, &lps)),
                finish_reason: finish_reason.map(FinishReason::as_str),
            }
        })
        .collect();
    let usage = generation.usage();
    let body = ChatCompletion {
        id: &id,
        object: "chat.completion",
        created,
        model: &req.model,
        system_fingerprint: SYSTEM_FINGERPRINT,
        choices,
        usage: usage.into(),
    };
    let mut response = Json(body).into_response();
    stamp.apply(response.headers_mut(), Some(&usage));
    Ok(response)
}

struct ChatFraming {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Present when log-probabilities are to be rendered.
    tokenizer: Option<Arc<Tokenizer>>,
}

impl ChatFraming {
    fn chunk(&self, choices: Vec<ChunkChoice<'_>>, usage: Option<UsageWire>) -> String {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage: self.include_usage.then_some(usage),
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }
}

impl Framing for ChatFraming {
    fn opening(&self, choice: usize) -> Option<String> {
        Some(self.chunk(
            vec![ChunkChoice {
                index: choice,
                delta: Delta {
                    role: Some("assistant"),
                    content: Some(""),
                },
                logprobs: None,
                finish_reason: None,
            }],
            None,
        ))
    }

    fn content(&mut self, choice: usize, text: &str, lps: &[TokenLogprob]) -> String {
        let logprobs = self.tokenizer.as_deref().map(|t| logprobs::chat(t, lps));
        self.chunk(
            vec![ChunkChoice {
                index: choice,
                delta: Delta {
                    role: None,
                    content: Some(text),
                },
                logprobs,
                finish_reason: None,
            }],
            None,
        )
    }

    fn finish(&self, choice: usize, reason: FinishReason) -> String {
        self.chunk(
            vec![ChunkChoice {
                index: choice,
                delta: Delta {
                    role: None,
                    content: None,
                },
                logprobs: None,
                finish_reason: Some(reason.as_str()),
            }],
            None,
        )
    }

    fn usage(&self, usage: UsageWire) -> String {
        self.chunk(Vec::new(), Some(usage))
    }
}
