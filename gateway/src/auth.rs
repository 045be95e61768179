//! Optional API keys: `Authorization: Bearer <key>` maps to a tenant name.
//!
//! With no key configured every request is the `anonymous` tenant (the
//! config refuses a non-loopback listen address in that case unless told
//! otherwise). Full auth, RBAC and limits come later; they slot in here as
//! more fields on [`Tenant`].

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use std::sync::Arc;

use crate::config::{ApiKey, Secret};
use crate::error::ApiError;
use crate::sensitivity::TenantPolicy;

/// Who is calling; put in the request's extensions by [`require_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub Arc<str>);

/// The configured keys, held as digests: the store never keeps a key
/// itself, so no `Debug`, log line or core dump of it can show one.
pub struct KeyStore {
    keys: Vec<(Arc<str>, KeyDigest, TenantPolicy)>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tenants: Vec<&str> = self.keys.iter().map(|(t, _, _)| &**t).collect();
        f.debug_struct("KeyStore")
            .field("tenants", &tenants)
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    pub fn new(keys: &[ApiKey]) -> Self {
        Self {
            keys: keys
                .iter()
                .map(|k| {
                    (
                        Arc::from(k.tenant.as_str()),
                        KeyDigest::of(k.secret.expose().as_bytes()),
                        TenantPolicy {
                            sensitive: k.sensitive,
                            guard: k.guard,
                        },
                    )
                })
                .collect(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The tenant a request's `Authorization` header names.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Tenant, ApiError> {
        self.authenticate_with_policy(header)
            .map(|(tenant, _)| tenant)
    }

    /// The tenant and its key's policy.
    pub fn authenticate_with_policy(
        &self,
        header: Option<&[u8]>,
    ) -> Result<(Tenant, TenantPolicy), ApiError> {
        if self.is_open() {
            return Ok((Tenant(Arc::from("anonymous")), TenantPolicy::default()));
        }
        let Some(value) = header else {
            return Err(ApiError::Unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            ));
        };
        let presented = bearer(value).ok_or(ApiError::Unauthorized(
            "The Authorization header must be `Bearer <key>`.",
        ))?;
        let presented = KeyDigest::of(presented);
        // Every key is compared, even after a match, so timing tells
        // neither which key matched nor whether one did early in the list.
        let mut found = None;
        for (tenant, key, policy) in &self.keys {
            if key.matches(&presented) {
                found = Some((Tenant(tenant.clone()), *policy));
            }
        }
        found.ok_or(ApiError::Unauthorized("Incorrect API key provided."))
    }
}

/// The sha256 of a key. Keys are compared as digests so that the
/// comparison always runs over 32 bytes: comparing the keys themselves
/// either returns early on a length mismatch (leaking the key's length) or
/// needs the lengths to agree first. A digest also means a byte-wise
/// timing difference says something about the hash, not about the key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    pub fn of(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    /// Constant-time over all 32 bytes: no early exit.
    pub fn matches(&self, other: &KeyDigest) -> bool {
        let diff = self
            .0
            .iter()
            .zip(&other.0)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyDigest(<redacted>)")
    }
}

/// The one comparison of a presented key with a configured one, for API
/// keys ([`KeyStore`]) and the admin key ([`require_admin`]) alike.
pub fn key_matches(expected: &[u8], presented: &[u8]) -> bool {
    KeyDigest::of(expected).matches(&KeyDigest::of(presented))
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

/// Middleware: refuses requests without a valid key, records the tenant.
pub async fn require_key(
    State(store): State<Arc<KeyStore>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    let (tenant, policy) = store.authenticate_with_policy(header)?;
    tracing::Span::current().record("tenant", &*tenant.0);
    request.extensions_mut().insert(tenant);
    request.extensions_mut().insert(policy);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeySource;

    fn store() -> KeyStore {
        KeyStore::new(&[
            ApiKey {
                tenant: "alpha".into(),
                source: KeySource::KeysVariable,
                secret: Secret::new("key-a".into()),
                sensitive: false,
                guard: None,
            },
            ApiKey {
                tenant: "beta".into(),
                source: KeySource::KeysVariable,
                secret: Secret::new("key-b".into()),
                sensitive: true,
                guard: None,
            },
        ])
    }

    #[test]
    fn right_key_names_its_tenant() {
        let t = store().authenticate(Some(b"Bearer key-b")).unwrap();
        assert_eq!(&*t.0, "beta");
    }

    #[test]
    fn wrong_or_missing_key_is_unauthorized() {
        for header in [
            None,
            Some(&b"Bearer key-c"[..]),
            Some(b"key-a"),
            Some(b"Bearer "),
        ] {
            let err = store().authenticate(header).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn a_key_carries_its_sensitivity_policy() {
        let (_, policy) = store()
            .authenticate_with_policy(Some(b"Bearer key-b"))
            .unwrap();
        assert!(policy.sensitive);
        let (_, policy) = store()
            .authenticate_with_policy(Some(b"Bearer key-a"))
            .unwrap();
        assert!(!policy.sensitive);
    }

    #[test]
    fn no_keys_means_anonymous() {
        let t = KeyStore::new(&[]).authenticate(None).unwrap();
        assert_eq!(&*t.0, "anonymous");
    }

    #[test]
    fn a_prefix_or_a_longer_key_is_refused() {
        for header in [
            &b"Bearer key-"[..],
            b"Bearer key-a2",
            b"Bearer key-ab",
            b"Bearer k",
            b"Bearer key-a ",
        ] {
            let err = store().authenticate(Some(header)).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
        }
        assert!(key_matches(b"key-a", b"key-a"));
        assert!(!key_matches(b"key-a", b"key-"));
        assert!(!key_matches(b"key-a", b"key-aa"));
        assert!(!key_matches(b"key-a", b""));
    }

    #[test]
    fn debug_output_shows_tenants_but_no_key() {
        let shown = format!("{:?}", store());
        assert!(shown.contains("alpha") && shown.contains("beta"), "{shown}");
        assert!(
            !shown.contains("key-a") && !shown.contains("key-b"),
            "{shown}"
        );
        // Nor the bytes of a key in any other spelling.
        assert!(!shown.contains("107, 101, 121"), "{shown}");
    }

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
}
