//! The GigaChat fake: `POST /api/v2/oauth` (checks `Authorization: Basic`,
//! a uuid4 `RqUID` and the `scope` form field; issues tokens with a
//! configurable lifetime and counts the exchanges) and
//! `POST /api/v1/chat/completions`, which refuses unknown, expired or revoked
//! tokens with 401 and otherwise answers in GigaChat's OpenAI-like shapes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{json, Value};

use super::openai::{openai_like_chat, Flavour};
use super::{FakeControl, FakeServer, Fault};

/// The OAuth side's state and counters.
#[derive(Debug)]
pub struct OAuthState {
    auth_key: String,
    token_requests: AtomicUsize,
    lifetime: Mutex<Duration>,
    /// (token, expires_at in ms since the epoch, revoked)
    tokens: Mutex<Vec<(String, u64, bool)>>,
    rquids: Mutex<Vec<String>>,
}

impl OAuthState {
    /// Token exchanges so far.
    pub fn token_requests(&self) -> usize {
        self.token_requests.load(Ordering::SeqCst)
    }

    /// Lifetime of tokens issued from now on (default 30 minutes).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        if let Ok(mut l) = self.lifetime.lock() {
            *l = lifetime;
        }
    }

    /// Treats every token issued so far as expired.
    pub fn expire_tokens(&self) {
        if let Ok(mut tokens) = self.tokens.lock() {
            for t in tokens.iter_mut() {
                t.2 = true;
            }
        }
    }

    /// Every `RqUID` received, in order.
    pub fn rquids(&self) -> Vec<String> {
        self.rquids.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn token_is_valid(&self, token: &str) -> bool {
        let now = now_ms();
        self.tokens
            .lock()
            .map(|tokens| {
                tokens
                    .iter()
                    .any(|(t, expires, revoked)| t == token && !revoked && *expires > now)
            })
            .unwrap_or(false)
    }
}

/// A running GigaChat fake.
pub struct GigaChatFake {
    pub server: FakeServer,
    pub oauth: Arc<OAuthState>,
}

impl GigaChatFake {
    pub fn control(&self) -> &FakeControl {
        &self.server.control
    }

    /// The OAuth endpoint's URL.
    pub fn oauth_url(&self) -> String {
        format!("{}/api/v2/oauth", self.server.base_url())
    }
}

struct GigaState {
    control: Arc<FakeControl>,
    oauth: Arc<OAuthState>,
}

/// Starts the fake; `auth_key` is the authorization key it accepts.
pub async fn start(auth_key: &str) -> GigaChatFake {
    let control = Arc::new(FakeControl::default());
    let oauth = Arc::new(OAuthState {
        auth_key: auth_key.to_string(),
        token_requests: AtomicUsize::new(0),
        lifetime: Mutex::new(Duration::from_secs(30 * 60)),
        tokens: Mutex::new(Vec::new()),
        rquids: Mutex::new(Vec::new()),
    });
    let state = Arc::new(GigaState {
        control: control.clone(),
        oauth: oauth.clone(),
    });
    let router = axum::Router::new()
        .route("/api/v2/oauth", post(token))
        .route("/api/v1/chat/completions", post(chat))
        .with_state(state);
    GigaChatFake {
        server: FakeServer::serve(router, control).await,
        oauth,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn is_uuid4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            14 => *c == b'4',
            _ => c.is_ascii_hexdigit(),
        })
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"code": status.as_u16(), "message": message})),
    )
        .into_response()
}

async fn token(State(state): State<Arc<GigaState>>, headers: HeaderMap, body: Bytes) -> Response {
    let oauth = &state.oauth;
    oauth.token_requests.fetch_add(1, Ordering::SeqCst);
    let expected = format!("Basic {}", oauth.auth_key);
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&expected)
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "Can't decode 'Authorization' header",
        );
    }
    let rquid = headers
        .get("RqUID")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !is_uuid4(&rquid) {
        return error(StatusCode::BAD_REQUEST, "Invalid RqUID");
    }
    if let Ok(mut r) = oauth.rquids.lock() {
        r.push(rquid);
    }
    let form = String::from_utf8_lossy(&body);
    let scope_ok = form.split('&').any(|kv| {
        matches!(
            kv,
            "scope=GIGACHAT_API_PERS" | "scope=GIGACHAT_API_B2B" | "scope=GIGACHAT_API_CORP"
        )
    });
    if !scope_ok {
        return error(StatusCode::BAD_REQUEST, "scope is invalid");
    }
    let lifetime = oauth.lifetime.lock().map(|l| *l).unwrap_or_default();
    let expires_at = now_ms() + lifetime.as_millis() as u64;
    let value = format!("gigachat-token-{}", uuid_like());
    if let Ok(mut tokens) = oauth.tokens.lock() {
        tokens.push((value.clone(), expires_at, false));
    }
    axum::Json(json!({"access_token": value, "expires_at": expires_at})).into_response()
}

fn uuid_like() -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:016x}",
        NEXT.fetch_add(1, Ordering::SeqCst)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

async fn chat(State(state): State<Arc<GigaState>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let fault = state.control.arrive(&headers, &body);
    if fault == Some(Fault::ExpiredToken) {
        state.oauth.expire_tokens();
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !state.oauth.token_is_valid(token) {
        return error(StatusCode::UNAUTHORIZED, "Token has expired");
    }
    if body.is_null() {
        return error(StatusCode::BAD_REQUEST, "body is not JSON");
    }
    let fault = fault.filter(|f| *f != Fault::ExpiredToken);
    openai_like_chat(&state.control, fault, body, Flavour::GigaChat).await
}
