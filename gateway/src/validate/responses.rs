//! `POST /v1/responses`: its items and its sampling fields.
//!
//! Items are normalised once, when they arrive ([`normalize_items`]): every
//! item gets an id and a `status`, message content becomes a list of text
//! parts; what is stored is that form, so history read back later needs no
//! second check. A turn's messages are its history's items, then its own
//! ([`messages`]), with `instructions` in front as a system message (never
//! inherited through `previous_response_id`: each request says its own).

use serde_json::{json, Map, Value};
use sluice_models::{ChatMessage, ToolCall};

use super::{common, reject_unknown, structured, tools, CommonWire, Input, ValidRequest};
use crate::error::ApiError;
use crate::util::new_id;
use crate::wire::responses::ResponseCreateRequest;

/// Items in one request or one append at most.
pub const MAX_ITEMS: usize = 1000;
/// `metadata` keys at most, and their lengths (OpenAI's limits).
const MAX_METADATA_KEYS: usize = 16;
const MAX_METADATA_KEY_CHARS: usize = 64;
const MAX_METADATA_VALUE_CHARS: usize = 512;

/// A fresh item id for an item of this type (`msg_...`, `fc_...`).
pub fn item_id(kind: &str) -> String {
    let prefix = match kind {
        "function_call" => "fc",
        "function_call_output" => "fco",
        _ => "msg",
    };
    new_id(prefix).replace('-', "_")
}

/// `input` (a string or an array of items) as stored items.
pub fn input_items(input: Option<Value>) -> Result<Vec<Value>, ApiError> {
    match input {
        None | Some(Value::Null) => Err(ApiError::invalid("input", "'input' is required")),
        Some(Value::String(text)) => Ok(vec![message_item("user", &text)]),
        Some(Value::Array(items)) => normalize_items("input", items),
        Some(_) => Err(ApiError::invalid(
            "input",
            "'input' must be a string or an array of items",
        )),
    }
}

/// A message item with one text part.
pub fn message_item(role: &str, text: &str) -> Value {
    let part = if role == "assistant" {
        json!({"type": "output_text", "text": text, "annotations": []})
    } else {
        json!({"type": "input_text", "text": text})
    };
    json!({
        "id": item_id("message"),
        "type": "message",
        "status": "completed",
        "role": role,
        "content": [part],
    })
}

