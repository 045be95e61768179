//! Tools in the prompt: the functions a request offers, the calls earlier
//! assistant turns made and the `tool` turns that answered them.
//!
//! A template that knows tools (it reads `tools`, as Qwen 2.5, Llama 3.1,
//! Mistral and Hermes templates do) gets them the way transformers passes
//! them: `tools` as `[{"type": "function", "function": {...}}]`, an
//! assistant turn's calls as `tool_calls: [{"type": "function", "id": ...,
//! "function": {"name": ..., "arguments": <object>}}]`, a tool turn as
//! `{"role": "tool", "tool_call_id": ..., "content": ...}`.
//!
//! A template that does not (SmolLM2's GGUF template, most base chat
//! templates) only ever sees plain `{role, content}` turns: the tools become
//! a system block in the family's own words ([`ToolFormat`]), earlier calls
//! are written back into the assistant's text exactly as the family writes
//! them (so the model sees its own format), and tool results become a user
//! turn of `<tool_response>` blocks (a template that knows no tools seldom
//! accepts a `tool` role).

use serde_json::{json, Map, Value};

use super::py_json;
use crate::ChatMessage;

/// How a model family writes its tool calls; what the gateway parses and
/// what constrained decoding forces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolFormat {
    /// Hermes / Qwen: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
    /// one block per call.
    Hermes,
    /// SmolLM2's instruct data: one `<tool_call>[{...}, {...}]</tool_call>`
    /// block holding a JSON array of calls.
    SmolLm2,
    /// Llama 3.x: a bare JSON object `{"name": ..., "parameters": {...}}`
    /// (after `<|python_tag|>` when the template writes one); calls
    /// separated by `; `.
    Llama3,
    /// Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.
    Mistral,
}

impl ToolFormat {
    /// Every format, for listing in messages and trying in tests.
    pub const ALL: [ToolFormat; 4] = [Self::Hermes, Self::SmolLm2, Self::Llama3, Self::Mistral];

    /// The family a chat template's text belongs to. The markers a template
    /// writes decide; SmolLM2's template names the model; anything else
    /// gets Hermes, the format most open instruct sets use.
    pub fn detect(template_source: &str) -> Self {
        if template_source.contains("[TOOL_CALLS]") {
            Self::Mistral
        } else if template_source.contains("<|python_tag|>") || template_source.contains("ipython")
        {
            Self::Llama3
        } else if template_source.contains("<tool_call>") {
            Self::Hermes
        } else if template_source.contains("SmolLM") {
            Self::SmolLm2
        } else {
            Self::Hermes
        }
    }

    /// The config name (`tool_parser = "hermes"`); `qwen` is Hermes,
    /// `llama3_json` (vLLM's name) is Llama 3.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "hermes" | "qwen" => Some(Self::Hermes),
            "smollm2" => Some(Self::SmolLm2),
            "llama3" | "llama3_json" => Some(Self::Llama3),
            "mistral" => Some(Self::Mistral),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Hermes => "hermes",
            Self::SmolLm2 => "smollm2",
            Self::Llama3 => "llama3",
            Self::Mistral => "mistral",
        }
    }

    /// The key the family writes a call's arguments under.
    pub fn arguments_key(self) -> &'static str {
        match self {
            Self::Llama3 => "parameters",
            _ => "arguments",
        }
    }

    /// One call as the family writes it inside its wrapper:
    /// `{"name": "f", "arguments": {...}}` (Python's `json.dumps` layout).
    pub fn call_json(self, name: &str, arguments: &Value) -> String {
        let mut call = Map::new();
        call.insert("name".into(), Value::String(name.to_string()));
        call.insert(self.arguments_key().into(), arguments.clone());
        py_json(&Value::Object(call))
    }

    /// Calls (name, arguments) written the way the family writes them,
    /// wrapper included.
    pub fn write_calls(self, calls: &[(String, Value)]) -> String {
        let each: Vec<String> = calls
            .iter()
            .map(|(name, args)| self.call_json(name, args))
            .collect();
        match self {
            Self::Hermes => each
                .iter()
                .map(|c| format!("<tool_call>\n{c}\n</tool_call>"))
                .collect::<Vec<_>>()
                .join("\n"),
            Self::SmolLm2 => format!("<tool_call>[{}]</tool_call>", each.join(", ")),
            Self::Llama3 => each.join("; "),
            Self::Mistral => format!("[TOOL_CALLS][{}]", each.join(", ")),
        }
    }

    /// The system block that offers `tools` to a model whose template
    /// cannot: the tools as JSON inside `<tools></tools>`, and the exact
    /// form a call must take.
    fn system_block(self, tools: &[Value]) -> String {
        let listed: Vec<String> = tools.iter().map(py_json).collect();
        match self {
            // SmolLM2's own function-calling prompt (its instruct data's).
            Self::SmolLm2 => format!(
                "You are an expert in composing functions. You are given a question and a set of \
                 possible functions.\nBased on the question, you will need to make one or more \
                 function/tool calls to achieve the purpose.\nIf none of the functions can be \
                 used, point it out and refuse to answer.\nIf the given question lacks the \
                 parameters required by the function, also point it out.\n\nYou have access to \
                 the following tools:\n<tools>[{}]</tools>\n\nThe output MUST strictly adhere to \
                 the following format, and NO other text MUST be included.\nThe example format \
                 is as follows. Please make sure the parameter type is correct. If no function \
                 call is needed, please make the tool calls an empty list '[]'.\n<tool_call>[\n\
                 {{\"name\": \"func_name1\", \"arguments\": {{\"argument1\": \"value1\", \
                 \"argument2\": \"value2\"}}}},\n... (more tool calls as required)\n]</tool_call>",
                listed.join(", ")
            ),
            _ => format!(
                "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
                 You are provided with function signatures within <tools></tools> XML tags:\n\
                 <tools>\n{}\n</tools>\n\nTo call a function, reply with the call written \
                 exactly like this:\n{}",
                listed.join("\n"),
                self.write_calls(&[(
                    "<function-name>".into(),
                    json!({"<argument-name>": "<value>"})
                )])
            ),
        }
    }
}

