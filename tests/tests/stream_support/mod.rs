//! What the stream analysers' end-to-end files share: a fake
//! OpenAI-compatible upstream that streams its answer three characters per
//! chunk (and, when told, goes on for ever, noting when the gateway drops
//! the connection), servers in front of it or of the demo model, and a raw
//! socket reader.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::stream;
use serde_json::{json, Value};
use sluice_tests::{cloud_route_config, Server, ServerOptions, DEMO_MODEL_ID};

use super::common::sse_events;

/// What the fake answers, and what it saw.
#[derive(Default)]
pub struct FakeState {
    pub reply: Mutex<String>,
    /// After the reply, " more" every few milliseconds until the client
    /// goes away.
    pub endless: AtomicBool,
    pub requests: AtomicUsize,
    /// Set when a stream's body was dropped before it ended: the gateway
    /// closed the connection.
    pub disconnected: AtomicBool,
}

pub struct Fake {
    pub base_url: String,
    pub state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn fake(reply: &str, endless: bool) -> Fake {
    let state = Arc::new(FakeState::default());
    *state.reply.lock().unwrap() = reply.to_string();
    state.endless.store(endless, Ordering::SeqCst);
    let router = axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Fake {
        base_url: format!("http://{addr}/v1"),
        state,
        task,
    }
}

/// Sets the fake's flag when the response body is dropped unfinished.
struct DisconnectGuard {
    state: Arc<FakeState>,
    finished: bool,
}

impl DisconnectGuard {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.state.disconnected.store(true, Ordering::SeqCst);
        }
    }
}

fn chunk(content: Option<&str>, finish: Option<&str>) -> String {
    let delta = match content {
        Some(c) => json!({"content": c}),
        None => json!({}),
    };
    let chunk = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
        "model": "fake", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {chunk}\n\n")
}

async fn chat(State(state): State<Arc<FakeState>>, body: Bytes) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = state.reply.lock().unwrap().clone();
    let usage = json!({"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20});
    if body["stream"].as_bool() != Some(true) {
        return axum::Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let chars: Vec<char> = reply.chars().collect();
    let pieces: Vec<String> = chars.chunks(3).map(|p| p.iter().collect()).collect();
    let endless = state.endless.load(Ordering::SeqCst);
    let guard = DisconnectGuard {
        state: state.clone(),
        finished: false,
    };
    // (guard, next piece index): the guard lives as long as the body.
    let events = stream::unfold((guard, 0usize), move |(mut guard, i)| {
        let pieces = pieces.clone();
        async move {
            if i < pieces.len() {
                return Some((
                    Ok::<_, Infallible>(chunk(Some(&pieces[i]), None)),
                    (guard, i + 1),
                ));
            }
            if endless {
                tokio::time::sleep(Duration::from_millis(5)).await;
                return Some((Ok(chunk(Some(" more"), None)), (guard, i + 1)));
            }
            if i == pieces.len() {
                return Some((
                    Ok(format!("{}data: [DONE]\n\n", chunk(None, Some("stop")))),
                    (guard, i + 1),
                ));
            }
            guard.finish();
            None
        }
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(events),
    )
        .into_response()
}

/// A server in front of `fake` (model `chat`), with `extra` config.
pub async fn provider_server(fake: &Fake, extra: &str) -> Server {
    Server::spawn(ServerOptions {
        config: Some(cloud_route_config(extra, &fake.base_url)),
        ..ServerOptions::default()
    })
    .await
}

/// The response to `body` as the bytes a raw socket reads (HTTP/1.1,
/// `Connection: close`), de-chunked: (head, body).
pub async fn raw_post(server: &Server, path: &str, body: &Value) -> (String, String) {
    use std::io::{Read, Write};
    let body = body.to_string();
    let addr = server.addr;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let raw = tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        socket.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        socket.read_to_end(&mut raw).unwrap();
        raw
    })
    .await
    .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (head.to_string(), rest.to_string());
    }
    let mut body = String::new();
    let mut rest = rest;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    (head.to_string(), body)
}

/// Content deltas (concatenated), the finish chunks' choices, and whether
/// the stream ended with `[DONE]`.
pub fn read_stream(body: &str) -> (String, Vec<Value>, bool) {
    let events = sse_events(body);
    let done = events.last().map(String::as_str) == Some("[DONE]");
    let mut text = String::new();
    let mut finishes = Vec::new();
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        for choice in v["choices"].as_array().into_iter().flatten() {
            if let Some(t) = choice["delta"]["content"].as_str() {
                text.push_str(t);
            }
            if let Some(t) = choice["text"].as_str() {
                text.push_str(t);
            }
            if !choice["finish_reason"].is_null() {
                finishes.push(choice.clone());
            }
        }
    }
    (text, finishes, done)
}

pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..600 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} never happened");
}

/// A server with the demo model and `extra` config.
pub async fn local_server(extra: String) -> Server {
    let config =
        format!("[[models]]\nid = \"{DEMO_MODEL_ID}\"\npath = \"{{DEMO_MODEL}}\"\n\n{extra}");
    tokio::task::spawn_blocking(move || {
        Server::start(ServerOptions {
            config: Some(config),
            ..ServerOptions::default()
        })
    })
    .await
    .unwrap()
}
