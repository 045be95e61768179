//! The admin HTTP API: keys, teams, budgets, spend and savings reports.
//! Every route authenticates its caller ([`AdminCaller`]: the `[admin]`
//! key, or a virtual key / OIDC token with an admin role) and checks the
//! role against what it is about to do ([`crate::auth::authorize`]);
//! every change is audited.

mod budgets;
mod keys;
mod spend;
mod teams;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::Router;

use crate::auth::{authorize, Access, Principal};
use crate::error::ApiError;
use crate::state::AppState;

/// The admin routes, mounted beside `/v1` whether or not an `[admin]` key
/// is configured (a role-carrying key or token is enough).
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(keys::routes())
        .merge(teams::routes())
        .merge(budgets::routes())
        .merge(spend::routes())
}

/// The authenticated caller of an admin route (roles not yet checked:
/// call [`AdminCaller::allow`] with what the route does).
pub struct AdminCaller(pub Principal);

impl AdminCaller {
    /// Checks the caller's role for `access`.
    pub fn allow(&self, access: Access<'_>) -> Result<(), ApiError> {
        authorize(&self.0, access)
    }
}

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .auth
            .authenticate_admin(&parts.headers)
            .await
            .map(AdminCaller)
    }
}
