//! GigaChat, natively: the OAuth token exchange (an authorization key for a
//! 30-minute access token, a fresh `RqUID` per exchange) and the chat API,
//! whose JSON and SSE match OpenAI's shapes (decoded with
//! [`super::openai_answer`]). Its certificate chain ends at the
//! Russian Trusted Root CA, so a CA bundle is configurable.
//!
//! Tools go as its `functions` and `function_call` (`auto`, `none`,
//! `{"name"}`); its answer's `function_call` (arguments an object, finish
//! reason `function_call`) comes back as one tool call with an id made up
//! here; `tool` turns go as its `function` role. What it cannot express
//! (`required`, several calls in one turn, response formats) is refused.
//!
//! Design choice: the token sits behind one async mutex that is held while a
//! new token is fetched, so any number of concurrent requests that find the
//! token missing or near expiry cause exactly one exchange (single flight);
//! the others wait for its result instead of stampeding the OAuth endpoint.
//! A 401 from the chat API invalidates only the token that request used
//! (compared by identity), so fifty requests rejected with the same stale
//! token still cause one refresh.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_runtime::FinishReason;
use tokio::sync::Mutex;

use super::messages::{turns, Turn};
use super::openai_answer::read_chat_response;
use super::openai_compat::{refuse_token_level, unsupported};
use super::secret::read_secret;
use super::{
    http_client, request_error, status_error, Provider, ProviderConfig, ProviderError,
    ProviderRequest,
};
use crate::answer::BoxAnswer;
use crate::config::Secret;
use crate::validate::{Sampling, ToolChoice, Tools};

const DEFAULT_BASE_URL: &str = "https://gigachat.devices.sberbank.ru";
const DEFAULT_OAUTH_URL: &str = "https://ngw.devices.sberbank.ru:9443/api/v2/oauth";
const SCOPES: [&str; 3] = ["GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP"];
const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(60);

struct AccessToken {
    value: Secret,
    expires_at: SystemTime,
}

pub struct GigaChat {
    client: reqwest::Client,
    chat_url: reqwest::Url,
    oauth_url: String,
    auth_key: Secret,
    scope: String,
    refresh_margin: Duration,
    token: Mutex<Option<Arc<AccessToken>>>,
    connect_timeout: Duration,
}

impl fmt::Debug for GigaChat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GigaChat")
            .field("chat_url", &self.chat_url.as_str())
            .field("oauth_url", &self.oauth_url)
            .field("auth_key", &self.auth_key)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Milliseconds since the Unix epoch.
    expires_at: u64,
}

impl GigaChat {
    pub fn from_config(cfg: &ProviderConfig) -> Result<Self, ProviderError> {
        let ProviderConfig::Gigachat {
            name: _,
            base_url,
            oauth_url,
            auth_key_env,
            auth_key_file,
            scope,
            ca_bundle,
            token_refresh_margin_ms,
            resilience,
        } = cfg
        else {
            return Err(ProviderError::Config("not a gigachat provider".into()));
        };
        if !SCOPES.contains(&scope.as_str()) {
            return Err(ProviderError::Config(format!(
                "scope: `{scope}` is not one of {}",
                SCOPES.join(", ")
            )));
        }
        let auth_key = read_secret(
            ("auth_key_env", "auth_key_file"),
            auth_key_env.as_deref(),
            auth_key_file.as_deref(),
        )?;
        let connect_timeout = resilience.connect_timeout();
        let base = base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        Ok(Self {
            client: http_client(
                connect_timeout,
                ca_bundle.as_deref(),
                reqwest::header::HeaderMap::new(),
            )?,
            chat_url: super::endpoint(format!(
                "{}/api/v1/chat/completions",
                base.trim_end_matches('/')
            ))?,
            oauth_url: oauth_url
                .as_deref()
                .unwrap_or(DEFAULT_OAUTH_URL)
                .to_string(),
            auth_key,
            scope: scope.clone(),
            refresh_margin: token_refresh_margin_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_REFRESH_MARGIN),
            token: Mutex::new(None),
            connect_timeout,
        })
    }

    /// A token valid for at least the refresh margin; fetched at most once
    /// for all concurrent callers.
    async fn token(&self) -> Result<Arc<AccessToken>, ProviderError> {
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.as_ref() {
            if token.expires_at > SystemTime::now() + self.refresh_margin {
                return Ok(token.clone());
            }
        }
        let fresh = Arc::new(self.fetch_token().await?);
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    /// Forgets `used` if it is still the current token.
    async fn invalidate(&self, used: &Arc<AccessToken>) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| Arc::ptr_eq(t, used)) {
            *slot = None;
        }
    }

    async fn fetch_token(&self) -> Result<AccessToken, ProviderError> {
        let response = self
            .client
            .post(&self.oauth_url)
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Basic {}", self.auth_key.expose()),
            )
            .header("RqUID", uuid::Uuid::new_v4().to_string())
            .header(reqwest::header::ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            // The scope is one of three fixed names: nothing to encode.
            .body(format!("scope={}", self.scope))
            .send()
            .await
            .map_err(|e| request_error(e, self.connect_timeout))?;
        let status = response.status();
        if !status.is_success() {
            let err = status_error(response).await;
            // An overloaded OAuth endpoint is worth a retry; a refused key is not.
            return Err(if status.as_u16() == 429 || status.is_server_error() {
                err
            } else {
                ProviderError::Auth(format!("token exchange: {err}"))
            });
        }
        let bytes = super::read_body(response, super::MAX_BODY_BYTES).await?;
        let token: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::Auth(format!("token exchange answer: {e}")))?;
        tracing::debug!(
            expires_at_ms = token.expires_at,
            "GigaChat access token fetched"
        );
        Ok(AccessToken {
            value: Secret::new(token.access_token),
            expires_at: UNIX_EPOCH + Duration::from_millis(token.expires_at),
        })
    }

    async fn chat_inner(&self, req: &ProviderRequest) -> Result<BoxAnswer, ProviderError> {
        let body = ChatBody::new(req)?;
        // A second pass only after a 401: the token may have been revoked or
        // expired earlier than it said.
        for pass in 0..2 {
            let token = self.token().await?;
            let response = super::with_trace(self.client.post(self.chat_url.clone()), req)
                .bearer_auth(token.value.expose())
                .header(
                    reqwest::header::ACCEPT,
                    if req.stream {
                        "text/event-stream"
                    } else {
                        "application/json"
                    },
                )
                .json(&body)
                .send()
                .await
                .map_err(|e| request_error(e, self.connect_timeout))?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && pass == 0 {
                self.invalidate(&token).await;
                continue;
            }
            if response.status() == reqwest::StatusCode::UNAUTHORIZED {
                return Err(ProviderError::Auth(
                    "the chat API refused a freshly issued token".into(),
                ));
            }
            return read_chat_response(response, req, finish_reason).await;
        }
        Err(ProviderError::Auth("no usable token".into()))
    }
}

