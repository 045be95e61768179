//! Upstream providers: other services that answer a chat request for us (an
//! OpenAI-compatible API, GigaChat, YandexGPT), each a small module behind the
//! one [`Provider`] trait, plus the per-deployment [`Resilience`] (timeouts,
//! retries, circuit breaker) the router wraps around every call.
//!
//! Contract for the router (`crate::router`):
//! - [`build`] turns one `[[providers]]` entry ([`ProviderConfig`]) into an
//!   `Arc<dyn Provider>`; [`ProviderConfig::name`] is the name routes refer to
//!   and [`ProviderConfig::resilience`] its default [`ResilienceConfig`].
//! - Make one [`Resilience`] per deployment (`Resilience::new(cfg)`) and call
//!   [`Resilience::chat`] (breaker + retries + first-byte timeout, and the
//!   answer wrapped with the between-chunk and total timeouts). The generic
//!   [`Resilience::call`] is there for other calls.
//! - [`Provider::chat`] resolves only once the upstream committed to an
//!   answer (for a stream: its first content chunk), so an `Err` can still
//!   fail over; a failure after that arrives as `Step::Failed`.
//! - [`ProviderError::to_api_error`] is the error a client sees when no
//!   deployment is left.
//!
//! Design choice: each provider owns its private wire types and maps the
//! validated [`crate::validate::Sampling`] by destructuring it without `..`,
//! so a new sampling field does not compile until every provider decides
//! what to do with it (send it, or refuse it as unsupported: never drop it
//! silently).

mod answer;
pub mod breaker;
pub mod gigachat;
mod messages;
mod openai_answer;
pub mod openai_compat;
pub mod resilience;
mod secret;
pub mod sse_client;
mod usage;
pub mod yandex;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::answer::BoxAnswer;
use crate::error::ApiError;
use crate::validate::{Sampling, Tools};

pub use crate::config::{ProviderConfig, ResilienceConfig};
pub use breaker::{BreakerState, CircuitBreaker};
pub(crate) use messages::has_tool_turns;
pub use resilience::{Resilience, RetryPolicy};

/// What a provider is asked: already validated; the upstream model name is
/// the deployment's.
#[derive(Debug, Clone)]
pub struct ProviderRequest {
    pub upstream_model: String,
    pub messages: Vec<sluice_models::ChatMessage>,
    pub sampling: Sampling,
    pub n: usize,
    /// The client's wish; a provider may always stream upstream internally.
    pub stream: bool,
    /// The functions the model may call, passed on in the upstream's terms.
    pub tools: Option<Tools>,
    /// The W3C `traceparent` of this call's span, sent upstream so its own
    /// spans join the request's trace; `None` when traces are off.
    pub traceparent: Option<String>,
}

/// An upstream that answers chat requests.
pub trait Provider: Send + Sync {
    /// `"openai"`, `"gigachat"` or `"yandex"`.
    fn kind(&self) -> &'static str;
    /// Resolves once the upstream committed to an answer: for a stream, after
    /// the first content chunk arrived (so the caller can still fail over on
    /// a failure before any byte reached the client); the rest arrives as
    /// `Step`s, and a failure after that is a `Step::Failed`.
    fn chat<'a>(
        &'a self,
        req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<BoxAnswer, ProviderError>>;
}

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    Connect,
    /// Response headers plus the first content chunk (or the whole body of
    /// a non-streamed answer).
    FirstByte,
    BetweenChunks,
    Total,
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::FirstByte => "first byte",
            Self::BetweenChunks => "between chunks",
            Self::Total => "total",
        })
    }
}

/// Why an upstream call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The connection could not be made (refused, DNS, TLS).
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    /// The connection broke before the upstream committed to an answer.
    #[error("the upstream connection failed: {0}")]
    Transport(String),
    #[error("the upstream did not answer in time ({phase} timeout, {} ms)", limit.as_millis())]
    Timeout {
        phase: TimeoutPhase,
        limit: Duration,
    },
    /// A non-success HTTP status, with the upstream's message.
    #[error("the upstream answered {status}: {message}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    /// A body or event that is not what the upstream's API promises.
    #[error("the upstream sent a malformed answer: {0}")]
    Malformed(String),
    /// Getting or using credentials failed (GigaChat's token exchange, a
    /// refused key).
    #[error("upstream authentication failed: {0}")]
    Auth(String),
    /// The request uses something this upstream cannot do.
    #[error("{message}")]
    Unsupported { param: String, message: String },
    /// The deployment's circuit breaker is open: not even tried.
    #[error("the upstream is unavailable (circuit open)")]
    CircuitOpen,
    /// A provider's settings are wrong (missing key variable, bad CA file).
    #[error("provider config: {0}")]
    Config(String),
}