/// Messages in the shape transformers hands a template that knows tools.
pub(super) fn native_messages(messages: &[ChatMessage]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let mut turn = Map::new();
            turn.insert("role".into(), Value::String(m.role.clone()));
            turn.insert("content".into(), Value::String(m.content.clone()));
            if !m.tool_calls.is_empty() {
                let calls = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        json!({"type": "function", "id": c.id,
                               "function": {"name": c.name, "arguments": arguments(&c.arguments)}})
                    })
                    .collect();
                turn.insert("tool_calls".into(), Value::Array(calls));
            }
            if let Some(id) = &m.tool_call_id {
                turn.insert("tool_call_id".into(), Value::String(id.clone()));
            }
            Value::Object(turn)
        })
        .collect()
}

/// Plain `{role, content}` turns for a template that knows no tools: the
/// tools as a system block, calls written into the assistant's text, tool
/// results as one user turn of `<tool_response>` blocks per run of them.
pub(super) fn folded_messages(
    messages: &[ChatMessage],
    tools: &[Value],
    format: ToolFormat,
) -> Vec<Value> {
    let turn = |role: &str, content: String| json!({"role": role, "content": content});
    let mut out: Vec<Value> = Vec::with_capacity(messages.len() + 1);
    let mut rest = messages;
    if !tools.is_empty() {
        let block = format.system_block(tools);
        match messages.first() {
            Some(first) if first.role == "system" => {
                out.push(turn("system", format!("{}\n\n{block}", first.content)));
                rest = &messages[1..];
            }
            _ => out.push(turn("system", block)),
        }
    }
    let mut responses: Vec<String> = Vec::new();
    for m in rest {
        if m.role == "tool" {
            responses.push(format!("<tool_response>\n{}\n</tool_response>", m.content));
            continue;
        }
        if !responses.is_empty() {
            out.push(turn("user", responses.join("\n")));
            responses.clear();
        }
        if m.tool_calls.is_empty() {
            out.push(turn(&m.role, m.content.clone()));
            continue;
        }
        let calls: Vec<(String, Value)> = m
            .tool_calls
            .iter()
            .map(|c| (c.name.clone(), arguments(&c.arguments)))
            .collect();
        let written = format.write_calls(&calls);
        let content = if m.content.is_empty() {
            written
        } else {
            format!("{}\n{written}", m.content)
        };
        out.push(turn(&m.role, content));
    }
    if !responses.is_empty() {
        out.push(turn("user", responses.join("\n")));
    }
    out
}

/// A call's arguments as an object when they are JSON (they should be),
/// else the text as the client sent it.
fn arguments(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_family_comes_from_the_template_text() {
        assert_eq!(
            ToolFormat::detect("{{ '[TOOL_CALLS]' }}"),
            ToolFormat::Mistral
        );
        assert_eq!(
            ToolFormat::detect("<|python_tag|>{{ x }}"),
            ToolFormat::Llama3
        );
        assert_eq!(
            ToolFormat::detect("{% if tools %}<tool_call>{% endif %}"),
            ToolFormat::Hermes
        );
        assert_eq!(
            ToolFormat::detect("You are a helpful AI assistant named SmolLM"),
            ToolFormat::SmolLm2
        );
        assert_eq!(ToolFormat::detect("{{ messages }}"), ToolFormat::Hermes);
        for f in ToolFormat::ALL {
            assert_eq!(ToolFormat::from_name(f.name()), Some(f));
        }
        assert_eq!(ToolFormat::from_name("qwen"), Some(ToolFormat::Hermes));
        assert_eq!(ToolFormat::from_name("gpt"), None);
    }

    #[test]
    fn calls_are_written_in_each_familys_form() {
        let calls = vec![
            ("a".to_string(), json!({"x": 1})),
            ("b".to_string(), json!({})),
        ];
        assert_eq!(
            ToolFormat::Hermes.write_calls(&calls),
            "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\n\
             <tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>"
        );
        assert_eq!(
            ToolFormat::SmolLm2.write_calls(&calls),
            "<tool_call>[{\"name\": \"a\", \"arguments\": {\"x\": 1}}, \
             {\"name\": \"b\", \"arguments\": {}}]</tool_call>"
        );
        assert_eq!(
            ToolFormat::Llama3.write_calls(&calls),
            "{\"name\": \"a\", \"parameters\": {\"x\": 1}}; {\"name\": \"b\", \"parameters\": {}}"
        );
        assert_eq!(
            ToolFormat::Mistral.write_calls(&calls[..1]),
            "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"x\": 1}}]"
        );
    }
}
