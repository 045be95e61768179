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
    /// vLLM's extension: the stop string that ended the choice. Absent
    /// otherwise, so the object stays OpenAI's own shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct AssistantMessage {
    role: &'static str,
    /// `null` when the answer is only tool calls, as OpenAI sends it.
    content: Option<String>,
    refusal: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallWire>,
}

/// A whole tool call in a response message.
#[derive(Debug, Serialize)]
struct ToolCallWire {
    id: String,
    r#type: &'static str,
    function: FunctionCallWire,
}

#[derive(Debug, Serialize)]
struct FunctionCallWire {
    name: String,
    arguments: String,
}

/// A piece of a tool call in a stream delta: the first piece of a call
/// carries `id`, `type` and the function's `name`, later pieces only
/// `index` and more `arguments`.
#[derive(Debug, Serialize)]
struct ToolCallDelta<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    r#type: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Debug, Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
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
    /// vLLM's extension: the stop string that ended the choice. Absent
    /// otherwise, so the object stays OpenAI's own shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_reason: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
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
                    stop_sequence,
                    logprobs: lps,
                    tool_calls,
                } = out;
                let content = (tool_calls.is_empty() || !text.is_empty()).then_some(text);
                let tool_calls = tool_calls
                    .into_iter()
                    .map(|c| ToolCallWire {
                        id: c.id,
                        r#type: "function",
                        function: FunctionCallWire {
                            name: c.name,
                            arguments: c.arguments,
                        },
                    })
                    .collect();
                Choice {
                    index,
                    message: AssistantMessage {
                        role: "assistant",
                        content,
                        refusal: None,
                        tool_calls,
                    },
                    logprobs: tokenizer.map(|t| logprobs::chat(t, &lps)),
                    finish_reason: finish_reason.map(FinishReason::as_str),
                    stop_reason: stop_sequence,
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
                    tool_calls: None,
                },
                logprobs: None,
                finish_reason: None,
                stop_reason: None,
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
                    tool_calls: None,
                },
                logprobs,
                finish_reason: None,
                stop_reason: None,
            }],
            None,
        )
    }

    fn finish(&self, choice: usize, reason: FinishReason, stop_sequence: Option<&str>) -> String {
        self.chunk(
            vec![ChunkChoice {
                index: choice,
                delta: Delta {
                    role: None,
                    content: None,
                    tool_calls: None,
                },
                logprobs: None,
                finish_reason: Some(reason.as_str()),
                stop_reason: stop_sequence,
            }],
            None,
        )
    }

    fn tool_call(
        &mut self,
        choice: usize,
        index: usize,
        id: Option<&str>,
        name: Option<&str>,
        arguments: &str,
    ) -> Option<String> {
        Some(self.chunk(
            vec![ChunkChoice {
                index: choice,
                delta: Delta {
                    role: None,
                    content: None,
                    tool_calls: Some([ToolCallDelta {
                        index,
                        id,
                        r#type: id.map(|_| "function"),
                        function: FunctionDelta { name, arguments },
                    }]),
                },
                logprobs: None,
                finish_reason: None,
                stop_reason: None,
            }],
            None,
        ))
    }

    fn usage(&self, usage: UsageWire) -> String {
        self.chunk(Vec::new(), Some(usage))
    }
}
