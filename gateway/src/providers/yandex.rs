//! YandexGPT, natively: the Foundation Models `completion` call
//! (`modelUri` `gpt://<folder>/<model>`, `completionOptions`, messages with
//! `role` and `text`), authorised by an `Api-Key` or an IAM `Bearer` token
//! plus `x-folder-id`.
//!
//! Tools, as its API reference describes them (the REST `completion` body,
//! read 2026-12): `tools: [{function: {name, description, parameters,
//! strict}}]`, `toolChoice: {mode: NONE|AUTO|REQUIRED} | {functionName}`,
//! `parallelToolCalls`, `jsonObject: true` / `jsonSchema: {schema}`; an
//! assistant turn's calls as `toolCallList.toolCalls[].functionCall {name,
//! arguments (an object)}`, results as `toolResultList.toolResults[].
//! functionResult {name, content}`; an answer of calls has the status
//! `ALTERNATIVE_STATUS_TOOL_CALLS`. Its calls carry no id: one is made up.
//!
//! Its stream is newline-delimited JSON, and each line carries the whole
//! text so far (cumulative alternatives), not a delta. Design choice: we
//! remember what was sent per choice and emit only the new suffix; if an
//! update is not an extension of what was sent (the upstream rewrote its
//! text), the client cannot be made to unsee it, so we log it, resynchronise
//! on the new text and go on: no duplicated text, no panic on a cut
//! character.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sluice_runtime::FinishReason;

use super::answer::{CallPiece, Decoded, EventDecoder, ReadyAnswer, StreamAnswer};
use super::messages::{turns, Turn};
use super::openai_compat::{refuse_token_level, schema_value, unsupported};
use super::secret::read_secret;
use super::sse_client::Framing;
use super::usage::saturating_count;
use super::{
    http_client, request_error, sensitive_header, status_error, Provider, ProviderConfig,
    ProviderError, ProviderRequest,
};
use crate::answer::BoxAnswer;
use crate::config::Secret;
use crate::validate::{Sampling, ToolChoice, Tools};
use serde_json::Value;
use sluice_runtime::GrammarSpec;

const DEFAULT_BASE_URL: &str = "https://llm.api.cloud.yandex.net";

enum Credential {
    ApiKey(Secret),
    Iam(Secret),
}

impl Credential {
    fn header(&self) -> String {
        match self {
            Self::ApiKey(key) => format!("Api-Key {}", key.expose()),
            Self::Iam(token) => format!("Bearer {}", token.expose()),
        }
    }
}

pub struct Yandex {
    client: reqwest::Client,
    url: reqwest::Url,
    folder_id: String,
    credential: Credential,
    connect_timeout: Duration,
}

impl fmt::Debug for Yandex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, secret) = match &self.credential {
            Credential::ApiKey(s) => ("api_key", s),
            Credential::Iam(s) => ("iam_token", s),
        };
        f.debug_struct("Yandex")
            .field("url", &self.url.as_str())
            .field("folder_id", &self.folder_id)
            .field(kind, secret)
            .finish_non_exhaustive()
    }
}

