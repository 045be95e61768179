//! Fake upstreams for the provider and routing tests: real HTTP servers on
//! loopback (axum) speaking the OpenAI-compatible API, GigaChat (OAuth plus
//! chat) and YandexGPT, each counting its requests and able to inject the
//! failures a real upstream shows: 500, 429 with `Retry-After`, a hang, a
//! connection reset mid-stream, malformed JSON, malformed SSE, a slow drip of
//! chunks, an expired token; and an answer its content filter ended, in each
//! provider's own words.
//!
//! Design choice: a test steers a fake through its [`FakeControl`] handle
//! (shared with the server task), either for the next requests
//! ([`FakeControl::fail_next`]) or for all of them ([`FakeControl::set_fault`]),
//! and asserts on its counters; the fakes never sleep unless told to, so a
//! test's speed is the loopback's.

pub mod gigachat;
pub mod moderation;
pub mod openai;
pub mod yandex;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// A failure to inject into one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// 500 with an OpenAI-shaped error body.
    ServerError,
    /// 429 with `Retry-After: <secs>` (fractional seconds are sent as given).
    TooManyRequests { retry_after: String },
    /// Never answers.
    Hang,
    /// Streams this many content chunks, then drops the connection.
    ResetAfter { chunks: usize },
    /// A body (or stream event) that is not valid JSON.
    MalformedJson,
    /// A stream that is not valid SSE (bytes that are not UTF-8, no events).
    MalformedSse,
    /// Each chunk after this delay.
    SlowDrip { every: Duration },
    /// GigaChat: every token issued so far is treated as expired.
    ExpiredToken,
    /// The upstream's content filter ends the answer, as each one does:
    /// OpenAI cuts the text after [`FILTERED_WORDS`] words with
    /// `finish_reason: "content_filter"`; GigaChat replaces it with its
    /// canned refusal ([`GIGACHAT_BLACKLIST_REPLY`]) and `"blacklist"`;
    /// YandexGPT cuts it after [`FILTERED_WORDS`] words with the status
    /// `ALTERNATIVE_STATUS_CONTENT_FILTER`.
    ContentFilter,
}

/// Words an OpenAI or YandexGPT fake sends before its content filter cuts in.
pub const FILTERED_WORDS: usize = 2;

/// What GigaChat answers in place of a blacklisted reply.
pub const GIGACHAT_BLACKLIST_REPLY: &str =
    "Не люблю менять тему разговора, но вот сейчас тот самый случай.";

/// The shared handle a test steers a fake with.
#[derive(Debug, Default)]
pub struct FakeControl {
    requests: AtomicUsize,
    next_faults: Mutex<VecDeque<Fault>>,
    fault: Mutex<Option<Fault>>,
    reply: Mutex<Option<String>>,
    tool_calls: Mutex<Option<Vec<FakeCall>>>,
    last_body: Mutex<Option<Value>>,
    last_headers: Mutex<Option<HeaderMap>>,
}

impl FakeControl {
    /// Requests to the generation endpoint so far (GigaChat's token calls
    /// are counted apart).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The next `times` requests get `fault`.
    pub fn fail_next(&self, times: usize, fault: Fault) {
        if let Ok(mut q) = self.next_faults.lock() {
            q.extend(std::iter::repeat_n(fault, times));
        }
    }

    /// Every request gets `fault` (after the queued ones), until cleared.
    pub fn set_fault(&self, fault: Option<Fault>) {
        if let Ok(mut f) = self.fault.lock() {
            *f = fault;
        }
    }

    /// The assistant's text (default [`DEFAULT_REPLY`]); sent one word per chunk.
    pub fn set_reply(&self, text: &str) {
        if let Ok(mut r) = self.reply.lock() {
            *r = Some(text.to_string());
        }
    }

