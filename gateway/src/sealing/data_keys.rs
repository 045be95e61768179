//! [`DataKeys`]: one random data key per tenant, kept in the store only
//! wrapped by the master key (envelope encryption), unwrapped into this
//! process's memory on first use.
//!
//! Why envelope and not a key derived from the master per tenant: the
//! master key then encrypts 32 bytes per tenant and nothing else, so it can
//! be rotated by re-wrapping a table of small rows instead of re-encrypting
//! every stored value, and a tenant's data key can be destroyed on its own
//! (crypto-shredding what Redis or a backup still holds).
//!
//! Several instances share the store: the first to need a tenant's key
//! inserts it if absent and every instance reads back the one that won, so
//! a value sealed on one instance opens on all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use super::SealError;
use crate::config::{Secret, MIN_MASTER_BYTES};
use crate::store::Store;

/// The key-encryption key's derivation salt.
const KEK_SALT: &[u8] = b"sluice-master-kek-v1";
/// The salt of the keys `v1` values were sealed under (sessions before
/// envelope keys).
const LEGACY_SALT: &[u8] = b"sluice-sessions-at-rest-v1";
/// Bound into each wrapped key with its tenant: a wrapped key copied onto
/// another tenant's row does not unwrap.
const WRAP_CONTEXT: &str = "sluice-data-key-v1";

/// The tenants' data keys and the master key that wraps them.
pub struct DataKeys {
    kek: LessSafeKey,
    /// A fingerprint of the master key (never the key): which master key
    /// wrapped a row, for a clear error when another one is configured.
    master_id: String,
    secret: Secret,
    /// Where wrapped keys live; `None`: this process only (tests).
    store: Option<Store>,
    /// Unwrapped data keys by tenant. A plain mutex: held for a map lookup
    /// or insert, never across an await.
    unwrapped: Mutex<HashMap<String, Arc<LessSafeKey>>>,
    rng: SystemRandom,
}

impl DataKeys {
    /// Data keys kept wrapped in `store`'s `tenant_data_keys`.
    pub fn new(master: Secret, store: Store) -> Result<Self, SealError> {
        Self::build(master, Some(store))
    }

    /// Data keys that live in this process only (lost at exit): for tests.
    pub fn in_memory(master: Secret) -> Result<Self, SealError> {
        Self::build(master, None)
    }

