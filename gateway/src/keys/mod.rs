//! Virtual keys: `sk-sl-<prefix>_<secret>` keys kept in the store as their
//! prefix and an HMAC under the server pepper, each carrying its tenant,
//! team, roles, model allowlist, limits and policy; and the teams they
//! belong to.
//!
//! [`VirtualKeys`] is both the hot-path check (an in-process map from
//! prefix to digest and [`Principal`], filled on a miss from the store,
//! dropped on a Redis broadcast or after a short TTL) and the one place
//! keys and teams are changed (by the admin API and `sluice keys` alike),
//! so every change also reaches the other instances.

mod invalidate;
mod records;
mod secret;
mod teams;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::auth::{
    presented_prefix, CallerLimits, Credential, CredentialCheck, Principal, Role, Roles,
};
use crate::config::{Backend as CacheBackend, Config};
use crate::error::ApiError;
use crate::sensitivity::TenantPolicy;
use crate::store::Store;
use crate::util::unix_now_ms;

pub use invalidate::{Broadcast, CHANNEL};
pub use records::{KeyChanges, KeyRecord, TeamChanges, TeamRecord};
pub use secret::{NewKey, Pepper};

use secret::{digests_match, from_hex, to_hex, Digest};

/// How long a cached key is trusted without a broadcast: the bound on a
/// change's delay while Redis is away.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Past this many cached prefixes (unknown ones included) the map starts
/// over, so random prefixes cannot grow it without bound.
const CACHE_MAX: usize = 100_000;
/// The tenant of a key created with neither a tenant nor a team.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("key pepper: {0}")]
    Pepper(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("no key has the prefix `{0}`")]
    NoKey(String),
    #[error(
        "no team `{0}`; create it first (POST /admin/teams or `sluice keys` with an existing team)"
    )]
    NoTeam(String),
    #[error("the team `{0}` already exists")]
    TeamExists(String),
    #[error("the team `{0}` still has {1} key(s); move or delete them first")]
    TeamInUse(String, i64),
    #[error("the key store holds a malformed row ({0})")]
    Corrupt(String),
    #[error("the key store failed: {0}")]
    Store(#[from] sqlx::Error),
}

/// A cached lookup: the key as of `fetched`, or `None` if there was none.
struct Entry {
    found: Option<Found>,
    fetched: Instant,
}

struct Found {
    digest: Digest,
    principal: Principal,
    expires_at: Option<i64>,
    revoke_at: Option<i64>,
    blocked: bool,
}

/// The virtual keys: checked on every request, changed by the admin API and
/// the CLI.
pub struct VirtualKeys {
    store: Store,
    pepper: Pepper,
    cache: RwLock<HashMap<String, Arc<Entry>>>,
    ttl: Duration,
    /// Whether any key exists (then every request needs a key).
    any_keys: AtomicBool,
    broadcast: Option<Broadcast>,
    /// Whether the invalidation listener is subscribed now.
    subscribed: AtomicBool,
}

impl std::fmt::Debug for VirtualKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualKeys")
            .field("any_keys", &self.any_keys.load(Ordering::Relaxed))
            .field("broadcast", &self.broadcast.is_some())
            .finish_non_exhaustive()
    }
}

impl VirtualKeys {
    /// Reads whether any key exists; `broadcast`: the Redis that carries
    /// changes between instances (`None`: the TTL alone).
    pub async fn open(
        store: Store,
        pepper: Pepper,
        broadcast: Option<Broadcast>,
    ) -> Result<Self, KeysError> {
        let keys = Self::with_ttl(store, pepper, broadcast, CACHE_TTL);
        keys.refresh_enforced().await?;
        Ok(keys)
    }

    fn with_ttl(store: Store, pepper: Pepper, broadcast: Option<Broadcast>, ttl: Duration) -> Self {
        Self {
            store,
            pepper,
            cache: RwLock::new(HashMap::new()),
            ttl,
            any_keys: AtomicBool::new(false),
            broadcast,
            subscribed: AtomicBool::new(false),
        }
    }

