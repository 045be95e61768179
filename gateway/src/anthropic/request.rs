//! The Messages request as Anthropic defines it, and its mapping onto the
//! one internal [`ValidRequest`]: `system` and the turns become chat
//! messages (a `tool_use` block an assistant tool call, a `tool_result`
//! block a `tool` turn), `tools`/`tool_choice` the chat API's
//! [`crate::validate::Tools`],
//! the sampling fields the common validator's. What Sluice cannot honour
//! (images, documents, extended thinking, server tools, a prefilled
//! assistant turn) is a 400 that names it, never silently dropped.

use std::hash::{Hash, Hasher};

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_models::{ChatMessage, ToolCall};

use crate::error::ApiError;
use crate::validate::{self, CommonWire, Input, ValidRequest, Validate};

/// `POST /v1/messages` and `/v1/messages/count_tokens`, as sent. Loosely
/// typed where Anthropic accepts several shapes (`system`, `content`), so
/// a wrong one gets a message that names it rather than serde's guess.
#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub messages: Option<Vec<Value>>,
    pub system: Option<Value>,
    pub stop_sequences: Option<Value>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub stream: Option<bool>,
    pub metadata: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    /// Extended thinking: only `{"type": "disabled"}` is accepted.
    pub thinking: Option<Value>,
    /// A capacity hint with nothing to choose here: accepted and unused.
    pub service_tier: Option<Value>,
    /// Automatic prompt caching: the engine's prefix cache always is, so
    /// this is accepted and changes nothing.
    pub cache_control: Option<Value>,
    /// Sluice's own cap on what the answer may cost (as on the OpenAI
    /// APIs; the SDK sends it with `extra_body={"max_cost": 0.01}`).
    pub max_cost: Option<Value>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Which endpoint a request came to: `count_tokens` takes no `max_tokens`
/// and no sampling fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Create,
    CountTokens,
}

/// A Messages request with what its mapping needs from the caller: the
/// tenant that scopes its session hint.
pub struct MessagesCall {
    pub request: MessagesRequest,
    pub tenant: String,
    pub endpoint: Endpoint,
}

/// `temperature` at most: Anthropic's range is [0, 1].
const MAX_TEMPERATURE: f64 = 1.0;

impl Validate for MessagesCall {
    fn validate(self) -> Result<ValidRequest, ApiError> {
        let Self {
            request,
            tenant,
            endpoint,
        } = self;
        let MessagesRequest {
            model,
            max_tokens,
            messages,
            system,
            stop_sequences,
            temperature,
            top_p,
            top_k,
            stream,
            metadata,
            tools,
            tool_choice,
            thinking,
            service_tier: _,
            cache_control: _,
            max_cost,
            other,
        } = request;
        if let Some(name) = other.keys().next() {
            return Err(ApiError::invalid(
                name.as_str(),
                format!("{name}: Extra inputs are not permitted"),
            ));
        }
        match thinking {
            None | Some(Value::Null) => {}
            Some(Value::Object(t)) if t.get("type").and_then(Value::as_str) == Some("disabled") => {
            }
            Some(_) => {
                return Err(ApiError::unsupported(
                    "thinking",
                    "thinking: extended thinking is not supported by this server",
                ))
            }
        }
        let max_tokens = match (endpoint, max_tokens) {
            (Endpoint::Create, None) => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    "max_tokens: Field required",
                ))
            }
            (Endpoint::CountTokens, Some(_)) => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    "max_tokens: Extra inputs are not permitted",
                ))
            }
            (_, v) => v,
        };
        // A cap on what generating costs: counting tokens generates nothing.
        let max_cost = match (endpoint, max_cost) {
            (Endpoint::CountTokens, Some(v)) if !v.is_null() => {
                return Err(ApiError::invalid(
                    validate::MAX_COST,
                    "max_cost: Extra inputs are not permitted",
                ))
            }
            (_, v) => validate::max_cost(v.as_ref())?,
        };
        if temperature.is_some_and(|t| t > MAX_TEMPERATURE) {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature: must be between 0 and {MAX_TEMPERATURE}"),
            ));
        }
        if !matches!(stop_sequences, None | Some(Value::Null | Value::Array(_))) {
            return Err(ApiError::invalid(
                "stop_sequences",
                "stop_sequences: Input should be a valid list",
            ));
        }
        let user_id = user_id(metadata)?;
        let system = system_text(system)?;
        let Some(messages) = messages else {
            return Err(ApiError::invalid("messages", "messages: Field required"));
        };
        if messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "messages: at least one message is required",
            ));
        }
        let mut chat = Vec::with_capacity(messages.len() + 1);
        if let Some(system) = &system {
            chat.push(ChatMessage::text("system", system.clone()));
        }
        let last = messages.len() - 1;
        for (i, m) in messages.into_iter().enumerate() {
            turn(i, m, i == last, &mut chat)?;
        }
        let (tools, parallel) = tools_wire(tools, tool_choice.as_ref())?;
        let tools =
            validate::parse_tools(tools, tool_choice.map(choice_wire).transpose()?, parallel)?;
        let mut req = validate::common(
            CommonWire {
                model,
                max_tokens,
                temperature,
                top_p,
                n: None,
                stop: stop_sequences,
                seed: None,
                presence_penalty: None,
                frequency_penalty: None,
                user: user_id.clone(),
                stream,
                stream_options: None,
                top_k,
                min_p: None,
                repetition_penalty: None,
                ignore_eos: None,
                stop_token_ids: None,
                logit_bias: None,
                logprobs: None,
                constraint: None,
            },
            "max_tokens",
            Input::Chat(chat),
        )
        .map_err(rename_stop)?;
        req.job.tools = tools;
        req.max_cost = max_cost;
        // The session: one end user's conversation under one system prompt
        // (an agent's turns share both), so its KV blocks stay warm for the
        // next turn. Without a user id there is nothing to tell two
        // conversations apart by: no hint.
        if let Some(user) = &user_id {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            system.hash(&mut h);
            let id = format!("{user}\u{1f}{:016x}", h.finish());
            req.job.set_session(&tenant, "messages", &id);
        }
        Ok(req)
    }
}

