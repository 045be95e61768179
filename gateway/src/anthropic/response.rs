//! The Message object a finished answer becomes, and the pieces the stream
//! shares with it: content blocks, `stop_reason`, `usage`.

use serde::Serialize;
use serde_json::Value;
use sluice_models::ToolCall;
use sluice_runtime::{FinishReason, Usage};

use crate::answer::ChoiceOutput;

/// A whole Message (`"type": "message"`).
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    pub model: &'a str,
    pub content: Vec<Block>,
    pub stop_reason: Option<&'static str>,
    pub stop_sequence: Option<String>,
    pub usage: UsageWire,
}

/// One content block.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        /// The call's arguments as a JSON object.
        input: Value,
    },
}

/// Anthropic's usage: `input_tokens` are the prompt tokens that were
/// computed, `cache_read_input_tokens` those whose KV came from the
/// engine's prefix cache (the two add up to the prompt). The prefix cache
/// fills itself as prompts are computed, at no extra cost, so nothing is
/// ever counted as `cache_creation_input_tokens`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsageWire {
    pub input_tokens: usize,
    pub output_tokens: usize,
    pub cache_creation_input_tokens: usize,
    pub cache_read_input_tokens: usize,
}

impl From<Usage> for UsageWire {
    fn from(u: Usage) -> Self {
        let cached = u.cached_prompt_tokens.min(u.prompt_tokens);
        Self {
            input_tokens: u.prompt_tokens - cached,
            output_tokens: u.completion_tokens,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: cached,
        }
    }
}

/// Anthropic's `stop_reason` and `stop_sequence` for why the answer ended.
/// A stop whose string is known (the engine's match, an upstream's vLLM
/// `stop_reason`, a replay of either) is `stop_sequence` with that
/// string; a stop without one (EOS, or an upstream that did not say which
/// string matched) is `end_turn`, as Anthropic reports a natural end.
pub fn stop_reason(
    reason: FinishReason,
    stop_sequence: Option<String>,
) -> (&'static str, Option<String>) {
    match (reason, stop_sequence) {
        (FinishReason::Stop, Some(s)) => ("stop_sequence", Some(s)),
        (FinishReason::Stop, None) => ("end_turn", None),
        (FinishReason::Length, _) => ("max_tokens", None),
        (FinishReason::ToolCalls, _) => ("tool_use", None),
        (FinishReason::ContentFilter, _) => ("refusal", None),
    }
}

/// A tool call's arguments as the object `input` must be: the model's
/// JSON text parsed (the tool-call reader already checked it is JSON); an
/// argument text that is not an object is wrapped, never lost.
pub fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        Ok(Value::Null) | Err(_) if arguments.trim().is_empty() => {
            Value::Object(Default::default())
        }
        Ok(other) => serde_json::json!({ "value": other }),
        Err(_) => serde_json::json!({ "arguments": arguments }),
    }
}

/// The content blocks of a whole answer: its text (when there is some, or
/// when there are no calls), then one `tool_use` block per call.
pub fn blocks(output: ChoiceOutput) -> Vec<Block> {
    let ChoiceOutput {
        text, tool_calls, ..
    } = output;
    let mut blocks = Vec::with_capacity(1 + tool_calls.len());
    if !text.is_empty() || tool_calls.is_empty() {
        blocks.push(Block::Text { text });
    }
    blocks.extend(tool_calls.into_iter().map(|c| {
        let ToolCall {
            id,
            name,
            arguments,
        } = c;
        Block::ToolUse {
            input: tool_input(&arguments),
            id,
            name,
        }
    }));
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_stop_string_is_a_stop_sequence_and_an_unknown_one_an_end_turn() {
        assert_eq!(
            stop_reason(FinishReason::Stop, Some("END".into())),
            ("stop_sequence", Some("END".to_string()))
        );
        assert_eq!(stop_reason(FinishReason::Stop, None), ("end_turn", None));
        // Only a stop names its string.
        assert_eq!(
            stop_reason(FinishReason::Length, Some("END".into())),
            ("max_tokens", None)
        );
        assert_eq!(
            stop_reason(FinishReason::ToolCalls, None),
            ("tool_use", None)
        );
        assert_eq!(
            stop_reason(FinishReason::ContentFilter, None),
            ("refusal", None)
        );
    }
}
