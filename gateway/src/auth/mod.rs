//! Who is calling: `Authorization: Bearer <key>` (or, as Anthropic's
//! clients send it, `x-api-key: <key>`) maps to a [`Principal`].
//!
//! With no key configured every request is the `anonymous` tenant (the
//! config refuses a non-loopback listen address in that case unless told
//! otherwise).

mod config_keys;
mod jwks;
mod jwt;
mod principal;

pub use config_keys::{key_matches, KeyDigest, KeyStore};
pub use jwt::{http_client as oidc_http_client, JwtVerifier};
pub use principal::{CallerLimits, Credential, Principal, Role, Roles};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::future::BoxFuture;
use std::sync::Arc;

use crate::audit::{actions, Audit, AuditEvent, AuditOutcome};
use crate::config::Secret;
use crate::error::ApiError;
use crate::sensitivity::TenantPolicy;

/// The caller's tenant; put in the request's extensions by [`require_key`]
/// (beside the whole [`Principal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub Arc<str>);

/// Anthropic's key header, accepted on every route as the key.
const X_API_KEY: &str = "x-api-key";

/// The key a request presents: `Authorization: Bearer <key>` first, else
/// `x-api-key: <key>`; `None` when it sends neither.
fn presented_key(headers: &HeaderMap) -> Option<Result<&[u8], ApiError>> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        return Some(bearer(value.as_bytes()).ok_or(ApiError::Unauthorized(
            "The Authorization header must be `Bearer <key>`.",
        )));
    }
    headers.get(X_API_KEY).map(|v| Ok(v.as_bytes()))
}

/// The key in an `Authorization: Bearer <key>` header value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
}

/// Checks a request's `Authorization` header against the admin key
/// (`[admin]`), for the admin API and `/metrics`.
pub fn require_admin(admin: &Secret, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()))
        .ok_or(ApiError::Unauthorized(
            "This endpoint needs `Authorization: Bearer <admin key>`.",
        ))?;
    if key_matches(admin.expose().as_bytes(), presented) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("Incorrect admin key provided."))
    }
}

/// Another way to prove who one is than a config key: a virtual key in the
/// store, an OIDC token. Each check owns the bearer tokens of its shape.
pub trait CredentialCheck: Send + Sync {
    /// Whether a bearer token of this shape is this check's to judge (a
    /// `sk-sl-` prefix, a JWT's three dot-separated parts).
    fn claims(&self, token: &str) -> bool;
    /// The caller the token proves, or 401.
    fn check<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Principal, ApiError>>;
    /// Whether this check makes a key mandatory: a server with no key of
    /// any kind stays open (anonymous) as before.
    fn enforced(&self) -> bool;
}

/// Every way a caller can prove who they are, tried in one order: the
/// checks that claim the token's shape, then the config keys.
pub struct Authenticator {
    config_keys: KeyStore,
    checks: Vec<Arc<dyn CredentialCheck>>,
    admin_key: Option<Arc<Secret>>,
    audit: Audit,
    /// Each role's model allowlist (`[auth.role_models]`); a role absent
    /// here may use every model.
    role_models: Vec<(Role, Vec<String>)>,
    /// Tenants and teams whose every caller is regulated (`[regulated]`).
    regulated_tenants: std::collections::BTreeSet<String>,
    regulated_teams: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("config_keys", &self.config_keys)
            .field("checks", &self.checks.len())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(config_keys: KeyStore, admin_key: Option<Arc<Secret>>, audit: Audit) -> Self {
        Self {
            config_keys,
            checks: Vec::new(),
            admin_key,
            audit,
            role_models: Vec::new(),
            regulated_tenants: Default::default(),
            regulated_teams: Default::default(),
        }
    }

    /// Every caller of these tenants or teams is regulated, whatever its
    /// key says (a key can add regulated mode, never lift it).
    pub fn with_regulated(mut self, settings: &crate::config::RegulatedSettings) -> Self {
        self.regulated_tenants = settings.tenants.clone();
        self.regulated_teams = settings.teams.clone();
        self
    }

