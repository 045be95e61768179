//! `POST /v1/completions` (the legacy text completions): wire types and handler.
//!
//! `prompt` may be a string, an array of strings, an array of token ids or
//! an array of arrays of token ids; each prompt gets `n` choices, numbered
//! prompt-major as OpenAI does (`index = prompt * n + choice`).

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
use crate::openai::logprobs::{self, CompletionLogprobs};
use crate::openai::sse::{self, Framing};
use crate::openai::{new_id, unix_now, StreamOptions, UsageWire, SYSTEM_FINGERPRINT};
use crate::pipeline::{self, Answered, Caller};
use crate::sensitivity::Sensitivity;
use crate::server::AppState;
use crate::validate;

/// The request as sent; see [`crate::openai::chat::ChatCompletionRequest`]
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
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Debug, Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<Choice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageWire>>,
}

#[derive(Debug, Serialize)]
struct Choice {
    index: usize,
    text: String,
    logprobs: Option<CompletionLogprobs>,
    finish_reason: Option<&'static str>,
}

/// `POST /v1/completions`.
pub async fn create(
    State(state): State<AppState>,
    tenant: Option<Extension<Tenant>>,
    headers: HeaderMap,
    Sensitivity(sensitive): Sensitivity,
    ApiJson(body): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let started = tokio::time::Instant::now();
    let req = validate::completion(body)?;
    tracing::debug!(model = %req.model, user = req.user.as_deref(), stream = req.stream, "completion");
    // Text completions go to local deployments only (the router sees to it);
    // the cache uses its exact tier only: no user message to compare.
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
    let id = new_id("cmpl");
    let created = unix_now();
    if req.stream {
        let framing = CompletionFraming {
            text_offsets: vec![0; generation.num_choices()],
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
                text,
                logprobs: tokenizer
                    .as_deref()
                    .map(|t| logprobs::completion(t, &lps, 0)),
                finish_reason: finish_reason.map(FinishReason::as_str),
            }
        })
        .collect();
    let usage = generation.usage();
    let body = Completion {
        id: &id,
        object: "text_completion",
        created,
        model: &req.model,
        system_fingerprint: SYSTEM_FINGERPRINT,
        choices,
        usage: Some(Some(usage.into())),
    };
    let mut response = Json(body).into_response();
    stamp.apply(response.headers_mut(), Some(&usage));
    Ok(response)
}

struct CompletionFraming {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Present when log-probabilities are to be rendered.
    tokenizer: Option<Arc<Tokenizer>>,
    /// Bytes of text sent so far per choice, for `text_offset`.
    text_offsets: Vec<usize>,
}

impl CompletionFraming {
    fn chunk(&self, choices: Vec<Choice>, usage: Option<UsageWire>) -> String {
        let chunk = Completion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage: self.include_usage.then_some(usage),
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }
}

impl Framing for CompletionFraming {
    fn opening(&self, _choice: usize) -> Option<String> {
        None
    }

    fn content(&mut self, choice: usize, text: &str, lps: &[TokenLogprob]) -> String {
        let offset = self.text_offsets.get(choice).copied().unwrap_or(0);
        if let Some(o) = self.text_offsets.get_mut(choice) {
            *o += text.len();
        }
        let logprobs = self
            .tokenizer
            .as_deref()
            .map(|t| logprobs::completion(t, lps, offset));
        self.chunk(
            vec![Choice {
                index: choice,
                text: text.to_string(),
                logprobs,
                finish_reason: None,
            }],
            None,
        )
    }

    fn finish(&self, choice: usize, reason: FinishReason) -> String {
        self.chunk(
            vec![Choice {
                index: choice,
                text: String::new(),
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
