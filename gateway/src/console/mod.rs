//! The admin console at `/ui`: a login page, and a single page whose plain
//! JavaScript modules read the admin API (`/admin/...`) and stream chat
//! answers from `/v1/chat/completions`. Every file is embedded in the
//! binary ([`assets`]); nothing is fetched from elsewhere at run time.
//!
//! Login exchanges the admin key, a virtual key or an OIDC token that
//! carries the admin, auditor or team_admin role for a signed, HttpOnly,
//! SameSite=Strict session cookie ([`session`]); the credential itself is
//! never kept. The admin routes accept that cookie in place of an
//! `Authorization` header (see `admin::AdminCaller`), with the same role
//! checks, and a change (any method but GET and HEAD) must also carry the
//! session's CSRF token in `x-sluice-csrf`.
//!
//! Every `/ui` response carries a Content-Security-Policy that allows
//! scripts, styles and connections from this origin only: no inline script
//! runs, and the pages hold none.

pub mod assets;
pub mod session;

use std::sync::Arc;

use axum::extract::{FromRef, Path, Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, REFERRER_POLICY,
    SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::audit::{actions, Audit, AuditEvent, AuditOutcome};
use crate::auth::{key_matches, Authenticator, Credential, Principal, Role};
use crate::error::ApiError;
use crate::keys::VirtualKeys;
pub use session::{SessionClaims, SessionKeys};

/// What `/ui` serves under: scripts, styles, images and connections from
/// this origin only; no plugins, no framing, forms post here only.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data:; connect-src 'self'; object-src 'none'; \
                       base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// What the console's handlers read (a slice of the server's state).
#[derive(Clone)]
pub struct ConsoleState {
    pub sessions: SessionKeys,
    pub auth: Arc<Authenticator>,
    pub keys: Arc<VirtualKeys>,
    pub audit: Audit,
}

/// `/ui` and everything under it.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    ConsoleState: FromRef<S>,
{
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/session", get(session_info))
        .route("/ui/assets/{name}", get(asset))
        .layer(middleware::from_fn(security_headers))
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

impl ConsoleState {
    /// The caller a request's console cookie proves; `None` when it
    /// carries no console cookie. A change must carry the CSRF token; a
    /// session opened with a virtual key ends when the key stops working,
    /// and takes the key's roles as they are now.
    pub async fn caller(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<Result<Principal, ApiError>> {
        let value = session::cookie_value(headers)?;
        Some(self.check(value, method, headers).await)
    }

    async fn check(
        &self,
        value: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Principal, ApiError> {
        let claims = self
            .sessions
            .verify(value, crate::util::unix_now_ms())
            .map_err(|e| {
                ApiError::Unauthorized(match e {
                    session::SessionError::Expired => {
                        "The console session has expired; log in again."
                    }
                    _ => "The console session is not valid; log in again.",
                })
            })?;
        if !matches!(*method, Method::GET | Method::HEAD) {
            let sent = headers
                .get(session::CSRF_HEADER)
                .map(HeaderValue::as_bytes)
                .unwrap_or_default();
            if !key_matches(claims.csrf.as_bytes(), sent) {
                return Err(ApiError::Forbidden {
                    message: format!(
                        "A change made with a console session must send the session's CSRF \
                         token in `{}`.",
                        session::CSRF_HEADER
                    ),
                    code: "csrf_token_mismatch",
                });
            }
        }
        match &claims.credential {
            session::LoginCredential::VirtualKey { prefix } => self
                .keys
                .current(prefix)
                .await?
                .ok_or(ApiError::Unauthorized(
                    "The key this console session was opened with no longer works; log in again.",
                )),
            _ => Ok(claims.principal()),
        }
    }

    /// The session of a page request, if it has a valid one.
    async fn page_session(&self, headers: &HeaderMap) -> Option<(SessionClaims, Principal)> {
        let value = session::cookie_value(headers)?;
        let claims = self
            .sessions
            .verify(value, crate::util::unix_now_ms())
            .ok()?;
        let principal = self.check(value, &Method::GET, headers).await.ok()?;
        Some((claims, principal))
    }
}

/// Whether a caller may use the console at all (read the admin API).
fn console_role(principal: &Principal) -> bool {
    [Role::Admin, Role::Auditor, Role::TeamAdmin]
        .into_iter()
        .any(|r| principal.roles.contains(r))
}

fn redirect(to: &'static str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(LOCATION, HeaderValue::from_static(to))],
    )
        .into_response()
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// `/ui`: the console, or the login page for a visitor without a session.
async fn index(State(console): State<ConsoleState>, headers: HeaderMap) -> Response {
    match console.page_session(&headers).await {
        Some(_) => html(StatusCode::OK, assets::INDEX_HTML.to_string()),
        None => redirect("/ui/login"),
    }
}

async fn login_page() -> Response {
    html(StatusCode::OK, assets::login_html(None))
}

#[derive(Deserialize)]
struct LoginForm {
    credential: String,
}

/// Exchanges a credential for a session cookie. A wrong credential is a
/// 401 (and audited as a failed authentication by the authenticator); a
/// valid one without a console role is a 403 and sets nothing.
async fn login(
    State(console): State<ConsoleState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let refuse =
        |status: StatusCode, message: &str| html(status, assets::login_html(Some(message)));
    let Ok(Form(form)) = form else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Send the key or token in the form.",
        );
    };
    let credential = form.credential.trim();
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {credential}")) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "That key or token is not valid here.",
        );
    };
    if credential.is_empty() {
        return refuse(StatusCode::UNAUTHORIZED, "Enter the admin key or a token.");
    }
    let mut presented = HeaderMap::new();
    presented.insert(AUTHORIZATION, bearer);
    let principal = match console.auth.authenticate_admin(&presented).await {
        Ok(p) if p.credential != Credential::Anonymous => p,
        Ok(_) | Err(_) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "That key or token is not valid here.",
            )
        }
    };
    if !console_role(&principal) {
        let _ = console.audit.record(
            AuditEvent::new(actions::LOGIN, principal.actor(), AuditOutcome::Denied)
                .tenant(&*principal.tenant)
                .target("console")
                .detail("no admin, auditor or team_admin role"),
        );
        return refuse(
            StatusCode::FORBIDDEN,
            "This key or token has no admin, auditor or team_admin role.",
        );
    }
    let claims = SessionClaims::for_principal(&principal, crate::util::unix_now_ms());
    let _ = console.audit.record(
        AuditEvent::new(actions::LOGIN, principal.actor(), AuditOutcome::Success)
            .tenant(&*principal.tenant)
            .target("console"),
    );
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        session::COOKIE,
        console.sessions.sign(&claims),
        session::SESSION_TTL_MS / 1000,
        if secure { "; Secure" } else { "" }
    );
    let mut response = redirect("/ui");
    match HeaderValue::from_str(&cookie) {
        Ok(v) => {
            response.headers_mut().insert(SET_COOKIE, v);
            response
        }
        Err(_) => {
            ApiError::Internal("the session cookie is not a header value".into()).into_response()
        }
    }
}

async fn logout() -> Response {
    let mut response = redirect("/ui/login");
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("sluice_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

/// Who is logged in, their roles, and the CSRF token the page sends back.
async fn session_info(
    State(console): State<ConsoleState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (claims, principal) =
        console
            .page_session(&headers)
            .await
            .ok_or(ApiError::Unauthorized(
                "No console session: log in at /ui/login.",
            ))?;
    let roles: Vec<&str> = principal.roles.iter().map(Role::as_str).collect();
    Ok(Json(json!({
        "actor": principal.actor(),
        "tenant": &*principal.tenant,
        "team": principal.team.as_deref(),
        "roles": roles,
        "can_change_keys": principal.roles.contains(Role::Admin)
            || principal.roles.contains(Role::TeamAdmin),
        "expires_at": claims.expires_at,
        "csrf": claims.csrf,
    })))
}

async fn asset(Path(name): Path<String>) -> Response {
    match assets::find(&name) {
        Some(asset) => (
            StatusCode::OK,
            [
                (CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
                // Embedded: they change only with the binary.
                (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            asset.body,
        )
            .into_response(),
        None => ApiError::UnknownUrl {
            method: "GET".into(),
            path: format!("/ui/assets/{name}"),
        }
        .into_response(),
    }
}