/// Checks and normalises items (`param`: the field they came in).
pub fn normalize_items(param: &str, items: Vec<Value>) -> Result<Vec<Value>, ApiError> {
    if items.len() > MAX_ITEMS {
        return Err(ApiError::invalid(
            param,
            format!("at most {MAX_ITEMS} items are allowed"),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| normalize_item(&format!("{param}[{i}]"), item))
        .collect()
}

fn normalize_item(at: &str, item: Value) -> Result<Value, ApiError> {
    let field = |name: &str| format!("{at}.{name}");
    let Value::Object(obj) = item else {
        return Err(ApiError::invalid(at, "each item must be an object"));
    };
    let kind = match obj.get("type") {
        None if obj.contains_key("role") => "message",
        Some(Value::String(t)) => t.as_str(),
        _ => return Err(ApiError::invalid(field("type"), "'type' is required")),
    };
    let id = match obj.get("id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => id.clone(),
        None | Some(Value::Null) => item_id(kind),
        Some(_) => {
            return Err(ApiError::invalid(
                field("id"),
                "'id' must be a string of 1 to 128 characters",
            ))
        }
    };
    let text = |name: &str| -> Result<String, ApiError> {
        match obj.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(ApiError::invalid(
                field(name),
                format!("'{name}' must be a string"),
            )),
        }
    };
    match kind {
        "message" => {
            let role = text("role")?;
            if !matches!(role.as_str(), "user" | "system" | "developer" | "assistant") {
                return Err(ApiError::invalid(
                    field("role"),
                    format!("unknown role '{role}'; expected user, system, developer or assistant"),
                ));
            }
            let part_type = if role == "assistant" {
                "output_text"
            } else {
                "input_text"
            };
            let parts = match obj.get("content") {
                Some(Value::String(s)) => vec![text_part(part_type, s)],
                Some(Value::Array(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(j, p)| content_part(&field(&format!("content[{j}]")), p))
                    .collect::<Result<Vec<_>, _>>()?,
                _ => {
                    return Err(ApiError::invalid(
                        field("content"),
                        "'content' must be a string or an array of text parts",
                    ))
                }
            };
            Ok(json!({
                "id": id, "type": "message", "status": "completed",
                "role": role, "content": parts,
            }))
        }
        "function_call" => Ok(json!({
            "id": id, "type": "function_call", "status": "completed",
            "call_id": text("call_id")?, "name": text("name")?,
            "arguments": text("arguments")?,
        })),
        "function_call_output" => {
            let output = match obj.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        content_part(&field(&format!("output[{j}]")), p)
                            .map(|p| p["text"].as_str().unwrap_or_default().to_string())
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join("\n"),
                _ => {
                    return Err(ApiError::invalid(
                        field("output"),
                        "'output' must be a string",
                    ))
                }
            };
            Ok(json!({
                "id": id, "type": "function_call_output", "status": "completed",
                "call_id": text("call_id")?, "output": output,
            }))
        }
        other => Err(ApiError::unsupported(
            field("type"),
            format!(
                "items of type '{other}' are not supported; message, function_call and \
                 function_call_output are"
            ),
        )),
    }
}

fn text_part(kind: &str, text: &str) -> Value {
    if kind == "output_text" {
        json!({"type": kind, "text": text, "annotations": []})
    } else {
        json!({"type": kind, "text": text})
    }
}

fn content_part(at: &str, part: &Value) -> Result<Value, ApiError> {
    let kind = part.get("type").and_then(Value::as_str);
    match kind {
        Some(k @ ("input_text" | "output_text" | "text")) => {
            let kind = if k == "text" { "input_text" } else { k };
            match part.get("text") {
                Some(Value::String(t)) => Ok(text_part(kind, t)),
                _ => Err(ApiError::invalid(
                    format!("{at}.text"),
                    "'text' must be a string",
                )),
            }
        }
        Some(other) => Err(ApiError::unsupported(
            format!("{at}.type"),
            format!("content parts of type '{other}' are not supported; only text is"),
        )),
        None => Err(ApiError::invalid(
            format!("{at}.type"),
            "'type' is required",
        )),
    }
}

/// The chat turns of stored items, in order: function calls join the
/// assistant turn before them, their outputs become `tool` turns.
pub fn messages(items: &[Value]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(items.len());
    for item in items {
        let s = |name: &str| item.get(name).and_then(Value::as_str).unwrap_or_default();
        match s("type") {
            "message" => {
                let role = match s("role") {
                    "developer" => "system",
                    r => r,
                };
                let text = item
                    .get("content")
                    .and_then(Value::as_array)
                    .map(|parts| {
                        parts
                            .iter()
                            .filter_map(|p| p.get("text").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default();
                out.push(ChatMessage {
                    role: role.to_string(),
                    content: text,
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                });
            }
            "function_call" => {
                let call = ToolCall {
                    id: s("call_id").to_string(),
                    name: s("name").to_string(),
                    arguments: s("arguments").to_string(),
                };
                match out.last_mut() {
                    Some(last) if last.role == "assistant" => last.tool_calls.push(call),
                    _ => out.push(ChatMessage {
                        role: "assistant".into(),
                        content: String::new(),
                        tool_calls: vec![call],
                        tool_call_id: None,
                    }),
                }
            }
            "function_call_output" => out.push(ChatMessage {
                role: "tool".into(),
                content: s("output").to_string(),
                tool_calls: Vec::new(),
                tool_call_id: Some(s("call_id").to_string()),
            }),
            _ => {}
        }
    }
    out
}

/// `metadata`: at most 16 string pairs.
pub fn metadata(value: Option<Value>) -> Result<Value, ApiError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Value::Object(Map::new())),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::invalid(
                "metadata",
                "'metadata' must be an object",
            ))
        }
    };
    if map.len() > MAX_METADATA_KEYS {
        return Err(ApiError::invalid(
            "metadata",
            format!("'metadata' has at most {MAX_METADATA_KEYS} keys"),
        ));
    }
    for (k, v) in &map {
        let ok_value = v
            .as_str()
            .is_some_and(|v| v.chars().count() <= MAX_METADATA_VALUE_CHARS);
        if k.is_empty() || k.chars().count() > MAX_METADATA_KEY_CHARS || !ok_value {
            return Err(ApiError::invalid(
                format!("metadata.{k}"),
                format!(
                    "metadata keys are 1 to {MAX_METADATA_KEY_CHARS} characters and values \
                     strings of at most {MAX_METADATA_VALUE_CHARS}"
                ),
            ));
        }
    }
    Ok(Value::Object(map))
}