impl ProviderError {
    /// Whether another attempt at the same upstream may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Transport(_) => true,
            Self::Timeout { phase, .. } => {
                matches!(phase, TimeoutPhase::Connect | TimeoutPhase::FirstByte)
            }
            Self::Status { status, .. } => *status == 429 || *status == 408 || *status >= 500,
            Self::Malformed(_)
            | Self::Auth(_)
            | Self::Unsupported { .. }
            | Self::CircuitOpen
            | Self::Config(_) => false,
        }
    }

    /// How long the upstream asked us to wait (a 429's or 503's `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the failure says something about the upstream's health (and
    /// so counts towards opening its breaker). A request the upstream refused
    /// as bad (400, 404, 422) or one it cannot do says nothing about it.
    pub fn is_upstream_fault(&self) -> bool {
        match self {
            Self::Status { status, .. } => {
                matches!(status, 401 | 403 | 408 | 429) || *status >= 500
            }
            Self::Unsupported { .. } | Self::CircuitOpen => false,
            Self::Connect(_)
            | Self::Transport(_)
            | Self::Timeout { .. }
            | Self::Malformed(_)
            | Self::Auth(_)
            | Self::Config(_) => true,
        }
    }

    /// The error a client sees (the status is decided in `crate::error`).
    pub fn to_api_error(&self) -> ApiError {
        match self {
            Self::Unsupported { param, message } => ApiError::unsupported(param, message),
            Self::Timeout { limit, .. } => ApiError::Timeout(*limit),
            Self::Status {
                status: 429,
                retry_after,
                ..
            } => ApiError::QueueFull {
                pending: 0,
                retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
            },
            // Our credentials refused is our fault, not the client's.
            Self::Status {
                status: 401 | 403, ..
            } => ApiError::Upstream(self.to_string()),
            Self::Status { status, .. } if (400..500).contains(status) => {
                ApiError::invalid_body(format!("the upstream refused the request: {self}"))
            }
            other => ApiError::Upstream(other.to_string()),
        }
    }
}

/// Builds a provider from its config: reads its secret (environment or
/// file), builds its HTTP client.
pub fn build(cfg: &ProviderConfig) -> Result<Arc<dyn Provider>, ProviderError> {
    Ok(match cfg {
        ProviderConfig::Openai { .. } => Arc::new(openai_compat::OpenAiCompat::from_config(cfg)?),
        ProviderConfig::Gigachat { .. } => Arc::new(gigachat::GigaChat::from_config(cfg)?),
        ProviderConfig::Yandex { .. } => Arc::new(yandex::Yandex::from_config(cfg)?),
    })
}

/// An upstream endpoint parsed once at start: reqwest parses a `&str` URL
/// on every request, which was 3.7% of a proxied request's CPU.
fn endpoint(url: String) -> Result<reqwest::Url, ProviderError> {
    reqwest::Url::parse(&url)
        .map_err(|e| ProviderError::Config(format!("`{url}` is not a URL: {e}")))
}

