//! Wire request → [`ValidRequest`]: every number in range, every field either
//! supported or refused with a 400 that names it. Nothing is silently dropped.
//!
//! [`ValidRequest`] carries a private marker, so only this module builds one;
//! what follows it (tokenising in [`crate::generate`]) may trust its values.
//! Checks that need the model (the context length, the vocabulary) happen
//! there, where the model is known.

use serde_json::Value;
use sluice_models::ChatMessage;
use sluice_runtime::SamplingParams;

use crate::error::ApiError;
use crate::openai::chat::{ChatCompletionRequest, ChatMessageWire};
use crate::openai::completions::CompletionRequest;
use crate::openai::StreamOptions;

/// `n` at most (choices per prompt).
pub const MAX_N: usize = 16;
/// Choices in one request at most (prompts × n), each one engine sequence.
pub const MAX_CHOICES: usize = 64;
/// Stop strings at most, as OpenAI allows.
pub const MAX_STOP: usize = 4;
const MAX_STOP_CHARS: usize = 256;
const MAX_STOP_TOKEN_IDS: usize = 64;
/// `top_logprobs` at most, as OpenAI allows.
pub const MAX_TOP_LOGPROBS: usize = 20;
/// `max_tokens` at most before the model's context is even considered.
const MAX_TOKENS_LIMIT: usize = 1 << 20;
const MAX_USER_CHARS: usize = 512;

#[derive(Debug, Clone, PartialEq)]
struct Sealed;

/// What the request asks the model to continue.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Chat turns, rendered with the model's template.
    Chat(Vec<ChatMessage>),
    /// Completion prompts as text, one choice group each.
    Text(Vec<String>),
    /// Completion prompts as token ids.
    Tokens(Vec<Vec<u32>>),
}

impl Input {
    pub fn num_prompts(&self) -> usize {
        match self {
            Self::Chat(_) => 1,
            Self::Text(p) => p.len(),
            Self::Tokens(p) => p.len(),
        }
    }
}

/// Sampling settings in range; `max_tokens` is resolved against the model later.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
    pub stop_token_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
    pub ignore_eos: bool,
    pub logprobs: Option<usize>,
}

impl Sampling {
    /// The engine's parameters for choice `choice` of a prompt. Seeds are
    /// derived per choice, so `n` seeded choices differ yet repeat exactly.
    pub fn to_params(&self, max_tokens: usize, choice: usize) -> SamplingParams {
        // Destructured without `..`: a new field must be handled here.
        let Self {
            max_tokens: _,
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
        } = self;
        SamplingParams {
            max_tokens,
            temperature: *temperature,
            top_k: *top_k,
            top_p: *top_p,
            min_p: *min_p,
            repetition_penalty: *repetition_penalty,
            presence_penalty: *presence_penalty,
            frequency_penalty: *frequency_penalty,
            seed: seed.map(|s| s.wrapping_add(choice as u64)),
            stop_token_ids: stop_token_ids.clone(),
            stop_strings: stop_strings.clone(),
            ignore_eos: *ignore_eos,
            logprobs: *logprobs,
        }
    }
}

/// A request that passed every check that does not need the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// The caller's end-user id, for logs only.
    pub user: Option<String>,
    /// What to generate; handed whole to [`crate::generate`].
    pub job: Job,
}

/// The generation part of a [`ValidRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub input: Input,
    pub sampling: Sampling,
    /// Choices per prompt.
    pub n: usize,
    _sealed: Sealed,
}

/// The sampling fields both endpoints share, as sent.
pub(crate) struct CommonWire {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub stop: Option<Value>,
    pub seed: Option<serde_json::Number>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub ignore_eos: Option<bool>,
    pub stop_token_ids: Option<Vec<i64>>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub logprobs: Option<usize>,
}

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
        parallel_tool_calls: _,
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
        other,
    } = req;
    reject_unknown(other.keys())?;
    for (name, value) in [
        ("tools", &tools),
        ("tool_choice", &tool_choice),
        ("functions", &functions),
        ("function_call", &function_call),
    ] {
        if value.is_some() {
            return Err(ApiError::unsupported(
                name,
                format!("'{name}' is not supported yet: this server has no tool calling"),
            ));
        }
    }
    for (name, value) in [
        ("audio", &audio),
        ("prediction", &prediction),
        ("web_search_options", &web_search_options),
        ("reasoning_effort", &reasoning_effort),
    ] {
        if value.is_some() {
            return Err(ApiError::unsupported(name, format!("'{name}' is not supported")));
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
            return Err(ApiError::unsupported("modalities", "only the \"text\" modality is supported"));
        }
    }
    check_response_format(response_format.as_ref())?;

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
        (true, top) => Some(int_in("top_logprobs", top.unwrap_or(0), 0, MAX_TOP_LOGPROBS)?),
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
    common(
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
        },
        max_tokens_name,
        Input::Chat(messages),
    )
}

