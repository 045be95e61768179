//! The issuer's signing keys (a JWKS), fetched over HTTP and cached.
//!
//! The set is read at start (in the background: a failure logs and is
//! retried, it never stops the server), reread every `jwks_max_age`, and
//! reread once when a token names a `kid` the cache lacks (a rotation) —
//! at most once per `refetch_interval`, however many such tokens arrive,
//! and concurrent ones wait for the same fetch. A token can make the
//! server fetch at most that often, so a flood of made-up `kid`s cannot
//! turn it into a client hammering the identity provider.

use std::collections::HashSet;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::JwksSource;

/// A JWKS document or discovery document larger than this is refused.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// RSA keys below 2048 bits are not worth a signature check.
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// What kind of key a JWK holds, to match against a token's `alg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
}

impl KeyKind {
    /// Whether this key can verify `alg` (an `ES384` token checked with a
    /// P-256 key, or an RSA key with `ES256`, is refused before any math).
    pub fn fits(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyKind::EcP256 => alg == Algorithm::ES256,
            KeyKind::EcP384 => alg == Algorithm::ES384,
        }
    }
}

/// One usable verification key.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it names one: then only that alg.
    pub alg: Option<Algorithm>,
    pub key: Arc<DecodingKey>,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The keys of one fetch.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
    /// Counts successful fetches: a waiter that sees it move knows another
    /// request already refetched for it.
    generation: u64,
}

impl KeySet {
    /// The key a token's header names. Without a `kid`, the set's only
    /// key that fits `alg`, if there is exactly one.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&VerifyKey> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.kind.fits(alg));
                let only = fitting.next()?;
                fitting.next().is_none().then_some(only)
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: not a JWKS ({message})")]
    Document { url: String, message: String },
}

/// The cached key set and the one path that refreshes it.
pub struct JwksCache {
    client: reqwest::Client,
    source: JwksSource,
    refetch_interval: Duration,
    current: RwLock<Arc<KeySet>>,
    /// When an unknown `kid` last caused a fetch; held across the fetch so
    /// concurrent unknown-kid requests share it.
    refetch: tokio::sync::Mutex<Option<Instant>>,
    /// The `jwks_uri` discovery found (read once).
    discovered: tokio::sync::OnceCell<String>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl JwksCache {
    pub fn new(client: reqwest::Client, source: JwksSource, refetch_interval: Duration) -> Self {
        Self {
            client,
            source,
            refetch_interval,
            current: RwLock::new(Arc::new(KeySet::default())),
            refetch: tokio::sync::Mutex::new(None),
            discovered: tokio::sync::OnceCell::new(),
        }
    }

    /// The keys as last fetched.
    pub fn current(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(set) => set.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the key set at start and every `max_age` after, retrying a
    /// failed read with a growing pause; stops when the cache is dropped.
    pub fn spawn_refresher(self: &Arc<Self>, max_age: Duration) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let Some(cache) = weak.upgrade() else { return };
                let pause = match cache.refresh().await {
                    Ok(count) => {
                        tracing::info!(keys = count, source = ?cache.source, "OIDC key set read");
                        backoff = Duration::from_secs(1);
                        max_age
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            retry_in_s = backoff.as_secs(),
                            "cannot read the OIDC key set (JWKS); tokens are refused until it is read"
                        );
                        let pause = backoff;
                        backoff = (backoff * 2).min(max_age).min(Duration::from_secs(60));
                        pause
                    }
                };
                drop(cache);
                tokio::time::sleep(pause).await;
            }
        });
    }

    /// The key for a token: from the cache, else after one rate-limited
    /// refetch. `None`: the issuer has no such key (or cannot be reached).
    pub async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Option<VerifyKey> {
        let seen = self.current();
        if let Some(key) = seen.find(kid, alg) {
            return Some(key.clone());
        }
        let mut last = self.refetch.lock().await;
        // Another request refetched while this one waited: use its result.
        let now = self.current();
        if now.generation != seen.generation {
            return now.find(kid, alg).cloned();
        }
        if last.is_some_and(|at| at.elapsed() < self.refetch_interval) {
            tracing::debug!(
                ?kid,
                "unknown kid; the key set was reread recently, not again"
            );
            return None;
        }
        *last = Some(Instant::now());
        match self.refresh().await {
            Ok(_) => self.current().find(kid, alg).cloned(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reread the OIDC key set for an unknown kid");
                None
            }
        }
    }

    /// Fetches the set and replaces the cached one; the number of usable keys.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        let url = self.jwks_url().await?;
        let document = self.get_json(&url).await?;
        let keys = parse_key_set(&document).map_err(|message| FetchError::Document {
            url: url.clone(),
            message,
        })?;
        let count = keys.len();
        let mut current = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let generation = current.generation + 1;
        *current = Arc::new(KeySet { keys, generation });
        Ok(count)
    }

    async fn jwks_url(&self) -> Result<String, FetchError> {
        match &self.source {
            JwksSource::Url(url) => Ok(url.clone()),
            JwksSource::Discovery { config_url } => self
                .discovered
                .get_or_try_init(|| async {
                    let doc = self.get_json(config_url).await?;
                    doc.get("jwks_uri")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| FetchError::Document {
                            url: config_url.clone(),
                            message: "the discovery document has no `jwks_uri`".into(),
                        })
                })
                .await
                .cloned(),
        }
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, FetchError> {
        let http = |message: String| FetchError::Http {
            url: url.to_string(),
            message,
        };
        let mut response = self
            .client
            .get(url)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| http(e.to_string()))?;
        if !response.status().is_success() {
            return Err(http(format!("status {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| http(e.to_string()))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(http(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| FetchError::Document {
            url: url.to_string(),
            message: e.to_string(),
        })
    }
}

