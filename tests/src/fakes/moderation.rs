//! A fake external moderation service on loopback speaking the three APIs
//! the gateway's L3 stage calls: Azure AI Content Safety Prompt Shields
//! (`POST /contentsafety/text:shieldPrompt?api-version=...`), Azure
//! `text:analyze` (`POST /contentsafety/text:analyze?api-version=...`) and
//! OpenAI-style `POST /v1/moderations`, each in its own shapes, with its own
//! credential header (`Ocp-Apim-Subscription-Key`, `Authorization: Bearer`)
//! checked like the real ones (401 otherwise).
//!
//! It flags what its [`Flag`] rule says, which need not be what the guard
//! thinks (a fake that disagrees is the point), and can be made slow (past
//! the gateway's timeout), answer 500, answer bytes that are not JSON, or
//! answer JSON of the wrong shape. It counts every request it receives, so
//! a test can assert who was (not) sent out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// Which texts the fake calls harmful.
#[derive(Debug, Clone, PartialEq)]
pub enum Flag {
    Never,
    Always,
    /// Texts that contain this (case-insensitive).
    Containing(String),
}

/// A failure to inject.
#[derive(Debug, Clone, PartialEq)]
pub enum ModerationFault {
    /// Answers correctly, after this delay.
    Slow(Duration),
    /// 500 with the API's error body.
    ServerError,
    /// 200 with a body that is not JSON.
    MalformedJson,
    /// 200 with JSON that lacks the API's fields.
    WrongShape,
}

/// The shared handle a test steers the fake with.
#[derive(Debug)]
pub struct ModerationControl {
    requests: AtomicUsize,
    flag: Mutex<Flag>,
    next_faults: Mutex<VecDeque<ModerationFault>>,
    fault: Mutex<Option<ModerationFault>>,
    last_body: Mutex<Option<Value>>,
    last_path: Mutex<Option<String>>,
    key: String,
}

impl ModerationControl {
    /// Requests received so far (all three APIs).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn set_flag(&self, flag: Flag) {
        if let Ok(mut f) = self.flag.lock() {
            *f = flag;
        }
    }

    /// The next `times` requests get `fault`.
    pub fn fail_next(&self, times: usize, fault: ModerationFault) {
        if let Ok(mut q) = self.next_faults.lock() {
            q.extend(std::iter::repeat_n(fault, times));
        }
    }

    /// Every request gets `fault` (after queued ones), until cleared.
    pub fn set_fault(&self, fault: Option<ModerationFault>) {
        if let Ok(mut f) = self.fault.lock() {
            *f = fault;
        }
    }

    /// The JSON body of the last request.
    pub fn last_body(&self) -> Option<Value> {
        self.last_body.lock().ok().and_then(|b| b.clone())
    }

    /// The path and query of the last request.
    pub fn last_path(&self) -> Option<String> {
        self.last_path.lock().ok().and_then(|p| p.clone())
    }

    fn flags(&self, text: &str) -> bool {
        match self.flag.lock().map(|f| f.clone()).unwrap_or(Flag::Never) {
            Flag::Never => false,
            Flag::Always => true,
            Flag::Containing(marker) => text.to_lowercase().contains(&marker.to_lowercase()),
        }
    }

    fn take_fault(&self) -> Option<ModerationFault> {
        let queued = self.next_faults.lock().ok().and_then(|mut q| q.pop_front());
        queued.or_else(|| self.fault.lock().ok().and_then(|f| f.clone()))
    }
}

/// The running fake; stops when dropped.
pub struct ModerationFake {
    pub addr: SocketAddr,
    pub control: Arc<ModerationControl>,
    task: tokio::task::JoinHandle<()>,
}

