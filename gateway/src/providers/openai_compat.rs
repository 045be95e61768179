//! Any OpenAI-compatible upstream: OpenAI, an external vLLM, Qwen through
//! DashScope's compatible mode, Ollama, another Sluice. It owns OpenAI's
//! chat request types; its answers are read by [`super::openai_answer`],
//! which GigaChat's API shares.
//!
//! `tools`, `tool_choice`, `parallel_tool_calls` and `response_format` are
//! passed through as the client sent them (rebuilt from the validated
//! request); a vLLM upstream (`dialect = "vllm"`) also takes a regex or
//! Lark grammar as `guided_regex` / `guided_grammar`. An assistant turn's
//! calls and a `tool` turn's `tool_call_id` go back in OpenAI's shapes.
//!
//! Design choice: a stream always asks for `stream_options.include_usage`,
//! so cost is known for streams too; sampling knobs beyond OpenAI's own
//! (`top_k`, `min_p`, `repetition_penalty`, `ignore_eos`) are sent only when
//! the client changed them from their neutral value, as the vLLM/Sluice
//! extensions they are, so a plain OpenAI upstream never sees them unless the
//! client asked (and then its 400 is the honest answer). Token-level knobs
//! (`stop_token_ids`, `logprobs`) are refused: ids and log-probabilities of
//! another tokenizer mean nothing to the client.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::Value;
use sluice_runtime::GrammarSpec;

use super::answer::finish_reason;
use super::messages::{turns, Turn};
use super::openai_answer::read_chat_response;
use super::secret::read_secret;
use super::{
    http_client, request_error, sensitive_header, Provider, ProviderConfig, ProviderError,
    ProviderRequest,
};
use crate::answer::BoxAnswer;
use crate::config::{OpenAiDialect, Secret};
use crate::validate::{Constraint, Sampling, Tools};

pub struct OpenAiCompat {
    client: reqwest::Client,
    /// `{base_url}/chat/completions`, built once.
    url: reqwest::Url,
    /// Only for `Debug` (redacted); the client sends it as a default header.
    api_key: Option<Secret>,
    /// Which extensions the upstream takes (grammars for vLLM).
    dialect: OpenAiDialect,
    connect_timeout: Duration,
}

impl fmt::Debug for OpenAiCompat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiCompat")
            .field("url", &self.url.as_str())
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

impl OpenAiCompat {
    pub fn from_config(cfg: &ProviderConfig) -> Result<Self, ProviderError> {
        let ProviderConfig::Openai {
            name: _,
            base_url,
            api_key_env,
            api_key_file,
            headers,
            dialect,
            resilience,
        } = cfg
        else {
            return Err(ProviderError::Config("not an openai provider".into()));
        };
        // Ollama and a local vLLM take no key.
        let api_key = if api_key_env.is_none() && api_key_file.is_none() {
            None
        } else {
            Some(read_secret(
                ("api_key_env", "api_key_file"),
                api_key_env.as_deref(),
                api_key_file.as_deref(),
            )?)
        };
        let mut header_map = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::try_from(k.as_str())
                .map_err(|e| ProviderError::Config(format!("headers: `{k}`: {e}")))?;
            let value = HeaderValue::try_from(v.as_str())
                .map_err(|e| ProviderError::Config(format!("headers: `{k}`: {e}")))?;
            header_map.insert(name, value);
        }
        if let Some(key) = &api_key {
            header_map.insert(
                reqwest::header::AUTHORIZATION,
                sensitive_header(format!("Bearer {}", key.expose()))?,
            );
        }
        let connect_timeout = resilience.connect_timeout();
        Ok(Self {
            client: http_client(connect_timeout, None, header_map)?,
            url: super::endpoint(format!(
                "{}/chat/completions",
                base_url.trim_end_matches('/')
            ))?,
            api_key,
            dialect: *dialect,
            connect_timeout,
        })
    }

    async fn chat_inner(&self, req: &ProviderRequest) -> Result<BoxAnswer, ProviderError> {
        let body = ChatBody::new(req, self.dialect)?;
        let response = super::with_trace(self.client.post(self.url.clone()), req)
            .json(&body)
            .send()
            .await
            .map_err(|e| request_error(e, self.connect_timeout))?;
        read_chat_response(response, req, finish_reason).await
    }
}

impl Provider for OpenAiCompat {
    fn kind(&self) -> &'static str {
        "openai"
    }

    fn chat<'a>(
        &'a self,
        req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<BoxAnswer, ProviderError>> {
        Box::pin(self.chat_inner(req))
    }
}

#[derive(Serialize)]
pub(super) struct WireMessage<'a> {
    role: &'a str,
    /// `null` for an assistant turn that only called tools.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<WireCall<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
struct WireCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