    fn build(master: Secret, store: Option<Store>) -> Result<Self, SealError> {
        if master.expose().len() < MIN_MASTER_BYTES {
            return Err(SealError::Master(format!(
                "the master key must be at least {MIN_MASTER_BYTES} bytes"
            )));
        }
        let prk = Salt::new(HKDF_SHA256, KEK_SALT).extract(master.expose().as_bytes());
        let info = [b"kek".as_slice()];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .map_err(|_| SealError::Master("cannot derive the key-encryption key".into()))?;
        let digest = Sha256::new()
            .chain_update(b"sluice-master-id-v1\x1f")
            .chain_update(master.expose().as_bytes())
            .finalize();
        let master_id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            kek: LessSafeKey::new(UnboundKey::from(okm)),
            master_id,
            secret: master,
            store,
            unwrapped: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        })
    }

    pub(super) fn rng(&self) -> SystemRandom {
        self.rng.clone()
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LessSafeKey>>> {
        // Whole values only: a panic elsewhere cannot leave one half-written.
        self.unwrapped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tenant's data key: from memory, else unwrapped from the store,
    /// else made, wrapped and stored (the first writer wins).
    pub async fn data_key(&self, tenant: &str) -> Result<Arc<LessSafeKey>, SealError> {
        // The guard is a temporary of this statement: never held across an await.
        let cached = self.cached().get(tenant).cloned();
        if let Some(key) = cached {
            return Ok(key);
        }
        let key = match &self.store {
            Some(store) => Arc::new(self.load_or_create(store, tenant).await?),
            None => Arc::new(self.unwrap(tenant, &self.wrap(tenant, &self.fresh_key()?)?)?),
        };
        // Two first uses at once in this process: keep the one already in.
        Ok(self
            .cached()
            .entry(tenant.to_string())
            .or_insert(key)
            .clone())
    }

    /// The `v1` key of a tenant (HKDF of the secret), for old values only.
    pub(super) fn legacy_key(&self, tenant: &str) -> Result<LessSafeKey, SealError> {
        let prk = Salt::new(HKDF_SHA256, LEGACY_SALT).extract(self.secret.expose().as_bytes());
        let info = [tenant.as_bytes()];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .map_err(|_| SealError::Master("cannot derive a tenant key".into()))?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }

    async fn load_or_create(&self, store: &Store, tenant: &str) -> Result<LessSafeKey, SealError> {
        if let Some(row) = self.read_row(store, tenant).await? {
            return self.open_row(tenant, row);
        }
        let wrapped = self.wrap(tenant, &self.fresh_key()?)?;
        sqlx::query(
            "INSERT INTO tenant_data_keys (tenant, wrapped, master_id, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant) DO NOTHING",
        )
        .bind(tenant.to_string())
        .bind(wrapped)
        .bind(self.master_id.clone())
        .bind(crate::util::unix_now_ms())
        .execute(store.pool())
        .await?;
        // Ours, or the one another instance inserted first.
        let row = self.read_row(store, tenant).await?.ok_or_else(|| {
            SealError::Corrupt(format!("the data key of tenant `{tenant}` vanished"))
        })?;
        self.open_row(tenant, row)
    }

    async fn read_row(
        &self,
        store: &Store,
        tenant: &str,
    ) -> Result<Option<(String, String)>, SealError> {
        Ok(sqlx::query_as::<_, (String, String)>(
            "SELECT wrapped, master_id FROM tenant_data_keys WHERE tenant = $1",
        )
        .bind(tenant.to_string())
        .fetch_optional(store.pool())
        .await?)
    }

    fn open_row(
        &self,
        tenant: &str,
        (wrapped, master_id): (String, String),
    ) -> Result<LessSafeKey, SealError> {
        if master_id != self.master_id {
            return Err(SealError::Master(format!(
                "the data key of tenant `{tenant}` was wrapped by master key {master_id}, \
                 but this server has master key {}; configure the master key it was made with",
                self.master_id
            )));
        }
        self.unwrap(tenant, &wrapped)
    }

    fn fresh_key(&self) -> Result<[u8; 32], SealError> {
        let mut key = [0u8; 32];
        self.rng
            .fill(&mut key)
            .map_err(|_| SealError::Corrupt("no randomness for a data key".into()))?;
        Ok(key)
    }

    fn context(tenant: &str) -> String {
        format!("{WRAP_CONTEXT}\u{1f}{tenant}")
    }

    /// base64(nonce || the key sealed under the master key).
    fn wrap(&self, tenant: &str, key: &[u8; 32]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SealError::Corrupt("no randomness for a nonce".into()))?;
        let mut data = key.to_vec();
        self.kek
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::context(tenant).as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Corrupt("cannot wrap a data key".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(STANDARD.encode(out))
    }

    fn unwrap(&self, tenant: &str, wrapped: &str) -> Result<LessSafeKey, SealError> {
        let corrupt =
            || SealError::Corrupt(format!("the data key of tenant `{tenant}` is damaged"));
        let bytes = STANDARD.decode(wrapped).map_err(|_| corrupt())?;
        if bytes.len() <= NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt())?;
        let mut sealed = sealed.to_vec();
        let key = self
            .kek
            .open_in_place(
                nonce,
                Aad::from(Self::context(tenant).as_bytes()),
                &mut sealed,
            )
            .map_err(|_| corrupt())?;
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| corrupt())?;
        Ok(LessSafeKey::new(unbound))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealing::Cipher;
    use crate::store::testing;
    use serde_json::json;

    fn master(s: &str) -> Secret {
        Secret::new(format!("{s}-a-master-key-of-at-least-32-bytes"))
    }

    /// What each instance of a shared store sees: one wrapped key per
    /// tenant, no plaintext key in the row, the same key for every
    /// instance, and a clear refusal under another master key.
    async fn data_keys_are_wrapped_and_shared(store: Store) {
        let one = Cipher::new(Arc::new(DataKeys::new(master("m"), store.clone()).unwrap()));
        let two = Cipher::new(Arc::new(DataKeys::new(master("m"), store.clone()).unwrap()));
        let value = json!("secret answer");
        // Two instances' first use at once: both must end with the same key.
        let (a, b) = tokio::join!(
            one.seal("bank", "e1", &value),
            two.seal("bank", "e1", &value)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(
            two.open("bank", "e1", a).await.unwrap(),
            json!("secret answer")
        );
        assert_eq!(
            one.open("bank", "e1", b.clone()).await.unwrap(),
            json!("secret answer")
        );
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT tenant, wrapped FROM tenant_data_keys")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(rows.len(), 1, "one data key per tenant: {rows:?}");
        assert_eq!(
            STANDARD.decode(&rows[0].1).unwrap().len(),
            NONCE_LEN + 32 + 16
        );

        // Another tenant's key does not open it.
        assert!(one.open("clinic", "e1", b.clone()).await.is_err());
        // Another master key cannot unwrap the tenant's data key.
        let other = Cipher::new(Arc::new(DataKeys::new(master("x"), store.clone()).unwrap()));
        let err = other.open("bank", "e1", b).await.unwrap_err();
        assert!(err.to_string().contains("master key"), "{err}");
    }

    #[tokio::test]
    async fn sqlite_data_keys_are_wrapped_and_shared() {
        let (store, _dir) = testing::sqlite().await;
        data_keys_are_wrapped_and_shared(store).await;
    }

    #[tokio::test]
    async fn postgres_data_keys_are_wrapped_and_shared() {
        data_keys_are_wrapped_and_shared(testing::postgres().await).await;
    }

    #[test]
    fn a_short_master_key_is_refused() {
        assert!(DataKeys::in_memory(Secret::new("short".into())).is_err());
    }
}