    fn apply_regulated(&self, principal: &mut Principal) {
        let team = principal.team.as_deref();
        if self.regulated_tenants.contains(&*principal.tenant)
            || team.is_some_and(|t| self.regulated_teams.contains(t))
        {
            principal.policy.regulate();
        }
    }

    /// Each role's model allowlist; unknown role names are ignored (the
    /// config checked them).
    pub fn with_role_models(mut self, role_models: &crate::config::RoleModels) -> Self {
        self.role_models = role_models
            .0
            .iter()
            .filter_map(|(role, models)| Some((Role::parse(role)?, models.clone())))
            .collect();
        self
    }

    /// What the caller's roles allow together: every model if one of its
    /// roles has no allowlist, else the union of their lists.
    fn apply_role_models(&self, principal: &mut Principal) {
        if self.role_models.is_empty() {
            return;
        }
        let mut allowed: Vec<String> = Vec::new();
        for role in principal.roles.iter() {
            match self.role_models.iter().find(|(r, _)| *r == role) {
                Some((_, models)) => allowed.extend(models.iter().cloned()),
                None => return,
            }
        }
        principal.restrict_models(&allowed);
    }

    /// Adds a credential check (virtual keys, OIDC).
    pub fn with_check(mut self, check: Arc<dyn CredentialCheck>) -> Self {
        self.checks.push(check);
        self
    }

    /// No key of any kind is configured: callers are `anonymous`.
    pub fn is_open(&self) -> bool {
        self.config_keys.is_open() && !self.checks.iter().any(|c| c.enforced())
    }

    /// The caller a request's `Authorization` header proves. A presented
    /// token is checked even on an open server, so a virtual key's limits
    /// apply there too.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let Some(presented) = presented_key(headers) else {
            if self.is_open() {
                let mut anonymous = Principal::anonymous();
                self.apply_role_models(&mut anonymous);
                self.apply_regulated(&mut anonymous);
                return Ok(anonymous);
            }
            return Err(ApiError::Unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            ));
        };
        let presented = presented?;
        let token = std::str::from_utf8(presented)
            .map_err(|_| ApiError::Unauthorized("The API key must be text."))?;
        let result = match self.checks.iter().find(|c| c.claims(token)) {
            Some(check) => check.check(token).await,
            None if self.is_open() => Ok(Principal::anonymous()),
            // Keys are enforced (a virtual key exists, or OIDC) but no
            // config key is: a token no check claims proves nothing.
            None if self.config_keys.is_open() => {
                Err(ApiError::Unauthorized("Incorrect API key provided."))
            }
            None => self
                .config_keys
                .authenticate_key(presented)
                .map(|(tenant, policy, limits)| {
                    let mut principal =
                        Principal::for_tenant(&tenant.0, Credential::ConfigKey, policy);
                    principal.limits = limits;
                    principal
                }),
        };
        let mut result = result;
        if let Ok(principal) = &mut result {
            self.apply_role_models(principal);
            self.apply_regulated(principal);
        }
        if let Err(err) = &result {
            // The attempt, never the token: a virtual key's public prefix at most.
            let actor = presented_prefix(token).unwrap_or("unknown");
            let _ = self.audit.record(
                AuditEvent::new(actions::AUTH_FAILED, actor, AuditOutcome::Failure)
                    .detail(err.to_string()),
            );
        }
        result
    }

    /// The caller of an admin route: the `[admin]` key is an admin;
    /// otherwise a key or token whose roles [`authorize`] then checks.
    pub async fn authenticate_admin(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        if let Some(admin) = &self.admin_key {
            if require_admin(admin, headers).is_ok() {
                let mut principal =
                    Principal::for_tenant("admin", Credential::ConfigKey, TenantPolicy::default());
                principal.roles = Roles::of(&[Role::Admin]);
                return Ok(principal);
            }
        }
        if headers.get(AUTHORIZATION).is_none() {
            return Err(ApiError::Unauthorized(
                "This endpoint needs `Authorization: Bearer <admin key or token>`.",
            ));
        }
        let principal = self.authenticate(headers).await?;
        if principal.credential == Credential::Anonymous {
            return Err(ApiError::Unauthorized(
                "This endpoint needs `Authorization: Bearer <admin key or token>`.",
            ));
        }
        Ok(principal)
    }
}

