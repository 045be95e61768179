//! PII end to end: the real `sluice` binary in front of a fake
//! OpenAI-compatible cloud upstream that answers with the user's message
//! as it received it, three bytes per stream chunk, so every placeholder
//! it got comes back split across chunks. `[pii]` pseudonymizes e-mail
//! addresses and phones, masks cards, blocks SNILS.
//!
//! What must hold: the upstream never sees a raw value (only placeholders
//! and masks); each of 100 concurrent clients gets its own values back,
//! never another's; a blocked kind is a 400 `content_policy_violation`
//! that names the kind and never reaches the upstream; the headers and the
//! metrics say what was done.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{json, Value};
use sluice_tests::{cloud_route_config, Server, ServerOptions};

use common::{post as post_json, sse_events, Reply};

const ADMIN: &str = "pii-admin-key-0123456789abcdef";

/// Every body the fake received, as text.
#[derive(Default)]
struct Seen {
    bodies: Mutex<Vec<String>>,
}

struct EchoFake {
    base_url: String,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_fake() -> EchoFake {
    let seen = Arc::new(Seen::default());
    let router = axum::Router::new()
        .route("/v1/chat/completions", post(echo))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    EchoFake {
        base_url: format!("http://{addr}/v1"),
        seen,
        task,
    }
}

/// Answers with the last user message, whole or in chunks of 3 bytes.
async fn echo(State(seen): State<Arc<Seen>>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    seen.bodies.lock().unwrap().push(text);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let usage = json!({"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20});
    if body["stream"].as_bool() != Some(true) {
        return axum::Json(json!({
            "id": "chatcmpl-echo", "object": "chat.completion", "created": 0, "model": "echo",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let mut events = String::new();
    let chars: Vec<char> = reply.chars().collect();
    for piece in chars.chunks(3) {
        let piece: String = piece.iter().collect();
        let chunk = json!({"id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": 0, "model": "echo",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        events.push_str(&format!("data: {chunk}\n\n"));
    }
    let last = json!({"id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": 0, "model": "echo",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage});
    events.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from(events),
    )
        .into_response()
}

async fn start(fake: &EchoFake) -> Server {
    let extra = r#"
[cache]
enabled = true

[admin]
key_env = "ADMIN_KEY"

[pii]
enabled = true
[pii.actions]
email = "pseudonymize"
phone = "pseudonymize"
card = "mask"
snils = "block"
"#;
    Server::spawn(ServerOptions {
        config: Some(cloud_route_config(extra, &fake.base_url)),
        env: vec![("ADMIN_KEY".into(), ADMIN.into())],
        ..ServerOptions::default()
    })
    .await
}

fn body(content: &str, stream: bool) -> Value {
    json!({
        "model": "chat",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "stream": stream,
    })
}

fn text_of(reply: &Reply, stream: bool) -> String {
    assert_eq!(reply.status, 200, "{}", reply.body);
    if !stream {
        return reply.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
    }
    let events = sse_events(&reply.body);
    let mut text = String::new();
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    text
}

fn header_of<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
}

/// Client `i`'s own values.
fn values(i: usize) -> (String, String) {
    (
        format!("client{i}.x@corp{i}.example.ru"),
        format!("+7 912 {i:03}-45-67"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_clients_get_their_own_values_back_and_the_cloud_sees_none() {
    let fake = echo_fake().await;
    let server = Arc::new(start(&fake).await);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let (email, phone) = values(i);
            let content = format!(
                "Client {i}: write to {email}, call {phone}, again {email}; card 4111 1111 1111 1111."
            );
            let stream = i % 2 == 0;
            let reply = post_json(&server, "/v1/chat/completions", &body(&content, stream)).await;
            (i, stream, reply)
        }));
    }
    for task in tasks {
        let (i, stream, reply) = task.await.unwrap();
        let (email, phone) = values(i);
        let text = text_of(&reply, stream);
        assert_eq!(
            text,
            format!("Client {i}: write to {email}, call {phone}, again {email}; card [CARD]."),
            "client {i} (stream {stream})"
        );
        for other in (0..100).filter(|j| *j != i) {
            let (e, _) = values(other);
            assert!(!text.contains(&e), "client {i} got client {other}'s value");
        }
        assert_eq!(
            header_of(&reply, "x-sluice-pii"),
            "masked=card; pseudonymized=email,phone"
        );
        // Values kept for restoring are never cached.
        assert_eq!(header_of(&reply, "x-sluice-cache"), "bypass");
    }
    let bodies = fake.seen.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 100);
    for b in &bodies {
        assert!(
            !b.contains("example.ru") && !b.contains("912"),
            "raw value upstream: {b}"
        );
        assert!(!b.contains("4111"), "masked value upstream: {b}");
        assert!(
            b.contains("<PII_EMAIL_1>") && b.contains("<PII_PHONE_1>") && b.contains("[CARD]"),
            "{b}"
        );
        assert_eq!(
            b.matches("<PII_EMAIL_1>").count(),
            2,
            "equal values, one placeholder: {b}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_kind_is_refused_before_the_upstream_and_counted() {
    let fake = echo_fake().await;
    let server = start(&fake).await;
    let reply = post_json(
        &server,
        "/v1/chat/completions",
        &body("мой СНИЛС 112-233-445 95, проверь", false),
    )
    .await;
    let error = reply.expect_error(400);
    assert_eq!(error["code"], "content_policy_violation");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("snils"), "{message}");
    assert!(!message.contains("445"), "{message}");
    assert_eq!(error["param"], "messages[0].content");
    // A checksum-invalid number is not SNILS: answered, and it reaches the
    // upstream as written.
    let reply = post_json(
        &server,
        "/v1/chat/completions",
        &body("номер 112-233-445 96", false),
    )
    .await;
    assert_eq!(text_of(&reply, false), "номер 112-233-445 96");
    assert_eq!(header_of(&reply, "x-sluice-pii"), "(none)");
    let bodies = fake.seen.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "the blocked request never left");
    let metrics = common::get(&server, "/metrics", Some(ADMIN)).await;
    assert!(
        metrics.body.contains("sluice_pii_detections_total{")
            && metrics.body.contains("entity=\"snils\""),
        "{}",
        metrics.body
    );
}
