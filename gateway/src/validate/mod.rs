//! Wire request → [`ValidRequest`]: every number in range, every field either
//! supported or refused with a 400 that names it. Nothing is silently dropped.
//!
//! Its [`Job`] carries a private marker, so only this module (with its
//! `chat` and `completion` halves) builds one; what follows it (tokenising in
//! [`crate::generate`]) may trust its values.
//! Checks that need the model (the context length, the vocabulary) happen
//! there, where the model is known.

use serde_json::Value;
use sluice_models::ChatMessage;
use sluice_runtime::{SamplingParams, SessionKey};

use crate::error::ApiError;
use crate::wire::StreamOptions;

mod chat;
mod completion;
mod defaults;
pub mod responses;
mod structured;
mod tools;

pub use chat::chat;
pub use completion::completion;
use defaults::Omitted;
pub use structured::Constraint;
/// The chat API's `tools` / `tool_choice` / `parallel_tool_calls` reader,
/// for the APIs that map their own tool shapes onto it (`/v1/messages`).
pub(crate) use tools::tools as parse_tools;
pub use tools::{FunctionSpec, ToolChoice, Tools};

/// A wire API's request: it becomes the one internal [`ValidRequest`]
/// (what makes a wire API a thin adapter of the request chain).
pub trait Validate {
    fn validate(self) -> Result<ValidRequest, ApiError>;
}

impl Validate for crate::wire::ChatCompletionRequest {
    fn validate(self) -> Result<ValidRequest, ApiError> {
        chat(self)
    }
}

impl Validate for crate::wire::CompletionRequest {
    fn validate(self) -> Result<ValidRequest, ApiError> {
        completion(self)
    }
}

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
    /// Token id → bias, sorted by id.
    pub logit_bias: Vec<(u32, f32)>,
    /// A grammar the output must match; compiled when the request is planned.
    pub constraint: Option<Constraint>,
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
            logit_bias,
            // Compiled against the model's vocabulary by `crate::generate`.
            constraint: _,
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
            logit_bias: logit_bias.clone(),
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
    /// The most the answer may cost (`max_cost`), in the currency prices
    /// are configured in; stopped before it would cost more.
    pub max_cost: Option<f64>,
}

/// The extra body field (`extra_body={"max_cost": 0.01}` in the OpenAI
/// SDKs) that caps what one answer may cost.
pub(crate) const MAX_COST: &str = "max_cost";

/// `max_cost`: a positive number; absent or `null`: no cap of its own.
pub(crate) fn max_cost(value: Option<&Value>) -> Result<Option<f64>, ApiError> {
    let bad = |got: String| {
        ApiError::invalid(
            MAX_COST,
            format!(
                "'max_cost' is {got}; it must be a positive number (the most this answer may \
                 cost, in the currency prices are configured in)"
            ),
        )
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
            _ => Err(bad(n.to_string())),
        },
        Some(other) => Err(bad(other.to_string())),
    }
}

/// The generation part of a [`ValidRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub input: Input,
    pub sampling: Sampling,
    /// Choices per prompt.
    pub n: usize,
    /// The functions the model may call (chat only).
    pub tools: Option<Tools>,
    /// The conversation this request continues, when its API knows one
    /// (`/v1/responses`, `/v1/conversations`, `/v1/messages` with a user):
    /// the local engine keeps its KV blocks warm for the next turn. Set by
    /// the wire API's adapter after validation ([`Job::set_session`]);
    /// scoped there by tenant. Not part of the answer (not in the cache key).
    pub session: Option<SessionKey>,
    /// The sampling fields the request left out, which a model's defaults
    /// may fill ([`Job::apply_defaults`]).
    omitted: Omitted,
    _sealed: Sealed,
}

impl Job {
    /// Every field, for code that must account for each one (the cache key).
    /// Destructured without `..`: a new field breaks the build here until the
    /// cache key (`crate::cache::key`) says whether it changes the answer.
    pub fn parts(&self) -> (&Input, &Sampling, usize, Option<&Tools>) {
        let Self {
            input,
            sampling,
            n,
            tools,
            // Not part of the answer: only which KV blocks stay warm.
            session: _,
            // Not part of the answer: what was left out holds either the
            // model's default (applied before the cache key) or the OpenAI
            // default, the same values a request spelling them out has.
            omitted: _,
            _sealed,
        } = self;
        (input, sampling, *n, tools.as_ref())
    }

    /// Names the conversation this turn continues, scoped by `tenant` (two
    /// tenants' ids never meet in the engine) and by the API (`scope`).
    pub fn set_session(&mut self, tenant: &str, scope: &str, id: &str) {
        self.session = Some(SessionKey::new(format!("{tenant}\u{1f}{scope}\u{1f}{id}")));
    }
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
    pub constraint: Option<Constraint>,
}

pub(crate) fn common(
    w: CommonWire,
    max_tokens_name: &str,
    input: Input,
) -> Result<ValidRequest, ApiError> {
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
        constraint,
    } = w;
    let model = match model {
        Some(m) if !m.is_empty() => m,
        _ => return Err(ApiError::invalid("model", "'model' is required")),
    };
    let omitted = Omitted {
        temperature: temperature.is_none(),
        top_p: top_p.is_none(),
        top_k: top_k.is_none(),
        min_p: min_p.is_none(),
        repetition_penalty: repetition_penalty.is_none(),
        presence_penalty: presence_penalty.is_none(),
        frequency_penalty: frequency_penalty.is_none(),
        max_tokens: max_tokens.is_none(),
    };
    let logit_bias = structured::logit_bias(logit_bias)?;
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
                ApiError::invalid(
                    format!("stop_token_ids[{i}]"),
                    format!("{id} is not a token id"),
                )
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
        presence_penalty: float_in(
            "presence_penalty",
            presence_penalty.unwrap_or(0.0),
            -2.0,
            2.0,
            true,
        )?,
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
        logit_bias,
        constraint,
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
            tools: None,
            session: None,
            omitted,
            _sealed: Sealed,
        },
        max_cost: None,
    })
}

/// Fields no version of the API (or of vLLM's extras) that Sluice knows has.
pub(crate) fn reject_unknown<'a>(
    mut names: impl Iterator<Item = &'a String>,
) -> Result<(), ApiError> {
    match names.next() {
        Some(name) => Err(ApiError::invalid(
            name.as_str(),
            format!("Unrecognized request argument supplied: {name}"),
        )),
        None => Ok(()),
    }
}

pub(crate) fn int_in(name: &str, value: i64, min: usize, max: usize) -> Result<usize, ApiError> {
    match usize::try_from(value) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(ApiError::invalid(
            name,
            format!("'{name}' is {value}; it must be between {min} and {max}"),
        )),
    }
}

/// `value` in `[min, max]`, or `(min, max]` when `min_inclusive` is false.
fn float_in(
    name: &str,
    value: f64,
    min: f64,
    max: f64,
    min_inclusive: bool,
) -> Result<f32, ApiError> {
    let low_ok = if min_inclusive {
        value >= min
    } else {
        value > min
    };
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
                _ => Err(ApiError::invalid(
                    format!("stop[{i}]"),
                    "each stop sequence must be a string",
                )),
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
            format!(
                "at most {MAX_STOP} stop sequences are allowed, got {}",
                list.len()
            ),
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

#[cfg(test)]
mod tests;
