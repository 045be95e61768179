//! `POST /v1/chat/completions`: the handler (a thin adapter of the request
//! chain) and the response types; the request types are in [`crate::wire`].

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
use crate::openai::logprobs::{self, ChatLogprobs};
use crate::openai::respond::{respond, Identity, Render};
use crate::openai::sse::Framing;
use crate::wire::{ChatCompletionRequest, UsageWire, SYSTEM_FINGERPRINT};

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
    State(chain): State<Arc<Chain>>,
    caller: Caller,
    ApiJson(body): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    tracing::debug!(
        model = body.model.as_deref(),
        stream = body.stream,
        "chat completion"
    );
    respond::<Chat>(&chain, caller, body).await
}

/// The chat completion's rendering.
struct Chat;

impl Render for Chat {
    const ID_PREFIX: &'static str = "chatcmpl";
    type Framing = ChatFraming;

    fn framing(identity: Identity, _choices: usize) -> ChatFraming {
        ChatFraming { identity }
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
                    logprobs: lps,
                } = out;
                Choice {
                    index,
                    message: AssistantMessage {
                        role: "assistant",
                        content: text,
                        refusal: None,
                    },
                    logprobs: tokenizer.map(|t| logprobs::chat(t, &lps)),
                    finish_reason: finish_reason.map(FinishReason::as_str),
                }
            })
            .collect();
        Json(ChatCompletion {
            id: &identity.id,
            object: "chat.completion",
            created: identity.created,
            model: &identity.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage: usage.into(),
        })
        .into_response()
    }
}

struct ChatFraming {
    identity: Identity,
}

impl ChatFraming {
    fn chunk(&self, choices: Vec<ChunkChoice<'_>>, usage: Option<UsageWire>) -> String {
        let identity = &self.identity;
        let chunk = Chunk {
            id: &identity.id,
            object: "chat.completion.chunk",
            created: identity.created,
            model: &identity.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage: identity.include_usage.then_some(usage),
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
        let logprobs = self
            .identity
            .tokenizer
            .as_deref()
            .map(|t| logprobs::chat(t, lps));
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
