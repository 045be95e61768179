//! Optional API keys: `Authorization: Bearer <key>` maps to a tenant name.
//!
//! With no key configured every request is the `anonymous` tenant (the
//! config refuses a non-loopback listen address in that case unless told
//! otherwise). Full auth, RBAC and limits come later; they slot in here as
//! more fields on [`Tenant`].

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

use crate::config::ApiKey;
use crate::error::ApiError;

/// Who is calling; put in the request's extensions by [`require_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub Arc<str>);

/// The configured keys.
#[derive(Debug)]
pub struct KeyStore {
    keys: Vec<(Arc<str>, Vec<u8>)>,
    /// Tenants whose every request is sensitive.
    sensitive: Vec<Arc<str>>,
}

impl KeyStore {
    pub fn new(keys: &[ApiKey]) -> Self {
        Self {
            keys: keys
                .iter()
                .map(|k| {
                    (
                        Arc::from(k.tenant.as_str()),
                        k.secret.expose().as_bytes().to_vec(),
                    )
                })
                .collect(),
            sensitive: keys
                .iter()
                .filter(|k| k.sensitive)
                .map(|k| Arc::from(k.tenant.as_str()))
                .collect(),
        }
    }

    /// Whether the operator marked this tenant sensitive.
    pub fn is_sensitive(&self, tenant: &Tenant) -> bool {
        self.sensitive.contains(&tenant.0)
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The tenant a request's `Authorization` header names.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Tenant, ApiError> {
        if self.is_open() {
            return Ok(Tenant(Arc::from("anonymous")));
        }
        let Some(value) = header else {
            return Err(ApiError::Unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            ));
        };
        let presented = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .ok_or(ApiError::Unauthorized(
                "The Authorization header must be `Bearer <key>`.",
            ))?;
        // Compare against every key in constant time per key, so timing
        // tells neither which key nor how much of it matched.
        let mut found = None;
        for (tenant, key) in &self.keys {
            if constant_time_eq(key, presented) {
                found = Some(tenant.clone());
            }
        }
        found
            .map(Tenant)
            .ok_or(ApiError::Unauthorized("Incorrect API key provided."))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: refuses requests without a valid key, records the tenant.
pub async fn require_key(
    State(store): State<Arc<KeyStore>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    let tenant = store.authenticate(header)?;
    tracing::Span::current().record("tenant", &*tenant.0);
    request.extensions_mut().insert(tenant);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeySource, Secret};

    fn store() -> KeyStore {
        KeyStore::new(&[
            ApiKey {
                tenant: "alpha".into(),
                source: KeySource::KeysVariable,
                secret: Secret::new("key-a".into()),
                sensitive: false,
            },
            ApiKey {
                tenant: "beta".into(),
                source: KeySource::KeysVariable,
                secret: Secret::new("key-b".into()),
                sensitive: true,
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
    fn sensitive_tenants_are_known_by_name() {
        let s = store();
        assert!(!s.is_sensitive(&Tenant(Arc::from("alpha"))));
        assert!(s.is_sensitive(&Tenant(Arc::from("beta"))));
    }

    #[test]
    fn no_keys_means_anonymous() {
        let t = KeyStore::new(&[]).authenticate(None).unwrap();
        assert_eq!(&*t.0, "anonymous");
    }
}
