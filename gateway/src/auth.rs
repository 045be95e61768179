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
use crate::sensitivity::TenantPolicy;

/// Who is calling; put in the request's extensions by [`require_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub Arc<str>);

/// The configured keys.
#[derive(Debug)]
pub struct KeyStore {
    keys: Vec<(Arc<str>, Vec<u8>, TenantPolicy)>,
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
        let presented = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .ok_or(ApiError::Unauthorized(
                "The Authorization header must be `Bearer <key>`.",
            ))?;
        // Compare against every key in constant time per key, so timing
        // tells neither which key nor how much of it matched.
        let mut found = None;
        for (tenant, key, policy) in &self.keys {
            if constant_time_eq(key, presented) {
                found = Some((Tenant(tenant.clone()), *policy));
            }
        }
        found.ok_or(ApiError::Unauthorized("Incorrect API key provided."))
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
    let (tenant, policy) = store.authenticate_with_policy(header)?;
    tracing::Span::current().record("tenant", &*tenant.0);
    request.extensions_mut().insert(tenant);
    request.extensions_mut().insert(policy);
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
}
