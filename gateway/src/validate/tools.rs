//! `tools`, `tool_choice` and `parallel_tool_calls` (chat): the functions a
//! model may call, read and checked here; how a model is asked to call them
//! and how its calls are read back is the deployment's business (the local
//! engine renders and parses them per model family, a provider passes them
//! on).

use serde_json::Value;

use super::structured::valid_name;
use crate::error::ApiError;

/// Functions in one request at most (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

/// The functions a request offers and how the model must use them.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub functions: Vec<FunctionSpec>,
    pub choice: ToolChoice,
    /// `parallel_tool_calls`: more than one call in one answer (default true).
    pub parallel: bool,
}

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub name: String,
    pub description: Option<String>,
    /// The arguments' JSON schema; `None`: no arguments described.
    pub parameters: Option<Value>,
    pub strict: bool,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides between text and calls (the default with tools).
    Auto,
    /// Text only; the tools are still shown to the model.
    None,
    /// At least one call.
    Required,
    /// Exactly this function.
    Function(String),
}

impl Tools {
    /// The spec of the function `name`.
    pub fn function(&self, name: &str) -> Option<&FunctionSpec> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// The wire form of `tools`, as an upstream expects it.
    pub fn to_wire(&self) -> Value {
        Value::Array(
            self.functions
                .iter()
                .map(|f| {
                    let mut function = serde_json::Map::new();
                    function.insert("name".into(), Value::String(f.name.clone()));
                    if let Some(d) = &f.description {
                        function.insert("description".into(), Value::String(d.clone()));
                    }
                    if let Some(p) = &f.parameters {
                        function.insert("parameters".into(), p.clone());
                    }
                    if f.strict {
                        function.insert("strict".into(), Value::Bool(true));
                    }
                    serde_json::json!({"type": "function", "function": function})
                })
                .collect(),
        )
    }

    /// The wire form of `tool_choice`.
    pub fn choice_to_wire(&self) -> Value {
        match &self.choice {
            ToolChoice::Auto => Value::from("auto"),
            ToolChoice::None => Value::from("none"),
            ToolChoice::Required => Value::from("required"),
            ToolChoice::Function(name) => {
                serde_json::json!({"type": "function", "function": {"name": name}})
            }
        }
    }
}

/// Reads `tools`, `tool_choice` and `parallel_tool_calls`; `None` when the
/// request offers no tools (an empty `tools` array offers none either).
pub(crate) fn tools(
    tools: Option<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
) -> Result<Option<Tools>, ApiError> {
    let functions = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_TOOLS {
                return Err(ApiError::invalid(
                    "tools",
                    format!("'tools' may list at most {MAX_TOOLS} functions"),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, t)| function_spec(i, t))
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(_) => return Err(ApiError::invalid("tools", "'tools' must be an array")),
    };
    for (i, f) in functions.iter().enumerate() {
        if functions[..i].iter().any(|g| g.name == f.name) {
            return Err(ApiError::invalid(
                format!("tools[{i}].function.name"),
                format!("two tools are named '{}': names must be unique", f.name),
            ));
        }
    }
    let choice = match tool_choice {
        None | Some(Value::Null) => None,
        Some(v) => Some(choice(v)?),
    };
    if functions.is_empty() {
        return match choice {
            None | Some(ToolChoice::None) => Ok(None),
            Some(_) => Err(ApiError::invalid(
                "tool_choice",
                "'tool_choice' is only allowed when 'tools' are specified",
            )),
        };
    }
    let choice = choice.unwrap_or(ToolChoice::Auto);
    if let ToolChoice::Function(name) = &choice {
        if !functions.iter().any(|f| &f.name == name) {
            return Err(ApiError::invalid(
                "tool_choice",
                format!("'tool_choice' names '{name}', which is not one of 'tools'"),
            ));
        }
    }
    Ok(Some(Tools {
        functions,
        choice,
        parallel: parallel_tool_calls.unwrap_or(true),
    }))
}