/// The common validator speaks of `stop`; this API calls it `stop_sequences`.
fn rename_stop(err: ApiError) -> ApiError {
    match err {
        ApiError::InvalidRequest {
            message,
            param: Some(param),
            code,
        } if param == "stop" || param.starts_with("stop[") => ApiError::InvalidRequest {
            message: message.replace("stop sequence", "stop_sequences entry"),
            param: Some(param.replacen("stop", "stop_sequences", 1)),
            code,
        },
        other => other,
    }
}

/// `metadata.user_id`, the only field Anthropic's metadata has.
fn user_id(metadata: Option<Value>) -> Result<Option<String>, ApiError> {
    let map = match metadata {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::invalid(
                "metadata",
                "metadata: Input should be an object",
            ))
        }
    };
    if let Some(name) = map.keys().find(|k| *k != "user_id") {
        return Err(ApiError::invalid(
            format!("metadata.{name}"),
            format!("metadata.{name}: Extra inputs are not permitted"),
        ));
    }
    match map.get("user_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= 256 => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(ApiError::invalid(
            "metadata.user_id",
            "metadata.user_id: at most 256 characters",
        )),
        Some(_) => Err(ApiError::invalid(
            "metadata.user_id",
            "metadata.user_id: Input should be a valid string",
        )),
    }
}

/// `system`: a string or a list of text blocks (joined with newlines).
fn system_text(system: Option<Value>) -> Result<Option<String>, ApiError> {
    match system {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (i, block) in blocks.into_iter().enumerate() {
                texts.push(text_block(&format!("system.{i}"), block)?);
            }
            Ok(Some(texts.join("\n")))
        }
        Some(_) => Err(ApiError::invalid(
            "system",
            "system: Input should be a string or a list of text blocks",
        )),
    }
}

/// The text of a `{"type": "text", "text": ...}` block. `cache_control` is
/// accepted: the engine's prefix cache reuses every shared prefix anyway.
fn text_block(at: &str, block: Value) -> Result<String, ApiError> {
    let Value::Object(mut b) = block else {
        return Err(ApiError::invalid(
            at,
            format!("{at}: Input should be an object"),
        ));
    };
    match b.get("type").and_then(Value::as_str) {
        Some("text") => {}
        other => {
            return Err(ApiError::invalid(
                format!("{at}.type"),
                format!("{at}.type: expected 'text', got {other:?}"),
            ))
        }
    }
    check_fields(at, &b, &["type", "text", "cache_control", "citations"])?;
    match b.remove("text") {
        Some(Value::String(s)) => Ok(s),
        _ => Err(ApiError::invalid(
            format!("{at}.text"),
            format!("{at}.text: Input should be a valid string"),
        )),
    }
}

/// Refuses a field not in `allowed`; a `null` one is as good as absent
/// (clients echo a response's blocks back with their empty fields).
fn check_fields(at: &str, block: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    let extra = block
        .iter()
        .find(|(k, v)| !v.is_null() && !allowed.contains(&k.as_str()));
    match extra.map(|(k, _)| k) {
        Some(extra) => Err(ApiError::invalid(
            format!("{at}.{extra}"),
            format!("{at}.{extra}: Extra inputs are not permitted"),
        )),
        None => Ok(()),
    }
}