/// `truncation`: whether old turns may be dropped to fit the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    Disabled,
    Auto,
}

impl Truncation {
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("disabled") => Ok(Self::Disabled),
            Some("auto") => Ok(Self::Auto),
            Some(other) => Err(ApiError::invalid(
                "truncation",
                format!("'truncation' is '{other}'; it must be 'auto' or 'disabled'"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Auto => "auto",
        }
    }
}

/// Checks the fields of a create request that are not its items, before
/// any history is read (a bad request costs no store read).
pub fn check_create(req: &ResponseCreateRequest) -> Result<(), ApiError> {
    reject_unknown(req.other.keys().filter(|k| *k != super::MAX_COST))?;
    super::max_cost(req.other.get(super::MAX_COST))?;
    if req.previous_response_id.is_some() && req.conversation.is_some() {
        return Err(ApiError::invalid(
            "conversation",
            "give 'previous_response_id' or 'conversation', not both",
        ));
    }
    if req.background == Some(true) && req.store == Some(false) {
        return Err(ApiError::invalid(
            "background",
            "'background': true requires 'store': true (a background response is read back \
             by its id)",
        ));
    }
    if req.reasoning.as_ref().is_some_and(|r| !r.is_null()) {
        return Err(ApiError::unsupported(
            "reasoning",
            "'reasoning' is not supported by these models",
        ));
    }
    if req.stream_options.is_some() && req.stream != Some(true) {
        return Err(ApiError::invalid(
            "stream_options",
            "'stream_options' is only allowed when 'stream' is true",
        ));
    }
    if let Some(include) = &req.include {
        if let Some(first) = include.first() {
            return Err(ApiError::unsupported(
                "include",
                format!("'include' value '{first}' is not supported"),
            ));
        }
    }
    Truncation::parse(req.truncation.as_deref())?;
    chat_tools(req)?;
    chat_format(req)?;
    Ok(())
}

/// `tools` and `tool_choice` in the chat shape (`{"type": "function",
/// "function": {...}}`), which the shared validator reads.
fn chat_tools(req: &ResponseCreateRequest) -> Result<(Option<Value>, Option<Value>), ApiError> {
    let tools = match &req.tools {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(Value::Array(
            list.iter()
                .enumerate()
                .map(|(i, tool)| {
                    if tool.get("type").and_then(Value::as_str) != Some("function") {
                        return Err(ApiError::unsupported(
                            format!("tools[{i}].type"),
                            "only tools of type 'function' are supported",
                        ));
                    }
                    let mut function = Map::new();
                    for key in ["name", "description", "parameters", "strict"] {
                        if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                            function.insert(key.into(), v.clone());
                        }
                    }
                    Ok(json!({"type": "function", "function": function}))
                })
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Some(_) => return Err(ApiError::invalid("tools", "'tools' must be an array")),
    };
    let choice = match &req.tool_choice {
        Some(Value::Object(c)) if c.get("type").and_then(Value::as_str) == Some("function") => {
            Some(json!({"type": "function", "function": {"name": c.get("name")}}))
        }
        other => other.clone(),
    };
    Ok((tools, choice))
}

/// `text.format` as chat's `response_format`.
fn chat_format(req: &ResponseCreateRequest) -> Result<Option<Value>, ApiError> {
    let Some(format) = req.text.as_ref().and_then(|t| t.get("format")) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(key) {
                    schema.insert(key.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        Some("text" | "json_object") => Ok(Some(format.clone())),
        _ => Err(ApiError::invalid(
            "text.format.type",
            "'text.format.type' must be 'text', 'json_object' or 'json_schema'",
        )),
    }
}

/// One turn of `/v1/responses`, ready for the chain: the request's
/// sampling fields, the turn's messages (history, then input), and the
/// conversation the engine keeps warm.
#[derive(Debug, Clone)]
pub struct ResponsesTurn {
    pub request: ResponseCreateRequest,
    pub messages: Vec<ChatMessage>,
    /// (tenant, root id): the conversation, or the first response of a
    /// `previous_response_id` chain.
    pub session: Option<(String, String)>,
}

impl super::Validate for ResponsesTurn {
    fn validate(self) -> Result<ValidRequest, ApiError> {
        let Self {
            request,
            mut messages,
            session,
        } = self;
        let (tools, tool_choice) = chat_tools(&request)?;
        let response_format = chat_format(&request)?;
        let constraint = structured::response_format(response_format.as_ref())?;
        let tools = tools::tools(tools, tool_choice, request.parallel_tool_calls)?;
        if let Some(instructions) = request.instructions.filter(|i| !i.is_empty()) {
            messages.insert(0, ChatMessage::text("system", instructions));
        }
        if messages.is_empty() {
            return Err(ApiError::invalid(
                "input",
                "the turn has no messages: give 'input'",
            ));
        }
        let mut req = common(
            CommonWire {
                model: request.model,
                max_tokens: request.max_output_tokens,
                temperature: request.temperature,
                top_p: request.top_p,
                n: None,
                stop: None,
                seed: None,
                presence_penalty: None,
                frequency_penalty: None,
                user: request.user.or(request.safety_identifier),
                stream: request.stream,
                stream_options: None,
                top_k: None,
                min_p: None,
                repetition_penalty: None,
                ignore_eos: None,
                stop_token_ids: None,
                logit_bias: None,
                logprobs: None,
                constraint,
            },
            "max_output_tokens",
            Input::Chat(messages),
        )?;
        req.job.tools = tools;
        req.max_cost = super::max_cost(request.other.get(super::MAX_COST))?;
        if let Some((tenant, id)) = session {
            req.job.set_session(&tenant, "responses", &id);
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_input_is_one_user_message() {
        let items = input_items(Some(json!("hello"))).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["role"], "user");
        assert_eq!(items[0]["content"][0]["text"], "hello");
        assert!(items[0]["id"].as_str().unwrap().starts_with("msg_"));
    }

    #[test]
    fn function_calls_join_the_assistant_turn_and_outputs_become_tool_turns() {
        let items = normalize_items(
            "input",
            vec![
                json!({"role": "user", "content": "weather?"}),
                json!({"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"}),
                json!({"type": "function_call_output", "call_id": "c1", "output": "sunny"}),
            ],
        )
        .unwrap();
        let m = messages(&items);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].role, "assistant");
        assert_eq!(m[1].tool_calls[0].id, "c1");
        assert_eq!(m[2].role, "tool");
        assert_eq!(m[2].tool_call_id.as_deref(), Some("c1"));
    }

    #[test]
    fn an_image_part_is_refused_by_name() {
        let err = normalize_items(
            "input",
            vec![json!({"role": "user", "content": [{"type": "input_image", "image_url": "x"}]})],
        )
        .unwrap_err();
        assert!(matches!(
            err,
            ApiError::InvalidRequest { param: Some(ref p), .. } if p == "input[0].content[0].type"
        ));
    }

    #[test]
    fn max_cost_is_checked_on_create_and_carried_to_the_turn() {
        let req = |max_cost: Value| -> ResponseCreateRequest {
            serde_json::from_value(json!({"model": "m", "input": "hi", "max_cost": max_cost}))
                .unwrap()
        };
        assert!(check_create(&req(json!(0.5))).is_ok());
        assert!(matches!(
            check_create(&req(json!(-1))),
            Err(ApiError::InvalidRequest { param: Some(ref p), .. }) if p == "max_cost"
        ));
        let turn = ResponsesTurn {
            request: req(json!(0.5)),
            messages: vec![ChatMessage::text("user", "hi")],
            session: None,
        };
        assert_eq!(
            super::super::Validate::validate(turn).unwrap().max_cost,
            Some(0.5)
        );
    }

    #[test]
    fn metadata_over_sixteen_keys_is_refused() {
        let map: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(metadata(Some(Value::Object(map))).is_err());
    }
}
