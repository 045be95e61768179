//! The `[budgets]` section: the currency budgets are kept in, the time zone
//! their calendar periods follow, where the shared counters live, and where
//! alerts go. The budgets themselves are rows of the store (`/admin/budgets`).
//!
//! ```toml
//! [budgets]
//! currency = "RUB"                 # the default; prices are read in it
//! timezone = "Europe/Moscow"       # `day` and `calendar_month` follow it (default UTC)
//! redis_url_env = "SLUICE_BUDGET_REDIS_URL"   # else redis_url, else the cache's Redis
//! alert_webhook = "https://hooks.example/sluice"
//! alert_thresholds = [50, 80, 100] # percent of each budget
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, EnvLookup, Secret};

const DEFAULT_CURRENCY: &str = "RUB";
const DEFAULT_TIMEZONE: &str = "UTC";
const DEFAULT_PREFIX: &str = "sluice:budget";
const DEFAULT_THRESHOLDS: [u32; 3] = [50, 80, 100];
const DEFAULT_ALERT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_REFRESH_MS: u64 = 1_000;
/// A request without `max_tokens` to a route served by providers (which
/// name no default) is reserved for at most this many output tokens.
const DEFAULT_PROVIDER_MAX_TOKENS: usize = 4096;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsSection {
    pub currency: Option<String>,
    pub timezone: Option<String>,
    pub redis_url: Option<String>,
    pub redis_url_env: Option<String>,
    pub redis_prefix: Option<String>,
    pub alert_webhook: Option<String>,
    pub alert_thresholds: Option<Vec<u32>>,
    pub alert_timeout_ms: Option<u64>,
    /// How often each instance re-reads the budget rows (a change made
    /// through another instance shows here within this time).
    pub refresh_ms: Option<u64>,
    pub provider_max_tokens: Option<usize>,
}

/// The resolved `[budgets]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSettings {
    /// Every budget is in this currency; prices are read in it too.
    pub currency: String,
    /// An IANA name, checked against the time zone database at start.
    pub timezone: String,
    /// The shared counters; `None`: an in-process ledger (one instance).
    pub redis_url: Option<Secret>,
    pub redis_prefix: String,
    pub alert_webhook: Option<String>,
    /// Percentages, ascending, each in 1..=1000.
    pub alert_thresholds: Vec<u32>,
    pub alert_timeout: Duration,
    pub refresh: Duration,
    pub provider_max_tokens: usize,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            currency: DEFAULT_CURRENCY.into(),
            timezone: DEFAULT_TIMEZONE.into(),
            redis_url: None,
            redis_prefix: DEFAULT_PREFIX.into(),
            alert_webhook: None,
            alert_thresholds: DEFAULT_THRESHOLDS.to_vec(),
            alert_timeout: Duration::from_millis(DEFAULT_ALERT_TIMEOUT_MS),
            refresh: Duration::from_millis(DEFAULT_REFRESH_MS),
            provider_max_tokens: DEFAULT_PROVIDER_MAX_TOKENS,
        }
    }
}

impl BudgetsSection {
    /// `cache_redis`: the cache's Redis URL, the fallback for the counters.
    pub fn resolve(
        self,
        env: EnvLookup<'_>,
        cache_redis: Option<&str>,
    ) -> Result<BudgetSettings, ConfigError> {
        let currency = self
            .currency
            .unwrap_or_else(|| DEFAULT_CURRENCY.into())
            .to_ascii_uppercase();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(invalid(
                "budgets.currency",
                format!("`{currency}` is not a three-letter currency code such as RUB or USD"),
            ));
        }
        let timezone = self.timezone.unwrap_or_else(|| DEFAULT_TIMEZONE.into());
        if let Err(e) = jiff::tz::TimeZone::get(&timezone) {
            return Err(invalid(
                "budgets.timezone",
                format!("`{timezone}` is not a known time zone ({e}); use an IANA name such as Europe/Moscow"),
            ));
        }
        let redis_url = match (self.redis_url_env, self.redis_url) {
            (Some(_), Some(_)) => {
                return Err(invalid("budgets", "set `redis_url_env` or `redis_url`, not both"))
            }
            (Some(var), None) => Some(env(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
                invalid(
                    "budgets.redis_url_env",
                    format!("the environment variable `{var}` is not set (it should hold a redis:// URL)"),
                )
            })?),
            (None, Some(url)) => Some(url),
            (None, None) => cache_redis.map(str::to_string),
        };
        if let Some(url) = &redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    "budgets.redis_url",
                    "the URL must start with redis:// or rediss://",
                ));
            }
        }
        let mut alert_thresholds = self
            .alert_thresholds
            .unwrap_or_else(|| DEFAULT_THRESHOLDS.to_vec());
        if let Some(bad) = alert_thresholds.iter().find(|t| !(1..=1000).contains(*t)) {
            return Err(invalid(
                "budgets.alert_thresholds",
                format!("{bad} is not a percentage in 1..=1000"),
            ));
        }
        alert_thresholds.sort_unstable();
        alert_thresholds.dedup();
        if let Some(hook) = &self.alert_webhook {
            if !(hook.starts_with("http://") || hook.starts_with("https://")) {
                return Err(invalid(
                    "budgets.alert_webhook",
                    "the webhook must be an http:// or https:// URL",
                ));
            }
        }
        let provider_max_tokens = self
            .provider_max_tokens
            .unwrap_or(DEFAULT_PROVIDER_MAX_TOKENS);
        if provider_max_tokens == 0 {
            return Err(invalid("budgets.provider_max_tokens", "must be at least 1"));
        }
        Ok(BudgetSettings {
            currency,
            timezone,
            redis_url: redis_url.map(Secret::new),
            redis_prefix: self.redis_prefix.unwrap_or_else(|| DEFAULT_PREFIX.into()),
            alert_webhook: self.alert_webhook,
            alert_thresholds,
            alert_timeout: Duration::from_millis(
                self.alert_timeout_ms
                    .unwrap_or(DEFAULT_ALERT_TIMEOUT_MS)
                    .max(1),
            ),
            refresh: Duration::from_millis(self.refresh_ms.unwrap_or(DEFAULT_REFRESH_MS)),
            provider_max_tokens,
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
    fn defaults_are_rub_utc_and_50_80_100() {
        let s = BudgetsSection::default().resolve(&no_env, None).unwrap();
        assert_eq!(s, BudgetSettings::default());
    }

    #[test]
    fn the_cache_redis_is_the_fallback_and_bad_values_name_their_key() {
        let s = BudgetsSection::default()
            .resolve(&no_env, Some("redis://127.0.0.1:6379"))
            .unwrap();
        assert_eq!(s.redis_url.unwrap().expose(), "redis://127.0.0.1:6379");
        let err = BudgetsSection {
            timezone: Some("Mars/Olympus".into()),
            ..Default::default()
        }
        .resolve(&no_env, None)
        .unwrap_err();
        assert!(err.to_string().starts_with("budgets.timezone:"), "{err}");
        let err = BudgetsSection {
            alert_thresholds: Some(vec![50, 0]),
            ..Default::default()
        }
        .resolve(&no_env, None)
        .unwrap_err();
        assert!(
            err.to_string().starts_with("budgets.alert_thresholds:"),
            "{err}"
        );
        let err = BudgetsSection {
            redis_url_env: Some("NOPE".into()),
            ..Default::default()
        }
        .resolve(&no_env, None)
        .unwrap_err();
        assert!(err.to_string().contains("NOPE"), "{err}");
    }
}