impl Yandex {
    pub fn from_config(cfg: &ProviderConfig) -> Result<Self, ProviderError> {
        let ProviderConfig::Yandex {
            name: _,
            base_url,
            folder_id,
            api_key_env,
            api_key_file,
            iam_token_env,
            iam_token_file,
            resilience,
        } = cfg
        else {
            return Err(ProviderError::Config("not a yandex provider".into()));
        };
        let has_key = api_key_env.is_some() || api_key_file.is_some();
        let has_iam = iam_token_env.is_some() || iam_token_file.is_some();
        let credential = match (has_key, has_iam) {
            (true, false) => Credential::ApiKey(read_secret(
                ("api_key_env", "api_key_file"),
                api_key_env.as_deref(),
                api_key_file.as_deref(),
            )?),
            (false, true) => Credential::Iam(read_secret(
                ("iam_token_env", "iam_token_file"),
                iam_token_env.as_deref(),
                iam_token_file.as_deref(),
            )?),
            _ => {
                return Err(ProviderError::Config(
                    "give an API key (api_key_env / api_key_file) or an IAM token \
                     (iam_token_env / iam_token_file), exactly one"
                        .into(),
                ))
            }
        };
        if folder_id.trim().is_empty() {
            return Err(ProviderError::Config("folder_id is empty".into()));
        }
        let connect_timeout = resilience.connect_timeout();
        let base = base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            sensitive_header(credential.header())?,
        );
        headers.insert(
            "x-folder-id",
            reqwest::header::HeaderValue::try_from(folder_id.as_str()).map_err(|_| {
                ProviderError::Config("folder_id is not a valid header value".into())
            })?,
        );
        Ok(Self {
            client: http_client(connect_timeout, None, headers)?,
            url: super::endpoint(format!(
                "{}/foundationModels/v1/completion",
                base.trim_end_matches('/')
            ))?,
            folder_id: folder_id.clone(),
            credential,
            connect_timeout,
        })
    }

    /// `yandexgpt/latest` becomes `gpt://<folder>/yandexgpt/latest`; a full
    /// URI is used as given.
    fn model_uri(&self, model: &str) -> String {
        if model.contains("://") {
            model.to_string()
        } else {
            format!("gpt://{}/{model}", self.folder_id)
        }
    }

    async fn chat_inner(&self, req: &ProviderRequest) -> Result<BoxAnswer, ProviderError> {
        let body = CompletionBody::new(req, self.model_uri(&req.upstream_model))?;
        let response = super::with_trace(self.client.post(self.url.clone()), req)
            .json(&body)
            .send()
            .await
            .map_err(|e| request_error(e, self.connect_timeout))?;
        if !response.status().is_success() {
            return Err(status_error(response).await);
        }
        if req.stream {
            StreamAnswer::open(response, Framing::Ndjson, CumulativeDecoder::new(1), 1).await
        } else {
            let bytes = super::read_body(response, super::MAX_BODY_BYTES).await?;
            let mut decoded = Decoded::new(1);
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ProviderError::Malformed("a body that is not UTF-8".into()))?;
            CumulativeDecoder::new(1).decode(text, &mut decoded)?;
            ReadyAnswer::boxed(decoded)
        }
    }
}

impl Provider for Yandex {
    fn kind(&self) -> &'static str {
        "yandex"
    }

    fn chat<'a>(
        &'a self,
        req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<BoxAnswer, ProviderError>> {
        Box::pin(self.chat_inner(req))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CompletionBody<'a> {
    model_uri: String,
    completion_options: CompletionOptions,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_object: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_schema: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CompletionOptions {
    stream: bool,
    temperature: f32,
    /// An int64, which the API's JSON mapping writes as a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<String>,
}

/// One of `text`, `toolCallList` or `toolResultList`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    role: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_list: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_result_list: Option<Value>,
}

/// Arguments as an object (the API's `arguments` is a Struct); text that
/// is not a JSON object goes as a string.
fn arguments_object(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::String(text.to_string()),
    }
}

/// The conversation in YandexGPT's shapes: an assistant's calls as its
/// `toolCallList`, consecutive tool results as one `toolResultList` (each
/// named after the function it answers), sent in the `user` role.
fn yandex_messages(req: &ProviderRequest) -> Result<Vec<Message<'_>>, ProviderError> {
    let mut out: Vec<Message<'_>> = Vec::with_capacity(req.messages.len());
    let mut results: Vec<Value> = Vec::new();
    let flush = |results: &mut Vec<Value>, out: &mut Vec<Message<'_>>| {
        if !results.is_empty() {
            out.push(Message {
                role: "user",
                text: None,
                tool_call_list: None,
                tool_result_list: Some(serde_json::json!({"toolResults": std::mem::take(results)})),
            });
        }
    };
    for turn in turns(&req.messages) {
        match turn {
            Turn::Result {
                call_id,
                name,
                text,
            } => {
                let Some(name) = name else {
                    return Err(ProviderError::Unsupported {
                        param: "messages".into(),
                        message: format!(
                            "a tool message answers '{call_id}', which no earlier assistant turn \
                             called: YandexGPT needs the function's name"
                        ),
                    });
                };
                results
                    .push(serde_json::json!({"functionResult": {"name": name, "content": text}}));
                continue;
            }
            Turn::Text { role, text } => {
                flush(&mut results, &mut out);
                out.push(Message {
                    role,
                    text: Some(text),
                    tool_call_list: None,
                    tool_result_list: None,
                });
            }
            Turn::Calls { text: _, calls } => {
                flush(&mut results, &mut out);
                let calls: Vec<Value> = calls
                    .iter()
                    .map(|c| {
                        serde_json::json!({"functionCall": {
                            "name": c.name, "arguments": arguments_object(&c.arguments)}})
                    })
                    .collect();
                out.push(Message {
                    role: "assistant",
                    text: None,
                    tool_call_list: Some(serde_json::json!({ "toolCalls": calls })),
                    tool_result_list: None,
                });
            }
        }
    }
    flush(&mut results, &mut out);
    Ok(out)
}

