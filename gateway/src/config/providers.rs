//! The `[[providers]]` entries and their resilience settings, as plain data:
//! [`crate::providers`] builds the clients from them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Timeouts, retries and breaker settings of a deployment (all in ms).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceConfig {
    pub connect_timeout_ms: u64,
    /// Response headers plus the first content chunk of a stream.
    pub first_byte_timeout_ms: u64,
    /// The longest silence between two chunks of a stream.
    pub between_chunks_timeout_ms: u64,
    /// The whole request, retries and the answer's last byte included (and
    /// the limit for a non-streamed answer's body).
    pub total_timeout_ms: u64,
    /// Attempts per call, the first included (1 = no retries).
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// A `Retry-After` longer than this is not waited for: the call fails
    /// (and the router tries another deployment) instead.
    pub max_retry_after_ms: u64,
    /// Consecutive failed calls that open the breaker.
    pub breaker_failures: u32,
    /// How long an open breaker rejects before letting one probe through.
    pub breaker_cooldown_ms: u64,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 3_000,
            first_byte_timeout_ms: 30_000,
            between_chunks_timeout_ms: 30_000,
            total_timeout_ms: 600_000,
            max_attempts: 3,
            backoff_base_ms: 100,
            backoff_max_ms: 5_000,
            max_retry_after_ms: 10_000,
            breaker_failures: 5,
            breaker_cooldown_ms: 30_000,
        }
    }
}

impl ResilienceConfig {
    /// Checks the bounds; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let Self {
            connect_timeout_ms,
            first_byte_timeout_ms,
            between_chunks_timeout_ms,
            total_timeout_ms,
            max_attempts,
            backoff_base_ms,
            backoff_max_ms,
            max_retry_after_ms: _,
            breaker_failures,
            breaker_cooldown_ms: _,
        } = self;
        for (name, v) in [
            ("connect_timeout_ms", connect_timeout_ms),
            ("first_byte_timeout_ms", first_byte_timeout_ms),
            ("between_chunks_timeout_ms", between_chunks_timeout_ms),
            ("total_timeout_ms", total_timeout_ms),
        ] {
            if *v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if !(1..=10).contains(max_attempts) {
            return Err("max_attempts must be between 1 and 10".into());
        }
        if backoff_base_ms > backoff_max_ms {
            return Err("backoff_base_ms must not exceed backoff_max_ms".into());
        }
        if *breaker_failures == 0 {
            return Err("breaker_failures must be at least 1".into());
        }
        Ok(())
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// One `[[providers]]` entry. `kind` picks the variant.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum ProviderConfig {
    /// Any OpenAI-compatible API: OpenAI, vLLM, DashScope's compatible mode,
    /// Ollama, another Sluice.
    Openai {
        name: String,
        /// Up to and including `/v1`, e.g. `https://api.openai.com/v1`.
        base_url: String,
        api_key_env: Option<String>,
        api_key_file: Option<PathBuf>,
        /// Extra request headers (`OpenAI-Organization`, say); not secrets.
        #[serde(default)]
        headers: std::collections::BTreeMap<String, String>,
        /// `openai` (default) or `vllm`: a vLLM server also takes grammars
        /// (`guided_regex`, `guided_grammar`) and the same model's token ids.
        #[serde(default)]
        dialect: OpenAiDialect,
        #[serde(default)]
        resilience: ResilienceConfig,
    },
    Gigachat {
        name: String,
        /// Chat API base, default `https://gigachat.devices.sberbank.ru`.
        base_url: Option<String>,
        /// OAuth endpoint, default `https://ngw.devices.sberbank.ru:9443/api/v2/oauth`.
        oauth_url: Option<String>,
        /// The base64 "authorization key" sent as `Authorization: Basic`.
        auth_key_env: Option<String>,
        auth_key_file: Option<PathBuf>,
        /// `GIGACHAT_API_PERS`, `GIGACHAT_API_B2B` or `GIGACHAT_API_CORP`.
        scope: String,
        /// PEM bundle to trust in addition to the system roots (the Russian
        /// Trusted Root CA).
        ca_bundle: Option<PathBuf>,
        /// Refresh a token this long before it expires (default 60 000).
        token_refresh_margin_ms: Option<u64>,
        #[serde(default)]
        resilience: ResilienceConfig,
    },
    Yandex {
        name: String,
        /// Default `https://llm.api.cloud.yandex.net`.
        base_url: Option<String>,
        folder_id: String,
        /// A service-account API key (`Authorization: Api-Key`)...
        api_key_env: Option<String>,
        api_key_file: Option<PathBuf>,
        /// ...or an IAM token (`Authorization: Bearer`).
        iam_token_env: Option<String>,
        iam_token_file: Option<PathBuf>,
        #[serde(default)]
        resilience: ResilienceConfig,
    },
}

/// Which extensions of the OpenAI API an OpenAI-compatible upstream speaks.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OpenAiDialect {
    #[default]
    Openai,
    Vllm,
}

impl OpenAiDialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Vllm => "vllm",
        }
    }
}

impl ProviderConfig {
    /// The name deployments refer to.
    pub fn name(&self) -> &str {
        match self {
            Self::Openai { name, .. } | Self::Gigachat { name, .. } | Self::Yandex { name, .. } => {
                name
            }
        }
    }

    /// The timeouts, retries and breaker settings for this provider's
    /// deployments.
    pub fn resilience(&self) -> &ResilienceConfig {
        match self {
            Self::Openai { resilience, .. }
            | Self::Gigachat { resilience, .. }
            | Self::Yandex { resilience, .. } => resilience,
        }
    }
}
