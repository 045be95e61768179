//! The OpenAI-compatible fake (`POST /v1/chat/completions`), and the chat
//! answer it shares with the GigaChat fake (whose chat API has the same
//! shapes, with usage in its last chunk instead of a separate one).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{json, Value};

use super::{
    json_response, prompt_tokens, stream_body, unix_secs, whole_response_fault, word_chunks,
    FakeControl, FakeServer, Fault, Frame, FILTERED_WORDS, GIGACHAT_BLACKLIST_REPLY,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavour {
    OpenAi,
    GigaChat,
}

struct OpenAiState {
    control: Arc<FakeControl>,
    api_key: Option<String>,
}

/// Starts the fake; with `api_key`, requests without `Authorization: Bearer
/// <api_key>` get a 401.
pub async fn start(api_key: Option<&str>) -> FakeServer {
    let control = Arc::new(FakeControl::default());
    let state = Arc::new(OpenAiState {
        control: control.clone(),
        api_key: api_key.map(str::to_string),
    });
    let router = axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(state);
    FakeServer::serve(router, control).await
}

async fn chat(State(state): State<Arc<OpenAiState>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let fault = state.control.arrive(&headers, &body);
    if let Some(key) = &state.api_key {
        let expected = format!("Bearer {key}");
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(&expected)
        {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})),
            )
                .into_response();
        }
    }
    if body.is_null() {
        return (StatusCode::BAD_REQUEST, "body is not JSON").into_response();
    }
    openai_like_chat(&state.control, fault, body, Flavour::OpenAi).await
}

/// Answers one chat request (already counted), injecting `fault`.
pub(super) async fn openai_like_chat(
    control: &FakeControl,
    fault: Option<Fault>,
    body: Value,
    flavour: Flavour,
) -> Response {
    if let Some(fault) = &fault {
        if let Some(response) = whole_response_fault(fault).await {
            return response;
        }
    }
    let model = body["model"].as_str().unwrap_or("fake-model").to_string();
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let n = body["n"].as_u64().unwrap_or(1) as usize;
    let stream = body["stream"].as_bool().unwrap_or(false);
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let mut chunks = word_chunks(&control.reply());
    let mut finish = "stop";
    if fault == Some(Fault::ContentFilter) {
        match flavour {
            Flavour::OpenAi => {
                chunks.truncate(FILTERED_WORDS);
                finish = "content_filter";
            }
            Flavour::GigaChat => {
                chunks = word_chunks(GIGACHAT_BLACKLIST_REPLY);
                finish = "blacklist";
            }
        }
    }
    if let Some(max) = body["max_tokens"].as_u64() {
        if (max as usize) < chunks.len() {
            chunks.truncate(max as usize);
            finish = "length";
        }
    }
    let usage = json!({
        "prompt_tokens": prompt_tokens(&messages, "content"),
        "completion_tokens": chunks.len(),
        "total_tokens": prompt_tokens(&messages, "content") + chunks.len(),
    });
    let created = unix_secs();
    let model_name = match flavour {
        Flavour::OpenAi => model.clone(),
        Flavour::GigaChat => format!("{model}:1.0.26.20"),
    };

    if !stream {
        if fault == Some(Fault::MalformedJson) {
            return json_response(
                r#"{"id": "chatcmpl-fake", "object": "chat.completion", "choices": [{"index": 0, "message": {"#,
            );
        }
        let text: String = chunks.concat();
        let choices: Vec<Value> = (0..n)
            .map(|i| json!({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish}))
            .collect();
        let mut object = json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": created,
            "model": model_name, "choices": choices, "usage": usage,
        });
        if flavour == Flavour::OpenAi {
            object["system_fingerprint"] = json!("fp_fake");
        }
        let mut response = axum::Json(object).into_response();
        if let Some(Fault::ResetAfter { .. }) = fault {
            // Half a body, then the connection drops.
            return stream_body(
                vec![
                    Frame::Data(Bytes::from_static(
                        br#"{"id": "chatcmpl-fake", "choices": ["#,
                    )),
                    Frame::Reset,
                ],
                None,
                "application/json",
            );
        }
        if let Some(Fault::SlowDrip { every }) = fault {
            tokio::time::sleep(every).await;
        }
        response.headers_mut().insert(
            "x-request-id",
            axum::http::HeaderValue::from_static("req_fake"),
        );
        return response;
    }

    if fault == Some(Fault::MalformedSse) {
        return stream_body(
            vec![Frame::Data(Bytes::from_static(
                b"\xff\xfe<html>not an event stream\n\n",
            ))],
            None,
            "text/event-stream",
        );
    }
    let chunk = |choices: Value, usage: Option<&Value>| -> Frame {
        let mut c = json!({
            "id": "chatcmpl-fake", "object": match flavour { Flavour::OpenAi => "chat.completion.chunk", Flavour::GigaChat => "chat.completion" },
            "created": created, "model": model_name, "choices": choices,
        });
        if let Some(u) = usage {
            c["usage"] = u.clone();
        }
        Frame::Data(Bytes::from(format!("data: {c}\n\n")))
    };
    let mut frames = Vec::new();
    if flavour == Flavour::OpenAi {
        let role: Vec<Value> = (0..n)
            .map(|i| json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}))
            .collect();
        frames.push(chunk(json!(role), None));
    }
    let mut content_chunks = 0;
    for word in &chunks {
        for i in 0..n {
            if let Some(Fault::ResetAfter { chunks }) = fault {
                if content_chunks == chunks {
                    frames.push(Frame::Reset);
                    return stream_body(frames, None, "text/event-stream");
                }
            }
            if fault == Some(Fault::MalformedJson) && content_chunks == 1 {
                frames.push(Frame::Data(Bytes::from_static(
                    b"data: {\"id\": \"chatcmpl-fake\", \"choices\": [{\"index\": 0, \"delta\": {\n\n",
                )));
            }
            let delta = match flavour {
                Flavour::OpenAi => json!({"content": word}),
                Flavour::GigaChat => json!({"content": word, "role": "assistant"}),
            };
            frames.push(chunk(
                json!([{"index": i, "delta": delta, "logprobs": null, "finish_reason": null}]),
                None,
            ));
            content_chunks += 1;
        }
    }
    for i in 0..n {
        let last = flavour == Flavour::GigaChat && i + 1 == n;
        frames.push(chunk(
            json!([{"index": i, "delta": {"content": ""}, "logprobs": null, "finish_reason": finish}]),
            last.then_some(&usage),
        ));
    }
    if flavour == Flavour::OpenAi && include_usage {
        frames.push(chunk(json!([]), Some(&usage)));
    }
    frames.push(Frame::Data(Bytes::from_static(b"data: [DONE]\n\n")));
    let every = match fault {
        Some(Fault::SlowDrip { every }) => Some(every),
        _ => None,
    };
    stream_body(frames, every, "text/event-stream")
}
