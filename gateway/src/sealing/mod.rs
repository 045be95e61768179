//! Encryption at rest for what regulated and sensitive callers store:
//! session content (`sessions`), cached answers and the semantic cache's
//! payloads (`cache`, Redis backend).
//!
//! Envelope style: each tenant has a random data key ([`DataKeys`]), kept
//! in the store only wrapped by the master key (`[regulated]
//! master_key_env` or `master_key_file`; `[sessions] encryption_key_env`
//! when those are absent); values are sealed with AES-256-GCM under the
//! tenant's data key and bound to where they live ([`Cipher`]). A value of
//! one tenant never opens under another tenant's key.
//!
//! Must not depend on the request path: it takes a tenant, a place and a
//! value, and knows nothing of who asked.

mod cipher;
mod data_keys;

pub use cipher::{is_sealed, Cipher, TenantKey};
pub use data_keys::DataKeys;

/// Why a value could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// A sealed value or a wrapped key that does not open.
    #[error("{0}")]
    Corrupt(String),
    /// The master key is unusable, or not the one a data key was wrapped with.
    #[error("{0}")]
    Master(String),
    #[error("the data key store: {0}")]
    Store(#[from] sqlx::Error),
}
