//! `POST /v1/chat/completions`: the request and its messages.

use serde_json::Value;
use sluice_models::{ChatMessage, ToolCall};

use super::{
    common, int_in, reject_unknown, structured, tools, CommonWire, Input, ValidRequest,
    MAX_TOP_LOGPROBS,
};
use crate::error::ApiError;
use crate::wire::{ChatCompletionRequest, ChatMessageWire};

/// Validates `POST /v1/chat/completions`.
pub fn chat(req: ChatCompletionRequest) -> Result<ValidRequest, ApiError> {
    let ChatCompletionRequest {
        model,
        messages,
        max_tokens,
        max_completion_tokens,
        temperature,
        top_p,
        n,
        stop,
        seed,
        presence_penalty,
        frequency_penalty,
        logprobs,
        top_logprobs,
        user,
        stream,
        stream_options,
        top_k,
        min_p,
        repetition_penalty,
        ignore_eos,
        stop_token_ids,
        metadata: _,
        store,
        parallel_tool_calls,
        response_format,
        logit_bias,
        modalities,
        tools,
        tool_choice,
        functions,
        function_call,
        audio,
        prediction,
        web_search_options,
        reasoning_effort,
        mut other,
    } = req;
    let max_cost = super::max_cost(other.remove(super::MAX_COST).as_ref())?;
    reject_unknown(other.keys())?;
    for (name, value) in [("functions", &functions), ("function_call", &function_call)] {
        if value.is_some() {
            return Err(ApiError::unsupported(
                name,
                format!("'{name}' is deprecated and not supported: use 'tools' and 'tool_choice'"),
            ));
        }
    }
    let tools = tools::tools(tools, tool_choice, parallel_tool_calls)?;
    for (name, value) in [
        ("audio", &audio),
        ("prediction", &prediction),
        ("web_search_options", &web_search_options),
        ("reasoning_effort", &reasoning_effort),
    ] {
        if value.is_some() {
            return Err(ApiError::unsupported(
                name,
                format!("'{name}' is not supported"),
            ));
        }
    }
    if store == Some(true) {
        return Err(ApiError::unsupported(
            "store",
            "'store': true is not supported: this server does not store completions",
        ));
    }
    if let Some(m) = modalities {
        if m.iter().any(|x| x != "text") {
            return Err(ApiError::unsupported(
                "modalities",
                "only the \"text\" modality is supported",
            ));
        }
    }
    let constraint = structured::response_format(response_format.as_ref())?;

    let max_tokens = match (max_tokens, max_completion_tokens) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::invalid(
                "max_completion_tokens",
                "give max_completion_tokens or max_tokens, not both with different values",
            ))
        }
        (Some(a), _) => Some((a, "max_tokens")),
        (None, Some(b)) => Some((b, "max_completion_tokens")),
        (None, None) => None,
    };
    let logprobs = match (logprobs.unwrap_or(false), top_logprobs) {
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs requires logprobs to be true",
            ))
        }
        (false, None) => None,
        (true, top) => Some(int_in(
            "top_logprobs",
            top.unwrap_or(0),
            0,
            MAX_TOP_LOGPROBS,
        )?),
    };
    let Some(messages) = messages else {
        return Err(ApiError::invalid("messages", "'messages' is required"));
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "'messages' must contain at least one message",
        ));
    }
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| chat_message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let (max_tokens, max_tokens_name) = match max_tokens {
        Some((v, name)) => (Some(v), name),
        None => (None, "max_tokens"),
    };
    let mut req = common(
        CommonWire {
            model,
            max_tokens,
            temperature,
            top_p,
            n,
            stop,
            seed,
            presence_penalty,
            frequency_penalty,
            user,
            stream,
            stream_options,
            top_k,
            min_p,
            repetition_penalty,
            ignore_eos,
            stop_token_ids,
            logit_bias,
            logprobs,
            constraint,
        },
        max_tokens_name,
        Input::Chat(messages),
    )?;
    req.job.tools = tools;
    req.max_cost = max_cost;
    Ok(req)
}