/// `tools`, `toolChoice` (`mode` NONE / AUTO / REQUIRED, or `functionName`)
/// and `parallelToolCalls`.
fn yandex_tools(tools: &Tools) -> (Vec<Value>, Value, bool) {
    let functions = tools
        .functions
        .iter()
        .map(|f| {
            let mut function = serde_json::Map::new();
            function.insert("name".into(), Value::from(f.name.as_str()));
            if let Some(d) = &f.description {
                function.insert("description".into(), Value::from(d.as_str()));
            }
            function.insert(
                "parameters".into(),
                f.parameters
                    .clone()
                    .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
            );
            if f.strict {
                function.insert("strict".into(), Value::Bool(true));
            }
            serde_json::json!({ "function": function })
        })
        .collect();
    let choice = match &tools.choice {
        ToolChoice::Auto => serde_json::json!({"mode": "AUTO"}),
        ToolChoice::None => serde_json::json!({"mode": "NONE"}),
        ToolChoice::Required => serde_json::json!({"mode": "REQUIRED"}),
        ToolChoice::Function(name) => serde_json::json!({ "functionName": name }),
    };
    (functions, choice, tools.parallel)
}

impl<'a> CompletionBody<'a> {
    fn new(req: &'a ProviderRequest, model_uri: String) -> Result<Self, ProviderError> {
        let Sampling {
            max_tokens,
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
            constraint,
        } = &req.sampling;
        refuse_token_level(stop_token_ids, *logprobs)?;
        if !logit_bias.is_empty() {
            return Err(unsupported("logit_bias", "YandexGPT"));
        }
        let (json_object, json_schema) = match constraint {
            None => (None, None),
            Some(c) => match &c.spec {
                GrammarSpec::JsonObject => (Some(true), None),
                GrammarSpec::JsonSchema { schema, .. } => (
                    None,
                    Some(serde_json::json!({ "schema": schema_value(c, schema)? })),
                ),
                GrammarSpec::Regex(_) | GrammarSpec::Lark(_) => {
                    return Err(unsupported(
                        c.param,
                        "YandexGPT (it takes JSON formats only)",
                    ))
                }
            },
        };
        let unsupported = [
            ("n", req.n != 1),
            ("top_k", *top_k != 0),
            ("top_p", *top_p != 1.0),
            ("min_p", *min_p != 0.0),
            ("repetition_penalty", *repetition_penalty != 1.0),
            ("presence_penalty", *presence_penalty != 0.0),
            ("frequency_penalty", *frequency_penalty != 0.0),
            ("seed", seed.is_some()),
            ("stop", !stop_strings.is_empty()),
            ("ignore_eos", *ignore_eos),
        ];
        if let Some((param, _)) = unsupported.iter().find(|(_, used)| *used) {
            return Err(ProviderError::Unsupported {
                param: (*param).into(),
                message: format!("`{param}` is not supported by YandexGPT"),
            });
        }
        if *temperature > 1.0 {
            return Err(ProviderError::Unsupported {
                param: "temperature".into(),
                message: "YandexGPT accepts a temperature from 0 to 1".into(),
            });
        }
        let (tools, tool_choice, parallel_tool_calls) = match &req.tools {
            Some(t) => {
                let (f, c, p) = yandex_tools(t);
                (Some(f), Some(c), Some(p))
            }
            None => (None, None, None),
        };
        Ok(Self {
            model_uri,
            completion_options: CompletionOptions {
                stream: req.stream,
                temperature: *temperature,
                max_tokens: max_tokens.map(|m| m.to_string()),
            },
            messages: yandex_messages(req)?,
            tools,
            tool_choice,
            parallel_tool_calls,
            json_object,
            json_schema,
        })
    }
}

