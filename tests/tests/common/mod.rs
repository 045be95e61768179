//! Helpers shared by the end-to-end test files (each file is its own crate,
//! so not every file uses every helper).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessageArgs,
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs, FinishReason,
};
use async_openai::Client;
use serde_json::Value;
use sluice_tests::{Server, DEMO_MODEL_ID};

/// A plain reqwest client. The gateway (a dev-dependency) turns on reqwest's
/// `rustls-no-provider` feature, so a crypto provider must be installed
/// before any client is built, even one that only speaks plain HTTP.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A greedy chat answer to `prompt` under a short system prompt, through
/// the SDK: (text, finish reason).
pub async fn greedy_text(
    server: &Server,
    prompt: &str,
    max_tokens: u32,
) -> (String, Option<FinishReason>) {
    let req = CreateChatCompletionRequestArgs::default()
        .model(DEMO_MODEL_ID)
        .messages([system("You are a concise assistant."), user(prompt)])
        .temperature(0.0)
        .max_completion_tokens(max_tokens)
        .build()
        .unwrap();
    let resp = openai(server, "none").chat().create(req).await.unwrap();
    let choice = &resp.choices[0];
    (
        choice.message.content.clone().unwrap_or_default(),
        choice.finish_reason,
    )
}

/// An OpenAI SDK client pointed at `server`.
pub fn openai(server: &Server, key: &str) -> Client<OpenAIConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(server.api_base())
            .with_api_key(key),
    )
}

pub fn system(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestSystemMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

pub fn user(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

/// A raw HTTP answer.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts an OpenAI error object with this status; returns `error`.
    pub fn expect_error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        let v = self.json();
        let err = v["error"].clone();
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(err["type"].is_string(), "{v}");
        assert!(
            err.get("param").is_some() && err.get("code").is_some(),
            "{v}"
        );
        err
    }
}

/// Sends `method` to `path` with an optional bearer key, extra headers and
/// an optional raw body (sent as JSON).
pub async fn request(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<reqwest::Body>,
) -> Reply {
    let mut req = http_client().request(method, format!("{}{path}", server.base_url()));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body);
    }
    let resp = req.send().await.expect("send");
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.expect("body"),
    }
}

/// POSTs `body` (raw text) to `path` with an optional bearer key.
pub async fn post_raw(
    server: &Server,
    path: &str,
    body: impl Into<reqwest::Body>,
    key: Option<&str>,
) -> Reply {
    let body = Some(body.into());
    request(server, reqwest::Method::POST, path, key, &[], body).await
}

pub async fn post(server: &Server, path: &str, body: &Value) -> Reply {
    post_raw(server, path, body.to_string(), None).await
}

pub async fn get(server: &Server, path: &str, key: Option<&str>) -> Reply {
    request(server, reqwest::Method::GET, path, key, &[], None).await
}

/// The `data:` payloads of an SSE body, checking the framing on the way:
/// every event is exactly one `data: ...` line followed by a blank line.
pub fn sse_events(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body must end with a blank line: {body:?}"
    );
    body.trim_end_matches("\n\n")
        .split("\n\n")
        .map(|event| {
            let data = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event is not `data: ...`: {event:?}"));
            assert!(!data.contains('\n'), "one line per event: {event:?}");
            data.to_string()
        })
        .collect()
}

/// The tokenizer of the demo model, to count tokens as the server does.
pub fn demo_tokenizer() -> sluice_models::Tokenizer {
    let gguf = sluice_models::gguf::GgufFile::open(&sluice_tests::demo_model_path()).unwrap();
    sluice_models::Tokenizer::from_gguf(&gguf).unwrap()
}

/// (event name, data) of each SSE event, checking Anthropic's framing: an
/// `event:` line, one `data:` line whose `type` is the event's name.
pub fn anthropic_events(body: &str) -> Vec<(String, Value)> {
    assert!(body.ends_with("\n\n"), "{body:?}");
    body.trim_end_matches("\n\n")
        .split("\n\n")
        .map(|event| {
            let mut lines = event.lines();
            let name = lines
                .next()
                .and_then(|l| l.strip_prefix("event: "))
                .unwrap_or_else(|| panic!("no event line: {event:?}"));
            let data = lines
                .next()
                .and_then(|l| l.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("no data line: {event:?}"));
            assert!(lines.next().is_none(), "one data line: {event:?}");
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["type"], name, "{event}");
            (name.to_string(), data)
        })
        .collect()
}
