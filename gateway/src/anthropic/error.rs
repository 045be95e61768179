//! Errors as Anthropic shapes them: `{"type": "error", "error": {"type",
//! "message"}}`, the `type` decided by the status. The status itself is
//! still decided in one place ([`crate::error::ApiError::status`]); the
//! Messages routes' layer ([`anthropic_errors`]) only reshapes the body of
//! every error response they give, whoever made it (auth, limits, the
//! JSON extractor, the chain), so no error leaves them in OpenAI's shape.

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{json, Value};

/// Error bodies are small; anything larger is passed on untouched.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Anthropic's error `type` for a status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// The error object for `status` with `message`: (its type, the body).
pub fn error_body(status: StatusCode, message: &str) -> (&'static str, Value) {
    let kind = error_type(status);
    (
        kind,
        json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

/// Middleware: an error response's OpenAI-shaped body becomes Anthropic's
/// (status and headers such as `Retry-After` kept).
pub async fn anthropic_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = match to_bytes(body, MAX_ERROR_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let (_, body) = error_body(status, "The server failed to send its error");
            return finish(parts, body);
        }
    };
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error")?.get("message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message
    };
    let (_, body) = error_body(status, &message);
    finish(parts, body)
}

fn finish(mut parts: axum::http::response::Parts, body: Value) -> Response {
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_anthropic_types() {
        assert_eq!(error_type(StatusCode::BAD_REQUEST), "invalid_request_error");
        assert_eq!(error_type(StatusCode::UNAUTHORIZED), "authentication_error");
        assert_eq!(error_type(StatusCode::FORBIDDEN), "permission_error");
        assert_eq!(error_type(StatusCode::NOT_FOUND), "not_found_error");
        assert_eq!(
            error_type(StatusCode::PAYLOAD_TOO_LARGE),
            "request_too_large"
        );
        assert_eq!(
            error_type(StatusCode::TOO_MANY_REQUESTS),
            "rate_limit_error"
        );
        assert_eq!(error_type(StatusCode::INTERNAL_SERVER_ERROR), "api_error");
        assert_eq!(
            error_type(StatusCode::SERVICE_UNAVAILABLE),
            "overloaded_error"
        );
        let (_, body) = error_body(StatusCode::BAD_REQUEST, "max_tokens: Field required");
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["message"], "max_tokens: Field required");
    }
}