/// One turn of `messages`, appended to `chat` as one or more chat messages.
fn turn(
    i: usize,
    message: Value,
    is_last: bool,
    chat: &mut Vec<ChatMessage>,
) -> Result<(), ApiError> {
    let at = format!("messages.{i}");
    let Value::Object(mut m) = message else {
        return Err(ApiError::invalid(
            &at,
            format!("{at}: Input should be an object"),
        ));
    };
    check_fields(&at, &m, &["role", "content"])?;
    let role = match m.remove("role") {
        Some(Value::String(r)) if r == "user" || r == "assistant" => r,
        Some(Value::String(r)) => {
            return Err(ApiError::invalid(
                format!("{at}.role"),
                format!("{at}.role: Input should be 'user' or 'assistant', not '{r}'"),
            ))
        }
        _ => {
            return Err(ApiError::invalid(
                format!("{at}.role"),
                format!("{at}.role: Field required"),
            ))
        }
    };
    if role == "assistant" && is_last {
        return Err(ApiError::unsupported(
            format!("{at}.role"),
            "messages: a final assistant turn (prefill) is not supported; \
             end with a user turn",
        ));
    }
    let blocks = match m.remove("content") {
        Some(Value::String(s)) => {
            chat.push(ChatMessage::text(role, s));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(ApiError::invalid(
                format!("{at}.content"),
                format!("{at}.content: Input should be a string or a list of content blocks"),
            ))
        }
    };
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    let mut results = Vec::new();
    for (j, block) in blocks.into_iter().enumerate() {
        let at = format!("{at}.content.{j}");
        let kind = block
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match (role.as_str(), kind.as_str()) {
            (_, "text") => texts.push(text_block(&at, block)?),
            ("assistant", "tool_use") => calls.push(tool_use(&at, block)?),
            ("user", "tool_result") => results.push(tool_result(&at, block)?),
            (_, "image" | "document" | "search_result") => {
                return Err(ApiError::unsupported(
                    format!("{at}.type"),
                    format!("{at}: '{kind}' content blocks are not supported; only text is"),
                ))
            }
            (_, "thinking" | "redacted_thinking") => {
                return Err(ApiError::unsupported(
                    format!("{at}.type"),
                    format!("{at}: '{kind}' blocks are not supported (no extended thinking)"),
                ))
            }
            ("user", "tool_use") | ("assistant", "tool_result") => {
                return Err(ApiError::invalid(
                    format!("{at}.type"),
                    format!("{at}: a {role} turn cannot carry a '{kind}' block"),
                ))
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("{at}.type"),
                    format!("{at}.type: unknown content block type '{kind}'"),
                ))
            }
        }
    }
    // Tool results answer the previous assistant turn's calls: they come
    // first, as `tool` turns, then any text the user added.
    for (tool_use_id, content) in results {
        chat.push(ChatMessage {
            role: "tool".into(),
            content,
            tool_calls: Vec::new(),
            tool_call_id: Some(tool_use_id),
        });
    }
    if !texts.is_empty() || !calls.is_empty() {
        chat.push(ChatMessage {
            role,
            content: texts.join("\n"),
            tool_calls: calls,
            tool_call_id: None,
        });
    }
    Ok(())
}

/// `{"type": "tool_use", "id", "name", "input": {...}}` in an assistant turn.
fn tool_use(at: &str, block: Value) -> Result<ToolCall, ApiError> {
    let Value::Object(b) = block else {
        return Err(ApiError::invalid(
            at,
            format!("{at}: Input should be an object"),
        ));
    };
    check_fields(at, &b, &["type", "id", "name", "input", "cache_control"])?;
    let string = |field: &str| match b.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ApiError::invalid(
            format!("{at}.{field}"),
            format!("{at}.{field}: Input should be a non-empty string"),
        )),
    };
    let (id, name) = (string("id")?, string("name")?);
    let arguments = match b.get("input") {
        Some(input @ Value::Object(_)) => input.to_string(),
        _ => {
            return Err(ApiError::invalid(
                format!("{at}.input"),
                format!("{at}.input: Input should be an object"),
            ))
        }
    };
    Ok(ToolCall {
        id,
        name,
        arguments,
    })
}

