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
    bad_request, char_pieces, json_response, prompt_tokens, stream_body, unix_secs,
    whole_response_fault, word_chunks, FakeCall, FakeControl, FakeServer, Fault, Frame,
    ARGUMENT_PIECE_CHARS, FILTERED_WORDS, GIGACHAT_BLACKLIST_REPLY,
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
    if let Err(message) = check_tool_turns(&messages, flavour) {
        return bad_request(&message);
    }
    // A conversation that ends with a tool's result gets text: the model
    // answers from the result, as real ones do.
    let answered = matches!(
        messages.last().and_then(|m| m["role"].as_str()),
        Some("tool" | "function")
    );
    let calls = match flavour {
        _ if answered => None,
        Flavour::OpenAi if body["tools"].is_array() && body["tool_choice"] != "none" => {
            control.tool_calls()
        }
        // GigaChat makes one call at most.
        Flavour::GigaChat if body["functions"].is_array() && body["function_call"] != "none" => {
            control.tool_calls().map(|mut c| {
                c.truncate(1);
                c
            })
        }
        _ => None,
    };
    if let Some(calls) = calls.filter(|c| !c.is_empty()) {
        return tool_call_answer(fault, &body, &messages, &calls, flavour);
    }
    let n = body["n"].as_u64().unwrap_or(1) as usize;
    let stream = body["stream"].as_bool().unwrap_or(false);
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let reply = control.reply();
    // Stop strings end the reply where one first occurs, unsent, as OpenAI
    // and vLLM do; vLLM also names the one that matched (`stop_reason`).
    let stopped = match flavour {
        Flavour::OpenAi => first_stop(&reply, &body["stop"]),
        Flavour::GigaChat => None,
    };
    let mut chunks = word_chunks(stopped.as_ref().map_or(&reply[..], |(at, _)| &reply[..*at]));
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
    let stop_reason = match (finish, stopped) {
        ("stop", Some((_, stop))) => Value::String(stop),
        _ => Value::Null,
    };
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
            .map(|i| json!({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish, "stop_reason": stop_reason}))
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
            json!([{"index": i, "delta": {"content": ""}, "logprobs": null, "finish_reason": finish, "stop_reason": stop_reason}]),
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

/// Where the earliest of the request's stop strings (`stop`: a string or
/// a list) starts in `reply`, and which one it is.
fn first_stop(reply: &str, stop: &Value) -> Option<(usize, String)> {
    let stops: Vec<&str> = match stop {
        Value::String(s) => vec![s.as_str()],
        Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    stops
        .into_iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| reply.find(s).map(|at| (at, s.to_string())))
        .min_by_key(|(at, _)| *at)
}

/// What the real APIs refuse in a conversation with tools: OpenAI, a `tool`
/// turn that answers no earlier call; GigaChat, a `function` turn without
/// the function's name or whose content is not JSON.
fn check_tool_turns(messages: &[Value], flavour: Flavour) -> Result<(), String> {
    let mut called: Vec<&str> = Vec::new();
    for m in messages {
        match (flavour, m["role"].as_str()) {
            (Flavour::OpenAi, Some("assistant")) => {
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    if c["type"] != "function" || !c["function"]["arguments"].is_string() {
                        return Err(
                            "tool_calls need type 'function' and arguments as a string".into()
                        );
                    }
                    called.extend(c["id"].as_str());
                }
            }
            (Flavour::OpenAi, Some("tool")) => {
                let id = m["tool_call_id"].as_str().unwrap_or_default();
                if !called.contains(&id) {
                    return Err("Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.".into());
                }
            }
            (Flavour::GigaChat, Some("function")) => {
                let json = m["content"]
                    .as_str()
                    .and_then(|c| serde_json::from_str::<Value>(c).ok());
                if m["name"].as_str().is_none() || json.is_none() {
                    return Err("function message needs a name and JSON content".into());
                }
            }
            (Flavour::GigaChat, Some("tool")) => return Err("unknown role 'tool'".into()),
            _ => {}
        }
    }
    Ok(())
}

/// An answer of calls, whole or streamed, in the flavour's shapes.
fn tool_call_answer(
    fault: Option<Fault>,
    body: &Value,
    messages: &[Value],
    calls: &[FakeCall],
    flavour: Flavour,
) -> Response {
    let stream = body["stream"].as_bool().unwrap_or(false);
    let model = body["model"].as_str().unwrap_or("fake-model");
    let pieces: Vec<Vec<String>> = calls
        .iter()
        .map(|c| char_pieces(&c.arguments, ARGUMENT_PIECE_CHARS))
        .collect();
    let completion: usize = pieces.iter().map(Vec::len).sum::<usize>() + calls.len();
    let prompt = prompt_tokens(messages, "content");
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    let id_of = |i: usize| format!("call_fake{i}x{}", "0".repeat(14));
    let giga_call = |c: &FakeCall| json!({"name": c.name, "arguments": serde_json::from_str::<Value>(&c.arguments).unwrap_or(Value::Null)});
    let (message, finish) = match flavour {
        Flavour::OpenAi => (
            json!({"role": "assistant", "content": null, "tool_calls": calls.iter().enumerate().map(|(i, c)| json!({
                "id": id_of(i), "type": "function", "function": {"name": c.name, "arguments": c.arguments}})).collect::<Vec<_>>()}),
            "tool_calls",
        ),
        Flavour::GigaChat => (
            json!({"role": "assistant", "content": "", "function_call": giga_call(&calls[0]),
                   "functions_state_id": "77d3fb14-457a-46ba-937e-8d856156d003"}),
            "function_call",
        ),
    };
    if !stream {
        return axum::Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": unix_secs(), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage,
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Option<&str>, usage: Option<&Value>| -> Frame {
        let mut c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": unix_secs(),
            "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if let Some(u) = usage {
            c["usage"] = u.clone();
        }
        Frame::Data(Bytes::from(format!("data: {c}\n\n")))
    };
    let mut frames = Vec::new();
    match flavour {
        Flavour::GigaChat => {
            // GigaChat sends its call whole, in the last chunk, with usage.
            frames.push(chunk(message, Some(finish), Some(&usage)));
        }
        Flavour::OpenAi => {
            frames.push(chunk(
                json!({"role": "assistant", "content": null}),
                None,
                None,
            ));
            let mut sent = 0;
            for (i, (call, pieces)) in calls.iter().zip(&pieces).enumerate() {
                frames.push(chunk(
                    json!({"tool_calls": [{"index": i, "id": id_of(i), "type": "function",
                        "function": {"name": call.name, "arguments": ""}}]}),
                    None,
                    None,
                ));
                for piece in pieces {
                    if let Some(Fault::ResetAfter { chunks }) = fault {
                        if sent == chunks {
                            frames.push(Frame::Reset);
                            return stream_body(frames, None, "text/event-stream");
                        }
                    }
                    frames.push(chunk(
                        json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                        None,
                        None,
                    ));
                    sent += 1;
                }
            }
            frames.push(chunk(json!({}), Some(finish), None));
            if body["stream_options"]["include_usage"].as_bool() == Some(true) {
                let mut c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                    "created": unix_secs(), "model": model, "choices": [], "usage": usage});
                c["system_fingerprint"] = json!("fp_fake");
                frames.push(Frame::Data(Bytes::from(format!("data: {c}\n\n"))));
            }
        }
    }
    frames.push(Frame::Data(Bytes::from_static(b"data: [DONE]\n\n")));
    stream_body(frames, None, "text/event-stream")
}
