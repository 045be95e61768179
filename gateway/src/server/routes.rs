//! The route table: every URL the server answers, the middleware around
//! them (in-flight cap, auth, request ids and spans, body limits), and the
//! probes (`/health`, `/ready`).

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tracing::Instrument;

use super::refresh_gauges;
use crate::anthropic;
use crate::auth;
use crate::cache;
use crate::error::ApiError;
use crate::openai::{chat, completions, conversations, embeddings, models, moderations, responses};
use crate::state::AppState;
use crate::telemetry::{self, Telemetry, Trace};

/// The router, with its middleware.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/completions", post(completions::create))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve).delete(responses::delete),
        )
        .route("/v1/responses/{id}/cancel", post(responses::cancel))
        .route(
            "/v1/responses/{id}/input_items",
            get(responses::input_items),
        )
        .route("/v1/conversations", post(conversations::create))
        .route(
            "/v1/conversations/{id}",
            get(conversations::retrieve)
                .post(conversations::update)
                .delete(conversations::delete),
        )
        .route(
            "/v1/conversations/{id}/items",
            get(conversations::list_items).post(conversations::add_items),
        )
        .route(
            "/v1/conversations/{id}/items/{item_id}",
            get(conversations::get_item).delete(conversations::delete_item),
        )
        .route("/v1/embeddings", post(embeddings::create))
        .route("/v1/moderations", post(moderations::create))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::get));
    let v1 = behind_key(v1, &state);
    // Anthropic's Messages API: the same layers, and every error reshaped
    // as Anthropic's (the outermost layer, so auth's and limits' too).
    let messages = Router::new()
        .route("/v1/messages", post(anthropic::create))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens));
    let messages = behind_key(messages, &state)
        .route_layer(middleware::from_fn(anthropic::error::anthropic_errors));
    let admin = match &state.admin_key {
        Some(_) => Router::new().route("/admin/cache", axum::routing::delete(cache::admin::purge)),
        None => Router::new(),
    };
    let metrics = crate::metrics::api_route(
        &state.metrics_exposure,
        state.metrics.clone(),
        state.admin_key.clone(),
        Some(refresh_gauges(state.router.clone())),
    )
    .unwrap_or_default();
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(metrics)
        .merge(v1)
        .merge(messages)
        .merge(admin)
        .merge(crate::admin::routes())
        .merge(crate::console::routes())
        .fallback(unknown_url)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.body_limit.0))
        .layer(middleware::from_fn_with_state(
            state.telemetry.clone(),
            trace_request,
        ))
        .with_state(state)
}

/// The layers every API route passes: the in-flight cap first (a full
/// server answers 429 before it reads a key), then auth.
fn behind_key(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    routes
        .route_layer(middleware::from_fn_with_state(
            state.auth.clone(),
            auth::require_key,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.in_flight.clone(),
            crate::inflight::limit_in_flight,
        ))
}

/// Echoed on every response; a client's own id (printable, at most 128
/// bytes) is kept, else one is made.
const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request's id and the client's address, for the audit log.
fn request_context(request: &Request) -> crate::audit::RequestContext {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| crate::util::new_id("req"), str::to_string);
    let source = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    crate::audit::RequestContext { id, source }
}

/// A span per request (method, path, tenant) and one line when it is answered.
/// Bodies, headers and query strings are never logged: they may hold secrets.
async fn trace_request(
    State(telemetry): State<Telemetry>,
    mut request: Request,
    next: Next,
) -> Response {
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        tenant = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    // The OpenTelemetry root span: API requests only (not probes, scrapes).
    let trace = if telemetry.is_on() && telemetry::http::is_traced(request.uri().path()) {
        let trace = telemetry::http::open(&telemetry, &mut request);
        if let Some((trace_id, span_id)) = trace.ids() {
            span.record(telemetry::logs::TRACE_ID_FIELD, trace_id);
            span.record(telemetry::logs::SPAN_ID_FIELD, span_id);
        }
        trace
    } else {
        Trace::default()
    };
    let started = Instant::now();
    let context = request_context(&request);
    let id_header = HeaderValue::from_str(&context.id).ok();
    let mut response = context
        .scope(next.run(request))
        .instrument(span.clone())
        .await;
    if let Some(id) = id_header {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "answered"
        )
    });
    telemetry::http::close(trace, response)
}

/// 200 while the process is up.
async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 once every model and encoder is loaded; 503 while loading,
/// restarting an engine after a panic, or shutting down. The
/// body lists each model's state and load.
async fn ready(State(state): State<AppState>) -> Response {
    let models = state.registry.status();
    let encoders = state.encoders.status();
    let (status, word) = if state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if state.registry.all_ready() && state.encoders.all_ready() {
        (StatusCode::OK, "ready")
    } else if models.iter().any(|m| m.state == "restarting") {
        // An engine recovering from a failed step: its requests were failed
        // and it serves again shortly.
        (StatusCode::SERVICE_UNAVAILABLE, "restarting")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    };
    (
        status,
        Json(json!({"status": word, "models": models, "encoders": encoders})),
    )
        .into_response()
}

async fn unknown_url(method: Method, uri: Uri) -> ApiError {
    ApiError::UnknownUrl {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}