    /// Starts the invalidation listener (with Redis) and the periodic
    /// re-count of keys (another instance may create the first one).
    pub fn spawn_upkeep(self: &Arc<Self>, shutdown: CancellationToken) {
        match &self.broadcast {
            Some(b) => {
                tokio::spawn(invalidate::listen(
                    self.clone(),
                    b.clone(),
                    shutdown.clone(),
                ));
            }
            None => tracing::info!(
                ttl_seconds = self.ttl.as_secs(),
                "no Redis for key invalidations: another instance's key changes reach this one \
                 within the cache TTL"
            ),
        }
        let keys = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(keys.ttl) => {}
                }
                if let Err(e) = keys.refresh_enforced().await {
                    tracing::warn!(error = %e, "cannot count the virtual keys");
                }
            }
        });
    }

    async fn refresh_enforced(&self) -> Result<(), KeysError> {
        let n = records::count_keys(&self.store).await?;
        self.any_keys.store(n > 0, Ordering::Relaxed);
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Drops one prefix's cached entry.
    pub fn forget(&self, prefix: &str) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(prefix);
    }

    /// A broadcast from another instance: a key changed (so one exists), or
    /// (`*`) a team did.
    fn heard(&self, message: &str) {
        if message == invalidate::EVERYTHING {
            self.forget_all();
        } else {
            self.forget(message);
            self.any_keys.store(true, Ordering::Relaxed);
        }
    }

    /// Drops every cached entry.
    pub fn forget_all(&self) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The caller a presented `sk-sl-` token proves, or 401.
    pub async fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let prefix = presented_prefix(token).ok_or(ApiError::Unauthorized(
            "Malformed virtual key: expected `sk-sl-<prefix>_<secret>`.",
        ))?;
        let presented = self.pepper.digest(token);
        let entry = self.entry(prefix).await?;
        let Some(found) = entry
            .found
            .as_ref()
            .filter(|f| digests_match(&f.digest, &presented))
        else {
            return Err(ApiError::Unauthorized("Incorrect API key provided."));
        };
        let now = unix_now_ms();
        if found.blocked {
            return Err(ApiError::Unauthorized(
                "This API key is blocked; ask an admin to unblock it or to issue a new one.",
            ));
        }
        if found.expires_at.is_some_and(|at| at <= now) {
            return Err(ApiError::Unauthorized(
                "This API key has expired; ask an admin for a new one.",
            ));
        }
        if found.revoke_at.is_some_and(|at| at <= now) {
            return Err(ApiError::Unauthorized(
                "This API key has been revoked; use its replacement or ask an admin for a new one.",
            ));
        }
        Ok(found.principal.clone())
    }

    /// The caller a key stands for now, if it still works (exists, not
    /// blocked, expired or revoked), through the same cache as
    /// [`VirtualKeys::verify`]: the console re-checks a session made with
    /// a key on every request, so revoking the key ends the session.
    pub async fn current(&self, prefix: &str) -> Result<Option<Principal>, ApiError> {
        let entry = self.entry(prefix).await?;
        let now = unix_now_ms();
        Ok(entry
            .found
            .as_ref()
            .filter(|f| {
                !f.blocked
                    && f.expires_at.is_none_or(|at| at > now)
                    && f.revoke_at.is_none_or(|at| at > now)
            })
            .map(|f| f.principal.clone()))
    }

    /// A secret for another purpose derived from the pepper (HMAC of
    /// `label`), so every instance that shares the pepper derives the same.
    pub fn derived_secret(&self, label: &str) -> [u8; 32] {
        self.pepper.digest(label)
    }

    async fn entry(&self, prefix: &str) -> Result<Arc<Entry>, ApiError> {
        let cached = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(prefix)
            .filter(|e| e.fetched.elapsed() < self.ttl)
            .cloned();
        if let Some(entry) = cached {
            return Ok(entry);
        }
        let fetched = Instant::now();
        let found = self.load(prefix).await.map_err(|e| {
            tracing::error!(error = %e, "cannot look a virtual key up");
            ApiError::StoreUnavailable("The key store")
        })?;
        let entry = Arc::new(Entry { found, fetched });
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(prefix.to_string(), entry.clone());
        Ok(entry)
    }

    async fn load(&self, prefix: &str) -> Result<Option<Found>, KeysError> {
        let Some((key, digest)) = records::get_key(&self.store, prefix).await? else {
            return Ok(None);
        };
        let team = match &key.team {
            Some(id) => records::get_team(&self.store, id).await?,
            None => None,
        };
        let digest =
            from_hex(&digest).ok_or_else(|| KeysError::Corrupt(format!("digest of {prefix}")))?;
        Ok(Some(Found {
            digest,
            principal: principal(&key, team.as_ref()),
            expires_at: key.expires_at,
            revoke_at: key.revoke_at,
            blocked: key.blocked,
        }))
    }

    /// Forgets the prefix here and tells the other instances.
    async fn changed(&self, prefix: &str) {
        if prefix == invalidate::EVERYTHING {
            self.forget_all();
        } else {
            self.forget(prefix);
        }
        if let Some(b) = &self.broadcast {
            b.publish(prefix).await;
        }
    }

    /// Checks a key's team (it must exist) and fills the tenant from it.
    async fn settle_team(&self, key: &mut KeyRecord, tenant_given: bool) -> Result<(), KeysError> {
        let Some(id) = &key.team else {
            return Ok(());
        };
        let team = records::get_team(&self.store, id)
            .await?
            .ok_or_else(|| KeysError::NoTeam(id.clone()))?;
        if !tenant_given {
            key.tenant = team.tenant;
        } else if key.tenant != team.tenant {
            return Err(KeysError::Invalid {
                field: "tenant",
                message: format!(
                    "the team `{}` belongs to the tenant `{}`; leave the tenant out or use that one",
                    team.id, team.tenant
                ),
            });
        }
        Ok(())
    }

    /// Creates a key; the returned [`NewKey`] is the only time it is seen.
    pub async fn create(&self, changes: &KeyChanges) -> Result<(NewKey, KeyRecord), KeysError> {
        let now = unix_now_ms();
        let mut record = KeyRecord {
            prefix: String::new(),
            name: None,
            tenant: DEFAULT_TENANT.into(),
            team: None,
            user: None,
            roles: vec![Role::User],
            allowed_models: None,
            rpm: None,
            tpm: None,
            max_parallel: None,
            sensitive: false,
            regulated: false,
            guard: None,
            stream: None,
            stream_guard: None,
            expires_at: None,
            revoke_at: None,
            blocked: false,
            rotated_from: None,
            created_at: now,
            updated_at: now,
        };
        changes.apply(&mut record)?;
        self.settle_team(&mut record, changes.tenant.is_some())
            .await?;
        self.insert_fresh(record).await
    }

    /// Inserts `record` under a newly minted key (a new prefix if one is taken).
    async fn insert_fresh(&self, mut record: KeyRecord) -> Result<(NewKey, KeyRecord), KeysError> {
        for _ in 0..4 {
            let key = secret::mint();
            record.prefix = key.prefix.clone();
            let digest = to_hex(&self.pepper.digest(&key.key));
            if records::insert_key(&self.store, &record, &digest).await? {
                self.any_keys.store(true, Ordering::Relaxed);
                // A prefix looked up (and cached as unknown) before now.
                self.changed(&record.prefix).await;
                return Ok((key, record));
            }
        }
        Err(KeysError::Corrupt(
            "four minted prefixes in a row were taken".into(),
        ))
    }

    pub async fn get(&self, prefix: &str) -> Result<KeyRecord, KeysError> {
        records::get_key(&self.store, prefix)
            .await?
            .map(|(k, _)| k)
            .ok_or_else(|| KeysError::NoKey(prefix.into()))
    }

    pub async fn list(&self, team: Option<&str>) -> Result<Vec<KeyRecord>, KeysError> {
        records::list_keys(&self.store, team).await
    }

    /// Applies changes to a key; returns it as it is now.
    pub async fn update(&self, prefix: &str, changes: &KeyChanges) -> Result<KeyRecord, KeysError> {
        let mut record = self.get(prefix).await?;
        changes.apply(&mut record)?;
        if changes.team.is_some() || changes.tenant.is_some() {
            self.settle_team(&mut record, changes.tenant.is_some())
                .await?;
        }
        record.updated_at = unix_now_ms();
        if !records::update_key(&self.store, &record).await? {
            return Err(KeysError::NoKey(prefix.into()));
        }
        self.changed(prefix).await;
        Ok(record)
    }

    /// A new key with the same fields; the old one keeps working for
    /// `grace` and is then refused. Returns the new key, its record and
    /// the old record.
    pub async fn rotate(
        &self,
        prefix: &str,
        grace: Duration,
    ) -> Result<(NewKey, KeyRecord, KeyRecord), KeysError> {
        let mut old = self.get(prefix).await?;
        let now = unix_now_ms();
        let mut fresh = old.clone();
        fresh.rotated_from = Some(old.prefix.clone());
        fresh.revoke_at = None;
        fresh.created_at = now;
        fresh.updated_at = now;
        let (key, fresh) = self.insert_fresh(fresh).await?;
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let revoke_at = now.saturating_add(grace_ms);
        // A key already due to go sooner keeps its earlier time.
        old.revoke_at = Some(old.revoke_at.map_or(revoke_at, |at| at.min(revoke_at)));
        old.updated_at = now;
        records::update_key(&self.store, &old).await?;
        self.changed(prefix).await;
        Ok((key, fresh, old))
    }

    /// Refuses the key from now on.
    pub async fn revoke(&self, prefix: &str) -> Result<KeyRecord, KeysError> {
        let mut record = self.get(prefix).await?;
        let now = unix_now_ms();
        record.revoke_at = Some(record.revoke_at.map_or(now, |at| at.min(now)));
        record.updated_at = now;
        records::update_key(&self.store, &record).await?;
        self.changed(prefix).await;
        Ok(record)
    }
}

