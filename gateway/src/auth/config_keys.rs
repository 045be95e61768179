//! The keys of the config file (`[[auth.keys]]`, `SLUICE_API_KEYS`), held as
//! digests and compared in constant time.

use sha2::{Digest, Sha256};
use std::sync::Arc;

use super::{bearer, CallerLimits, Tenant};
use crate::config::ApiKey;
use crate::error::ApiError;
use crate::sensitivity::TenantPolicy;

/// The configured keys, held as digests: the store never keeps a key
/// itself, so no `Debug`, log line or core dump of it can show one.
pub struct KeyStore {
    keys: Vec<(Arc<str>, KeyDigest, TenantPolicy, CallerLimits)>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tenants: Vec<&str> = self.keys.iter().map(|(t, ..)| &**t).collect();
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
                            // Regulated implies sensitive: on-prem only.
                            sensitive: k.sensitive || k.regulated,
                            regulated: k.regulated,
                            guard: k.guard,
                            stream: k.stream,
                            stream_guard: k.stream_guard,
                        },
                        CallerLimits {
                            rpm: k.limits.rpm,
                            tpm: k.limits.tpm,
                            max_parallel: k.limits.max_parallel,
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
        self.authenticate_with_limits(header)
            .map(|(tenant, policy, _)| (tenant, policy))
    }

    /// The tenant, its key's policy and its key's limits.
    pub fn authenticate_with_limits(
        &self,
        header: Option<&[u8]>,
    ) -> Result<(Tenant, TenantPolicy, CallerLimits), ApiError> {
        if self.is_open() {
            return Ok((
                Tenant(Arc::from("anonymous")),
                TenantPolicy::default(),
                CallerLimits::default(),
            ));
        }
        let Some(value) = header else {
            return Err(ApiError::Unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            ));
        };
        let presented = bearer(value).ok_or(ApiError::Unauthorized(
            "The Authorization header must be `Bearer <key>`.",
        ))?;
        self.authenticate_key(presented)
    }

    /// The tenant, policy and limits of a presented key (no header syntax);
    /// with no key configured, anonymous whatever is presented.
    pub(super) fn authenticate_key(
        &self,
        presented: &[u8],
    ) -> Result<(Tenant, TenantPolicy, CallerLimits), ApiError> {
        if self.is_open() {
            return Ok((
                Tenant(Arc::from("anonymous")),
                TenantPolicy::default(),
                CallerLimits::default(),
            ));
        }
        let presented = KeyDigest::of(presented);
        // Every key is compared, even after a match, so timing tells
        // neither which key matched nor whether one did early in the list.
        let mut found = None;
        for (tenant, key, policy, limits) in &self.keys {
            if key.matches(&presented) {
                found = Some((Tenant(tenant.clone()), *policy, *limits));
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
/// keys ([`KeyStore`]) and the admin key ([`super::require_admin`]) alike.
pub fn key_matches(expected: &[u8], presented: &[u8]) -> bool {
    KeyDigest::of(expected).matches(&KeyDigest::of(presented))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::{KeySource, Secret};

    pub(in crate::auth) fn store() -> KeyStore {
        KeyStore::new(&[
            ApiKey {
                tenant: "alpha".into(),
                source: KeySource::KeysVariable,
                secret: Secret::new("key-a".into()),
                sensitive: false,
                regulated: false,
                guard: None,
                stream: None,
                stream_guard: None,
                limits: Default::default(),
            },
            ApiKey {
                tenant: "beta".into(),
                source: KeySource::KeysVariable,
                secret: Secret::new("key-b".into()),
                sensitive: true,
                regulated: false,
                guard: None,
                stream: None,
                stream_guard: None,
                limits: crate::config::KeyLimits {
                    rpm: Some(60),
                    tpm: None,
                    max_parallel: Some(2),
                },
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
}