impl ModerationFake {
    /// The Azure endpoint (`[moderation] endpoint` for the Azure APIs).
    pub fn azure_endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The OpenAI-style base, up to `/v1`.
    pub fn openai_endpoint(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for ModerationFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the fake on the current runtime; requests must carry `key`.
pub async fn start(key: &str) -> ModerationFake {
    let control = Arc::new(ModerationControl {
        requests: AtomicUsize::new(0),
        flag: Mutex::new(Flag::Never),
        next_faults: Mutex::new(VecDeque::new()),
        fault: Mutex::new(None),
        last_body: Mutex::new(None),
        last_path: Mutex::new(None),
        key: key.to_string(),
    });
    // Every path goes to one handler: the Azure paths hold `:` (not an
    // axum route pattern), and dispatching by hand keeps the three APIs
    // side by side.
    let router = axum::Router::new()
        .fallback(handle)
        .with_state(control.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    ModerationFake {
        addr,
        control,
        task,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    Shields,
    Analyze,
    OpenAi,
}

async fn handle(State(control): State<Arc<ModerationControl>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let headers = request.headers().clone();
    let post = request.method() == axum::http::Method::POST;
    let body = axum::body::to_bytes(request.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let api = match path.as_str() {
        "/contentsafety/text:shieldPrompt" => Api::Shields,
        "/contentsafety/text:analyze" => Api::Analyze,
        "/v1/moderations" => Api::OpenAi,
        _ => return (StatusCode::NOT_FOUND, "no such path").into_response(),
    };
    if !post {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    control.requests.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut p) = control.last_path.lock() {
        *p = Some(format!("{path}?{query}"));
    }
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    if let Ok(mut b) = control.last_body.lock() {
        *b = parsed.clone();
    }
    if let Some(refusal) = check_credentials(api, &headers, &query, &control.key) {
        return refusal;
    }
    let Some(body) = parsed else {
        return error(api, StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    match control.take_fault() {
        Some(ModerationFault::Slow(delay)) => tokio::time::sleep(delay).await,
        Some(ModerationFault::ServerError) => {
            return error(api, StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
        Some(ModerationFault::MalformedJson) => {
            return (StatusCode::OK, Bytes::from_static(b"{\"results\": [tru")).into_response()
        }
        Some(ModerationFault::WrongShape) => {
            return axum::Json(json!({"status": "ok"})).into_response()
        }
        None => {}
    }
    match api {
        Api::Shields => shields(&control, &body),
        Api::Analyze => analyze(&control, &body),
        Api::OpenAi => openai(&control, &body),
    }
}

/// Azure wants `Ocp-Apim-Subscription-Key` and an `api-version`; OpenAI a
/// bearer token.
fn check_credentials(api: Api, headers: &HeaderMap, query: &str, key: &str) -> Option<Response> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match api {
        Api::Shields | Api::Analyze => {
            if header("ocp-apim-subscription-key") != Some(key) {
                return Some(error(
                    api,
                    StatusCode::UNAUTHORIZED,
                    "Access denied due to invalid subscription key or wrong API endpoint.",
                ));
            }
            if !query.contains("api-version=2024-09-01") {
                return Some(error(
                    api,
                    StatusCode::NOT_FOUND,
                    "The HTTP resource that matches the request URI was not found.",
                ));
            }
            None
        }
        Api::OpenAi => (header("authorization") != Some(&format!("Bearer {key}")))
            .then(|| error(api, StatusCode::UNAUTHORIZED, "Incorrect API key provided")),
    }
}

fn error(api: Api, status: StatusCode, message: &str) -> Response {
    let body = match api {
        Api::Shields | Api::Analyze => {
            json!({"error": {"code": status.as_u16().to_string(), "message": message}})
        }
        Api::OpenAi => {
            json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})
        }
    };
    (status, axum::Json(body)).into_response()
}

fn shields(control: &ModerationControl, body: &Value) -> Response {
    let prompt = body["userPrompt"].as_str().unwrap_or("");
    let documents: Vec<&str> = body["documents"]
        .as_array()
        .map(|d| d.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    axum::Json(json!({
        "userPromptAnalysis": {"attackDetected": control.flags(prompt)},
        "documentsAnalysis": documents
            .iter()
            .map(|d| json!({"attackDetected": control.flags(d)}))
            .collect::<Vec<_>>(),
    }))
    .into_response()
}

fn analyze(control: &ModerationControl, body: &Value) -> Response {
    let text = body["text"].as_str().unwrap_or("");
    let harmful = control.flags(text);
    let categories: Vec<&str> = body["categories"]
        .as_array()
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_else(|| vec!["Hate", "SelfHarm", "Sexual", "Violence"]);
    axum::Json(json!({
        "blocklistsMatch": [],
        "categoriesAnalysis": categories
            .iter()
            .map(|c| {
                let severity = if harmful && *c == "Violence" { 6 } else { 0 };
                json!({"category": c, "severity": severity})
            })
            .collect::<Vec<_>>(),
    }))
    .into_response()
}

fn openai(control: &ModerationControl, body: &Value) -> Response {
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let results: Vec<Value> = inputs
        .iter()
        .map(|text| {
            let harmful = control.flags(text);
            let score = if harmful { 0.93 } else { 0.004 };
            json!({
                "flagged": harmful,
                "categories": {"violence": harmful, "hate": false},
                "category_scores": {"violence": score, "hate": 0.001},
            })
        })
        .collect();
    axum::Json(json!({
        "id": "modr-fake",
        "model": body["model"].as_str().unwrap_or("omni-moderation-latest"),
        "results": results,
    }))
    .into_response()
}