/// The Redis that carries key changes: `[auth] redis_url` (or
/// `SLUICE_REDIS_URL`), else the cache's.
pub fn invalidation_redis(config: &Config) -> Option<String> {
    config
        .virtual_keys
        .redis_url
        .as_ref()
        .map(|url| url.expose().to_string())
        .or_else(|| match &config.cache.backend {
            CacheBackend::Redis { url, .. } => Some(url.clone()),
            CacheBackend::Memory => None,
        })
}

/// The virtual keys as the config sets them up (pepper, invalidation
/// Redis), over an open store: for the server and `sluice keys` alike.
pub async fn open_configured(config: &Config, store: Store) -> Result<VirtualKeys, KeysError> {
    let pepper = Pepper::load(&config.virtual_keys.pepper, &config.store)?;
    let broadcast = invalidation_redis(config)
        .map(|url| {
            Broadcast::new(&url).map_err(|message| KeysError::Invalid {
                field: "auth.redis_url",
                message,
            })
        })
        .transpose()?;
    VirtualKeys::open(store, pepper, broadcast).await
}

impl CredentialCheck for VirtualKeys {
    fn claims(&self, token: &str) -> bool {
        token.starts_with("sk-sl-")
    }

    fn check<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Principal, ApiError>> {
        Box::pin(self.verify(token))
    }