fn function_spec(i: usize, tool: Value) -> Result<FunctionSpec, ApiError> {
    let at = format!("tools[{i}]");
    let Value::Object(mut tool) = tool else {
        return Err(ApiError::invalid(at, "each tool must be an object"));
    };
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(other) => {
            return Err(ApiError::invalid(
                format!("{at}.type"),
                format!("tool type '{other}' is not supported: only 'function' is"),
            ))
        }
        None => {
            return Err(ApiError::invalid(
                format!("{at}.type"),
                "each tool needs \"type\": \"function\"",
            ))
        }
    }
    let Some(Value::Object(mut f)) = tool.remove("function") else {
        return Err(ApiError::invalid(
            format!("{at}.function"),
            "each tool needs 'function': {\"name\": ..., \"parameters\": {...}}",
        ));
    };
    let name = match f.remove("name") {
        Some(Value::String(name)) if valid_name(&name) => name,
        _ => {
            return Err(ApiError::invalid(
                format!("{at}.function.name"),
                "'name' must be 1 to 64 characters of a-z, A-Z, 0-9, '_' and '-'",
            ))
        }
    };
    let description = match f.remove("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d),
        Some(_) => {
            return Err(ApiError::invalid(
                format!("{at}.function.description"),
                "'description' must be a string",
            ))
        }
    };
    let parameters = match f.remove("parameters") {
        None | Some(Value::Null) => None,
        Some(p @ Value::Object(_)) => Some(p),
        Some(_) => {
            return Err(ApiError::invalid(
                format!("{at}.function.parameters"),
                "'parameters' must be a JSON schema object",
            ))
        }
    };
    let strict = match f.remove("strict") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(ApiError::invalid(
                format!("{at}.function.strict"),
                "'strict' must be a boolean",
            ))
        }
    };
    if let Some(unknown) = f.keys().next() {
        return Err(ApiError::invalid(
            format!("{at}.function.{unknown}"),
            format!("unknown field '{unknown}' in a function"),
        ));
    }
    Ok(FunctionSpec {
        name,
        description,
        parameters,
        strict,
    })
}

fn choice(v: Value) -> Result<ToolChoice, ApiError> {
    const P: &str = "tool_choice";
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(ApiError::invalid(
                P,
                format!(
                    "'tool_choice' must be \"none\", \"auto\", \"required\" or \
                     {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, not \"{other}\""
                ),
            )),
        },
        Value::Object(o) => {
            if o.get("type").and_then(Value::as_str) != Some("function") {
                return Err(ApiError::invalid(
                    P,
                    "a 'tool_choice' object needs \"type\": \"function\"",
                ));
            }
            match o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) => Ok(ToolChoice::Function(name.to_string())),
                None => Err(ApiError::invalid(
                    "tool_choice.function.name",
                    "a 'tool_choice' object needs 'function': {\"name\": ...}",
                )),
            }
        }
        _ => Err(ApiError::invalid(
            P,
            "'tool_choice' must be a string or an object",
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn weather() -> Value {
        json!([{"type": "function", "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}
        }}])
    }

    fn param_of(err: ApiError) -> String {
        match err {
            ApiError::InvalidRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn tools_default_to_auto_and_parallel() {
        let t = tools(Some(weather()), None, None).unwrap().unwrap();
        assert_eq!(t.choice, ToolChoice::Auto);
        assert!(t.parallel);
        assert_eq!(t.functions[0].name, "get_weather");
        assert!(t.function("get_weather").is_some());
        assert_eq!(t.to_wire(), weather());
    }

    #[test]
    fn a_named_choice_must_name_a_tool() {
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let t = tools(Some(weather()), Some(named.clone()), Some(false))
            .unwrap()
            .unwrap();
        assert_eq!(t.choice, ToolChoice::Function("get_weather".into()));
        assert!(!t.parallel);
        assert_eq!(t.choice_to_wire(), named);
        let other = json!({"type": "function", "function": {"name": "send_mail"}});
        assert_eq!(
            param_of(tools(Some(weather()), Some(other), None).unwrap_err()),
            "tool_choice"
        );
    }

    #[test]
    fn no_tools_means_none_and_a_choice_without_tools_is_refused() {
        assert_eq!(tools(None, None, None).unwrap(), None);
        assert_eq!(
            tools(Some(json!([])), Some(json!("none")), None).unwrap(),
            None
        );
        assert_eq!(
            param_of(tools(None, Some(json!("required")), None).unwrap_err()),
            "tool_choice"
        );
    }

    #[test]
    fn bad_tools_name_the_field() {
        let cases = [
            (json!({"type": "function"}), "tools"),
            (json!([1]), "tools[0]"),
            (json!([{"type": "retrieval"}]), "tools[0].type"),
            (json!([{"type": "function"}]), "tools[0].function"),
            (
                json!([{"type": "function", "function": {"name": "bad name"}}]),
                "tools[0].function.name",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
                "tools[0].function.parameters",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "strict": "yes"}}]),
                "tools[0].function.strict",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "colour": 1}}]),
                "tools[0].function.colour",
            ),
            (
                json!([{"type": "function", "function": {"name": "f"}},
                       {"type": "function", "function": {"name": "f"}}]),
                "tools[1].function.name",
            ),
        ];
        for (value, param) in cases {
            assert_eq!(
                param_of(tools(Some(value.clone()), None, None).unwrap_err()),
                param,
                "{value}"
            );
        }
        for choice in [json!("sometimes"), json!(3), json!({"type": "function"})] {
            assert!(tools(Some(weather()), Some(choice), None).is_err());
        }
    }
}
