//! Sessions: stored responses (`/v1/responses`) and conversations
//! (`/v1/conversations`), each a row with a version and its items in order.
//!
//! Two layers behind one trait, [`SessionStore`]: the durable store
//! ([`Durable`], the `[store]` database: SQLite by default, PostgreSQL when
//! shared) and an optional Redis hot layer ([`Hot`]) that every instance
//! reads first. [`Sessions`] puts them together.
//!
//! Design choice: **write-through**. A write is acknowledged only after the
//! durable commit; Redis is updated after it with a version-guarded write
//! (a copy never replaces a newer one), and a read that misses Redis loads
//! the store and warms Redis the same guarded way. The source document's
//! write-behind (acknowledge after Redis, copy to PostgreSQL later) loses
//! acknowledged writes when Redis dies; a Redis stream with `WAITAOF` and an
//! idempotent flusher would not, but it adds a second writer, a replay path
//! and an fsync on Redis to every append, to save one database round trip
//! that the benchmark shows is cheap (`bench/RESULTS.md`, Session 7). With
//! write-through, Redis holds nothing that the store does not, so losing
//! Redis (`kill -9`) costs warmth, never data.
//!
//! Each session carries a version, bumped by every change; an append may
//! name the version it was based on and is refused (409) when another
//! change came first. Each appended item carries an idempotency key: a
//! retried append finds its rows and writes nothing.
//!
//! Deleted sessions leave a tombstone in Redis (no content, the hot TTL),
//! so a reader that loaded the row just before the delete cannot put it
//! back into Redis afterwards.

mod durable;
mod hot;
pub mod retention;
pub mod runs;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

pub use crate::sealing::Cipher;
pub use durable::Durable;
pub use hot::Hot;

/// What a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A stored response: its input items; the response object in the body.
    Response,
    /// A conversation: its items; its metadata in the body.
    Conversation,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Response => "response",
            Self::Conversation => "conversation",
        }
    }

    fn parse(text: &str) -> Result<Self, SessionError> {
        match text {
            "response" => Ok(Self::Response),
            "conversation" => Ok(Self::Conversation),
            other => Err(SessionError::Corrupt(format!("unknown kind `{other}`"))),
        }
    }
}

/// A session's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub tenant: String,
    /// Whom the content is about (erasure by user finds it by this).
    pub user: Option<String>,
    pub kind: Kind,
    /// Bumped by every change.
    pub version: i64,
    /// The seq of the last item appended (items are numbered from 1).
    pub last_seq: i64,
    /// A response's `previous_response_id`.
    pub parent: Option<String>,
    /// The conversation a response was added to.
    pub conversation: Option<String>,
    pub body: Value,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    pub updated_at: i64,
}

/// One stored item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub seq: i64,
    pub id: String,
    pub key: String,
    pub body: Value,
}

/// An item to append: its public id, its idempotency key, its JSON.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub id: String,
    pub key: String,
    pub body: Value,
    /// Encrypt at rest (a sensitive caller's content), when a key is set.
    pub seal: bool,
}

/// A session to create.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub tenant: String,
    pub user: Option<String>,
    pub kind: Kind,
    pub parent: Option<String>,
    pub conversation: Option<String>,
    pub body: Value,
    /// Encrypt the body at rest, when a key is set.
    pub seal: bool,
}

/// A session with all its items: what a read returns and Redis holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub session: Session,
    pub items: Vec<Item>,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// The session's version after it.
    pub version: i64,
    /// Its last item's seq and its change time after it (what the hot
    /// layer's in-place append needs).
    pub last_seq: i64,
    pub updated_at: i64,
    /// The items as stored (their seq numbers).
    pub items: Vec<Item>,
    /// Every item was already there (a retried append): nothing written.
    pub duplicate: bool,
}

/// A session an erasure or a purge removed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Removed {
    pub id: String,
    pub tenant: String,
}