    fn enforced(&self) -> bool {
        self.any_keys.load(Ordering::Relaxed)
    }
}

/// The caller a key (and its team) makes.
pub fn principal(key: &KeyRecord, team: Option<&TeamRecord>) -> Principal {
    let allowed_models = match (
        &key.allowed_models,
        team.and_then(|t| t.allowed_models.as_ref()),
    ) {
        (Some(own), Some(team)) => Some(own.iter().filter(|m| team.contains(m)).cloned().collect()),
        (Some(own), None) => Some(own.clone()),
        (None, Some(team)) => Some(team.clone()),
        (None, None) => None,
    };
    let roles = if key.roles.is_empty() {
        Roles::of(&[Role::User])
    } else {
        Roles::of(&key.roles)
    };
    Principal {
        tenant: Arc::from(key.tenant.as_str()),
        team: key.team.as_deref().map(Arc::from),
        user: key.user.as_deref().map(Arc::from),
        credential: Credential::VirtualKey {
            prefix: Arc::from(key.prefix.as_str()),
        },
        roles,
        allowed_models: allowed_models.map(|m: Vec<String>| Arc::from(m)),
        limits: CallerLimits {
            rpm: key.rpm,
            tpm: key.tpm,
            max_parallel: key.max_parallel,
        },
        team_limits: team.map_or_else(CallerLimits::default, |t| CallerLimits {
            rpm: t.rpm,
            tpm: t.tpm,
            max_parallel: t.max_parallel,
        }),
        policy: TenantPolicy {
            // Regulated implies sensitive: on-prem only.
            sensitive: key.sensitive || key.regulated,
            regulated: key.regulated,
            guard: key.guard,
            stream: key.stream,
            stream_guard: key.stream_guard,
        },
    }
}

/// The request path's allowlist check: 403 `model_not_allowed` when the
/// caller may not use `model`.
pub fn allow_model(principal: &Principal, model: &str) -> Result<(), ApiError> {
    if principal.may_use_model(model) {
        return Ok(());
    }
    let allowed = principal
        .allowed_models
        .as_deref()
        .map(|m| m.join(", "))
        .unwrap_or_default();
    Err(ApiError::Forbidden {
        message: format!(
            "This key may not use the model `{model}`; it may use: {}. Ask an admin to extend \
             its (or its team's or role's) allowed models.",
            if allowed.is_empty() { "none" } else { &allowed }
        ),
        code: "model_not_allowed",
    })
}
