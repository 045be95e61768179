//! Any OpenAI-compatible upstream: OpenAI, an external vLLM, Qwen through
//! DashScope's compatible mode, Ollama, another Sluice. It owns OpenAI's
//! chat wire types, which GigaChat's API shares (see [`super::gigachat`]).
//!
//! Design choice: a stream always asks for `stream_options.include_usage`,
//! so cost is known for streams too; sampling knobs beyond OpenAI's own
//! (`top_k`, `min_p`, `repetition_penalty`, `ignore_eos`) are sent only when
//! the client changed them from their neutral value, as the vLLM/Sluice
//! extensions they are, so a plain OpenAI upstream never sees them unless the
//! client asked (and then its 400 is the honest answer). Token-level knobs
//! (`stop_token_ids`, `logprobs`) are refused: ids and log-probabilities of
//! another tokenizer mean nothing to the client.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use sluice_runtime::{FinishReason, Usage};

use super::answer::{finish_reason, Decoded, EventDecoder, ReadyAnswer, StreamAnswer};
use super::messages::wire_messages;
use super::secret::read_secret;
use super::sse_client::Framing;
use super::usage::saturating_count;
use super::{
    http_client, request_error, sensitive_header, status_error, Provider, ProviderConfig,
    ProviderError, ProviderRequest,
};
use crate::answer::BoxAnswer;
use crate::config::Secret;
use crate::validate::Sampling;

pub struct OpenAiCompat {
    client: reqwest::Client,
    /// `{base_url}/chat/completions`, built once.
    url: String,
    /// Only for `Debug` (redacted); the client sends it as a default header.
    api_key: Option<Secret>,
    connect_timeout: Duration,
}

impl fmt::Debug for OpenAiCompat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiCompat")
            .field("url", &self.url)
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

impl OpenAiCompat {
    pub fn from_config(cfg: &ProviderConfig) -> Result<Self, ProviderError> {
        let ProviderConfig::Openai {
            name: _,
            base_url,
            api_key_env,
            api_key_file,
            headers,
            resilience,
        } = cfg
        else {
            return Err(ProviderError::Config("not an openai provider".into()));
        };
        // Ollama and a local vLLM take no key.
        let api_key = if api_key_env.is_none() && api_key_file.is_none() {
            None
        } else {
            Some(read_secret(
                ("api_key_env", "api_key_file"),
                api_key_env.as_deref(),
                api_key_file.as_deref(),
            )?)
        };
        let mut header_map = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::try_from(k.as_str())
                .map_err(|e| ProviderError::Config(format!("headers: `{k}`: {e}")))?;
            let value = HeaderValue::try_from(v.as_str())
                .map_err(|e| ProviderError::Config(format!("headers: `{k}`: {e}")))?;
            header_map.insert(name, value);
        }
        if let Some(key) = &api_key {
            header_map.insert(
                reqwest::header::AUTHORIZATION,
                sensitive_header(format!("Bearer {}", key.expose()))?,
            );
        }
        let connect_timeout = resilience.connect_timeout();
        Ok(Self {
            client: http_client(connect_timeout, None, header_map)?,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key,
            connect_timeout,
        })
    }

    async fn chat_inner(&self, req: &ProviderRequest) -> Result<BoxAnswer, ProviderError> {
        let body = ChatBody::new(req)?;
        let response = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| request_error(e, self.connect_timeout))?;
        read_chat_response(response, req, finish_reason).await
    }
}

impl Provider for OpenAiCompat {
    fn kind(&self) -> &'static str {
        "openai"
    }

    fn chat<'a>(
        &'a self,
        req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<BoxAnswer, ProviderError>> {
        Box::pin(self.chat_inner(req))
    }
}

/// How an upstream's `finish_reason` names map to the runtime's: the
/// shapes are shared, the names are not (GigaChat's `blacklist`).
pub(super) type FinishNames = fn(&str) -> FinishReason;