fn chat_message(i: usize, m: ChatMessageWire) -> Result<ChatMessage, ApiError> {
    let ChatMessageWire {
        role,
        content,
        name,
        tool_calls,
        tool_call_id,
        function_call,
        refusal,
    } = m;
    let at = |field: &str| format!("messages[{i}].{field}");
    let role = match role.as_str() {
        "system" | "user" | "assistant" | "tool" => role,
        // OpenAI's newer name for system instructions; templates know "system".
        "developer" => "system".to_string(),
        other => {
            return Err(ApiError::invalid(
                at("role"),
                format!(
                    "unknown role '{other}'; expected system, developer, user, assistant or tool"
                ),
            ))
        }
    };
    if name.is_some() {
        return Err(ApiError::unsupported(
            at("name"),
            "message 'name' is not supported",
        ));
    }
    if function_call.is_some() {
        return Err(ApiError::unsupported(
            at("function_call"),
            "'function_call' is deprecated and not supported: use 'tool_calls'",
        ));
    }
    if refusal.is_some_and(|r| !r.is_null()) {
        return Err(ApiError::unsupported(
            at("refusal"),
            "'refusal' is not supported",
        ));
    }
    let tool_calls = match tool_calls {
        None | Some(Value::Null) => Vec::new(),
        Some(_) if role != "assistant" => {
            return Err(ApiError::invalid(
                at("tool_calls"),
                "only assistant messages carry 'tool_calls'",
            ))
        }
        Some(Value::Array(calls)) => calls
            .into_iter()
            .enumerate()
            .map(|(j, c)| tool_call(&at(&format!("tool_calls[{j}]")), c))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                at("tool_calls"),
                "'tool_calls' must be an array",
            ))
        }
    };
    let tool_call_id = match (role.as_str(), tool_call_id) {
        ("tool", Some(id)) if !id.is_empty() => Some(id),
        ("tool", _) => {
            return Err(ApiError::invalid(
                at("tool_call_id"),
                "a message with role 'tool' needs the 'tool_call_id' it answers",
            ))
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                at("tool_call_id"),
                "only messages with role 'tool' carry 'tool_call_id'",
            ))
        }
        (_, None) => None,
    };
    let content = match content {
        // An assistant turn that only calls tools has no text.
        None | Some(Value::Null) if !tool_calls.is_empty() => String::new(),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(at("content"), "'content' is required"))
        }
        Some(Value::String(s)) => s,
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.into_iter().enumerate() {
                texts.push(text_part(&at(&format!("content[{j}]")), part)?);
            }
            // vLLM joins text parts with a newline; so do we.
            texts.join("\n")
        }
        Some(_) => {
            return Err(ApiError::invalid(
                at("content"),
                "'content' must be a string or an array of text parts",
            ))
        }
    };
    Ok(ChatMessage {
        role,
        content,
        tool_calls,
        tool_call_id,
    })
}

/// One call of an assistant turn's `tool_calls`, as a client sends it back.
fn tool_call(at: &str, call: Value) -> Result<ToolCall, ApiError> {
    let field = |name: &str| format!("{at}.{name}");
    let Value::Object(call) = call else {
        return Err(ApiError::invalid(at, "each tool call must be an object"));
    };
    let id = match call.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => return Err(ApiError::invalid(field("id"), "'id' must be a string")),
    };
    if call.get("type").and_then(Value::as_str) != Some("function") {
        return Err(ApiError::invalid(
            field("type"),
            "each tool call needs \"type\": \"function\"",
        ));
    }
    let function = call.get("function");
    let name = match function.and_then(|f| f.get("name")) {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        _ => {
            return Err(ApiError::invalid(
                field("function.name"),
                "'function.name' must be a string",
            ))
        }
    };
    let arguments = match function.and_then(|f| f.get("arguments")) {
        Some(Value::String(args)) => args.clone(),
        _ => {
            return Err(ApiError::invalid(
                field("function.arguments"),
                "'function.arguments' must be a string of JSON",
            ))
        }
    };
    Ok(ToolCall {
        id,
        name,
        arguments,
    })
}

fn text_part(at: &str, part: Value) -> Result<String, ApiError> {
    let Value::Object(mut obj) = part else {
        return Err(ApiError::invalid(at, "each content part must be an object"));
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some(other) => {
            return Err(ApiError::unsupported(
                format!("{at}.type"),
                format!("content parts of type '{other}' are not supported; only 'text' is"),
            ))
        }
        None => {
            return Err(ApiError::invalid(
                format!("{at}.type"),
                "'type' is required",
            ))
        }
    }
    if let Some(extra) = obj.keys().find(|k| *k != "type" && *k != "text") {
        return Err(ApiError::invalid(
            format!("{at}.{extra}"),
            format!("Unrecognized content part field: {extra}"),
        ));
    }
    match obj.remove("text") {
        Some(Value::String(s)) => Ok(s),
        _ => Err(ApiError::invalid(
            format!("{at}.text"),
            "'text' must be a string",
        )),
    }
}
