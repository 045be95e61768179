//! The virtual keys' settings under `[auth]`: the pepper their digests are
//! keyed with, and the Redis that tells every instance a key changed.
//!
//! ```toml
//! [auth]
//! # A file holding the pepper (SLUICE_KEY_PEPPER, if set, wins). Without
//! # either, a SQLite store gets a random one beside its database; a
//! # PostgreSQL store refuses to start (every instance needs the same one).
//! pepper_file = "/etc/sluice/pepper"
//! # Where key changes are broadcast (default: the cache's Redis, if any;
//! # SLUICE_REDIS_URL overrides).
//! redis_url = "redis://127.0.0.1:6379"
//! ```

use std::path::{Path, PathBuf};

use super::{ConfigError, EnvLookup, Secret};

/// Where the pepper comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PepperSource {
    /// `SLUICE_KEY_PEPPER`.
    Env(Secret),
    /// `[auth] pepper_file`.
    File(PathBuf),
    /// Neither: a generated file beside a SQLite store, or a refusal.
    Unset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualKeySettings {
    pub pepper: PepperSource,
    /// The Redis for invalidations, when `[auth] redis_url` or
    /// `SLUICE_REDIS_URL` names one (else the cache's, if it has one).
    pub redis_url: Option<Secret>,
}

impl Default for VirtualKeySettings {
    fn default() -> Self {
        Self {
            pepper: PepperSource::Unset,
            redis_url: None,
        }
    }
}

pub(super) fn resolve(
    pepper_file: Option<PathBuf>,
    redis_url: Option<String>,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<VirtualKeySettings, ConfigError> {
    let pepper = match (
        env("SLUICE_KEY_PEPPER").filter(|v| !v.is_empty()),
        pepper_file,
    ) {
        (Some(value), _) => PepperSource::Env(Secret::new(value)),
        (None, Some(path)) => PepperSource::File(base_dir.join(path)),
        (None, None) => PepperSource::Unset,
    };
    let redis_url = env("SLUICE_REDIS_URL")
        .filter(|v| !v.is_empty())
        .or(redis_url)
        .map(|url| {
            if url.starts_with("redis://") || url.starts_with("rediss://") {
                Ok(Secret::new(url))
            } else {
                Err(super::invalid(
                    "auth.redis_url",
                    "the URL must start with `redis://` or `rediss://`",
                ))
            }
        })
        .transpose()?;
    Ok(VirtualKeySettings { pepper, redis_url })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_and_a_file_is_beside_the_config() {
        let env = |name: &str| (name == "SLUICE_KEY_PEPPER").then(|| "p3pper".to_string());
        let s = resolve(Some("pepper".into()), None, Path::new("/etc/s"), &env).unwrap();
        assert_eq!(s.pepper, PepperSource::Env(Secret::new("p3pper".into())));
        let none = |_: &str| None;
        let s = resolve(Some("pepper".into()), None, Path::new("/etc/s"), &none).unwrap();
        assert_eq!(s.pepper, PepperSource::File("/etc/s/pepper".into()));
        let s = resolve(None, None, Path::new("/etc/s"), &none).unwrap();
        assert_eq!(s.pepper, PepperSource::Unset);
    }

    #[test]
    fn a_redis_url_must_look_like_one() {
        let none = |_: &str| None;
        let err = resolve(None, Some("http://x".into()), Path::new("."), &none).unwrap_err();
        assert!(err.to_string().starts_with("auth.redis_url:"), "{err}");
        let s = resolve(None, Some("redis://h:1".into()), Path::new("."), &none).unwrap();
        assert!(s.redis_url.is_some());
    }
}