/// Reads an OpenAI-shaped chat response (JSON or SSE, as asked).
pub(super) async fn read_chat_response(
    response: reqwest::Response,
    req: &ProviderRequest,
    finish: FinishNames,
) -> Result<BoxAnswer, ProviderError> {
    if !response.status().is_success() {
        return Err(status_error(response).await);
    }
    if req.stream {
        StreamAnswer::open(response, Framing::Sse, ChunkDecoder { finish }, req.n).await
    } else {
        let bytes = super::read_body(response, super::MAX_BODY_BYTES).await?;
        decode_completion(&bytes, req.n, finish)
    }
}

#[derive(Serialize)]
pub(super) struct WireMessage<'a> {
    role: &'a str,
    content: &'a str,
}

/// The request's messages as OpenAI's (and GigaChat's) `{role, content}`.
pub(super) fn openai_messages(req: &ProviderRequest) -> Vec<WireMessage<'_>> {
    wire_messages(&req.messages, |role, content| WireMessage { role, content })
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<usize>,
    temperature: f32,
    top_p: f32,
    n: usize,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "is_zero")]
    presence_penalty: f32,
    #[serde(skip_serializing_if = "is_zero")]
    frequency_penalty: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repetition_penalty: Option<f32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ignore_eos: bool,
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

impl<'a> ChatBody<'a> {
    fn new(req: &'a ProviderRequest) -> Result<Self, ProviderError> {
        let Sampling {
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            seed,
            stop_token_ids,
            stop_strings,
            ignore_eos,
            logprobs,
            logit_bias,
            constraint,
        } = &req.sampling;
        refuse_token_level(stop_token_ids, *logprobs)?;
        refuse_structured(logit_bias, constraint.as_ref())?;
        Ok(Self {
            model: &req.upstream_model,
            messages: openai_messages(req),
            max_tokens: *max_tokens,
            temperature: *temperature,
            top_p: *top_p,
            n: req.n,
            stream: req.stream,
            stream_options: req.stream.then_some(StreamOptions {
                include_usage: true,
            }),
            stop: stop_strings,
            seed: *seed,
            presence_penalty: *presence_penalty,
            frequency_penalty: *frequency_penalty,
            top_k: (*top_k != 0).then_some(*top_k),
            min_p: (*min_p != 0.0).then_some(*min_p),
            repetition_penalty: (*repetition_penalty != 1.0).then_some(*repetition_penalty),
            ignore_eos: *ignore_eos,
        })
    }
}

/// The knobs no upstream can honour for us.
pub(super) fn refuse_token_level(
    stop_token_ids: &[u32],
    logprobs: Option<usize>,
) -> Result<(), ProviderError> {
    if !stop_token_ids.is_empty() {
        return Err(ProviderError::Unsupported {
            param: "stop_token_ids".into(),
            message: "stop_token_ids are not supported by an upstream provider (its tokenizer \
                      differs); use `stop` strings"
                .into(),
        });
    }
    if logprobs.is_some() {
        return Err(ProviderError::Unsupported {
            param: "logprobs".into(),
            message: "logprobs are not supported by an upstream provider".into(),
        });
    }
    Ok(())
}

/// Structured output and token biases are the local engine's (pass-through
/// to providers is not built): refused rather than silently dropped. The
/// router sends such requests to local deployments only.
pub(super) fn refuse_structured(
    logit_bias: &[(u32, f32)],
    constraint: Option<&crate::validate::Constraint>,
) -> Result<(), ProviderError> {
    if !logit_bias.is_empty() {
        return Err(ProviderError::Unsupported {
            param: "logit_bias".into(),
            message: "logit_bias is not supported by an upstream provider (its tokenizer \
                      differs)"
                .into(),
        });
    }
    if let Some(c) = constraint {
        return Err(ProviderError::Unsupported {
            param: c.param.into(),
            message: format!("'{}' is served by local models only", c.param),
        });
    }
    Ok(())
}

#[derive(Deserialize)]
pub(super) struct WireUsage {
    #[serde(default, deserialize_with = "saturating_count")]
    prompt_tokens: usize,
    #[serde(default, deserialize_with = "saturating_count")]
    completion_tokens: usize,
}