impl Provider for GigaChat {
    fn kind(&self) -> &'static str {
        "gigachat"
    }

    fn chat<'a>(
        &'a self,
        req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<BoxAnswer, ProviderError>> {
        Box::pin(self.chat_inner(req))
    }
}

#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: Vec<GigaMessage<'a>>,
    temperature: f32,
    top_p: f32,
    n: usize,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<usize>,
    repetition_penalty: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    functions: Option<Vec<GigaFunction<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<Value>,
}

#[derive(Serialize)]
struct GigaMessage<'a> {
    role: &'a str,
    content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<GigaCall<'a>>,
    /// A `function` turn: the function whose result it carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Serialize)]
struct GigaCall<'a> {
    name: &'a str,
    /// An object, not JSON text.
    arguments: Value,
}

#[derive(Serialize)]
struct GigaFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parameters: Value,
}

/// GigaChat calls are `functions` with `function_call` `auto`, `none` or
/// `{"name": ...}`: it has no "required", and it answers with one call.
fn functions(tools: &Tools) -> Result<(Vec<GigaFunction<'_>>, Value), ProviderError> {
    let choice = match &tools.choice {
        ToolChoice::Auto => Value::from("auto"),
        ToolChoice::None => Value::from("none"),
        ToolChoice::Function(name) => serde_json::json!({ "name": name }),
        ToolChoice::Required => return Err(unsupported("tool_choice", "GigaChat (\"required\")")),
    };
    let functions = tools
        .functions
        .iter()
        .map(|f| GigaFunction {
            name: &f.name,
            description: f.description.as_deref(),
            // GigaChat wants a schema for every function.
            parameters: f
                .parameters
                .clone()
                .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
        })
        .collect();
    Ok((functions, choice))
}

/// The conversation in GigaChat's roles: an assistant's call as its
/// `function_call` (one per turn: GigaChat has no parallel calls), a tool's
/// result as a `function` turn named after the function, its content JSON
/// (GigaChat parses it; a plain-text result is wrapped as `{"result": ...}`).
fn giga_messages(req: &ProviderRequest) -> Result<Vec<GigaMessage<'_>>, ProviderError> {
    turns(&req.messages)
        .into_iter()
        .map(|turn| {
            Ok(match turn {
                Turn::Text { role, text } => GigaMessage {
                    role,
                    content: text.to_string(),
                    function_call: None,
                    name: None,
                },
                Turn::Calls { text, calls } => {
                    let [call] = calls else {
                        return Err(unsupported(
                            "messages",
                            "GigaChat (an assistant turn with several tool calls)",
                        ));
                    };
                    GigaMessage {
                        role: "assistant",
                        content: text.to_string(),
                        function_call: Some(GigaCall {
                            name: &call.name,
                            arguments: serde_json::from_str(&call.arguments)
                                .unwrap_or_else(|_| Value::String(call.arguments.clone())),
                        }),
                        name: None,
                    }
                }
                Turn::Result {
                    call_id,
                    name,
                    text,
                } => {
                    let Some(name) = name else {
                        return Err(ProviderError::Unsupported {
                            param: "messages".into(),
                            message: format!(
                                "a tool message answers '{call_id}', which no earlier assistant \
                                 turn called: GigaChat needs the function's name"
                            ),
                        });
                    };
                    let content = match serde_json::from_str::<Value>(text) {
                        Ok(v @ Value::Object(_)) => v.to_string(),
                        _ => serde_json::json!({ "result": text }).to_string(),
                    };
                    GigaMessage {
                        role: "function",
                        content,
                        function_call: None,
                        name: Some(name),
                    }
                }
            })
        })
        .collect()
}

