//! The `[sessions]` section: stored responses and conversations.
//!
//! ```toml
//! [sessions]
//! retention_days = 30          # older sessions are purged (0: kept forever)
//! purge_interval_seconds = 3600
//! # A Redis hot layer shared by every instance (optional; the durable
//! # store of `[store]` always holds every acknowledged write):
//! redis_url = "redis://127.0.0.1:6379"   # or SLUICE_SESSIONS_REDIS_URL
//! redis_prefix = "sluice:sessions"
//! hot_ttl_seconds = 3600
//! # Encrypts stored content at rest for regulated (sensitive) keys; the
//! # variable holds a secret of at least 32 bytes.
//! encryption_key_env = "SLUICE_SESSIONS_KEY"
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, EnvLookup, Secret};

const DEFAULT_RETENTION_DAYS: u64 = 30;
const DEFAULT_PURGE_INTERVAL_SECONDS: u64 = 3600;
const DEFAULT_HOT_TTL_SECONDS: u64 = 3600;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsSection {
    pub retention_days: Option<u64>,
    pub purge_interval_seconds: Option<u64>,
    pub redis_url: Option<String>,
    pub redis_prefix: Option<String>,
    pub hot_ttl_seconds: Option<u64>,
    pub encryption_key_env: Option<String>,
}

/// The resolved `[sessions]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// Sessions untouched for longer are purged; `None`: kept forever.
    pub retention: Option<Duration>,
    pub purge_interval: Duration,
    /// The hot layer; `None`: the durable store alone.
    pub redis: Option<HotSettings>,
    /// The secret regulated content is encrypted under; `None`: stored plain.
    pub encryption_key: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotSettings {
    pub url: String,
    pub prefix: String,
    pub ttl: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            retention: Some(Duration::from_secs(DEFAULT_RETENTION_DAYS * 86_400)),
            purge_interval: Duration::from_secs(DEFAULT_PURGE_INTERVAL_SECONDS),
            redis: None,
            encryption_key: None,
        }
    }
}

impl SessionsSection {
    pub fn resolve(self, env: EnvLookup<'_>) -> Result<SessionSettings, ConfigError> {
        let Self {
            retention_days,
            purge_interval_seconds,
            redis_url,
            redis_prefix,
            hot_ttl_seconds,
            encryption_key_env,
        } = self;
        let days = retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
        let retention = match days {
            0 => None,
            d if d > 36_500 => {
                return Err(invalid(
                    "sessions.retention_days",
                    "must be at most 36500 (or 0 to keep sessions forever)",
                ))
            }
            d => Some(Duration::from_secs(d * 86_400)),
        };
        let purge_interval = match purge_interval_seconds.unwrap_or(DEFAULT_PURGE_INTERVAL_SECONDS)
        {
            0 => {
                return Err(invalid(
                    "sessions.purge_interval_seconds",
                    "must be at least 1",
                ))
            }
            s => Duration::from_secs(s),
        };
        let ttl = match hot_ttl_seconds.unwrap_or(DEFAULT_HOT_TTL_SECONDS) {
            0 => return Err(invalid("sessions.hot_ttl_seconds", "must be at least 1")),
            s => Duration::from_secs(s),
        };
        let url = env("SLUICE_SESSIONS_REDIS_URL")
            .filter(|u| !u.is_empty())
            .or(redis_url);
        let redis = url.map(|url| HotSettings {
            url,
            prefix: redis_prefix.unwrap_or_else(|| "sluice:sessions".into()),
            ttl,
        });
        let encryption_key = match encryption_key_env {
            None => None,
            Some(var) => {
                let value = env(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    invalid(
                        "sessions.encryption_key_env",
                        format!("the environment variable `{var}` is not set"),
                    )
                })?;
                if value.len() < 32 {
                    return Err(invalid(
                        "sessions.encryption_key_env",
                        format!("`{var}` must hold at least 32 bytes"),
                    ));
                }
                Some(Secret::new(value))
            }
        };
        Ok(SessionSettings {
            retention,
            purge_interval,
            redis,
            encryption_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn sessions_are_kept_thirty_days_by_default_without_redis() {
        let s = SessionsSection::default().resolve(&no_env).unwrap();
        assert_eq!(s.retention, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(s.redis, None);
    }

    #[test]
    fn zero_retention_keeps_sessions_and_the_environment_names_redis() {
        let env =
            |k: &str| (k == "SLUICE_SESSIONS_REDIS_URL").then(|| "redis://r:6379".to_string());
        let s = SessionsSection {
            retention_days: Some(0),
            ..Default::default()
        }
        .resolve(&env)
        .unwrap();
        assert_eq!(s.retention, None);
        assert_eq!(s.redis.unwrap().url, "redis://r:6379");
    }

    #[test]
    fn a_short_encryption_key_is_refused() {
        let env = |k: &str| (k == "K").then(|| "short".to_string());
        let err = SessionsSection {
            encryption_key_env: Some("K".into()),
            ..Default::default()
        }
        .resolve(&env)
        .unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
    }
}
