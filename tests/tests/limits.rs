//! A server with API keys (from the environment) and room for exactly one
//! sequence: keys are enforced, a full engine answers 429 with Retry-After
//! at once, and a client that disconnects mid-stream frees its sequence.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{get, openai, post_raw};
use serde_json::json;
use sluice_tests::{Server, ServerOptions, DEMO_MODEL_ID};

const KEY: &str = "sk-test-0123456789";

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        Server::start(ServerOptions {
            config: Some(
                r#"
                [[models]]
                id = "smollm2-135m-instruct"
                path = "{DEMO_MODEL}"
                [models.engine]
                max_num_seqs = 1
                max_waiting = 0
                "#
                .into(),
            ),
            env: vec![("SLUICE_API_KEYS".into(), format!("tester:{KEY}"))],
            args: Vec::new(),
        })
    })
}

fn long_stream_body() -> String {
    json!({
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 400, "ignore_eos": true, "stream": true,
    })
    .to_string()
}

fn short_body() -> String {
    json!({
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
    })
    .to_string()
}

#[tokio::test]
async fn missing_or_wrong_key_is_401() {
    let err = get(server(), "/v1/models", None).await.expect_error(401);
    assert_eq!(err["code"], "invalid_api_key");
    let err = get(server(), "/v1/models", Some("sk-wrong"))
        .await
        .expect_error(401);
    assert_eq!(err["code"], "invalid_api_key");
    assert!(
        !err["message"].as_str().unwrap().contains("sk-wrong"),
        "never echo a key"
    );
    let reply = post_raw(
        server(),
        "/v1/chat/completions",
        short_body(),
        Some("sk-wrong"),
    )
    .await;
    reply.expect_error(401);
    // Probes need no key.
    assert_eq!(get(server(), "/health", None).await.status, 200);
    assert_eq!(get(server(), "/ready", None).await.status, 200);
    // The SDK with the right key gets through.
    let list = openai(server(), KEY).models().list().await.unwrap();
    assert_eq!(list.data[0].id, DEMO_MODEL_ID);
    assert!(
        !server().logs().contains(KEY),
        "the key never reaches the log"
    );
}

#[tokio::test]
async fn full_engine_answers_429_and_a_disconnect_frees_the_sequence() {
    // Occupy the only sequence with a long stream, and wait for its first token.
    let mut stream = common::http_client()
        .post(format!("{}/v1/chat/completions", server().base_url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(long_stream_body())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || seen.matches("data: ").count() < 3 {
        let chunk = stream.chunk().await.unwrap().expect("the stream goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }

    // No room: refused at once, with a hint when to retry.
    let reply = post_raw(server(), "/v1/chat/completions", short_body(), Some(KEY)).await;
    let err = reply.expect_error(429);
    assert_eq!(err["type"], "rate_limit_error");
    let retry_after: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);

    // The client goes away mid-stream; its sequence is cancelled and freed.
    drop(stream);
    let started = Instant::now();
    loop {
        let reply = post_raw(server(), "/v1/chat/completions", short_body(), Some(KEY)).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 429, "{}", reply.body);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the cancelled sequence was never freed:\n{}",
            server().logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The engine publishes its load after each step, which may be a moment
    // after the last answer went out.
    let started = Instant::now();
    loop {
        let ready = get(server(), "/ready", None).await.json();
        let model = &ready["models"][0];
        if model["running"] == 0 && model["waiting"] == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a sequence was left behind: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server().logs().contains("client went away mid-stream"));
}