/// The shared HTTP client settings: rustls with ring, the connect timeout,
/// an optional extra CA bundle, and headers sent with every request (fixed
/// credentials among them, marked sensitive), so the hot path builds none.
fn http_client(
    connect_timeout: Duration,
    ca_bundle: Option<&std::path::Path>,
    default_headers: reqwest::header::HeaderMap,
) -> Result<reqwest::Client, ProviderError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .default_headers(default_headers)
        .connect_timeout(connect_timeout)
        // Idle pooled connections are what makes proxying cheap; keep a few.
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true);
    if let Some(path) = ca_bundle {
        let pem = std::fs::read(path)
            .map_err(|e| ProviderError::Config(format!("ca_bundle {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ProviderError::Config(format!("ca_bundle {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(ProviderError::Config(format!(
                "ca_bundle {}: no PEM certificates in it",
                path.display()
            )));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| ProviderError::Config(format!("HTTP client: {e}")))
}

/// The largest whole (non-streamed) body accepted from an upstream.
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// The largest error body read (only for its message).
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// Reads a whole body, refusing one larger than `limit` instead of growing
/// without bound.
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, ProviderError> {
    let too_large = || ProviderError::Malformed(format!("a body larger than {limit} bytes"));
    let transport = |e: reqwest::Error| ProviderError::Transport(error_chain(&e));
    match response.content_length() {
        Some(len) if len > limit as u64 => Err(too_large()),
        // The common case: one allocation of the announced size.
        Some(_) => response.bytes().await.map_err(transport),
        None => {
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(transport)? {
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body.into())
        }
    }
}

/// `req`'s `traceparent` on an upstream call, when traces are on.
fn with_trace(builder: reqwest::RequestBuilder, req: &ProviderRequest) -> reqwest::RequestBuilder {
    match &req.traceparent {
        Some(value) => builder.header("traceparent", value),
        None => builder,
    }
}

/// A credential header value, kept out of reqwest's debug output.
fn sensitive_header(value: String) -> Result<reqwest::header::HeaderValue, ProviderError> {
    let mut value = reqwest::header::HeaderValue::try_from(value)
        .map_err(|_| ProviderError::Config("the secret is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Classifies a reqwest failure that happened before an answer was committed.
fn request_error(err: reqwest::Error, connect_timeout: Duration) -> ProviderError {
    if err.is_connect() {
        if err.is_timeout() {
            return ProviderError::Timeout {
                phase: TimeoutPhase::Connect,
                limit: connect_timeout,
            };
        }
        return ProviderError::Connect(error_chain(&err));
    }
    ProviderError::Transport(error_chain(&err))
}

/// The error and its sources on one line ("connection reset by peer" sits
/// deep in the chain).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads a non-success response into a [`ProviderError::Status`], keeping
/// `Retry-After` (seconds) and a bounded piece of the body.
async fn status_error(response: reqwest::Response) -> ProviderError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)));
    let body = read_body(response, MAX_ERROR_BODY_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(300).collect());
    ProviderError::Status {
        status,
        retry_after,
        message,
    }
}

/// Sampling with every knob at its neutral value, for provider tests.
#[cfg(test)]
pub(crate) fn neutral_sampling() -> Sampling {
    Sampling {
        max_tokens: None,
        temperature: 0.7,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repetition_penalty: 1.0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        seed: None,
        stop_token_ids: Vec::new(),
        stop_strings: Vec::new(),
        ignore_eos: false,
        logprobs: None,
        logit_bias: Vec::new(),
        constraint: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_config_parses_from_toml_and_refuses_inline_keys() {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            providers: Vec<ProviderConfig>,
        }
        let file: File = toml::from_str(
            r#"
            [[providers]]
            kind = "openai"
            name = "vllm"
            base_url = "http://10.0.0.5:8000/v1"
            headers = { "OpenAI-Organization" = "org-1" }

            [[providers]]
            kind = "gigachat"
            name = "giga"
            auth_key_env = "GIGACHAT_AUTH_KEY"
            scope = "GIGACHAT_API_PERS"
            ca_bundle = "/etc/ssl/russian_trusted_root_ca.pem"
            resilience = { max_attempts = 2, breaker_failures = 3 }

            [[providers]]
            kind = "yandex"
            name = "ygpt"
            folder_id = "b1g"
            api_key_env = "YANDEX_API_KEY"
            "#,
        )
        .unwrap();
        assert_eq!(file.providers.len(), 3);
        assert_eq!(file.providers[1].name(), "giga");
        assert_eq!(file.providers[1].resilience().max_attempts, 2);
        assert_eq!(
            file.providers[1].resilience().first_byte_timeout_ms,
            ResilienceConfig::default().first_byte_timeout_ms
        );
        let bad = toml::from_str::<File>(
            r#"
            [[providers]]
            kind = "openai"
            name = "x"
            base_url = "http://h/v1"
            api_key = "sk-inline"
            "#,
        );
        assert!(bad.is_err());
    }

    #[test]
    fn upstream_details_stay_out_of_the_client_body() {
        let err = ProviderError::Transport(
            "error sending request for url (http://10.1.2.3:8000/v1/chat/completions)".into(),
        )
        .to_api_error();
        assert_eq!(err.status(), axum::http::StatusCode::BAD_GATEWAY);
        assert!(!err.body_json().contains("10.1.2.3"), "{}", err.body_json());
    }

    #[test]
    fn a_refused_upstream_key_is_a_bad_gateway_not_a_bad_request() {
        let err = ProviderError::Status {
            status: 401,
            retry_after: None,
            message: "Incorrect API key".into(),
        };
        assert_eq!(
            err.to_api_error().status(),
            axum::http::StatusCode::BAD_GATEWAY
        );
        let bad = ProviderError::Status {
            status: 400,
            retry_after: None,
            message: "bad".into(),
        };
        assert_eq!(
            bad.to_api_error().status(),
            axum::http::StatusCode::BAD_REQUEST
        );
    }
}
