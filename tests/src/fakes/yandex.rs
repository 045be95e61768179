//! The YandexGPT fake: `POST /foundationModels/v1/completion`, checking
//! `Authorization: Api-Key <key>` and `x-folder-id` against the `modelUri`'s
//! folder; its stream is newline-delimited JSON with cumulative alternatives
//! (each line repeats the text so far), ending with a final status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{json, Value};

use super::{
    json_response, prompt_tokens, stream_body, whole_response_fault, word_chunks, FakeControl,
    FakeServer, Fault, Frame, FILTERED_WORDS,
};

struct YandexState {
    control: Arc<FakeControl>,
    api_key: String,
    folder_id: String,
}

/// Starts the fake accepting `api_key` for `folder_id`.
pub async fn start(api_key: &str, folder_id: &str) -> FakeServer {
    let control = Arc::new(FakeControl::default());
    let state = Arc::new(YandexState {
        control: control.clone(),
        api_key: api_key.to_string(),
        folder_id: folder_id.to_string(),
    });
    let router = axum::Router::new()
        .route("/foundationModels/v1/completion", post(completion))
        .with_state(state);
    FakeServer::serve(router, control).await
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"grpcCode": 16, "httpCode": status.as_u16(), "message": message, "httpStatus": status.canonical_reason(), "details": []}})),
    )
        .into_response()
}

async fn completion(
    State(state): State<Arc<YandexState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let fault = state.control.arrive(&headers, &body);
    let expected = format!("Api-Key {}", state.api_key);
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&expected)
    {
        return error(StatusCode::UNAUTHORIZED, "Unknown api key");
    }
    let folder = headers.get("x-folder-id").and_then(|v| v.to_str().ok());
    let model_uri = body["modelUri"].as_str().unwrap_or_default();
    let prefix = format!("gpt://{}/", state.folder_id);
    if folder != Some(state.folder_id.as_str()) || !model_uri.starts_with(&prefix) {
        return error(StatusCode::FORBIDDEN, "Permission to the folder denied");
    }
    if let Some(fault) = &fault {
        if let Some(response) = whole_response_fault(fault).await {
            return response;
        }
    }
    let options = &body["completionOptions"];
    let stream = options["stream"].as_bool().unwrap_or(false);
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    for m in &messages {
        let fields = ["text", "toolCallList", "toolResultList"]
            .iter()
            .filter(|f| m.get(**f).is_some())
            .count();
        let results = m["toolResultList"]["toolResults"].as_array();
        let nameless = results
            .into_iter()
            .flatten()
            .any(|r| r["functionResult"]["name"].as_str().is_none());
        if fields != 1 || nameless {
            return error(
                StatusCode::BAD_REQUEST,
                "a message needs exactly one of text, toolCallList, toolResultList; each functionResult a name",
            );
        }
    }
    let calls = state
        .control
        .tool_calls()
        .filter(|c| {
            !c.is_empty() && body["tools"].is_array() && body["toolChoice"]["mode"] != "NONE"
        })
        // A conversation that ends with results gets text.
        .filter(|_| {
            messages
                .last()
                .is_none_or(|m| m.get("toolResultList").is_none())
        });
    if let Some(calls) = calls {
        let list: Vec<Value> = calls
            .iter()
            .map(|c| {
                json!({"functionCall": {"name": c.name,
                "arguments": serde_json::from_str::<Value>(&c.arguments).unwrap_or(Value::Null)}})
            })
            .collect();
        let input = prompt_tokens(&messages, "text");
        let line = json!({"result": {
            "alternatives": [{"message": {"role": "assistant", "toolCallList": {"toolCalls": list}},
                              "status": "ALTERNATIVE_STATUS_TOOL_CALLS"}],
            "usage": {"inputTextTokens": input.to_string(), "completionTokens": "12", "totalTokens": (input + 12).to_string()},
            "modelVersion": "23.10.2024",
        }});
        let mut r = Response::new(axum::body::Body::from(format!("{line}\n")));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        );
        return r;
    }
    let mut words = word_chunks(&state.control.reply());
    let mut final_status = "ALTERNATIVE_STATUS_FINAL";
    if fault == Some(Fault::ContentFilter) {
        words.truncate(FILTERED_WORDS);
        final_status = "ALTERNATIVE_STATUS_CONTENT_FILTER";
    }
    // maxTokens is an int64 written as a string.
    if let Some(max) = options["maxTokens"]
        .as_str()
        .and_then(|m| m.parse::<usize>().ok())
    {
        if max < words.len() {
            words.truncate(max);
            final_status = "ALTERNATIVE_STATUS_TRUNCATED_FINAL";
        }
    }
    let input = prompt_tokens(&messages, "text");
    let line = |text: &str, status: &str, completion: usize| -> String {
        json!({"result": {
            "alternatives": [{"message": {"role": "assistant", "text": text}, "status": status}],
            "usage": {"inputTextTokens": input.to_string(), "completionTokens": completion.to_string(), "totalTokens": (input + completion).to_string()},
            "modelVersion": "23.10.2024",
        }})
        .to_string()
    };
    if !stream {
        if fault == Some(Fault::MalformedJson) {
            return json_response(r#"{"result": {"alternatives": [{"message": "#);
        }
        let text = words.concat();
        let mut r = Response::new(axum::body::Body::from(line(
            &text,
            final_status,
            words.len(),
        )));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        );
        return r;
    }
    let mut frames = Vec::new();
    let mut text = String::new();
    for (i, word) in words.iter().enumerate() {
        if let Some(Fault::ResetAfter { chunks }) = fault {
            if i == chunks {
                frames.push(Frame::Reset);
                return stream_body(frames, None, "application/json");
            }
        }
        if fault == Some(Fault::MalformedJson) && i == 1 {
            frames.push(Frame::Data(Bytes::from_static(
                b"{\"result\": {\"alternatives\": [\n",
            )));
        }
        text.push_str(word);
        let status = if i + 1 == words.len() {
            final_status
        } else {
            "ALTERNATIVE_STATUS_PARTIAL"
        };
        frames.push(Frame::Data(Bytes::from(format!(
            "{}\n",
            line(&text, status, i + 1)
        ))));
    }
    if fault == Some(Fault::MalformedSse) {
        frames = vec![Frame::Data(Bytes::from_static(
            b"\xff\xfe not json lines\n",
        ))];
    }
    let every = match fault {
        Some(Fault::SlowDrip { every }) => Some(every),
        _ => None,
    };
    stream_body(frames, every, "application/json")
}
