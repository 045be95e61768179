//! Encryption at rest for the content of sensitive (regulated) callers:
//! AES-256-GCM under a key per tenant, derived with HKDF-SHA256 from the
//! server's secret (`[sessions] encryption_key_env`). A sealed JSON value
//! is stored as `{"sealed": "v1", "n": <nonce>, "c": <ciphertext+tag>}`
//! (base64), in the store and in Redis alike; reading opens it.
//!
//! The associated data binds each value to where it lives (the session id,
//! and the item's key for an item): a sealed value copied onto another row
//! does not open. Nonces are random (96 bits): far below the birthday
//! bound for the number of writes a tenant key sees here.
//!
//! Design choice: ring, already built for TLS, instead of another crypto
//! crate; a tenant's key is derived per use (HKDF is microseconds) so no
//! key material is cached beyond the one secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Value};

use super::SessionError;
use crate::config::Secret;

const SALT: &[u8] = b"sluice-sessions-at-rest-v1";
const VERSION: &str = "v1";

pub struct Cipher {
    secret: Secret,
    rng: SystemRandom,
}

impl Cipher {
    pub fn new(secret: Secret) -> Self {
        Self {
            secret,
            rng: SystemRandom::new(),
        }
    }

    fn key(&self, tenant: &str) -> Result<LessSafeKey, SessionError> {
        let prk = Salt::new(HKDF_SHA256, SALT).extract(self.secret.expose().as_bytes());
        let info = [tenant.as_bytes()];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .map_err(|_| SessionError::Corrupt("cannot derive a tenant key".into()))?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }

    /// `value` sealed for `tenant`, bound to `place`.
    pub fn seal(&self, tenant: &str, place: &str, value: &Value) -> Result<Value, SessionError> {
        let mut data =
            serde_json::to_vec(value).map_err(|e| SessionError::Corrupt(e.to_string()))?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SessionError::Corrupt("no randomness for a nonce".into()))?;
        self.key(tenant)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.as_bytes()),
                &mut data,
            )
            .map_err(|_| SessionError::Corrupt("cannot seal a value".into()))?;
        Ok(json!({"sealed": VERSION, "n": STANDARD.encode(nonce), "c": STANDARD.encode(data)}))
    }

    /// A sealed value opened; a plain one as it is.
    pub fn open(&self, tenant: &str, place: &str, value: Value) -> Result<Value, SessionError> {
        if !is_sealed(&value) {
            return Ok(value);
        }
        let field = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_str)
                .and_then(|s| STANDARD.decode(s).ok())
                .ok_or_else(|| SessionError::Corrupt(format!("a sealed value lacks `{name}`")))
        };
        let nonce = Nonce::try_assume_unique_for_key(&field("n")?)
            .map_err(|_| SessionError::Corrupt("a sealed value's nonce is malformed".into()))?;
        let mut data = field("c")?;
        let plain = self
            .key(tenant)?
            .open_in_place(nonce, Aad::from(place.as_bytes()), &mut data)
            .map_err(|_| {
                SessionError::Corrupt("a sealed value does not open (wrong key or place)".into())
            })?;
        serde_json::from_slice(plain).map_err(|e| SessionError::Corrupt(e.to_string()))
    }
}

pub fn is_sealed(value: &Value) -> bool {
    value.get("sealed").and_then(Value::as_str) == Some(VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::new(Secret::new("a-test-secret-of-at-least-32-bytes!!".into()))
    }

    #[test]
    fn a_sealed_value_opens_only_for_its_tenant_and_place() {
        let c = cipher();
        let value = json!({"content": "my diagnosis"});
        let sealed = c.seal("t1", "conv_1", &value).unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.to_string().contains("diagnosis"));
        assert_eq!(c.open("t1", "conv_1", sealed.clone()).unwrap(), value);
        assert!(c.open("t2", "conv_1", sealed.clone()).is_err());
        assert!(c.open("t1", "conv_2", sealed).is_err());
        // Plain values pass through.
        assert_eq!(c.open("t1", "conv_1", value.clone()).unwrap(), value);
    }
}