/// Validates `POST /v1/completions`.
pub fn completion(req: CompletionRequest) -> Result<ValidRequest, ApiError> {
    let CompletionRequest {
        model,
        prompt,
        max_tokens,
        temperature,
        top_p,
        n,
        stop,
        seed,
        presence_penalty,
        frequency_penalty,
        logprobs,
        echo,
        suffix,
        best_of,
        user,
        stream,
        stream_options,
        top_k,
        min_p,
        repetition_penalty,
        ignore_eos,
        stop_token_ids,
        logit_bias,
        other,
    } = req;
    reject_unknown(other.keys())?;
    if echo == Some(true) {
        return Err(ApiError::unsupported("echo", "'echo': true is not supported"));
    }
    if suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix", "'suffix' is not supported"));
    }
    let logprobs = logprobs
        .map(|v| int_in("logprobs", v, 0, MAX_TOP_LOGPROBS))
        .transpose()?;
    if let Some(b) = best_of {
        if b != n.unwrap_or(1) {
            return Err(ApiError::unsupported(
                "best_of",
                "'best_of' is supported only equal to n (every candidate is returned)",
            ));
        }
    }
    let Some(prompt) = prompt else {
        return Err(ApiError::invalid("prompt", "'prompt' is required"));
    };
    let input = prompt_input(prompt)?;
    common(
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
        },
        "max_tokens",
        input,
    )
}