/// `{"type": "tool_result", "tool_use_id", "content": string | text blocks,
/// "is_error"}` in a user turn: (the call it answers, its text).
fn tool_result(at: &str, block: Value) -> Result<(String, String), ApiError> {
    let Value::Object(mut b) = block else {
        return Err(ApiError::invalid(
            at,
            format!("{at}: Input should be an object"),
        ));
    };
    check_fields(
        at,
        &b,
        &[
            "type",
            "tool_use_id",
            "content",
            "is_error",
            "cache_control",
        ],
    )?;
    let id = match b.remove("tool_use_id") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => {
            return Err(ApiError::invalid(
                format!("{at}.tool_use_id"),
                format!("{at}.tool_use_id: Field required"),
            ))
        }
    };
    let mut text = match b.remove("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (k, block) in blocks.into_iter().enumerate() {
                texts.push(text_block(&format!("{at}.content.{k}"), block)?);
            }
            texts.join("\n")
        }
        Some(_) => {
            return Err(ApiError::invalid(
                format!("{at}.content"),
                format!("{at}.content: Input should be a string or a list of text blocks"),
            ))
        }
    };
    match b.remove("is_error") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        // The chat template has no error flag: the model reads it in the text.
        Some(Value::Bool(true)) => text = format!("Error: {text}"),
        Some(_) => {
            return Err(ApiError::invalid(
                format!("{at}.is_error"),
                format!("{at}.is_error: Input should be a valid boolean"),
            ))
        }
    }
    Ok((id, text))
}

/// Anthropic's `tools` in the chat API's shape (for the shared checks), and
/// `parallel_tool_calls` from `tool_choice.disable_parallel_tool_use`.
fn tools_wire(
    tools: Option<Value>,
    tool_choice: Option<&Value>,
) -> Result<(Option<Value>, Option<bool>), ApiError> {
    let parallel = tool_choice
        .and_then(|c| c.get("disable_parallel_tool_use"))
        .and_then(Value::as_bool)
        .map(|disable| !disable);
    let items = match tools {
        None | Some(Value::Null) => return Ok((None, parallel)),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::invalid(
                "tools",
                "tools: Input should be a valid list",
            ))
        }
    };
    let mut functions = Vec::with_capacity(items.len());
    for (i, tool) in items.into_iter().enumerate() {
        let at = format!("tools.{i}");
        let Value::Object(mut t) = tool else {
            return Err(ApiError::invalid(
                &at,
                format!("{at}: Input should be an object"),
            ));
        };
        match t.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(other) => {
                return Err(ApiError::unsupported(
                    format!("{at}.type"),
                    format!(
                        "{at}: server tools ('{other}') are not supported; define custom tools"
                    ),
                ))
            }
        }
        // `eager_input_streaming`: the arguments always stream as they come.
        check_fields(
            &at,
            &t,
            &[
                "type",
                "name",
                "description",
                "input_schema",
                "cache_control",
                "strict",
                "eager_input_streaming",
            ],
        )?;
        let Some(schema @ Value::Object(_)) = t.remove("input_schema") else {
            return Err(ApiError::invalid(
                format!("{at}.input_schema"),
                format!("{at}.input_schema: Field required (a JSON schema object)"),
            ));
        };
        let mut function = Map::new();
        function.insert("name".into(), t.remove("name").unwrap_or(Value::Null));
        if let Some(d) = t.remove("description") {
            function.insert("description".into(), d);
        }
        function.insert("parameters".into(), schema);
        if let Some(strict) = t.remove("strict") {
            function.insert("strict".into(), strict);
        }
        functions.push(serde_json::json!({"type": "function", "function": function}));
    }
    Ok((Some(Value::Array(functions)), parallel))
}

/// Anthropic's `tool_choice` in the chat API's shape.
fn choice_wire(choice: Value) -> Result<Value, ApiError> {
    let Value::Object(c) = &choice else {
        return Err(ApiError::invalid(
            "tool_choice",
            "tool_choice: Input should be an object such as {\"type\": \"auto\"}",
        ));
    };
    check_fields(
        "tool_choice",
        c,
        &["type", "name", "disable_parallel_tool_use"],
    )?;
    match c.get("type").and_then(Value::as_str) {
        Some("auto") => Ok(Value::from("auto")),
        Some("any") => Ok(Value::from("required")),
        Some("none") => Ok(Value::from("none")),
        Some("tool") => match c.get("name").and_then(Value::as_str) {
            Some(name) => Ok(serde_json::json!({"type": "function", "function": {"name": name}})),
            None => Err(ApiError::invalid(
                "tool_choice.name",
                "tool_choice.name: Field required when type is 'tool'",
            )),
        },
        _ => Err(ApiError::invalid(
            "tool_choice.type",
            "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
        )),
    }
}

#[cfg(test)]
mod tests;
