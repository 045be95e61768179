//! The cipher: AES-256-GCM over a JSON value, under a tenant's data key
//! ([`super::DataKeys`]). A sealed value is stored as
//! `{"sealed": "v2", "n": <nonce>, "c": <ciphertext+tag>}` (base64), in the
//! store and in Redis alike; reading opens it.
//!
//! The associated data binds each value to where it lives (a session id,
//! an item's key, a cache entry's id): a sealed value copied onto another
//! row does not open, and a value sealed for one tenant does not open with
//! another tenant's key. Nonces are random (96 bits): far below the
//! birthday bound for the number of writes one data key sees here.
//!
//! `v1` values (sessions sealed before regulated mode, under a key derived
//! per tenant with HKDF from the secret itself) still open, so an upgrade
//! loses nothing; new values are always `v2`.
//!
//! Design choice: ring, already built for TLS, instead of another crypto
//! crate.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Value};

use super::{DataKeys, SealError};

/// Sealed under a tenant's data key (envelope).
const V2: &str = "v2";
/// Sealed under a key derived from the secret (before envelope keys).
const V1: &str = "v1";

/// Seals and opens values for any tenant; cheap to clone.
#[derive(Clone)]
pub struct Cipher {
    keys: Arc<DataKeys>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(<keys redacted>)")
    }
}

impl Cipher {
    pub fn new(keys: Arc<DataKeys>) -> Self {
        Self { keys }
    }

    /// The tenant's key (its data key made or unwrapped on first use).
    pub async fn tenant(&self, tenant: &str) -> Result<TenantKey, SealError> {
        Ok(TenantKey {
            data: self.keys.data_key(tenant).await?,
            legacy: self.keys.legacy_key(tenant)?,
            rng: self.keys.rng(),
        })
    }

    /// `value` sealed for `tenant`, bound to `place`.
    pub async fn seal(&self, tenant: &str, place: &str, value: &Value) -> Result<Value, SealError> {
        self.tenant(tenant).await?.seal(place, value)
    }

    /// A sealed value opened; a plain one as it is (no key is touched).
    pub async fn open(&self, tenant: &str, place: &str, value: Value) -> Result<Value, SealError> {
        if !is_sealed(&value) {
            return Ok(value);
        }
        self.tenant(tenant).await?.open(place, value)
    }
}

/// One tenant's keys, for sealing or opening several values in a row.
pub struct TenantKey {
    data: Arc<LessSafeKey>,
    legacy: LessSafeKey,
    rng: SystemRandom,
}

impl TenantKey {
    /// `value` sealed, bound to `place`.
    pub fn seal(&self, place: &str, value: &Value) -> Result<Value, SealError> {
        let mut data = serde_json::to_vec(value).map_err(|e| SealError::Corrupt(e.to_string()))?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SealError::Corrupt("no randomness for a nonce".into()))?;
        self.data
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Corrupt("cannot seal a value".into()))?;
        Ok(json!({"sealed": V2, "n": STANDARD.encode(nonce), "c": STANDARD.encode(data)}))
    }

    /// A sealed value opened; a plain one as it is.
    pub fn open(&self, place: &str, value: Value) -> Result<Value, SealError> {
        let key = match value.get("sealed").and_then(Value::as_str) {
            Some(V2) => &*self.data,
            Some(V1) => &self.legacy,
            _ => return Ok(value),
        };
        let field = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_str)
                .and_then(|s| STANDARD.decode(s).ok())
                .ok_or_else(|| SealError::Corrupt(format!("a sealed value lacks `{name}`")))
        };
        let nonce = Nonce::try_assume_unique_for_key(&field("n")?)
            .map_err(|_| SealError::Corrupt("a sealed value's nonce is malformed".into()))?;
        let mut data = field("c")?;
        let plain = key
            .open_in_place(nonce, Aad::from(place.as_bytes()), &mut data)
            .map_err(|_| {
                SealError::Corrupt("a sealed value does not open (wrong key or place)".into())
            })?;
        serde_json::from_slice(plain).map_err(|e| SealError::Corrupt(e.to_string()))
    }
}

pub fn is_sealed(value: &Value) -> bool {
    matches!(value.get("sealed").and_then(Value::as_str), Some(V1 | V2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn cipher() -> Cipher {
        Cipher::new(Arc::new(
            DataKeys::in_memory(Secret::new("a-test-secret-of-at-least-32-bytes!!".into()))
                .unwrap(),
        ))
    }

    #[tokio::test]
    async fn a_sealed_value_opens_only_for_its_tenant_and_place() {
        let c = cipher();
        let value = json!({"content": "my diagnosis"});
        let sealed = c.seal("t1", "conv_1", &value).await.unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.to_string().contains("diagnosis"));
        assert_eq!(c.open("t1", "conv_1", sealed.clone()).await.unwrap(), value);
        assert!(c.open("t2", "conv_1", sealed.clone()).await.is_err());
        assert!(c.open("t1", "conv_2", sealed).await.is_err());
        // Plain values pass through.
        assert_eq!(c.open("t1", "conv_1", value.clone()).await.unwrap(), value);
    }

    #[tokio::test]
    async fn a_value_sealed_before_envelope_keys_still_opens() {
        // What the session cipher of session 7 wrote: HKDF of the secret per tenant.
        use ring::aead::{UnboundKey, AES_256_GCM};
        use ring::hkdf::{Salt, HKDF_SHA256};
        let secret = "a-test-secret-of-at-least-32-bytes!!";
        let prk = Salt::new(HKDF_SHA256, b"sluice-sessions-at-rest-v1").extract(secret.as_bytes());
        let info = [b"t1".as_slice()];
        let okm = prk.expand(&info, &AES_256_GCM).unwrap();
        let old = LessSafeKey::new(UnboundKey::from(okm));
        let mut data = br#"{"content":"old"}"#.to_vec();
        let nonce = [7u8; NONCE_LEN];
        old.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(b"conv_1".as_slice()),
            &mut data,
        )
        .unwrap();
        let v1 = json!({"sealed": "v1", "n": STANDARD.encode(nonce), "c": STANDARD.encode(data)});
        let c = cipher();
        assert_eq!(
            c.open("t1", "conv_1", v1.clone()).await.unwrap(),
            json!({"content": "old"})
        );
        assert!(c.open("t2", "conv_1", v1).await.is_err());
    }
}
