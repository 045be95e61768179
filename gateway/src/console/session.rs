//! The console's login session: a signed cookie that carries who logged in
//! (roles, team, tenant, how they proved it), when it expires and a CSRF
//! token. The admin key or token itself is never kept, neither in the
//! cookie nor in the page's JavaScript.
//!
//! Design choice: a stateless cookie signed with HMAC-SHA256 under a key
//! derived from the server's key pepper, so every instance that shares the
//! pepper (and the store) accepts the others' sessions without a session
//! table. The price is that a logout cannot revoke a copied cookie before
//! its expiry; a session made with a virtual key is re-checked against the
//! key's record on every request, so revoking or blocking the key ends it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::auth::{Credential, Principal, Role, Roles};
use crate::sensitivity::TenantPolicy;

/// The cookie's name.
pub const COOKIE: &str = "sluice_console";
/// The header a cookie-authenticated change must carry, holding the
/// session's CSRF token (a cross-site page can neither read the token nor
/// set a custom header without a CORS preflight the server never grants).
pub const CSRF_HEADER: &str = "x-sluice-csrf";
/// How long a session lasts after login.
pub const SESSION_TTL_MS: i64 = 8 * 3600 * 1000;
/// What the signing key is derived from the pepper with; a new version
/// ends every session made under the old one.
pub const KEY_LABEL: &str = "sluice-console-session-v1";

/// How the person proved who they are at login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoginCredential {
    /// The `[admin]` key (or a config key).
    ConfigKey,
    /// A virtual key, named by its public prefix.
    VirtualKey {
        prefix: String,
    },
    Jwt {
        issuer: String,
        subject: String,
    },
}

/// What the cookie carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    pub tenant: String,
    pub team: Option<String>,
    pub user: Option<String>,
    pub roles: Vec<String>,
    pub credential: LoginCredential,
    /// Milliseconds since the Unix epoch.
    pub expires_at: i64,
    /// Sent back by the page in [`CSRF_HEADER`] on every change.
    pub csrf: String,
}

impl SessionClaims {
    /// The claims of a session for `principal`, from `now_ms`.
    pub fn for_principal(principal: &Principal, now_ms: i64) -> Self {
        let credential = match &principal.credential {
            Credential::VirtualKey { prefix } => LoginCredential::VirtualKey {
                prefix: prefix.to_string(),
            },
            Credential::Jwt { issuer, subject } => LoginCredential::Jwt {
                issuer: issuer.to_string(),
                subject: subject.to_string(),
            },
            Credential::ConfigKey | Credential::Anonymous => LoginCredential::ConfigKey,
        };
        let csrf: [u8; 18] = rand::random();
        Self {
            tenant: principal.tenant.to_string(),
            team: principal.team.as_deref().map(str::to_string),
            user: principal.user.as_deref().map(str::to_string),
            roles: principal
                .roles
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
            credential,
            expires_at: now_ms + SESSION_TTL_MS,
            csrf: URL_SAFE_NO_PAD.encode(csrf),
        }
    }

    /// The caller these claims stand for, with the roles they name (no
    /// model allowlist or limits: the admin API does not generate).
    pub fn principal(&self) -> Principal {
        let credential = match &self.credential {
            LoginCredential::ConfigKey => Credential::ConfigKey,
            LoginCredential::VirtualKey { prefix } => Credential::VirtualKey {
                prefix: prefix.as_str().into(),
            },
            LoginCredential::Jwt { issuer, subject } => Credential::Jwt {
                issuer: issuer.as_str().into(),
                subject: subject.as_str().into(),
            },
        };
        let mut principal =
            Principal::for_tenant(&self.tenant, credential, TenantPolicy::default());
        principal.team = self.team.as_deref().map(Into::into);
        principal.user = self.user.as_deref().map(Into::into);
        let roles: Vec<Role> = self.roles.iter().filter_map(|r| Role::parse(r)).collect();
        principal.roles = Roles::of(&roles);
        principal
    }
}

/// Why a cookie was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the console session is malformed")]
    Malformed,
    #[error("the console session's signature does not match")]
    BadSignature,
    #[error("the console session has expired; log in again")]
    Expired,
}

