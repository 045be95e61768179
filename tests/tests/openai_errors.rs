//! Bad input through the OpenAI-compatible API of the real binary: each gets
//! the right 4xx in OpenAI's error shape, naming the parameter, and the
//! server keeps answering. One server is shared by every test in this file.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;

use async_openai::types::chat::CreateChatCompletionRequestArgs;
use common::{greedy_text, openai, post, post_raw, user};
use serde_json::{json, Value};
use sluice_tests::{Server, DEMO_MODEL_ID};

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start_default)
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": "hi"}],
                          "max_tokens": 2});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn chat_error(extra: Value, status: u16) -> Value {
    post(server(), "/v1/chat/completions", &chat_body(extra))
        .await
        .expect_error(status)
}

#[tokio::test]
async fn malformed_json_is_400() {
    let reply = post_raw(server(), "/v1/chat/completions", "{\"model\": ", None).await;
    let err = reply.expect_error(400);
    assert_eq!(err["type"], "invalid_request_error");
    assert!(err["param"].is_null());
}

#[tokio::test]
async fn wrong_types_are_400_naming_the_param() {
    for (extra, param) in [
        (json!({"temperature": "hot"}), "temperature"),
        (json!({"max_tokens": "ten"}), "max_tokens"),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (json!({"messages": "hello"}), "messages"),
        (json!({"stream": "yes"}), "stream"),
    ] {
        let err = chat_error(extra.clone(), 400).await;
        assert_eq!(err["param"], param, "{extra}: {err}");
    }
}

#[tokio::test]
async fn empty_messages_are_400() {
    let err = chat_error(json!({"messages": []}), 400).await;
    assert_eq!(err["param"], "messages");
}

#[tokio::test]
async fn negative_max_tokens_is_400() {
    let err = chat_error(json!({"max_tokens": -5}), 400).await;
    assert_eq!(err["param"], "max_tokens");
}

#[tokio::test]
async fn temperature_five_is_400_through_the_sdk_too() {
    let err = chat_error(json!({"temperature": 5}), 400).await;
    assert_eq!(err["param"], "temperature");
    let req = CreateChatCompletionRequestArgs::default()
        .model(DEMO_MODEL_ID)
        .messages([user("hi")])
        .temperature(5.0)
        .build()
        .unwrap();
    match openai(server(), "none").chat().create(req).await {
        Err(async_openai::error::OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 400);
            assert_eq!(e.api_error.param.as_deref(), Some("temperature"));
            assert_eq!(e.api_error.r#type.as_deref(), Some("invalid_request_error"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found() {
    let err = chat_error(json!({"model": "gpt-17"}), 404).await;
    assert_eq!(err["code"], "model_not_found");
}

#[tokio::test]
async fn oversized_body_is_413() {
    // The default limit is 2 MiB.
    let content = "a".repeat(3 << 20);
    let body = chat_body(json!({"messages": [{"role": "user", "content": content}]}));
    let reply = post_raw(server(), "/v1/chat/completions", body.to_string(), None).await;
    let err = reply.expect_error(413);
    assert_eq!(err["code"], "request_too_large");
}

#[tokio::test]
async fn unsupported_features_are_400_not_ignored() {
    for (extra, param) in [
        (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
        (json!({"made_up_field": 1}), "made_up_field"),
    ] {
        let err = chat_error(extra.clone(), 400).await;
        assert_eq!(err["param"], param, "{extra}: {err}");
    }
    // Supported since structured output, but not with these values.
    for (extra, param) in [
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format",
        ),
        (json!({"logit_bias": {"42": 500}}), "logit_bias"),
    ] {
        let err = chat_error(extra.clone(), 400).await;
        let named = err["param"].as_str().unwrap_or_default();
        assert!(named.starts_with(param), "{extra}: {err}");
    }
}

#[tokio::test]
async fn out_of_range_numbers_are_400() {
    for (extra, param) in [
        (json!({"top_p": 0}), "top_p"),
        (json!({"n": 0}), "n"),
        (json!({"presence_penalty": 9}), "presence_penalty"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": 100000}), "max_tokens"),
        (
            json!({"logprobs": true, "top_logprobs": 50}),
            "top_logprobs",
        ),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
    ] {
        let err = chat_error(extra.clone(), 400).await;
        assert_eq!(err["param"], param, "{extra}: {err}");
    }
}

#[tokio::test]
async fn unknown_url_is_404_in_openai_shape() {
    let err = post(server(), "/v1/embeddingz", &json!({}))
        .await
        .expect_error(404);
    assert_eq!(err["code"], "unknown_url");
}

#[tokio::test]
async fn bad_input_leaves_the_server_answering() {
    // A burst of garbage, then a normal request still gets its answer.
    for body in ["", "null", "[]", "{\"messages\": [{}]}", "\u{0}\u{1}"] {
        let reply = post_raw(server(), "/v1/chat/completions", body, None).await;
        assert_eq!(reply.status, 400, "{body:?}: {}", reply.body);
    }
    let (text, _) = greedy_text(server(), "What is the capital of France?", 12).await;
    assert!(text.contains("Paris"), "{text:?}");
}
