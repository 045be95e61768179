//! The grammar that makes a model call a function: the family's wrapper
//! written exactly, a function name from the allowed ones, and arguments
//! valid against that function's `parameters` schema (llguidance Lark with
//! an inline `%json{...}` per function). It compiles through the engine's
//! grammar cache like any `response_format`.

use serde_json::{json, Value};
use sluice_models::ToolFormat;
use sluice_runtime::{json_layout, GrammarSpec};

use crate::validate::{FunctionSpec, ToolChoice, Tools};

/// The grammar for `tools`, when their choice forces calls: `required`
/// (any offered function; several with `parallel_tool_calls`) or a named
/// function (that one, once). With `auto`, only when `answer` is given (a
/// JSON `response_format`): then the model either calls or answers JSON
/// matching it. `None`: decoding stays free.
pub fn call_grammar(
    format: ToolFormat,
    tools: &Tools,
    answer: Option<&GrammarSpec>,
) -> Option<GrammarSpec> {
    let (functions, parallel): (Vec<&FunctionSpec>, bool) = match &tools.choice {
        ToolChoice::None => return None,
        ToolChoice::Auto if answer.is_none() => return None,
        ToolChoice::Auto | ToolChoice::Required => {
            (tools.functions.iter().collect(), tools.parallel)
        }
        ToolChoice::Function(name) => (tools.function(name).into_iter().collect(), false),
    };
    let mut lark = String::new();
    let calls = calls_rule(format, parallel);
    match answer {
        Some(spec) => {
            let json = answer_json(spec)?;
            lark.push_str(&format!(
                "start: calls | answer\ncalls: {calls}\nanswer: %json {json}\n"
            ));
        }
        None => lark.push_str(&format!("start: {calls}\n")),
    }
    let alternatives: Vec<String> = (0..functions.len()).map(|i| format!("call_{i}")).collect();
    lark.push_str(&format!("call: {}\n", alternatives.join(" | ")));
    for (i, f) in functions.iter().enumerate() {
        lark.push_str(&call_rule(format, i, f));
    }
    Some(GrammarSpec::Lark(lark))
}

/// How the family wraps its calls, in terms of the rule `call`.
fn calls_rule(format: ToolFormat, parallel: bool) -> &'static str {
    match (format, parallel) {
        (ToolFormat::Hermes, false) => r#""<tool_call>\n" call "\n</tool_call>""#,
        (ToolFormat::Hermes, true) => {
            r#""<tool_call>\n" call "\n</tool_call>" ("\n<tool_call>\n" call "\n</tool_call>")*"#
        }
        (ToolFormat::SmolLm2, false) => r#""<tool_call>[" call "]</tool_call>""#,
        (ToolFormat::SmolLm2, true) => r#""<tool_call>[" call (", " call)* "]</tool_call>""#,
        (ToolFormat::Llama3, false) => "call",
        (ToolFormat::Llama3, true) => r#"call ("; " call)*"#,
        (ToolFormat::Mistral, false) => r#""[TOOL_CALLS][" call "]""#,
        (ToolFormat::Mistral, true) => r#""[TOOL_CALLS][" call (", " call)* "]""#,
    }
}

/// `call_i: {"name": "f", "arguments": <f's schema>}`.
fn call_rule(format: ToolFormat, i: usize, f: &FunctionSpec) -> String {
    let schema = f
        .parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object"}));
    let schema = json_layout(schema, f.strict);
    let head = format!(
        "{{\"name\": {}, \"{}\": ",
        Value::String(f.name.clone()),
        format.arguments_key()
    );
    format!(
        "call_{i}: {} %json {} \"}}\"\n",
        Value::String(head),
        schema
    )
}

/// The JSON schema a `response_format` stands for, laid out like the
/// calls' arguments.
fn answer_json(spec: &GrammarSpec) -> Option<Value> {
    match spec {
        GrammarSpec::JsonObject => Some(json_layout(json!({"type": "object"}), true)),
        GrammarSpec::JsonSchema { schema, strict } => {
            let schema: Value = serde_json::from_str(schema).ok()?;
            Some(json_layout(schema, *strict))
        }
        GrammarSpec::Regex(_) | GrammarSpec::Lark(_) => None,
    }
}