/// The public part of a presented virtual key (`sk-sl-<prefix>_...`), for
/// logs and the audit.
pub fn presented_prefix(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("sk-sl-")?;
    let (prefix, _) = rest.split_once('_')?;
    (!prefix.is_empty() && prefix.len() <= 32 && prefix.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then_some(prefix)
}

/// What an admin route is about to do.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// Read; `team`: the team the data belongs to, if any.
    Read { team: Option<&'a str> },
    /// Change; `team`: the team the object belongs to (or will).
    Write { team: Option<&'a str> },
}

/// Checks a role against an admin action: `admin` may do anything,
/// `auditor` read anything, `team_admin` read and change its own team's
/// objects only; `user` and `service` nothing.
pub fn authorize(principal: &Principal, access: Access<'_>) -> Result<(), ApiError> {
    let roles = principal.roles;
    if roles.contains(Role::Admin) {
        return Ok(());
    }
    let denied = |message: &str| ApiError::Forbidden {
        message: message.to_string(),
        code: "permission_denied",
    };
    let own_team = |team: Option<&str>| {
        roles.contains(Role::TeamAdmin) && team.is_some() && team == principal.team.as_deref()
    };
    match access {
        Access::Read { .. } if roles.contains(Role::Auditor) => Ok(()),
        Access::Read { team } if own_team(team) => Ok(()),
        Access::Write { team } if own_team(team) => Ok(()),
        Access::Write { .. } if roles.contains(Role::Auditor) => {
            Err(denied("The auditor role reads; it cannot change anything."))
        }
        _ if roles.contains(Role::TeamAdmin) => Err(denied(
            "A team admin may only read and change its own team's keys and budgets.",
        )),
        _ => Err(denied(
            "This admin route needs the admin, auditor or team_admin role.",
        )),
    }
}

/// Middleware: refuses requests without a valid key, records the caller.
pub async fn require_key(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let trace = request
        .extensions()
        .get::<crate::telemetry::Trace>()
        .cloned()
        .unwrap_or_default();
    let stage = trace.stage(crate::telemetry::semconv::stage::AUTH);
    let authenticated = auth.authenticate(request.headers()).await;
    stage.end_with(&authenticated);
    let principal = authenticated?;
    tracing::Span::current().record("tenant", &*principal.tenant);
    if trace.is_on() {
        trace.set(crate::telemetry::Attribute::new(
            crate::telemetry::semconv::SLUICE_TENANT,
            principal.tenant.to_string(),
        ));
    }
    request
        .extensions_mut()
        .insert(Tenant(principal.tenant.clone()));
    request.extensions_mut().insert(principal.policy);
    request.extensions_mut().insert(Arc::new(principal));
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::config_keys::tests::store;
    use super::*;

    #[test]
    fn the_admin_key_is_checked_by_the_same_comparison() {
        let admin = Secret::new("admin-secret".into());
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, value.parse().unwrap());
            h
        };
        assert!(require_admin(&admin, &with("Bearer admin-secret")).is_ok());
        for wrong in [
            "Bearer admin-secre",
            "Bearer admin-secret2",
            "Bearer ",
            "admin-secret",
        ] {
            let err = require_admin(&admin, &with(wrong)).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
        }
        let err = require_admin(&admin, &HeaderMap::new()).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
    }

    fn with_roles(roles: &[Role], team: Option<&str>) -> Principal {
        let mut p = Principal::anonymous();
        p.roles = Roles::of(roles);
        p.team = team.map(Arc::from);
        p
    }

    #[test]
    fn the_auditor_reads_everything_and_changes_nothing() {
        let auditor = with_roles(&[Role::Auditor], None);
        assert!(authorize(&auditor, Access::Read { team: None }).is_ok());
        assert!(authorize(&auditor, Access::Read { team: Some("red") }).is_ok());
        for team in [None, Some("red")] {
            let err = authorize(&auditor, Access::Write { team }).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::FORBIDDEN);
        }
    }

    #[test]
    fn a_team_admin_touches_its_own_team_only() {
        let red = with_roles(&[Role::TeamAdmin], Some("red"));
        assert!(authorize(&red, Access::Write { team: Some("red") }).is_ok());
        assert!(authorize(&red, Access::Read { team: Some("red") }).is_ok());
        for access in [
            Access::Write { team: Some("blue") },
            Access::Read { team: Some("blue") },
            Access::Write { team: None },
            Access::Read { team: None },
        ] {
            assert!(authorize(&red, access).is_err(), "{access:?}");
        }
        let admin = with_roles(&[Role::Admin], None);
        assert!(authorize(&admin, Access::Write { team: Some("blue") }).is_ok());
        let user = with_roles(&[Role::User, Role::Service], Some("red"));
        assert!(authorize(&user, Access::Read { team: Some("red") }).is_err());
    }

    #[test]
    fn only_a_well_formed_virtual_key_shows_a_prefix() {
        assert_eq!(presented_prefix("sk-sl-ab12_secret"), Some("ab12"));
        for token in [
            "sk-sl-_x",
            "sk-sl-ab12",
            "sk-ab12_x",
            "sk-sl-a-b_x",
            "eyJ.x.y",
        ] {
            assert_eq!(presented_prefix(token), None, "{token}");
        }
    }

    #[tokio::test]
    async fn an_open_server_is_anonymous_and_a_closed_one_needs_a_key() {
        let open = Authenticator::new(KeyStore::new(&[]), None, Audit::off());
        assert!(open.is_open());
        let p = open.authenticate(&HeaderMap::new()).await.unwrap();
        assert_eq!(p.credential, Credential::Anonymous);

        let closed = Authenticator::new(store(), None, Audit::off());
        assert!(closed.authenticate(&HeaderMap::new()).await.is_err());
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer key-b".parse().unwrap());
        let p = closed.authenticate(&h).await.unwrap();
        assert_eq!(&*p.tenant, "beta");
        assert_eq!(p.credential, Credential::ConfigKey);
        assert!(p.policy.sensitive);
        // A config key's limits travel with its principal.
        assert_eq!(p.limits.rpm, Some(60));
        assert_eq!(p.limits.max_parallel, Some(2));
    }

    #[tokio::test]
    async fn a_regulated_tenant_makes_every_one_of_its_callers_regulated_and_sensitive() {
        let settings = crate::config::RegulatedSettings {
            tenants: ["alpha".to_string()].into(),
            ..Default::default()
        };
        let auth = Authenticator::new(store(), None, Audit::off()).with_regulated(&settings);
        let bearer = |key: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
            h
        };
        let alpha = auth.authenticate(&bearer("key-a")).await.unwrap();
        assert!(alpha.policy.regulated && alpha.policy.sensitive);
        let beta = auth.authenticate(&bearer("key-b")).await.unwrap();
        assert!(!beta.policy.regulated, "beta's tenant is not listed");
    }

    /// Claims `sk-sl-` tokens and accepts any of them: a stand-in for the
    /// virtual-key store with at least one key in it.
    struct AnyVirtualKey;

    impl CredentialCheck for AnyVirtualKey {
        fn claims(&self, token: &str) -> bool {
            token.starts_with("sk-sl-")
        }
        fn check<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Principal, ApiError>> {
            Box::pin(async {
                Ok(Principal::for_tenant(
                    "virtual",
                    Credential::VirtualKey {
                        prefix: Arc::from("abc"),
                    },
                    TenantPolicy::default(),
                ))
            })
        }
        fn enforced(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn with_only_virtual_keys_a_token_no_check_claims_is_refused() {
        let auth = Authenticator::new(KeyStore::new(&[]), None, Audit::off())
            .with_check(Arc::new(AnyVirtualKey));
        assert!(!auth.is_open());
        let with = |token: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
            h
        };
        for token in ["garbage", "sk-not-virtual"] {
            let err = auth.authenticate(&with(token)).await.unwrap_err();
            assert_eq!(
                err.status(),
                axum::http::StatusCode::UNAUTHORIZED,
                "{token}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(X_API_KEY, "anything".parse().unwrap());
        assert!(auth.authenticate(&h).await.is_err());
        assert!(auth.authenticate(&HeaderMap::new()).await.is_err());
        let p = auth.authenticate(&with("sk-sl-abc_def")).await.unwrap();
        assert_eq!(&*p.tenant, "virtual");
    }
}