/// The usable keys of a JWKS document. A key this server cannot use (a
/// symmetric or Ed25519 key, an encryption key, a short RSA key, a
/// malformed one) is skipped, not fatal: issuers publish mixed sets.
pub fn parse_key_set(document: &serde_json::Value) -> Result<Vec<VerifyKey>, String> {
    let entries = document
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("no `keys` array")?;
    let mut keys = Vec::new();
    let mut kids = HashSet::new();
    for entry in entries {
        let kid = entry
            .get("kid")
            .and_then(|k| k.as_str())
            .map(str::to_string);
        match parse_key(entry) {
            Ok(key) => {
                if let Some(kid) = &kid {
                    if !kids.insert(kid.clone()) {
                        tracing::warn!(kid, "the JWKS names this kid twice; the first is used");
                        continue;
                    }
                }
                keys.push(key);
            }
            Err(reason) => tracing::debug!(?kid, reason, "JWKS key skipped"),
        }
    }
    Ok(keys)
}

fn parse_key(entry: &serde_json::Value) -> Result<VerifyKey, String> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| e.to_string())?;
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return Err("not a signing key (`use` is not `sig`)".into());
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let n = base64_len(&rsa.n);
            if n < MIN_RSA_MODULUS_BYTES {
                return Err(format!("RSA modulus of {} bits is too short", n * 8));
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let (kind, coordinate) = match ec.curve {
                EllipticCurve::P256 => (KeyKind::EcP256, 32),
                EllipticCurve::P384 => (KeyKind::EcP384, 48),
                _ => return Err("unsupported curve".into()),
            };
            if base64_len(&ec.x) != coordinate || base64_len(&ec.y) != coordinate {
                return Err("EC coordinates of the wrong length for the curve".into());
            }
            kind
        }
        _ => return Err("not an RSA or EC public key".into()),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(named) => {
            let alg = Algorithm::try_from(named).map_err(|e| e.to_string())?;
            if !kind.fits(alg) {
                return Err(format!("its `alg` {alg:?} does not fit a {kind:?} key"));
            }
            Some(alg)
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    Ok(VerifyKey {
        kid: jwk.common.key_id.clone(),
        kind,
        alg,
        key: Arc::new(key),
    })
}

/// Bytes a base64url string decodes to (without decoding it).
fn base64_len(text: &str) -> usize {
    let text = text.trim_end_matches('=');
    text.len() * 3 / 4
}
