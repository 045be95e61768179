//! Reading OpenAI-shaped chat answers, whole (`chat.completion`) or streamed
//! (`chat.completion.chunk` events ended by `[DONE]`): text, tool calls,
//! finish reasons and usage. GigaChat answers in the same shapes, with its
//! own finish names and its calls as the older `function_call` (one call,
//! arguments an object rather than JSON text), which is read here too.
//!
//! Design choice: calls are handed on piece by piece in OpenAI's framing
//! (first piece: id and name; then argument text), normalised by
//! [`Decoded::tool_call`], so however an upstream cuts its deltas the
//! client sees the framing it expects.

use serde::Deserialize;
use serde_json::Value;
use sluice_runtime::{FinishReason, Usage};

use super::answer::{CallPiece, Decoded, EventDecoder, ReadyAnswer, StreamAnswer};
use super::sse_client::Framing;
use super::usage::saturating_count;
use super::{status_error, ProviderError, ProviderRequest};
use crate::answer::BoxAnswer;

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
    message: WireMessageOut,
    finish_reason: Option<String>,
    /// vLLM: the stop string that matched (a string), or the stop token id
    /// (a number), or null. Only a string names a stop sequence.
    #[serde(default)]
    stop_reason: Option<Value>,
}

/// The stop string an upstream named in `stop_reason`, if it named one.
fn stop_string(stop_reason: Option<Value>) -> Option<String> {
    match stop_reason {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// A message (whole) or a delta (streamed): the same fields.
#[derive(Deserialize, Default)]
struct WireMessageOut {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    /// OpenAI's deprecated functions API, and GigaChat's.
    #[serde(default)]
    function_call: Option<WireFunctionCall>,
}

#[derive(Deserialize)]
struct WireToolCall {
    /// Required in deltas by OpenAI; a whole message's calls are in order.
    index: Option<usize>,
    id: Option<String>,
    function: Option<WireFunctionCall>,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    name: Option<String>,
    /// JSON text (OpenAI); an object (GigaChat) is written out as text.
    #[serde(default)]
    arguments: Option<Value>,
}

impl WireFunctionCall {
    fn arguments_text(&mut self) -> String {
        match self.arguments.take() {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text,
            Some(other) => other.to_string(),
        }
    }
}

impl WireMessageOut {
    /// Its text, then its calls, into `out`.
    fn decode_into(self, choice: usize, out: &mut Decoded) -> Result<(), ProviderError> {
        if let Some(text) = self.content {
            out.token(choice, text)?;
        }
        for (position, call) in self.tool_calls.into_iter().flatten().enumerate() {
            let WireToolCall {
                index,
                id,
                function,
            } = call;
            let (name, arguments) = match function {
                Some(mut f) => (f.name.take(), f.arguments_text()),
                None => (None, String::new()),
            };
            out.tool_call(
                choice,
                CallPiece {
                    index: index.unwrap_or(position),
                    id,
                    name,
                    arguments,
                },
            )?;
        }
        // One call at most; GigaChat gives it no id (one is made up).
        if let Some(mut f) = self.function_call {
            let arguments = f.arguments_text();
            out.tool_call(
                choice,
                CallPiece {
                    index: 0,
                    id: None,
                    name: f.name,
                    arguments,
                },
            )?;
        }
        Ok(())
    }
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
        choice.message.decode_into(choice.index, &mut decoded)?;
        let reason = choice.finish_reason.as_deref().unwrap_or("stop");
        decoded.finish_with_stop(
            choice.index,
            finish(reason),
            stop_string(choice.stop_reason),
        )?;
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
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    delta: Option<WireMessageOut>,
    finish_reason: Option<String>,
    #[serde(default)]
    stop_reason: Option<Value>,
}

/// `chat.completion.chunk` events, ended by `[DONE]`.
pub(super) struct ChunkDecoder {
    pub finish: FinishNames,
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
            if let Some(delta) = choice.delta {
                delta.decode_into(choice.index, out)?;
            }
            if let Some(reason) = choice.finish_reason {
                out.finish_with_stop(
                    choice.index,
                    (self.finish)(&reason),
                    stop_string(choice.stop_reason),
                )?;
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
    use crate::answer::{collect, Step};
    use crate::providers::answer::finish_reason;

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
            Step::Finished {
                reason: FinishReason::ContentFilter,
                ..
            }
        )));
    }

    #[tokio::test]
    async fn a_vllm_stop_reason_string_names_the_stop_sequence_whole_and_streamed() {
        let body = br#"{"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
            "finish_reason": "stop", "stop_reason": "END"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}"#;
        let mut answer = decode_completion(body, 1, finish_reason).unwrap();
        let choices = collect(answer.as_mut()).await.unwrap();
        assert_eq!(choices[0].finish_reason, Some(FinishReason::Stop));
        assert_eq!(choices[0].stop_sequence.as_deref(), Some("END"));

        // A stop token id (a number) or no field names no string.
        let body = completion("stop", r#"{"prompt_tokens": 3, "completion_tokens": 1}"#);
        let mut answer = decode_completion(&body, 1, finish_reason).unwrap();
        assert_eq!(
            collect(answer.as_mut()).await.unwrap()[0].stop_sequence,
            None
        );

        let mut decoder = ChunkDecoder {
            finish: finish_reason,
        };
        let mut out = Decoded::new(1);
        decoder
            .decode(
                r#"{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": 128009}]}"#,
                &mut out,
            )
            .unwrap();
        assert!(matches!(
            out.steps.back(),
            Some(Step::Finished {
                stop_sequence: None,
                ..
            })
        ));
        let mut out = Decoded::new(1);
        decoder
            .decode(
                r#"{"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop", "stop_reason": "\n\n"}]}"#,
                &mut out,
            )
            .unwrap();
        match out.steps.back() {
            Some(Step::Finished { stop_sequence, .. }) => {
                assert_eq!(stop_sequence.as_deref(), Some("\n\n"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn whole_tool_calls_become_calls_with_their_ids_and_arguments() {
        let body = br#"{"choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "tool_calls": [
              {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
              {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}"#;
        let mut answer = decode_completion(body, 1, finish_reason).unwrap();
        let choices = collect(answer.as_mut()).await.unwrap();
        let c = &choices[0];
        assert_eq!(c.text, "");
        assert_eq!(c.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(c.tool_calls.len(), 2);
        assert_eq!(
            (&*c.tool_calls[0].id, &*c.tool_calls[0].name),
            ("call_1", "get_weather")
        );
        assert_eq!(c.tool_calls[0].arguments, r#"{"city": "Paris"}"#);
        assert_eq!(c.tool_calls[1].name, "get_time");
    }

    /// OpenAI's framing, cut at awkward places: inside an escape, inside a
    /// multi-byte character's JSON text, two calls interleaved by index,
    /// id and name repeated on a later piece (as some servers do).
    #[test]
    fn streamed_call_pieces_reassemble_and_keep_openai_framing() {
        let mut decoder = ChunkDecoder {
            finish: finish_reason,
        };
        let mut out = Decoded::new(1);
        let events = [
            r#"{"choices": [{"index": 0, "delta": {"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}, "finish_reason": null}]}"#,
            r#"{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}, "finish_reason": null}]}"#,
            r#"{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\": \"Europe/Pa"}}]}, "finish_reason": null}]}"#,
            r#"{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "get_weather", "arguments": "ty\": \"Mo\\"}}]}, "finish_reason": null}]}"#,
            r#"{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"скв\u0430\"}"}}, {"index": 1, "function": {"arguments": "ris\"}"}}]}, "finish_reason": null}]}"#,
            r#"{"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}"#,
        ];
        for e in events {
            decoder.decode(e, &mut out).unwrap();
        }
        assert!(decoder.decode("[DONE]", &mut out).unwrap());
        let steps: Vec<Step> = out.steps.drain(..).collect();
        let mut headers = Vec::new();
        let mut args = [String::new(), String::new()];
        for s in &steps {
            if let Step::ToolCall {
                index,
                id,
                name,
                arguments,
                ..
            } = s
            {
                if id.is_some() || name.is_some() {
                    headers.push((*index, id.clone().unwrap(), name.clone().unwrap()));
                }
                args[*index].push_str(arguments);
            }
        }
        assert_eq!(
            headers,
            vec![
                (0, "call_a".to_string(), "get_weather".to_string()),
                (1, "call_b".to_string(), "get_time".to_string())
            ]
        );
        let a: Value = serde_json::from_str(&args[0]).unwrap();
        assert_eq!(a["city"], "Mo\"скв\u{430}");
        let b: Value = serde_json::from_str(&args[1]).unwrap();
        assert_eq!(b["tz"], "Europe/Paris");
        assert!(matches!(
            steps.last(),
            Some(Step::Finished {
                reason: FinishReason::ToolCalls,
                ..
            })
        ));
    }

    #[test]
    fn a_call_without_a_name_is_malformed_and_a_stop_after_calls_is_tool_calls() {
        let mut decoder = ChunkDecoder {
            finish: finish_reason,
        };
        let mut out = Decoded::new(1);
        let nameless = r#"{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]}"#;
        assert!(matches!(
            decoder.decode(nameless, &mut out),
            Err(ProviderError::Malformed(_))
        ));
        // Ollama: whole calls in one delta, no index, no id, then "stop".
        let mut out = Decoded::new(1);
        let whole = r#"{"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]}, "finish_reason": "stop"}]}"#;
        decoder.decode(whole, &mut out).unwrap();
        match out.steps.front() {
            Some(Step::ToolCall {
                id: Some(id),
                arguments,
                ..
            }) => {
                assert!(id.starts_with("call_"));
                assert_eq!(arguments, r#"{"x":1}"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            out.steps.back(),
            Some(Step::Finished {
                reason: FinishReason::ToolCalls,
                ..
            })
        ));
    }
}