impl WireUsage {
    pub fn apply(&self, usage: &mut Usage) {
        usage.prompt_tokens = self.prompt_tokens;
        usage.completion_tokens = self.completion_tokens;
    }
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<CompletionChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct CompletionChoice {
    #[serde(default)]
    index: usize,
    message: CompletionMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct CompletionMessage {
    #[serde(default)]
    content: Option<String>,
}

/// A whole `chat.completion` object into an answer.
pub(super) fn decode_completion(
    body: &[u8],
    n: usize,
    finish: FinishNames,
) -> Result<BoxAnswer, ProviderError> {
    let completion: Completion = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Malformed(format!("chat completion: {e}")))?;
    let mut decoded = Decoded::new(n);
    for choice in completion.choices {
        decoded.token(choice.index, choice.message.content.unwrap_or_default())?;
        let reason = choice.finish_reason.as_deref().unwrap_or("stop");
        decoded.finish(choice.index, finish(reason))?;
    }
    if let Some(u) = completion.usage {
        u.apply(&mut decoded.usage);
    }
    ReadyAnswer::boxed(decoded)
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    usage: Option<WireUsage>,
    /// An error reported inside the stream.
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    delta: Option<ChunkDelta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    content: Option<String>,
}

/// `chat.completion.chunk` events, ended by `[DONE]`.
pub(super) struct ChunkDecoder {
    finish: FinishNames,
}

impl EventDecoder for ChunkDecoder {
    fn decode(&mut self, payload: &str, out: &mut Decoded) -> Result<bool, ProviderError> {
        if payload.trim() == "[DONE]" {
            return Ok(true);
        }
        let chunk: Chunk = serde_json::from_str(payload)
            .map_err(|e| ProviderError::Malformed(format!("stream chunk: {e}")))?;
        if let Some(err) = chunk.error {
            let message = err
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("unknown error")
                .to_string();
            return Err(ProviderError::Transport(format!(
                "the upstream reported an error mid-stream: {message}"
            )));
        }
        for choice in chunk.choices {
            if let Some(text) = choice.delta.and_then(|d| d.content) {
                out.token(choice.index, text)?;
            }
            if let Some(reason) = choice.finish_reason {
                out.finish(choice.index, (self.finish)(&reason))?;
            }
        }
        if let Some(u) = chunk.usage {
            u.apply(&mut out.usage);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::collect;

    fn completion(finish: &str, usage: &str) -> Vec<u8> {
        format!(
            r#"{{"id": "chatcmpl-1", "object": "chat.completion", "choices": [{{"index": 0,
            "message": {{"role": "assistant", "content": "Hi"}}, "finish_reason": "{finish}"}}],
            "usage": {usage}}}"#
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn huge_upstream_token_counts_saturate_and_their_total_does_not_overflow() {
        let usage = format!(
            r#"{{"prompt_tokens": {}, "completion_tokens": 1e30}}"#,
            usize::MAX
        );
        let mut answer = decode_completion(&completion("stop", &usage), 1, finish_reason).unwrap();
        let choices = collect(answer.as_mut()).await.unwrap();
        assert_eq!(choices[0].text, "Hi");
        let usage = answer.usage();
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens),
            (usize::MAX, usize::MAX)
        );
        let wire = crate::wire::UsageWire::from(usage);
        assert_eq!(wire.total_tokens, usize::MAX);
    }

    #[tokio::test]
    async fn content_filter_reaches_the_answer_whole_and_streamed() {
        let body = completion(
            "content_filter",
            r#"{"prompt_tokens": 3, "completion_tokens": 1}"#,
        );
        let mut answer = decode_completion(&body, 1, finish_reason).unwrap();
        let choices = collect(answer.as_mut()).await.unwrap();
        assert_eq!(choices[0].finish_reason, Some(FinishReason::ContentFilter));

        let mut decoder = ChunkDecoder {
            finish: finish_reason,
        };
        let mut out = Decoded::new(1);
        decoder
            .decode(
                r#"{"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]}"#,
                &mut out,
            )
            .unwrap();
        decoder
            .decode(
                r#"{"choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]}"#,
                &mut out,
            )
            .unwrap();
        assert!(out.all_finished());
        assert!(out.steps.iter().any(|s| matches!(
            s,
            crate::answer::Step::Finished {
                reason: FinishReason::ContentFilter,
                ..
            }
        )));
    }
}