fn common(w: CommonWire, max_tokens_name: &str, input: Input) -> Result<ValidRequest, ApiError> {
    let CommonWire {
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
    } = w;
    let model = match model {
        Some(m) if !m.is_empty() => m,
        _ => return Err(ApiError::invalid("model", "'model' is required")),
    };
    if logit_bias.is_some_and(|b| !b.is_empty()) {
        return Err(ApiError::unsupported("logit_bias", "'logit_bias' is not supported yet"));
    }
    let stream = stream.unwrap_or(false);
    let include_usage = match stream_options {
        Some(_) if !stream => {
            return Err(ApiError::invalid(
                "stream_options",
                "'stream_options' is only allowed when 'stream' is true",
            ))
        }
        Some(o) => o.include_usage.unwrap_or(false),
        None => false,
    };
    let n = int_in("n", n.unwrap_or(1), 1, MAX_N)?;
    if n * input.num_prompts() > MAX_CHOICES {
        return Err(ApiError::invalid(
            "n",
            format!(
                "{} prompts × n = {n} makes {} choices; at most {MAX_CHOICES} are allowed",
                input.num_prompts(),
                n * input.num_prompts()
            ),
        ));
    }
    let max_tokens = max_tokens
        .map(|v| int_in(max_tokens_name, v, 1, MAX_TOKENS_LIMIT))
        .transpose()?;
    let top_k = match top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) => int_in("top_k", k, 1, 1 << 20)?,
    };
    let seed = seed
        .map(|s| {
            s.as_u64()
                .or_else(|| s.as_i64().map(|v| v as u64))
                .ok_or_else(|| ApiError::invalid("seed", "'seed' must be an integer"))
        })
        .transpose()?;
    if let Some(u) = &user {
        if u.chars().count() > MAX_USER_CHARS {
            return Err(ApiError::invalid(
                "user",
                format!("'user' is longer than {MAX_USER_CHARS} characters"),
            ));
        }
    }
    let stop_token_ids = stop_token_ids.unwrap_or_default();
    if stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(ApiError::invalid(
            "stop_token_ids",
            format!("at most {MAX_STOP_TOKEN_IDS} stop token ids are allowed"),
        ));
    }
    let stop_token_ids = stop_token_ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            u32::try_from(id).map_err(|_| {
                ApiError::invalid(format!("stop_token_ids[{i}]"), format!("{id} is not a token id"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sampling = Sampling {
        max_tokens,
        temperature: float_in("temperature", temperature.unwrap_or(1.0), 0.0, 2.0, true)?,
        top_k,
        top_p: float_in("top_p", top_p.unwrap_or(1.0), 0.0, 1.0, false)?,
        min_p: float_in("min_p", min_p.unwrap_or(0.0), 0.0, 1.0, true)?,
        repetition_penalty: float_in(
            "repetition_penalty",
            repetition_penalty.unwrap_or(1.0),
            0.0,
            2.0,
            false,
        )?,
        presence_penalty: float_in("presence_penalty", presence_penalty.unwrap_or(0.0), -2.0, 2.0, true)?,
        frequency_penalty: float_in(
            "frequency_penalty",
            frequency_penalty.unwrap_or(0.0),
            -2.0,
            2.0,
            true,
        )?,
        seed,
        stop_token_ids,
        stop_strings: stop_strings(stop)?,
        ignore_eos: ignore_eos.unwrap_or(false),
        logprobs,
    };
    Ok(ValidRequest {
        model,
        stream,
        include_usage,
        user,
        job: Job {
            input,
            sampling,
            n,
            _sealed: Sealed,
        },
    })
}

/// Fields no version of the API (or of vLLM's extras) that Sluice knows has.
fn reject_unknown<'a>(mut names: impl Iterator<Item = &'a String>) -> Result<(), ApiError> {
    match names.next() {
        Some(name) => Err(ApiError::invalid(
            name.as_str(),
            format!("Unrecognized request argument supplied: {name}"),
        )),
        None => Ok(()),
    }
}

fn check_response_format(format: Option<&Value>) -> Result<(), ApiError> {
    let Some(format) = format else {
        return Ok(());
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(()),
        Some(kind @ ("json_object" | "json_schema")) => Err(ApiError::unsupported(
            "response_format",
            format!("'response_format' of type '{kind}' is not supported yet; only 'text' is"),
        )),
        _ => Err(ApiError::invalid(
            "response_format",
            "'response_format' must be an object such as {\"type\": \"text\"}",
        )),
    }
}

fn int_in(name: &str, value: i64, min: usize, max: usize) -> Result<usize, ApiError> {
    match usize::try_from(value) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(ApiError::invalid(
            name,
            format!("'{name}' is {value}; it must be between {min} and {max}"),
        )),
    }
}

/// `value` in `[min, max]`, or `(min, max]` when `min_inclusive` is false.
fn float_in(name: &str, value: f64, min: f64, max: f64, min_inclusive: bool) -> Result<f32, ApiError> {
    let low_ok = if min_inclusive { value >= min } else { value > min };
    if low_ok && value <= max && value.is_finite() {
        return Ok(value as f32);
    }
    let open = if min_inclusive { "[" } else { "(" };
    Err(ApiError::invalid(
        name,
        format!("'{name}' is {value}; it must be in {open}{min}, {max}]"),
    ))
}

fn stop_strings(stop: Option<Value>) -> Result<Vec<String>, ApiError> {
    let list = match stop {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::invalid(format!("stop[{i}]"), "each stop sequence must be a string")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "'stop' must be a string or an array of strings",
            ))
        }
    };
    if list.len() > MAX_STOP {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOP} stop sequences are allowed, got {}", list.len()),
        ));
    }
    for (i, s) in list.iter().enumerate() {
        if s.is_empty() || s.chars().count() > MAX_STOP_CHARS {
            return Err(ApiError::invalid(
                format!("stop[{i}]"),
                format!("each stop sequence must be 1 to {MAX_STOP_CHARS} characters"),
            ));
        }
    }
    Ok(list)
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
        return Err(ApiError::unsupported(at("name"), "message 'name' is not supported"));
    }
    if tool_calls.is_some() || function_call.is_some() {
        return Err(ApiError::unsupported(
            at("tool_calls"),
            "tool calls are not supported yet",
        ));
    }
    if refusal.is_some_and(|r| !r.is_null()) {
        return Err(ApiError::unsupported(at("refusal"), "'refusal' is not supported"));
    }
    if role == "tool" && tool_call_id.is_none() {
        return Err(ApiError::invalid(
            at("tool_call_id"),
            "a message with role 'tool' needs 'tool_call_id'",
        ));
    }
    if role != "tool" && tool_call_id.is_some() {
        return Err(ApiError::invalid(
            at("tool_call_id"),
            "'tool_call_id' belongs only to messages with role 'tool'",
        ));
    }
    let content = match content {
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
    Ok(ChatMessage { role, content })
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
        None => return Err(ApiError::invalid(format!("{at}.type"), "'type' is required")),
    }
    if let Some(extra) = obj.keys().find(|k| *k != "type" && *k != "text") {
        return Err(ApiError::invalid(
            format!("{at}.{extra}"),
            format!("Unrecognized content part field: {extra}"),
        ));
    }
    match obj.remove("text") {
        Some(Value::String(s)) => Ok(s),
        _ => Err(ApiError::invalid(format!("{at}.text"), "'text' must be a string")),
    }
}