/// The request's messages as OpenAI's: `{role, content}`, an assistant's
/// `tool_calls`, a `tool` turn's `tool_call_id`.
fn openai_messages(req: &ProviderRequest) -> Vec<WireMessage<'_>> {
    turns(&req.messages)
        .into_iter()
        .map(|turn| match turn {
            Turn::Text { role, text } => WireMessage {
                role,
                content: Some(text),
                tool_calls: None,
                tool_call_id: None,
            },
            Turn::Calls { text, calls } => WireMessage {
                role: "assistant",
                content: (!text.is_empty()).then_some(text),
                tool_calls: Some(
                    calls
                        .iter()
                        .map(|c| WireCall {
                            id: &c.id,
                            kind: "function",
                            function: WireFunction {
                                name: &c.name,
                                arguments: &c.arguments,
                            },
                        })
                        .collect(),
                ),
                tool_call_id: None,
            },
            Turn::Result { call_id, text, .. } => WireMessage {
                role: "tool",
                content: Some(text),
                tool_calls: None,
                tool_call_id: Some(call_id),
            },
        })
        .collect()
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<usize>,
    temperature: f32,
    top_p: f32,
    n: usize,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "is_zero")]
    presence_penalty: f32,
    #[serde(skip_serializing_if = "is_zero")]
    frequency_penalty: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repetition_penalty: Option<f32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ignore_eos: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    logit_bias: Option<serde_json::Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    /// Sent only when `false` (OpenAI's default is `true`, and some
    /// compatible servers refuse the field).
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    format: WireFormat<'a>,
}

/// How the output's shape is asked for: OpenAI's `response_format`, or
/// vLLM's `guided_regex` / `guided_grammar` (at most one: vLLM refuses two
/// kinds of guided decoding in one request).
#[derive(Serialize, Default)]
struct WireFormat<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guided_regex: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guided_grammar: Option<&'a str>,
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

impl<'a> ChatBody<'a> {
    fn new(req: &'a ProviderRequest, dialect: OpenAiDialect) -> Result<Self, ProviderError> {
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
        let format = match constraint {
            Some(c) => wire_format(c, dialect)?,
            None => WireFormat::default(),
        };
        Ok(Self {
            model: &req.upstream_model,
            messages: openai_messages(req),
            max_tokens: *max_tokens,
            temperature: *temperature,
            top_p: *top_p,
            n: req.n,
            stream: req.stream,
            stream_options: req.stream.then_some(StreamOptions {
                include_usage: true,
            }),
            stop: stop_strings,
            seed: *seed,
            presence_penalty: *presence_penalty,
            frequency_penalty: *frequency_penalty,
            top_k: (*top_k != 0).then_some(*top_k),
            min_p: (*min_p != 0.0).then_some(*min_p),
            repetition_penalty: (*repetition_penalty != 1.0).then_some(*repetition_penalty),
            ignore_eos: *ignore_eos,
            // The router sends biases only where the deployment says its
            // upstream shares the client's token ids.
            logit_bias: (!logit_bias.is_empty()).then(|| {
                logit_bias
                    .iter()
                    .map(|(id, bias)| (id.to_string(), Value::from(*bias)))
                    .collect()
            }),
            tools: req.tools.as_ref().map(Tools::to_wire),
            tool_choice: req.tools.as_ref().map(Tools::choice_to_wire),
            parallel_tool_calls: req
                .tools
                .as_ref()
                .and_then(|t| (!t.parallel).then_some(false)),
            format,
        })
    }
}

/// The name an upstream's `json_schema` gets: the validated request keeps
/// the schema but not the name the client gave it (which only labels it).
const SCHEMA_NAME: &str = "response";

/// A JSON format as OpenAI's `response_format` (YandexGPT's `jsonSchema`
/// takes the same schema value).
pub(super) fn schema_value(constraint: &Constraint, schema: &str) -> Result<Value, ProviderError> {
    serde_json::from_str(schema).map_err(|e| ProviderError::Unsupported {
        param: constraint.param.into(),
        message: format!("the schema in '{}' is not JSON: {e}", constraint.param),
    })
}

fn wire_format(
    constraint: &Constraint,
    dialect: OpenAiDialect,
) -> Result<WireFormat<'_>, ProviderError> {
    let mut format = WireFormat::default();
    match (&constraint.spec, dialect) {
        (GrammarSpec::JsonObject, _) => {
            format.response_format = Some(serde_json::json!({"type": "json_object"}));
        }
        (GrammarSpec::JsonSchema { schema, strict }, _) => {
            format.response_format = Some(serde_json::json!({
                "type": "json_schema",
                "json_schema": {
                    "name": SCHEMA_NAME,
                    "schema": schema_value(constraint, schema)?,
                    "strict": strict,
                }
            }));
        }
        (GrammarSpec::Regex(regex), OpenAiDialect::Vllm) => format.guided_regex = Some(regex),
        (GrammarSpec::Lark(lark), OpenAiDialect::Vllm) => format.guided_grammar = Some(lark),
        (GrammarSpec::Regex(_) | GrammarSpec::Lark(_), OpenAiDialect::Openai) => {
            return Err(ProviderError::Unsupported {
                param: constraint.param.into(),
                message: format!(
                    "'{}' needs a grammar, which an OpenAI upstream cannot be given \
                     (a vLLM one can: dialect = \"vllm\")",
                    constraint.param
                ),
            })
        }
    }
    Ok(format)
}