/// GigaChat refuses a temperature of 0; greedy becomes its smallest step.
const MIN_TEMPERATURE: f32 = 0.001;

impl<'a> ChatBody<'a> {
    fn new(req: &'a ProviderRequest) -> Result<Self, ProviderError> {
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
            return Err(unsupported("logit_bias", "GigaChat"));
        }
        if let Some(c) = constraint {
            return Err(unsupported(
                c.param,
                "GigaChat (it has no response formats)",
            ));
        }
        let (functions, function_call) = match &req.tools {
            Some(tools) => {
                let (f, c) = functions(tools)?;
                (Some(f), Some(c))
            }
            None => (None, None),
        };
        let unsupported = [
            ("top_k", *top_k != 0),
            ("min_p", *min_p != 0.0),
            ("presence_penalty", *presence_penalty != 0.0),
            ("frequency_penalty", *frequency_penalty != 0.0),
            ("seed", seed.is_some()),
            ("stop", !stop_strings.is_empty()),
            ("ignore_eos", *ignore_eos),
        ];
        if let Some((param, _)) = unsupported.iter().find(|(_, used)| *used) {
            return Err(ProviderError::Unsupported {
                param: (*param).into(),
                message: format!("`{param}` is not supported by GigaChat"),
            });
        }
        Ok(Self {
            model: &req.upstream_model,
            messages: giga_messages(req)?,
            temperature: temperature.max(MIN_TEMPERATURE),
            top_p: *top_p,
            n: req.n,
            stream: req.stream,
            max_tokens: *max_tokens,
            repetition_penalty: *repetition_penalty,
            functions,
            function_call,
        })
    }
}

/// GigaChat's finish reasons: OpenAI's names, plus `blacklist` when its
/// censor replaced the answer (with a canned refusal): the client must see
/// `content_filter`, and the answer is never cached.
fn finish_reason(wire: &str) -> FinishReason {
    match wire {
        "blacklist" => FinishReason::ContentFilter,
        // Its call: one `function_call`, mapped to a tool call upstream of here.
        other => super::answer::finish_reason(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use sluice_models::{ChatMessage, ToolCall};

    use crate::validate::FunctionSpec;

    fn request(choice: ToolChoice, calls: usize) -> ProviderRequest {
        let mut asked = ChatMessage::text("assistant", "");
        asked.tool_calls = (0..calls)
            .map(|i| ToolCall {
                id: format!("call_{i}"),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            })
            .collect();
        let mut result = ChatMessage::text("tool", "sunny");
        result.tool_call_id = Some("call_0".into());
        ProviderRequest {
            upstream_model: "GigaChat".into(),
            messages: vec![ChatMessage::text("user", "Weather?"), asked, result],
            sampling: crate::providers::neutral_sampling(),
            n: 1,
            stream: false,
            tools: Some(Tools {
                functions: vec![FunctionSpec {
                    name: "get_weather".into(),
                    description: None,
                    parameters: None,
                    strict: false,
                }],
                choice,
                parallel: true,
            }),
            traceparent: None,
        }
    }

    #[test]
    fn tools_become_functions_and_tool_turns_function_turns() {
        let named = request(ToolChoice::Function("get_weather".into()), 1);
        let body = serde_json::to_value(ChatBody::new(&named).unwrap()).unwrap();
        assert_eq!(
            body["function_call"],
            serde_json::json!({"name": "get_weather"})
        );
        assert_eq!(body["functions"][0]["name"], "get_weather");
        assert_eq!(body["functions"][0]["parameters"]["type"], "object");
        let m = &body["messages"];
        assert_eq!(
            m[1]["function_call"]["arguments"],
            serde_json::json!({"city": "Paris"})
        );
        assert_eq!(m[2]["role"], "function");
        assert_eq!(m[2]["name"], "get_weather");
        assert_eq!(m[2]["content"], r#"{"result":"sunny"}"#);
        let auto = request(ToolChoice::Auto, 1);
        let body = serde_json::to_value(ChatBody::new(&auto).unwrap()).unwrap();
        assert_eq!(body["function_call"], "auto");
    }

    #[test]
    fn required_and_parallel_calls_are_refused_not_dropped() {
        for (req, param) in [
            (request(ToolChoice::Required, 1), "tool_choice"),
            (request(ToolChoice::Auto, 2), "messages"),
        ] {
            match ChatBody::new(&req) {
                Err(ProviderError::Unsupported { param: p, .. }) => assert_eq!(p, param),
                other => panic!("{:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn blacklist_is_reported_as_content_filter() {
        assert_eq!(finish_reason("blacklist"), FinishReason::ContentFilter);
        assert_eq!(finish_reason("length"), FinishReason::Length);
        assert_eq!(finish_reason("stop"), FinishReason::Stop);
    }
}