/// `prompt`: a string, strings, token ids, or arrays of token ids.
fn prompt_input(prompt: Value) -> Result<Input, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "'prompt' must be a string, an array of strings, an array of token ids, \
             or an array of arrays of token ids",
        )
    };
    let items = match prompt {
        Value::String(s) => return Ok(Input::Text(vec![s])),
        Value::Array(items) if !items.is_empty() => items,
        Value::Array(_) => return Err(ApiError::invalid("prompt", "'prompt' must not be empty")),
        _ => return Err(bad()),
    };
    if items.len() > MAX_CHOICES {
        return Err(ApiError::invalid(
            "prompt",
            format!("at most {MAX_CHOICES} prompts are allowed"),
        ));
    }
    match &items[0] {
        Value::String(_) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::invalid(format!("prompt[{i}]"), "expected a string like the others")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Input::Text),
        Value::Number(_) => token_ids("prompt", items).map(|ids| Input::Tokens(vec![ids])),
        Value::Array(_) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Array(ids) if !ids.is_empty() => token_ids(&format!("prompt[{i}]"), ids),
                _ => Err(ApiError::invalid(
                    format!("prompt[{i}]"),
                    "expected a non-empty array of token ids like the others",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Input::Tokens),
        _ => Err(bad()),
    }
}