    pub fn reply(&self) -> String {
        self.reply
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| DEFAULT_REPLY.to_string())
    }

    /// Answer requests that offer tools (and do not say `none`) with these
    /// calls instead of text, each in the upstream's own shapes: OpenAI's
    /// streamed arguments cut into [`ARGUMENT_PIECE_CHARS`]-character pieces
    /// (through escapes and multi-byte characters), GigaChat's single
    /// `function_call` (the first call only: it makes one), YandexGPT's
    /// `toolCallList`. `None`: text again.
    pub fn set_tool_calls(&self, calls: Option<&[(&str, &str)]>) {
        if let Ok(mut c) = self.tool_calls.lock() {
            *c = calls.map(|calls| {
                calls
                    .iter()
                    .map(|(name, arguments)| FakeCall {
                        name: name.to_string(),
                        arguments: arguments.to_string(),
                    })
                    .collect()
            });
        }
    }

    pub(crate) fn tool_calls(&self) -> Option<Vec<FakeCall>> {
        self.tool_calls.lock().ok().and_then(|c| c.clone())
    }

    /// The JSON body of the last generation request.
    pub fn last_body(&self) -> Option<Value> {
        self.last_body.lock().ok().and_then(|b| b.clone())
    }

    pub fn last_headers(&self) -> Option<HeaderMap> {
        self.last_headers.lock().ok().and_then(|h| h.clone())
    }

    /// Counts a request, records it, and picks its fault.
    fn arrive(&self, headers: &HeaderMap, body: &Value) -> Option<Fault> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut b) = self.last_body.lock() {
            *b = Some(body.clone());
        }
        if let Ok(mut h) = self.last_headers.lock() {
            *h = Some(headers.clone());
        }
        self.take_fault()
    }

    fn take_fault(&self) -> Option<Fault> {
        let queued = self.next_faults.lock().ok().and_then(|mut q| q.pop_front());
        queued.or_else(|| self.fault.lock().ok().and_then(|f| f.clone()))
    }
}

/// A call a fake answers with: a function name and its arguments' JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeCall {
    pub name: String,
    pub arguments: String,
}

/// Characters per streamed piece of a call's arguments (OpenAI fake).
pub const ARGUMENT_PIECE_CHARS: usize = 5;

/// Text cut into pieces of `n` characters.
pub fn char_pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n).map(|c| c.iter().collect()).collect()
}

/// A 400 in OpenAI's error shape (what OpenAI answers a malformed conversation).
fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": null}})),
    )
        .into_response()
}

pub const DEFAULT_REPLY: &str = "Hello from the fake upstream, nice to meet you.";

/// A fake server; stops when dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub control: Arc<FakeControl>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    async fn serve(router: axum::Router, control: Arc<FakeControl>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr");
        // Owned by the server value and aborted in its Drop.
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            addr,
            control,
            task,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The words of a reply as chunks (a space kept before every word but the first).
pub fn word_chunks(text: &str) -> Vec<String> {
    text.split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

/// How the fakes count prompt tokens: whitespace-separated words of every
/// message (so a test can compute the expected usage).
pub fn prompt_tokens(messages: &[Value], field: &str) -> usize {
    messages
        .iter()
        .filter_map(|m| m.get(field).and_then(|c| c.as_str()))
        .map(|c| c.split_whitespace().count())
        .sum()
}

/// One piece of a streamed body.
enum Frame {
    Data(Bytes),
    /// Drop the connection here.
    Reset,
}

/// A streamed response from frames, each after `every` (if any).
fn stream_body(
    frames: Vec<Frame>,
    every: Option<Duration>,
    content_type: &'static str,
) -> Response {
    let frames: VecDeque<Frame> = frames.into();
    let stream = futures_util::stream::unfold(frames, move |mut frames| async move {
        let frame = frames.pop_front()?;
        if let Some(d) = every {
            tokio::time::sleep(d).await;
        }
        match frame {
            Frame::Data(bytes) => Some((Ok::<Bytes, std::io::Error>(bytes), frames)),
            Frame::Reset => {
                // Let what was written reach the client first: hyper flushes
                // while the body is pending, so the drop lands mid-stream.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "fake upstream reset",
                    )),
                    VecDeque::new(),
                ))
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The answer to a fault that replaces the whole response, if it does.
async fn whole_response_fault(fault: &Fault) -> Option<Response> {
    match fault {
        Fault::ServerError => Some(
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(serde_json::json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}})),
            )
                .into_response(),
        ),
        Fault::TooManyRequests { retry_after } => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(serde_json::json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(retry_after) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Some(r)
        }
        Fault::Hang => {
            std::future::pending::<Infallible>().await;
            None
        }
        _ => None,
    }
}

fn json_response(text: &'static str) -> Response {
    let mut r = Response::new(Body::from(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