/// Whose sessions an erasure removes.
#[derive(Debug, Clone, Copy)]
pub enum Erase<'a> {
    Tenant(&'a str),
    /// A user's, in one tenant or (`tenant: None`) in all.
    User {
        tenant: Option<&'a str>,
        user: &'a str,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session `{0}` not found")]
    NotFound(String),
    #[error("item `{0}` not found")]
    ItemNotFound(String),
    #[error("session `{id}` is at version {current}; the change was based on version {expected}")]
    Stale {
        id: String,
        expected: i64,
        current: i64,
    },
    #[error("some items of this append were already written by another one")]
    PartialDuplicate,
    #[error("an append needs at least one item")]
    Empty,
    #[error("session store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("a stored session is unreadable: {0}")]
    Corrupt(String),
}

impl From<crate::sealing::SealError> for SessionError {
    fn from(e: crate::sealing::SealError) -> Self {
        Self::Corrupt(e.to_string())
    }
}

impl SessionError {
    /// The client's error; `what` names the object (`Response`, `Conversation`).
    pub fn to_api(&self, what: &'static str) -> ApiError {
        match self {
            Self::NotFound(id) => ApiError::NotFound {
                what,
                id: id.clone(),
            },
            Self::ItemNotFound(id) => ApiError::NotFound {
                what: "Item",
                id: id.clone(),
            },
            Self::Stale { .. } | Self::PartialDuplicate => ApiError::Conflict(format!(
                "{self}; read the {} again and retry",
                what.to_lowercase()
            )),
            Self::Empty => ApiError::invalid("items", "give at least one item"),
            Self::Store(e) => {
                tracing::error!(error = %e, "session store failed");
                ApiError::StoreUnavailable("The session store")
            }
            Self::Corrupt(e) => ApiError::Internal(format!("session store: {e}")),
        }
    }
}

/// The session store's operations; every read and write is scoped by
/// tenant (another tenant's id is `NotFound`).
pub trait SessionStore: Send + Sync {
    /// Creates a session with its first items (version 1).
    fn create(
        &self,
        new: NewSession,
        items: Vec<NewItem>,
    ) -> impl Future<Output = Result<Snapshot, SessionError>> + Send;
    fn load(
        &self,
        tenant: &str,
        id: &str,
    ) -> impl Future<Output = Result<Snapshot, SessionError>> + Send;
    /// Appends items at the end; with `expected`, only if the session is
    /// still at that version (else [`SessionError::Stale`]).
    fn append(
        &self,
        tenant: &str,
        id: &str,
        expected: Option<i64>,
        items: Vec<NewItem>,
    ) -> impl Future<Output = Result<Appended, SessionError>> + Send;
    /// Replaces the body (a conversation's metadata, a response object);
    /// the new version.
    fn update(
        &self,
        tenant: &str,
        id: &str,
        expected: Option<i64>,
        body: Value,
    ) -> impl Future<Output = Result<i64, SessionError>> + Send;
    /// Removes one item; the new version.
    fn delete_item(
        &self,
        tenant: &str,
        id: &str,
        item_id: &str,
    ) -> impl Future<Output = Result<i64, SessionError>> + Send;
    fn delete(
        &self,
        tenant: &str,
        id: &str,
    ) -> impl Future<Output = Result<(), SessionError>> + Send;
    /// Removes every session of a tenant or a user.
    fn erase(
        &self,
        scope: Erase<'_>,
    ) -> impl Future<Output = Result<Vec<Removed>, SessionError>> + Send;
    /// Removes every session untouched since `cutoff_ms`.
    fn purge_before(
        &self,
        cutoff_ms: i64,
    ) -> impl Future<Output = Result<Vec<Removed>, SessionError>> + Send;
}

/// The durable store with the hot layer in front, write-through; content
/// marked `seal` is encrypted before either sees it.
pub struct Sessions {
    durable: Durable,
    hot: Option<Hot>,
    cipher: Option<Cipher>,
    /// Sealing was asked for without a key: said once in the log.
    unsealed_warned: AtomicBool,
    /// Background responses running on this instance (their stored state
    /// is in the store like any response's).
    runs: Arc<runs::Runs>,
}

impl Sessions {
    pub fn new(durable: Durable, hot: Option<Hot>, cipher: Option<Cipher>) -> Self {
        Self {
            durable,
            hot,
            cipher,
            unsealed_warned: AtomicBool::new(false),
            runs: Arc::default(),
        }
    }

    /// This instance's background responses.
    pub fn runs(&self) -> &Arc<runs::Runs> {
        &self.runs
    }

    /// Replaces a session's body as [`SessionStore::update`] does, sealing
    /// it first when `seal` (a sensitive caller's response object).
    pub async fn update_sealed(
        &self,
        tenant: &str,
        id: &str,
        expected: Option<i64>,
        mut body: Value,
        seal: bool,
    ) -> Result<i64, SessionError> {
        if let Some(cipher) = self.sealer(seal) {
            body = cipher.seal(tenant, id, &body).await?;
        }
        self.update(tenant, id, expected, body).await
    }

    /// The cipher when `seal` is asked for (`None`: store plain, said once).
    fn sealer(&self, seal: bool) -> Option<&Cipher> {
        if !seal {
            return None;
        }
        if self.cipher.is_none() && !self.unsealed_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a sensitive caller's session content is stored unencrypted: set \
                 [sessions] encryption_key_env to encrypt it at rest"
            );
        }
        self.cipher.as_ref()
    }

    async fn seal_items(
        &self,
        tenant: &str,
        id: &str,
        items: &mut [NewItem],
    ) -> Result<(), SessionError> {
        for item in items {
            if let Some(cipher) = self.sealer(item.seal) {
                item.body = cipher
                    .seal(tenant, &item_place(id, &item.key), &item.body)
                    .await?;
            }
        }
        Ok(())
    }

    /// Opens what was sealed (a plain value passes).
    async fn open(&self, mut snapshot: Snapshot) -> Result<Snapshot, SessionError> {
        let Some(cipher) = &self.cipher else {
            return Ok(snapshot);
        };
        let id = snapshot.session.id.clone();
        let tenant = snapshot.session.tenant.clone();
        let body = std::mem::take(&mut snapshot.session.body);
        snapshot.session.body = cipher.open(&tenant, &id, body).await?;
        for item in &mut snapshot.items {
            let body = std::mem::take(&mut item.body);
            item.body = cipher
                .open(&tenant, &item_place(&id, &item.key), body)
                .await?;
        }
        Ok(snapshot)
    }

    async fn open_items(
        &self,
        tenant: &str,
        id: &str,
        items: &mut [Item],
    ) -> Result<(), SessionError> {
        if let Some(cipher) = &self.cipher {
            for item in items {
                let body = std::mem::take(&mut item.body);
                item.body = cipher
                    .open(tenant, &item_place(id, &item.key), body)
                    .await?;
            }
        }
        Ok(())
    }

    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    pub fn hot(&self) -> Option<&Hot> {
        self.hot.as_ref()
    }

    /// After a durable change: the store's copy into Redis (guarded, so a
    /// slower writer's older copy never wins).
    async fn refresh(&self, tenant: &str, id: &str) {
        let Some(hot) = &self.hot else { return };
        match self.durable.load(tenant, id).await {
            Ok(snapshot) => hot.put(&snapshot).await,
            // Gone meanwhile (deleted): its deleter buried it.
            Err(_) => hot.forget(id).await,
        }
    }

    async fn bury_all(&self, removed: &[Removed]) {
        if let Some(hot) = &self.hot {
            for r in removed {
                hot.bury(&r.id).await;
            }
        }
    }
}

