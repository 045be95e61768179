//! The admin HTTP API: keys, teams, budgets, spend and savings reports,
//! and erasure of a user's or a tenant's stored data.
//! Every route authenticates its caller ([`AdminCaller`]: the `[admin]`
//! key, or a virtual key / OIDC token with an admin role) and checks the
//! role against what it is about to do ([`crate::auth::authorize`]);
//! every change is audited.

mod budgets;
mod erasure;
mod keys;
mod spend;
mod stats;
mod teams;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

use crate::audit::{actions, Audit, AuditEvent, AuditOutcome};
use crate::auth::{authorize, Access, Principal, Role};
use crate::error::{ApiError, ErrorBody, ErrorObject};
use crate::keys::KeysError;
use crate::state::AppState;

/// The admin routes, mounted beside `/v1` whether or not an `[admin]` key
/// is configured (a role-carrying key or token is enough).
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(keys::routes())
        .merge(teams::routes())
        .merge(budgets::routes())
        .merge(spend::routes())
        .merge(erasure::routes())
        .merge(stats::routes())
}

/// The authenticated caller of an admin route (roles not yet checked:
/// call [`AdminCaller::allow`] with what the route does).
pub struct AdminCaller(pub Principal);

impl AdminCaller {
    /// Checks the caller's role for `access`.
    pub fn allow(&self, access: Access<'_>) -> Result<(), ApiError> {
        authorize(&self.0, access)
    }

    /// [`AdminCaller::allow`], auditing a refusal (`admin.denied`, with
    /// what was asked for as the target).
    pub fn permit(&self, audit: &Audit, access: Access<'_>, target: &str) -> Result<(), ApiError> {
        self.allow(access)
            .inspect_err(|e| self.denied(audit, target, &e.to_string()))
    }

    /// Audits a refusal decided by the route itself.
    pub fn denied(&self, audit: &Audit, target: &str, why: &str) {
        let _ = audit.record(
            AuditEvent::new(actions::ADMIN_DENIED, self.0.actor(), AuditOutcome::Denied)
                .tenant(&*self.0.tenant)
                .target(target)
                .detail(why),
        );
    }

    /// Audits a change that was made.
    pub fn changed(&self, audit: &Audit, action: &'static str, target: &str, detail: &str) {
        if audit
            .record(
                AuditEvent::new(action, self.0.actor(), AuditOutcome::Success)
                    .tenant(&*self.0.tenant)
                    .target(target)
                    .detail(detail),
            )
            .is_err()
        {
            tracing::error!(
                action,
                target,
                "an admin change was made but could not be audited"
            );
        }
    }

    pub fn is_admin(&self) -> bool {
        self.0.roles.contains(Role::Admin)
    }

    /// An admin or an auditor: sees every team's objects.
    pub fn sees_everything(&self) -> bool {
        self.allow(Access::Read { team: None }).is_ok()
    }
}

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The console's session cookie stands in for a missing
        // `Authorization` header (a header, when sent, always wins).
        if !parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION)
        {
            let console = crate::console::ConsoleState::from_ref(state);
            if let Some(caller) = console.caller(&parts.method, &parts.headers).await {
                return caller.map(AdminCaller);
            }
        }
        state
            .auth
            .authenticate_admin(&parts.headers)
            .await
            .map(AdminCaller)
    }
}

/// What an admin route answers when it fails: an [`ApiError`], or the two
/// statuses only the admin API has (404 for a missing object, 409 for a
/// conflict), in the same OpenAI error shape.
#[derive(Debug)]
pub enum AdminError {
    Api(ApiError),
    NotFound(String),
    Conflict(String),
}

impl From<ApiError> for AdminError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<KeysError> for AdminError {
    fn from(e: KeysError) -> Self {
        match e {
            KeysError::Invalid { field, message } => Self::Api(ApiError::invalid(field, message)),
            KeysError::NoKey(_) | KeysError::NoTeam(_) => Self::NotFound(e.to_string()),
            KeysError::TeamExists(_) | KeysError::TeamInUse(..) => Self::Conflict(e.to_string()),
            KeysError::Store(_) => {
                tracing::error!(error = %e, "admin: the key store failed");
                Self::Api(ApiError::StoreUnavailable("The key store"))
            }
            KeysError::Pepper(_) | KeysError::Corrupt(_) => {
                Self::Api(ApiError::Internal(e.to_string()))
            }
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, message, code) = match self {
            Self::Api(e) => return e.into_response(),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m, "not_found"),
            Self::Conflict(m) => (StatusCode::CONFLICT, m, "conflict"),
        };
        let body = ErrorBody {
            error: ErrorObject {
                message,
                kind: "invalid_request_error",
                param: None,
                code: Some(code),
            },
        };
        (status, Json(body)).into_response()
    }
}
