//! The one place where an error becomes an HTTP status and an OpenAI error
//! object (`{"error": {"message", "type", "param", "code"}}`).
//!
//! Every handler, extractor and middleware returns [`ApiError`]; the status
//! match in [`ApiError::status`] has no wildcard arm, so a new variant does
//! not compile until someone decides its status.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sluice_runtime::EngineError;

/// Why a request failed, in the terms a client needs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// Bad input: malformed JSON, a wrong type, a value out of range, an
    /// unsupported parameter. `param` names the offending field.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// Refused by a content policy (the input defence): a 400 with code
    /// `content_policy_violation` and headers that say which layer decided.
    #[error("{message}")]
    ContentPolicy {
        message: String,
        param: Option<String>,
        headers: Vec<(&'static str, String)>,
    },
    /// No key, or a key that matches none configured.
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// The caller is known but may not do this (a role, a model allowlist).
    #[error("{message}")]
    Forbidden {
        message: String,
        /// e.g. `model_not_allowed`, `permission_denied`.
        code: &'static str,
    },
    /// A rate limit or a budget refused the request.
    #[error("{message}")]
    RateLimited {
        message: String,
        /// `rate_limit_exceeded` or `budget_exceeded`.
        code: &'static str,
        retry_after: Duration,
        /// `x-ratelimit-*` headers to send with the 429.
        headers: Vec<(&'static str, String)>,
    },
    /// A stored object (a response, a conversation, an item) that does not
    /// exist, or that belongs to another tenant (never told apart).
    #[error("{what} with id '{id}' not found.")]
    NotFound { what: &'static str, id: String },
    /// A change made against a stale version of a session: someone else's
    /// change came first; re-read and retry.
    #[error("{0}")]
    Conflict(String),
    /// A path the server does not serve.
    #[error("Invalid URL ({method} {path})")]
    UnknownUrl { method: String, path: String },
    #[error("Method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("The request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The engine's queue is full; the client should retry after a while.
    #[error("The server is at capacity ({pending} requests pending); retry after {} s", retry_after.as_secs())]
    QueueFull {
        pending: usize,
        retry_after: Duration,
    },
    /// A cap on requests in flight is reached: the server's
    /// (`[server] max_in_flight`), or that of every deployment the request
    /// could use. Nothing was started; the client should retry later.
    #[error("{what} is at its limit of {limit} requests in flight; retry after {} s", retry_after.as_secs().max(1))]
    InFlightLimit {
        /// Who is full, as the message's subject ("The server").
        what: String,
        limit: usize,
        retry_after: Duration,
    },
    #[error("The model `{0}` is still loading; retry shortly")]
    ModelLoading(String),
    /// A sensitive (or regulated) request whose `on_prem` deployments all
    /// failed or are down: it is never sent to a cloud deployment instead.
    #[error("No on-premises deployment of `{0}` can serve this request now, and a sensitive or regulated request is never sent to a cloud deployment; retry shortly")]
    OnPremUnavailable(String),
    #[error("The request did not finish within {:.1} s", .0.as_secs_f64())]
    Timeout(Duration),
    /// An upstream provider failed (no deployment was left to fail over
    /// to, or the stream broke after it started).
    #[error("The upstream provider failed: {0}")]
    Upstream(String),
    /// A shared store (the Redis cache) did not answer; retry later.
    #[error("{0} is unavailable; retry shortly")]
    StoreUnavailable(&'static str),
    /// The engine failed the request (a model failure, a stopped engine).
    /// The message is for logs; clients get a generic one.
    #[error("{0}")]
    Internal(String),
}

/// The OpenAI error object, as sent in a JSON body or an SSE `data:` line.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorObject<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorObject<'a> {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

impl ApiError {
    /// A 400 naming the parameter at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    /// A 400 about the request as a whole (malformed JSON, say).
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// A 400 for a parameter Sluice knows but does not support (yet).
    pub fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: Some("unsupported_parameter"),
        }
    }

    /// An engine refusal, with the parameter that caused it where there is one.
    pub fn from_engine(err: EngineError, retry_after: Duration) -> Self {
        match err {
            EngineError::QueueFull { pending } | EngineError::EncoderQueueFull { pending } => {
                Self::QueueFull {
                    pending,
                    retry_after,
                }
            }
            EngineError::EncoderInputTooLong { .. } => Self::InvalidRequest {
                message: err.to_string(),
                param: Some("input".into()),
                code: Some("context_length_exceeded"),
            },
            EngineError::ContextTooLong { .. } => Self::InvalidRequest {
                message: err.to_string(),
                param: Some("max_tokens".into()),
                code: Some("context_length_exceeded"),
            },
            EngineError::EmptyPrompt => Self::invalid("prompt", err.to_string()),
            EngineError::InvalidToken { .. } => Self::invalid("prompt", err.to_string()),
            EngineError::Stopped
            | EngineError::Config(_)
            | EngineError::Model(_)
            | EngineError::EncoderFailed(_) => Self::Internal(err.to_string()),
        }
    }

    /// The status code; the one decision of this module.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } | Self::ContentPolicy { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::ModelNotFound(_) | Self::UnknownUrl { .. } | Self::NotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::QueueFull { .. } | Self::InFlightLimit { .. } | Self::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::ModelLoading(_) | Self::StoreUnavailable(_) | Self::OnPremUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` and `code` for this error.
    fn kind_and_code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::InvalidRequest { code, .. } => ("invalid_request_error", *code),
            Self::ContentPolicy { .. } => {
                ("invalid_request_error", Some("content_policy_violation"))
            }
            Self::Unauthorized(_) => ("invalid_request_error", Some("invalid_api_key")),
            Self::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
            Self::Forbidden { code, .. } => ("permission_error", Some(*code)),
            Self::RateLimited { code, .. } => ("rate_limit_error", Some(*code)),
            Self::UnknownUrl { .. } => ("invalid_request_error", Some("unknown_url")),
            Self::NotFound { .. } => ("invalid_request_error", Some("not_found")),
            Self::Conflict(_) => ("invalid_request_error", Some("conflict")),
            Self::MethodNotAllowed { .. } => ("invalid_request_error", Some("method_not_allowed")),
            Self::PayloadTooLarge { .. } => ("invalid_request_error", Some("request_too_large")),
            Self::QueueFull { .. } => ("rate_limit_error", Some("queue_full")),
            Self::InFlightLimit { .. } => ("rate_limit_error", Some("rate_limit_exceeded")),
            Self::ModelLoading(_) => ("server_error", Some("model_loading")),
            Self::OnPremUnavailable(_) => ("server_error", Some("on_prem_unavailable")),
            Self::StoreUnavailable(_) => ("server_error", Some("store_unavailable")),
            Self::Timeout(_) => ("timeout", Some("request_timeout")),
            Self::Upstream(_) => ("server_error", Some("upstream_error")),
            Self::Internal(_) => ("server_error", None),
        }
    }

    /// Seconds a client should wait before retrying, where that helps.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::QueueFull { retry_after, .. }
            | Self::InFlightLimit { retry_after, .. }
            | Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::ModelLoading(_) | Self::StoreUnavailable(_) | Self::OnPremUnavailable(_) => {
                Some(Duration::from_secs(5))
            }
            _ => None,
        }
    }

    /// The body clients see. Internal failures keep their details for the logs.
    pub fn body(&self) -> ErrorBody<'_> {
        let (kind, code) = self.kind_and_code();
        let message = match self {
            Self::Internal(_) => "The server failed to process the request".to_string(),
            // Upstream URLs and messages stay in the logs.
            Self::Upstream(_) => "The upstream provider failed to answer; retry later".to_string(),
            other => other.to_string(),
        };
        let param = match self {
            Self::InvalidRequest { param, .. } | Self::ContentPolicy { param, .. } => {
                param.as_deref()
            }
            _ => None,
        };
        ErrorBody {
            error: ErrorObject {
                message,
                kind,
                param,
                code,
            },
        }
    }

    /// The body as JSON text (for an SSE error event).
    pub fn body_json(&self) -> String {
        serde_json::to_string(&self.body()).unwrap_or_else(|_| {
            r#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#.into()
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(%status, error = %self, "request failed");
        } else {
            tracing::debug!(%status, error = %self, "request refused");
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Some(after) = self.retry_after() {
            // Whole seconds, at least one: "0" would invite a busy loop.
            let secs = after.as_secs().max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Self::RateLimited { headers, .. } | Self::ContentPolicy { headers, .. } = &self {
            for (name, value) in headers {
                if let Ok(value) = HeaderValue::from_str(value) {
                    response.headers_mut().insert(*name, value);
                }
            }
        }
        if matches!(self, Self::Unauthorized(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(err: &ApiError) -> serde_json::Value {
        serde_json::from_str(&err.body_json()).unwrap()
    }

    #[test]
    fn invalid_request_is_400_with_param() {
        let err = ApiError::invalid("temperature", "too hot");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let v = json_of(&err);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "temperature");
        assert_eq!(v["error"]["message"], "too hot");
        assert!(v["error"]["code"].is_null());
    }

    #[test]
    fn queue_full_is_429_with_retry_after() {
        let resp = ApiError::from_engine(
            EngineError::QueueFull { pending: 3 },
            Duration::from_secs(7),
        )
        .into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
    }

    #[test]
    fn in_flight_limit_is_429_rate_limit_exceeded_with_retry_after() {
        let err = ApiError::InFlightLimit {
            what: "The server".into(),
            limit: 8,
            retry_after: Duration::from_secs(2),
        };
        let v = json_of(&err);
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("8 requests"),
            "{v}"
        );
        let resp = err.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn retry_after_is_never_zero() {
        let resp = ApiError::QueueFull {
            pending: 1,
            retry_after: Duration::ZERO,
        }
        .into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn context_too_long_is_400_on_max_tokens() {
        let err = ApiError::from_engine(
            EngineError::ContextTooLong {
                max_model_len: 10,
                requested: 12,
                prompt_tokens: 4,
                max_tokens: 8,
            },
            Duration::from_secs(1),
        );
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json_of(&err)["error"]["param"], "max_tokens");
        assert_eq!(json_of(&err)["error"]["code"], "context_length_exceeded");
    }

    #[test]
    fn engine_failures_are_500_without_details() {
        let err = ApiError::from_engine(EngineError::Stopped, Duration::from_secs(1));
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let v = json_of(&err);
        assert_eq!(v["error"]["type"], "server_error");
        assert!(!v["error"]["message"].as_str().unwrap().contains("stopped"));
    }

    #[test]
    fn unknown_model_is_404_model_not_found() {
        let err = ApiError::ModelNotFound("gpt-9".into());
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
        assert_eq!(json_of(&err)["error"]["code"], "model_not_found");
    }

    #[test]
    fn loading_is_503_with_retry_after() {
        let resp = ApiError::ModelLoading("m".into()).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn unauthorized_is_401_invalid_api_key() {
        let resp = ApiError::Unauthorized("bad key").into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn too_large_is_413() {
        assert_eq!(
            ApiError::PayloadTooLarge { limit: 10 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