/// What an item's sealed value is bound to.
fn item_place(id: &str, key: &str) -> String {
    format!("{id}\u{1f}{key}")
}

impl SessionStore for Sessions {
    async fn create(
        &self,
        mut new: NewSession,
        mut items: Vec<NewItem>,
    ) -> Result<Snapshot, SessionError> {
        if let Some(cipher) = self.sealer(new.seal) {
            new.body = cipher.seal(&new.tenant, &new.id, &new.body).await?;
        }
        self.seal_items(&new.tenant, &new.id, &mut items).await?;
        let snapshot = self.durable.create(new, items).await?;
        if let Some(hot) = &self.hot {
            hot.put(&snapshot).await;
        }
        self.open(snapshot).await
    }

    async fn load(&self, tenant: &str, id: &str) -> Result<Snapshot, SessionError> {
        if let Some(hot) = &self.hot {
            match hot.get(id).await {
                Some(hot::Entry::Live(snapshot)) if snapshot.session.tenant == tenant => {
                    return self.open(*snapshot).await
                }
                // Another tenant's id, or a deleted one: the store would
                // say the same.
                Some(hot::Entry::Live(_)) | Some(hot::Entry::Gone) => {
                    return Err(SessionError::NotFound(id.to_string()))
                }
                // A miss, or Redis unavailable: the store answers.
                None => {}
            }
        }
        let snapshot = self.durable.load(tenant, id).await?;
        if let Some(hot) = &self.hot {
            hot.put(&snapshot).await;
        }
        self.open(snapshot).await
    }

    async fn append(
        &self,
        tenant: &str,
        id: &str,
        expected: Option<i64>,
        mut items: Vec<NewItem>,
    ) -> Result<Appended, SessionError> {
        self.seal_items(tenant, id, &mut items).await?;
        let mut appended = self.durable.append(tenant, id, expected, items).await?;
        if let (false, Some(hot)) = (appended.duplicate, &self.hot) {
            let patched = hot
                .append(
                    id,
                    appended.version,
                    appended.last_seq,
                    appended.updated_at,
                    &appended.items,
                )
                .await;
            if patched == hot::Patched::Stale {
                self.refresh(tenant, id).await;
            }
        }
        self.open_items(tenant, id, &mut appended.items).await?;
        Ok(appended)
    }

    async fn update(
        &self,
        tenant: &str,
        id: &str,
        expected: Option<i64>,
        body: Value,
    ) -> Result<i64, SessionError> {
        let version = self.durable.update(tenant, id, expected, body).await?;
        self.refresh(tenant, id).await;
        Ok(version)
    }

    async fn delete_item(
        &self,
        tenant: &str,
        id: &str,
        item_id: &str,
    ) -> Result<i64, SessionError> {
        let version = self.durable.delete_item(tenant, id, item_id).await?;
        self.refresh(tenant, id).await;
        Ok(version)
    }

    async fn delete(&self, tenant: &str, id: &str) -> Result<(), SessionError> {
        self.durable.delete(tenant, id).await?;
        if let Some(hot) = &self.hot {
            hot.bury(id).await;
        }
        Ok(())
    }

    async fn erase(&self, scope: Erase<'_>) -> Result<Vec<Removed>, SessionError> {
        let ids = self.durable.erase(scope).await?;
        self.bury_all(&ids).await;
        Ok(ids)
    }

    async fn purge_before(&self, cutoff_ms: i64) -> Result<Vec<Removed>, SessionError> {
        let ids = self.durable.purge_before(cutoff_ms).await?;
        self.bury_all(&ids).await;
        Ok(ids)
    }
}