/// The knobs no upstream can honour for us.
pub(super) fn refuse_token_level(
    stop_token_ids: &[u32],
    logprobs: Option<usize>,
) -> Result<(), ProviderError> {
    if !stop_token_ids.is_empty() {
        return Err(ProviderError::Unsupported {
            param: "stop_token_ids".into(),
            message: "stop_token_ids are not supported by an upstream provider (its tokenizer \
                      differs); use `stop` strings"
                .into(),
        });
    }
    if logprobs.is_some() {
        return Err(ProviderError::Unsupported {
            param: "logprobs".into(),
            message: "logprobs are not supported by an upstream provider".into(),
        });
    }
    Ok(())
}

/// A provider's refusal of what its API has no field for: never dropped
/// silently (the router keeps such requests off it unless a config claims
/// the capability wrongly).
pub(super) fn unsupported(param: &str, provider: &str) -> ProviderError {
    ProviderError::Unsupported {
        param: param.into(),
        message: format!("'{param}' cannot be expressed to {provider}"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validate::{FunctionSpec, ToolChoice};
    use sluice_models::{ChatMessage, ToolCall};

    fn request(tools: Option<Tools>, constraint: Option<Constraint>) -> ProviderRequest {
        let mut asked = ChatMessage::text("assistant", "");
        asked.tool_calls = vec![ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }];
        let mut result = ChatMessage::text("tool", "sunny");
        result.tool_call_id = Some("call_1".into());
        ProviderRequest {
            upstream_model: "up".into(),
            messages: vec![ChatMessage::text("user", "Weather?"), asked, result],
            sampling: Sampling {
                constraint,
                ..crate::providers::neutral_sampling()
            },
            n: 1,
            stream: false,
            tools,
            traceparent: None,
        }
    }

    fn weather_tools(choice: ToolChoice, parallel: bool) -> Tools {
        Tools {
            functions: vec![FunctionSpec {
                name: "get_weather".into(),
                description: Some("Weather in a city".into()),
                parameters: Some(
                    json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                ),
                strict: false,
            }],
            choice,
            parallel,
        }
    }

    #[test]
    fn a_base_url_that_is_not_a_url_is_refused_at_start() {
        let config = |base_url: &str| ProviderConfig::Openai {
            name: "up".into(),
            base_url: base_url.into(),
            api_key_env: None,
            api_key_file: None,
            headers: Default::default(),
            dialect: OpenAiDialect::Openai,
            resilience: Default::default(),
        };
        let Err(ProviderError::Config(message)) = OpenAiCompat::from_config(&config("api/v1"))
        else {
            panic!("a relative base_url was accepted");
        };
        assert!(message.contains("api/v1/chat/completions"), "{message}");
        let up = OpenAiCompat::from_config(&config("http://127.0.0.1:9/v1/")).unwrap();
        assert_eq!(up.url.as_str(), "http://127.0.0.1:9/v1/chat/completions");
    }

    #[test]
    fn tools_tool_turns_and_formats_reach_the_body_as_openai_expects() {
        let constraint = Constraint {
            spec: GrammarSpec::JsonSchema {
                schema: r#"{"type":"object"}"#.into(),
                strict: true,
            },
            param: "response_format",
        };
        let req = request(
            Some(weather_tools(ToolChoice::Required, false)),
            Some(constraint),
        );
        let body =
            serde_json::to_value(ChatBody::new(&req, OpenAiDialect::Openai).unwrap()).unwrap();
        assert_eq!(body["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(body["tool_choice"], "required");
        assert_eq!(body["parallel_tool_calls"], false);
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(
            body["response_format"]["json_schema"]["schema"],
            json!({"type": "object"})
        );
        assert_eq!(body["response_format"]["json_schema"]["strict"], true);
        let m = &body["messages"];
        assert_eq!(m[1]["content"], Value::Null);
        assert_eq!(m[1]["tool_calls"][0]["id"], "call_1");
        assert_eq!(m[1]["tool_calls"][0]["type"], "function");
        assert_eq!(
            m[1]["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(m[2]["role"], "tool");
        assert_eq!(m[2]["tool_call_id"], "call_1");
        assert!(body.get("guided_regex").is_none());

        let plain = request(Some(weather_tools(ToolChoice::Auto, true)), None);
        let body =
            serde_json::to_value(ChatBody::new(&plain, OpenAiDialect::Openai).unwrap()).unwrap();
        assert_eq!(body["tool_choice"], "auto");
        assert!(body.get("parallel_tool_calls").is_none());
        assert!(body.get("response_format").is_none());
    }

    #[test]
    fn a_grammar_goes_to_vllm_as_guided_and_is_refused_by_openai() {
        let regex = Constraint {
            spec: GrammarSpec::Regex("[0-9]+".into()),
            param: "guided_regex",
        };
        let req = request(None, Some(regex));
        let body = serde_json::to_value(ChatBody::new(&req, OpenAiDialect::Vllm).unwrap()).unwrap();
        assert_eq!(body["guided_regex"], "[0-9]+");
        assert!(body.get("response_format").is_none());
        match ChatBody::new(&req, OpenAiDialect::Openai) {
            Err(ProviderError::Unsupported { param, .. }) => assert_eq!(param, "guided_regex"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
