//! `POST /v1/completions` (the legacy text completions): the handler (a thin
//! adapter of the request chain) and the response types.
//!
//! `prompt` may be a string, an array of strings, an array of token ids or
//! an array of arrays of token ids; each prompt gets `n` choices, numbered
//! prompt-major as OpenAI does (`index = prompt * n + choice`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sluice_runtime::{FinishReason, TokenLogprob, Usage};

use crate::answer::ChoiceOutput;
use crate::chain::{Caller, Chain};
use crate::error::ApiError;
use crate::openai::json::ApiJson;
use crate::openai::logprobs::{self, CompletionLogprobs};
use crate::openai::respond::{respond, Identity, Render};
use crate::openai::sse::Framing;
use crate::wire::{CompletionRequest, UsageWire, SYSTEM_FINGERPRINT};

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
    /// vLLM's extension: the stop string that ended the choice. Absent
    /// otherwise, so the object stays OpenAI's own shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_reason: Option<String>,
}

/// `POST /v1/completions`. Text completions go to local deployments only
/// (the router sees to it); the cache uses its exact tier only: there is
/// no user message to compare.
pub async fn create(
    State(chain): State<Arc<Chain>>,
    caller: Caller,
    ApiJson(body): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    tracing::debug!(
        model = body.model.as_deref(),
        stream = body.stream,
        "completion"
    );
    respond::<TextCompletion>(&chain, caller, body).await
}

/// The text completion's rendering.
struct TextCompletion;

impl Render for TextCompletion {
    const ID_PREFIX: &'static str = "cmpl";
    type Framing = CompletionFraming;

    fn framing(identity: Identity, choices: usize) -> CompletionFraming {
        CompletionFraming {
            identity,
            text_offsets: vec![0; choices],
        }
    }

    fn body(identity: Identity, outputs: Vec<ChoiceOutput>, usage: Usage) -> Response {
        let tokenizer = identity.tokenizer.as_deref();
        let choices = outputs
            .into_iter()
            .enumerate()
            .map(|(index, out)| {
                let ChoiceOutput {
                    text,
                    finish_reason,
                    stop_sequence,
                    logprobs: lps,
                    // Completions offer no tools.
                    tool_calls: _,
                } = out;
                Choice {
                    index,
                    text,
                    logprobs: tokenizer.map(|t| logprobs::completion(t, &lps, 0)),
                    finish_reason: finish_reason.map(FinishReason::as_str),
                    stop_reason: stop_sequence,
                }
            })
            .collect();
        Json(Completion {
            id: &identity.id,
            object: "text_completion",
            created: identity.created,
            model: &identity.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage: Some(Some(usage.into())),
        })
        .into_response()
    }
}

struct CompletionFraming {
    identity: Identity,
    /// Bytes of text sent so far per choice, for `text_offset`.
    text_offsets: Vec<usize>,
}

impl CompletionFraming {
    fn chunk(&self, choices: Vec<Choice>, usage: Option<UsageWire>) -> String {
        let identity = &self.identity;
        let chunk = Completion {
            id: &identity.id,
            object: "text_completion",
            created: identity.created,
            model: &identity.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage: identity.include_usage.then_some(usage),
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
            .identity
            .tokenizer
            .as_deref()
            .map(|t| logprobs::completion(t, lps, offset));
        self.chunk(
            vec![Choice {
                index: choice,
                text: text.to_string(),
                logprobs,
                finish_reason: None,
                stop_reason: None,
            }],
            None,
        )
    }

    fn finish(&self, choice: usize, reason: FinishReason, stop_sequence: Option<&str>) -> String {
        self.chunk(
            vec![Choice {
                index: choice,
                text: String::new(),
                logprobs: None,
                finish_reason: Some(reason.as_str()),
                stop_reason: stop_sequence.map(str::to_owned),
            }],
            None,
        )
    }

    fn usage(&self, usage: UsageWire) -> String {
        self.chunk(Vec::new(), Some(usage))
    }
}
