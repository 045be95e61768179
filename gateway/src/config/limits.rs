//! The `[limits]` section: rate limits shared by every instance through
//! Redis (requests and tokens per minute, requests in parallel).
//!
//! ```toml
//! [limits]
//! # Shared counters (else the cache's Redis, else this process alone):
//! redis_url_env = "SLUICE_LIMITS_REDIS_URL"
//! burst = 3                        # requests allowed above the steady rate
//! on_store_down = "open"           # or "closed": 503 while Redis is away
//! provider_token_estimate = 1024   # tokens reserved for a provider request without max_tokens
//!
//! [[limits.models]]
//! model = "gpt-4o"
//! rpm = 600
//! tpm = 200000
//! max_parallel = 20
//! ```
//!
//! Per-key limits sit on the keys themselves (`[[auth.keys]] rpm/tpm/max_parallel`,
//! or a virtual key's fields).

use serde::Deserialize;

use super::{invalid, Backend, CacheSettings, ConfigError, EnvLookup};

/// The default tolerance above the steady rate: a few requests sent at
/// once pass, a flood is spread out.
const DEFAULT_BURST: u32 = 3;
const DEFAULT_PROVIDER_TOKEN_ESTIMATE: u64 = 1024;
const DEFAULT_PREFIX: &str = "sluice:limits";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub redis_url: Option<String>,
    /// The variable holding the Redis URL (it may carry a password).
    pub redis_url_env: Option<String>,
    /// Prefix of every counter key in Redis.
    pub redis_prefix: Option<String>,
    pub burst: Option<u32>,
    /// "open" (default) or "closed".
    pub on_store_down: Option<String>,
    pub provider_token_estimate: Option<u64>,
    #[serde(default)]
    pub models: Vec<ModelLimitSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimitSection {
    pub model: String,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u32>,
}

/// What a request gets while the shared counters cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreDown {
    /// Served under this process's own limiter (correct for one instance).
    Open,
    /// Refused with 503 `store_unavailable`.
    Closed,
}

/// One model's limits (shared by every caller of the model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLimit {
    pub model: String,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u32>,
}

/// The limits a config-file key carries (`[[auth.keys]] rpm/tpm/max_parallel`);
/// `None` leaves a dimension unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u32>,
}

/// The resolved `[limits]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsSettings {
    /// `None`: this process's limiter alone.
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub burst: u32,
    pub on_store_down: OnStoreDown,
    pub provider_token_estimate: u64,
    pub models: Vec<ModelLimit>,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_prefix: DEFAULT_PREFIX.into(),
            burst: DEFAULT_BURST,
            on_store_down: OnStoreDown::Open,
            provider_token_estimate: DEFAULT_PROVIDER_TOKEN_ESTIMATE,
            models: Vec::new(),
        }
    }
}