fn token_ids(at: &str, items: Vec<Value>) -> Result<Vec<u32>, ApiError> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| ApiError::invalid(format!("{at}[{i}]"), "expected a token id (a non-negative integer)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::json::parse;
    use serde_json::json;

    fn chat_of(body: Value) -> Result<ValidRequest, ApiError> {
        let req: ChatCompletionRequest = parse(body.to_string().as_bytes())?;
        chat(req)
    }

    fn completion_of(body: Value) -> Result<ValidRequest, ApiError> {
        let req: CompletionRequest = parse(body.to_string().as_bytes())?;
        completion(req)
    }

    fn base() -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    }

    fn with(extra: Value) -> Value {
        let mut b = base();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    }

    /// The param a refused request names; panics if it was accepted or not a 400.
    fn param(result: Result<ValidRequest, ApiError>) -> String {
        match result {
            Err(ApiError::InvalidRequest { param, .. }) => param.unwrap_or_default(),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn minimal_chat_gets_openai_defaults() {
        let v = chat_of(base()).unwrap();
        assert_eq!(v.model, "m");
        assert_eq!(v.job.n, 1);
        assert!(!v.stream);
        assert_eq!(v.job.sampling.temperature, 1.0);
        assert_eq!(v.job.sampling.top_p, 1.0);
        assert_eq!(v.job.sampling.max_tokens, None);
        assert_eq!(
            v.job.input,
            Input::Chat(vec![ChatMessage {
                role: "user".into(),
                content: "hi".into()
            }])
        );
    }

    #[test]
    fn out_of_range_numbers_name_their_param() {
        for (body, name) in [
            (json!({"temperature": 5}), "temperature"),
            (json!({"temperature": -0.1}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"top_p": 1.5}), "top_p"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_tokens": -5}), "max_tokens"),
            (json!({"max_completion_tokens": -1}), "max_completion_tokens"),
            (json!({"n": 0}), "n"),
            (json!({"n": 1000}), "n"),
            (json!({"presence_penalty": 3}), "presence_penalty"),
            (json!({"frequency_penalty": -2.5}), "frequency_penalty"),
            (json!({"min_p": 2}), "min_p"),
            (json!({"repetition_penalty": 0}), "repetition_penalty"),
            (json!({"top_k": -2}), "top_k"),
            (json!({"logprobs": true, "top_logprobs": 21}), "top_logprobs"),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (json!({"stop_token_ids": [-1]}), "stop_token_ids[0]"),
        ] {
            assert_eq!(param(chat_of(with(body.clone()))), name, "{body}");
        }
    }

    #[test]
    fn wrong_types_name_their_param() {
        for (body, name) in [
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"max_tokens": "ten"}), "max_tokens"),
            (json!({"max_tokens": 1.5}), "max_tokens"),
            (json!({"stream": "yes"}), "stream"),
            (json!({"messages": "hello"}), "messages"),
            (json!({"messages": [{"role": "user", "content": 7}]}), "messages[0].content"),
            (json!({"stop": 3}), "stop"),
            (json!({"stop": ["a", 1]}), "stop[1]"),
            (json!({"model": 3}), "model"),
        ] {
            assert_eq!(param(chat_of(with(body.clone()))), name, "{body}");
        }
    }

    #[test]
    fn empty_or_missing_messages_are_refused() {
        assert_eq!(param(chat_of(with(json!({"messages": []})))), "messages");
        assert_eq!(param(chat_of(json!({"model": "m"}))), "messages");
        assert_eq!(param(chat_of(json!({"messages": [{"role": "user", "content": "x"}]}))), "model");
    }

    #[test]
    fn unknown_role_is_refused_and_developer_is_system() {
        let body = with(json!({"messages": [{"role": "wizard", "content": "x"}]}));
        assert_eq!(param(chat_of(body)), "messages[0].role");
        let v = chat_of(with(json!({"messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": "x"}
        ]})))
        .unwrap();
        let Input::Chat(m) = v.job.input else { panic!() };
        assert_eq!(m[0].role, "system");
    }

    #[test]
    fn text_parts_are_joined_and_images_refused() {
        let v = chat_of(with(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}
        ]}]})))
        .unwrap();
        let Input::Chat(m) = v.job.input else { panic!() };
        assert_eq!(m[0].content, "a\nb");
        let body = with(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x"}}
        ]}]}));
        assert_eq!(param(chat_of(body)), "messages[0].content[0].type");
    }

    #[test]
    fn unsupported_features_are_refused_by_name() {
        for (body, name) in [
            (json!({"tools": [{"type": "function", "function": {"name": "f"}}]}), "tools"),
            (json!({"tool_choice": "auto"}), "tool_choice"),
            (json!({"functions": []}), "functions"),
            (json!({"response_format": {"type": "json_object"}}), "response_format"),
            (json!({"response_format": {"type": "json_schema", "json_schema": {}}}), "response_format"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
            (json!({"store": true}), "store"),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
            (json!({"frobnicate": 1}), "frobnicate"),
            (json!({"messages": [{"role": "user", "content": "x", "name": "bob"}]}), "messages[0].name"),
        ] {
            assert_eq!(param(chat_of(with(body.clone()))), name, "{body}");
        }
    }

    #[test]
    fn harmless_fields_are_accepted() {
        let v = chat_of(with(json!({
            "response_format": {"type": "text"},
            "logit_bias": {},
            "store": false,
            "metadata": {"k": "v"},
            "parallel_tool_calls": true,
            "user": "u-1",
            "modalities": ["text"],
            "tools": null,
        })));
        assert!(v.is_ok(), "{v:?}");
    }

    #[test]
    fn stop_accepts_string_or_up_to_four() {
        let v = chat_of(with(json!({"stop": "END"}))).unwrap();
        assert_eq!(v.job.sampling.stop_strings, ["END"]);
        let v = chat_of(with(json!({"stop": ["a", "b"]}))).unwrap();
        assert_eq!(v.job.sampling.stop_strings, ["a", "b"]);
        assert_eq!(param(chat_of(with(json!({"stop": ["a", "b", "c", "d", "e"]})))), "stop");
        assert_eq!(param(chat_of(with(json!({"stop": [""]})))), "stop[0]");
    }

    #[test]
    fn stream_options_need_stream() {
        assert_eq!(
            param(chat_of(with(json!({"stream_options": {"include_usage": true}})))),
            "stream_options"
        );
        let v = chat_of(with(json!({"stream": true, "stream_options": {"include_usage": true}}))).unwrap();
        assert!(v.stream && v.include_usage);
    }

    #[test]
    fn max_completion_tokens_is_max_tokens() {
        let v = chat_of(with(json!({"max_completion_tokens": 7}))).unwrap();
        assert_eq!(v.job.sampling.max_tokens, Some(7));
        assert_eq!(
            param(chat_of(with(json!({"max_completion_tokens": 7, "max_tokens": 8})))),
            "max_completion_tokens"
        );
    }

    #[test]
    fn logprobs_default_to_zero_alternatives() {
        let v = chat_of(with(json!({"logprobs": true}))).unwrap();
        assert_eq!(v.job.sampling.logprobs, Some(0));
        let v = chat_of(with(json!({"logprobs": true, "top_logprobs": 3}))).unwrap();
        assert_eq!(v.job.sampling.logprobs, Some(3));
    }

    #[test]
    fn seeds_are_derived_per_choice() {
        let v = chat_of(with(json!({"seed": 42, "n": 3}))).unwrap();
        let seeds: Vec<_> = (0..3).map(|i| v.job.sampling.to_params(10, i).seed).collect();
        assert_eq!(seeds, [Some(42), Some(43), Some(44)]);
        let v = chat_of(with(json!({"seed": -1}))).unwrap();
        assert_eq!(v.job.sampling.seed, Some(u64::MAX));
    }

    #[test]
    fn tool_messages_need_a_call_id() {
        let body = with(json!({"messages": [{"role": "tool", "content": "42"}]}));
        assert_eq!(param(chat_of(body)), "messages[0].tool_call_id");
        let body = with(json!({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}));
        assert!(chat_of(body).is_ok());
    }

    #[test]
    fn completion_prompt_shapes() {
        let c = |p: Value| completion_of(json!({"model": "m", "prompt": p}));
        assert_eq!(c(json!("hi")).unwrap().job.input, Input::Text(vec!["hi".into()]));
        assert_eq!(c(json!(["a", "b"])).unwrap().job.input, Input::Text(vec!["a".into(), "b".into()]));
        assert_eq!(c(json!([1, 2, 3])).unwrap().job.input, Input::Tokens(vec![vec![1, 2, 3]]));
        assert_eq!(c(json!([[1], [2, 3]])).unwrap().job.input, Input::Tokens(vec![vec![1], vec![2, 3]]));
        assert_eq!(param(c(json!([]))), "prompt");
        assert_eq!(param(c(json!(["a", 1]))), "prompt[1]");
        assert_eq!(param(c(json!([1, -1]))), "prompt[1]");
        assert_eq!(param(c(json!([[1], []]))), "prompt[1]");
        assert_eq!(param(c(json!({"text": "x"}))), "prompt");
        assert_eq!(param(completion_of(json!({"model": "m"}))), "prompt");
    }

    #[test]
    fn completion_refuses_echo_and_suffix() {
        let c = |extra: Value| {
            let mut b = json!({"model": "m", "prompt": "x"});
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            completion_of(b)
        };
        assert_eq!(param(c(json!({"echo": true}))), "echo");
        assert_eq!(param(c(json!({"suffix": "end"}))), "suffix");
        assert_eq!(param(c(json!({"best_of": 3}))), "best_of");
        assert_eq!(param(c(json!({"logprobs": 21}))), "logprobs");
        assert!(c(json!({"echo": false, "best_of": 1, "logprobs": 2})).is_ok());
    }

    #[test]
    fn too_many_choices_are_refused() {
        let prompts: Vec<String> = (0..8).map(|i| i.to_string()).collect();
        let r = completion_of(json!({"model": "m", "prompt": prompts, "n": 16}));
        assert_eq!(param(r), "n");
    }
}
