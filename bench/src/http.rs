//! The HTTP side shared by `load` and `llama-cpp`: POST a JSON body and read
//! the answer either whole or as server-sent events, stamping each event with
//! the moment its bytes arrived.

use std::time::Instant;

use reqwest::Client;
use serde_json::Value;

use crate::sse::SseReader;

/// Why a request failed, in a form that groups well in an error count.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The server answered with a non-2xx status.
    Status { code: u16, body: String },
    /// Connecting, sending or reading failed.
    Transport(String),
    /// The answer was not what the protocol promises (bad JSON, an error event).
    Protocol(String),
}

impl Failure {
    /// The key errors are counted by: `http 429`, `transport`, `protocol`.
    pub fn kind(&self) -> String {
        match self {
            Self::Status { code, .. } => format!("http {code}"),
            Self::Transport(_) => "transport".into(),
            Self::Protocol(_) => "protocol".into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status { code, body } => write!(f, "HTTP {code}: {body}"),
            Self::Transport(e) => write!(f, "transport: {e}"),
            Self::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

fn transport(e: reqwest::Error) -> Failure {
    // The chain names the real cause (connection refused, reset, ...).
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Failure::Transport(msg)
}

fn request(
    client: &Client,
    url: &str,
    body: &Value,
    api_key: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    if let Some(key) = api_key {
        req = req.header(reqwest::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    req
}

async fn send(
    client: &Client,
    url: &str,
    body: &Value,
    api_key: Option<&str>,
) -> Result<reqwest::Response, Failure> {
    let resp = request(client, url, body, api_key)
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let body: String = text.chars().take(300).collect();
        return Err(Failure::Status {
            code: status.as_u16(),
            body,
        });
    }
    Ok(resp)
}

/// POSTs `body` and parses the whole answer as JSON.
pub async fn post_json(
    client: &Client,
    url: &str,
    body: &Value,
    api_key: Option<&str>,
) -> Result<Value, Failure> {
    let resp = send(client, url, body, api_key).await?;
    let bytes = resp.bytes().await.map_err(transport)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Failure::Protocol(format!("response is not JSON: {e}")))
}

/// What to do after an event.
pub enum Flow {
    Continue,
    /// The protocol's last event came (`[DONE]`, llama.cpp's `stop: true`).
    Done,
}

/// POSTs `body` and hands each SSE `data:` payload, with its arrival time, to
/// `on_event` until it says [`Flow::Done`] or the stream ends.
pub async fn post_sse(
    client: &Client,
    url: &str,
    body: &Value,
    api_key: Option<&str>,
    mut on_event: impl FnMut(&str, Instant) -> Result<Flow, Failure>,
) -> Result<(), Failure> {
    let mut resp = send(client, url, body, api_key).await?;
    let mut reader = SseReader::default();
    let mut events = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        let at = Instant::now();
        reader.push(&chunk, &mut events);
        for e in events.drain(..) {
            if let Flow::Done = on_event(&e, at)? {
                return Ok(());
            }
        }
    }
    let at = Instant::now();
    reader.finish(&mut events);
    for e in events.drain(..) {
        if let Flow::Done = on_event(&e, at)? {
            return Ok(());
        }
    }
    Ok(())
}

/// GETs `url` and returns the status code, or `None` when nothing answers.
pub async fn get_status(client: &Client, url: &str) -> Option<u16> {
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// GETs `url` as JSON.
pub async fn get_json(client: &Client, url: &str, api_key: Option<&str>) -> Result<Value, Failure> {
    let mut req = client.get(url);
    if let Some(key) = api_key {
        req = req.header(reqwest::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let resp = req.send().await.map_err(transport)?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(transport)?;
    if !status.is_success() {
        return Err(Failure::Status {
            code: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
        });
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| Failure::Protocol(format!("response is not JSON: {e}")))
}