impl LimitsSection {
    pub fn resolve(
        self,
        env: EnvLookup<'_>,
        cache: &CacheSettings,
    ) -> Result<LimitsSettings, ConfigError> {
        let redis_url = match (self.redis_url_env, self.redis_url) {
            (Some(_), Some(_)) => {
                return Err(invalid("limits", "set `redis_url_env` or `redis_url`, not both"))
            }
            (Some(var), None) => Some(env(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
                invalid(
                    "limits.redis_url_env",
                    format!("the environment variable `{var}` is not set (it should hold a redis:// URL)"),
                )
            })?),
            (None, Some(url)) => Some(url),
            (None, None) => match &cache.backend {
                Backend::Redis { url, .. } => Some(url.clone()),
                Backend::Memory => None,
            },
        };
        if let Some(url) = &redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    "limits.redis_url",
                    "the URL must start with `redis://` or `rediss://`",
                ));
            }
        }
        let on_store_down = match self.on_store_down.as_deref() {
            None | Some("open") => OnStoreDown::Open,
            Some("closed") => OnStoreDown::Closed,
            Some(other) => {
                return Err(invalid(
                    "limits.on_store_down",
                    format!("`{other}` is not \"open\" or \"closed\""),
                ))
            }
        };
        let provider_token_estimate = self
            .provider_token_estimate
            .unwrap_or(DEFAULT_PROVIDER_TOKEN_ESTIMATE);
        if provider_token_estimate == 0 {
            return Err(invalid(
                "limits.provider_token_estimate",
                "must be at least 1 (tokens reserved for a provider request without max_tokens)",
            ));
        }
        let mut models: Vec<ModelLimit> = Vec::with_capacity(self.models.len());
        for (i, m) in self.models.into_iter().enumerate() {
            let at = |field: &str| format!("limits.models[{i}].{field}");
            if m.model.is_empty() {
                return Err(invalid(at("model"), "name the model (its public name)"));
            }
            if models.iter().any(|seen| seen.model == m.model) {
                return Err(invalid(
                    at("model"),
                    format!("`{}` has limits already", m.model),
                ));
            }
            check_positive(&at("rpm"), m.rpm.map(u64::from))?;
            check_positive(&at("tpm"), m.tpm)?;
            check_positive(&at("max_parallel"), m.max_parallel.map(u64::from))?;
            models.push(ModelLimit {
                model: m.model,
                rpm: m.rpm,
                tpm: m.tpm,
                max_parallel: m.max_parallel,
            });
        }
        Ok(LimitsSettings {
            redis_url,
            redis_prefix: self
                .redis_prefix
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| DEFAULT_PREFIX.into()),
            burst: self.burst.unwrap_or(DEFAULT_BURST),
            on_store_down,
            provider_token_estimate,
            models,
        })
    }
}

/// A limit of 0 would refuse everything: leave the field out for "no limit".
pub(super) fn check_positive(key: &str, value: Option<u64>) -> Result<(), ConfigError> {
    if value == Some(0) {
        return Err(invalid(
            key,
            "must be at least 1; leave it out for no limit",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> LimitsSection {
        toml::from_str(text).unwrap()
    }

    fn memory_cache() -> CacheSettings {
        super::super::cache::CacheSection::default()
            .resolve(&|_: &str| None)
            .unwrap()
    }

    #[test]
    fn defaults_are_open_local_and_a_small_burst() {
        let s = LimitsSection::default()
            .resolve(&|_: &str| None, &memory_cache())
            .unwrap();
        assert_eq!(s, LimitsSettings::default());
        assert_eq!(s.on_store_down, OnStoreDown::Open);
        assert!(s.redis_url.is_none());
    }

    #[test]
    fn the_cache_redis_is_reused_and_an_explicit_url_wins() {
        let mut cache = memory_cache();
        cache.backend = Backend::Redis {
            url: "redis://cache:6379".into(),
            prefix: "c".into(),
        };
        let s = LimitsSection::default()
            .resolve(&|_: &str| None, &cache)
            .unwrap();
        assert_eq!(s.redis_url.as_deref(), Some("redis://cache:6379"));
        let env = |name: &str| (name == "R").then(|| "redis://limits:6379".to_string());
        let s = parse(r#"redis_url_env = "R""#)
            .resolve(&env, &cache)
            .unwrap();
        assert_eq!(s.redis_url.as_deref(), Some("redis://limits:6379"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cache = memory_cache();
        for (text, key) in [
            (r#"on_store_down = "maybe""#, "limits.on_store_down"),
            (r#"redis_url = "http://x""#, "limits.redis_url"),
            (r#"redis_url_env = "MISSING""#, "limits.redis_url_env"),
            (
                "provider_token_estimate = 0",
                "limits.provider_token_estimate",
            ),
            ("[[models]]\nmodel = \"m\"\nrpm = 0", "limits.models[0].rpm"),
        ] {
            let err = parse(text).resolve(&|_: &str| None, &cache).unwrap_err();
            assert!(err.to_string().starts_with(key), "{text}: {err}");
        }
    }
}