#[derive(Deserialize)]
struct Envelope {
    result: Option<CompletionResult>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompletionResult {
    alternatives: Vec<Alternative>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Alternative {
    message: AlternativeMessage,
    status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AlternativeMessage {
    #[serde(default)]
    text: String,
    #[serde(default)]
    tool_call_list: Option<WireToolCallList>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireToolCallList {
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireToolCall {
    function_call: Option<WireFunctionCall>,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: Option<Value>,
}

/// Token counts are int64s, written as strings (numbers accepted too).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default, deserialize_with = "saturating_count")]
    input_text_tokens: usize,
    #[serde(default, deserialize_with = "saturating_count")]
    completion_tokens: usize,
}

/// Turns cumulative alternatives into deltas.
struct CumulativeDecoder {
    sent: Vec<String>,
    /// Per choice, the calls already handed on (a call list, like the
    /// text, is repeated in every later line).
    calls_sent: Vec<usize>,
}

impl CumulativeDecoder {
    fn new(num_choices: usize) -> Self {
        Self {
            sent: vec![String::new(); num_choices],
            calls_sent: vec![0; num_choices],
        }
    }
}

impl EventDecoder for CumulativeDecoder {
    fn decode(&mut self, payload: &str, out: &mut Decoded) -> Result<bool, ProviderError> {
        let envelope: Envelope = serde_json::from_str(payload)
            .map_err(|e| ProviderError::Malformed(format!("completion result: {e}")))?;
        if let Some(err) = envelope.error {
            let message = err
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("unknown error")
                .to_string();
            return Err(ProviderError::Transport(format!(
                "the upstream reported an error: {message}"
            )));
        }
        let result = envelope
            .result
            .ok_or_else(|| ProviderError::Malformed("a line without `result`".into()))?;
        for (choice, alt) in result.alternatives.into_iter().enumerate() {
            let Some(sent) = self.sent.get_mut(choice) else {
                return Err(ProviderError::Malformed(format!(
                    "alternative {choice} was not asked for"
                )));
            };
            let text = alt.message.text;
            match text.strip_prefix(sent.as_str()) {
                Some(suffix) => {
                    let suffix = suffix.to_string();
                    out.token(choice, suffix)?;
                }
                None => {
                    tracing::warn!(
                        choice,
                        "YandexGPT rewrote text it had already sent; continuing from its new text"
                    );
                }
            }
            *sent = text;
            // Calls carry no id: each gets one made up, once.
            let calls = alt
                .message
                .tool_call_list
                .map(|l| l.tool_calls)
                .unwrap_or_default();
            let done = self.calls_sent.get(choice).copied().unwrap_or(0);
            for (index, call) in calls.into_iter().enumerate().skip(done) {
                let Some(f) = call.function_call else {
                    return Err(ProviderError::Malformed(
                        "a tool call without a functionCall".into(),
                    ));
                };
                let arguments = match f.arguments {
                    None | Some(Value::Null) => "{}".to_string(),
                    Some(Value::String(text)) => text,
                    Some(other) => other.to_string(),
                };
                out.tool_call(
                    choice,
                    CallPiece {
                        index,
                        id: None,
                        name: Some(f.name),
                        arguments,
                    },
                )?;
                if let Some(n) = self.calls_sent.get_mut(choice) {
                    *n = index + 1;
                }
            }
            let reason = match alt.status.as_str() {
                "ALTERNATIVE_STATUS_PARTIAL" | "ALTERNATIVE_STATUS_UNSPECIFIED" => None,
                "ALTERNATIVE_STATUS_TRUNCATED_FINAL" => Some(FinishReason::Length),
                "ALTERNATIVE_STATUS_TOOL_CALLS" => Some(FinishReason::ToolCalls),
                // The client must see it, and the answer is never cached.
                "ALTERNATIVE_STATUS_CONTENT_FILTER" => Some(FinishReason::ContentFilter),
                _ => Some(FinishReason::Stop),
            };
            if let Some(reason) = reason {
                out.finish(choice, reason)?;
            }
        }
        if let Some(u) = result.usage {
            out.usage.prompt_tokens = u.input_text_tokens;
            out.usage.completion_tokens = u.completion_tokens;
        }
        // The stream has no end marker: it ends with the body.
        Ok(false)
    }
}

#[cfg(test)]
mod tests;