/// Signs and checks session cookies.
#[derive(Clone)]
pub struct SessionKeys {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    /// Keys from a 32-byte secret (derived from the pepper by the caller);
    /// `None` only if HMAC refused the key, which it does for no length.
    pub fn new(secret: &[u8; 32]) -> Option<Self> {
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).ok()?;
        Some(Self { mac })
    }

    /// The cookie value: `base64url(claims JSON).base64url(HMAC)`.
    pub fn sign(&self, claims: &SessionClaims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let tag = self
            .mac
            .clone()
            .chain_update(payload.as_bytes())
            .finalize()
            .into_bytes();
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The claims of a cookie value this server signed and that has not
    /// expired at `now_ms`.
    pub fn verify(&self, value: &str, now_ms: i64) -> Result<SessionClaims, SessionError> {
        let (payload, tag) = value.split_once('.').ok_or(SessionError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| SessionError::Malformed)?;
        // Constant-time comparison of the tags.
        self.mac
            .clone()
            .chain_update(payload.as_bytes())
            .verify_slice(&tag)
            .map_err(|_| SessionError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| SessionError::Malformed)?;
        let claims: SessionClaims =
            serde_json::from_slice(&json).map_err(|_| SessionError::Malformed)?;
        if claims.expires_at <= now_ms {
            return Err(SessionError::Expired);
        }
        Ok(claims)
    }
}

/// The value of the cookie named [`COOKIE`] in a `Cookie` header, if any.
pub fn cookie_value(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(byte: u8) -> SessionKeys {
        SessionKeys::new(&[byte; 32]).unwrap()
    }

    fn admin() -> Principal {
        let mut p = Principal::for_tenant("acme", Credential::ConfigKey, TenantPolicy::default());
        p.roles = Roles::of(&[Role::Admin]);
        p.team = Some("ml".into());
        p
    }

    #[test]
    fn a_signed_session_verifies_and_gives_back_the_principal() {
        let claims = SessionClaims::for_principal(&admin(), 1_000);
        let cookie = keys(1).sign(&claims);
        let back = keys(1).verify(&cookie, 2_000).unwrap();
        assert_eq!(back, claims);
        let principal = back.principal();
        assert!(principal.roles.contains(Role::Admin));
        assert!(!principal.roles.contains(Role::User));
        assert_eq!(principal.team.as_deref(), Some("ml"));
        assert_eq!(&*principal.tenant, "acme");
    }

    #[test]
    fn another_servers_key_an_edited_payload_and_an_old_session_are_refused() {
        let claims = SessionClaims::for_principal(&admin(), 1_000);
        let cookie = keys(1).sign(&claims);
        assert_eq!(
            keys(2).verify(&cookie, 2_000),
            Err(SessionError::BadSignature)
        );
        // Raise an auditor to admin by editing the payload: the tag no longer matches.
        let mut auditor = claims.clone();
        auditor.roles = vec!["auditor".into()];
        let signed = keys(1).sign(&auditor);
        let (_, auditor_tag) = signed.split_once('.').unwrap();
        let (admin_payload, _) = cookie.split_once('.').unwrap();
        assert_eq!(
            keys(1).verify(&format!("{admin_payload}.{auditor_tag}"), 2_000),
            Err(SessionError::BadSignature)
        );
        assert_eq!(
            keys(1).verify(&cookie, 1_000 + SESSION_TTL_MS),
            Err(SessionError::Expired)
        );
        assert_eq!(
            keys(1).verify("no-dot", 2_000),
            Err(SessionError::Malformed)
        );
    }

    #[test]
    fn each_session_gets_its_own_csrf_token() {
        let a = SessionClaims::for_principal(&admin(), 0);
        let b = SessionClaims::for_principal(&admin(), 0);
        assert_ne!(a.csrf, b.csrf);
        assert!(a.csrf.len() >= 24);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            "a=1; sluice_console=abc.def; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&headers), Some("abc.def"));
        headers.insert(axum::http::header::COOKIE, "a=1".parse().unwrap());
        assert_eq!(cookie_value(&headers), None);
    }
}
