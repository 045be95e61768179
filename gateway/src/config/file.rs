//! The TOML file as written: every field optional, unknown keys refused, so
//! a typo fails at start instead of being silently ignored. [`super::resolve`]
//! turns this into the resolved [`super::Config`], which has no `Option`s
//! where a default exists.
//!
//! Room is left for sections that later issues add (`[providers]`, `[cache]`,
//! `[security]`): each becomes one more field here and one more resolved
//! struct; until then they are refused like any unknown key.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub models: Vec<ModelSection>,
    #[serde(default)]
    pub providers: Vec<super::ProviderConfig>,
    #[serde(default)]
    pub routes: Vec<super::routes::RouteSection>,
    #[serde(default)]
    pub cache: super::cache::CacheSection,
    #[serde(default)]
    pub admin: super::cache::AdminSection,
    /// `None` when the key is absent (the demo encoder), `Some([])` to serve none.
    pub encoders: Option<Vec<super::encoders::EncoderSection>>,
    pub guard: Option<super::guard::GuardSection>,
    #[serde(default)]
    pub defence: super::defence::DefenceSection,
    pub moderation: Option<super::moderation::ModerationSection>,
    #[serde(default)]
    pub store: super::store::StoreSection,
    #[serde(default)]
    pub limits: super::limits::LimitsSection,
    #[serde(default)]
    pub budgets: super::budgets::BudgetsSection,
    #[serde(default)]
    pub spend: super::spend::SpendSection,
    #[serde(default)]
    pub audit: super::audit::AuditSection,
    #[serde(default)]
    pub pii: super::pii::PiiSection,
    #[serde(default)]
    pub sessions: super::sessions::SessionsSection,
    #[serde(default)]
    pub stream: super::stream::StreamSection,
    #[serde(default)]
    pub regulated: super::regulated::RegulatedSection,
    #[serde(default)]
    pub telemetry: super::telemetry::TelemetrySection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: Option<String>,
    /// Serve `/metrics` here (and not on `listen`).
    pub metrics_listen: Option<String>,
    pub max_body_bytes: Option<ByteSize>,
    pub shutdown_grace_seconds: Option<u64>,
    pub request_timeout_seconds: Option<u64>,
    pub allow_unauthenticated: Option<bool>,
    pub max_in_flight: Option<usize>,
    /// Threads of the async runtime that serves HTTP (not the engines').
    pub http_threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    #[serde(default)]
    pub keys: Vec<KeySection>,
    /// Virtual keys: the pepper's file and the invalidation Redis (`config/keys.rs`).
    pub pepper_file: Option<PathBuf>,
    pub redis_url: Option<String>,
    /// OIDC bearer tokens (`[auth.oidc]`).
    pub oidc: Option<super::oidc::OidcSection>,
    /// The models each role may use (`[auth.role_models]`).
    #[serde(default)]
    pub role_models: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySection {
    pub tenant: String,
    pub key_env: Option<String>,
    pub key_file: Option<PathBuf>,
    /// This tenant's requests are sensitive: never cached, never sent out.
    pub sensitive: Option<bool>,
    /// This key's requests are regulated: sensitive, PII never cached,
    /// what they store encrypted, the audit fail-closed.
    pub regulated: Option<bool>,
    /// What this key's flagged requests get ("flag", "block", "off"),
    /// instead of `[guard] action`.
    pub guard: Option<String>,
    /// How this key's answers are analysed ("off", "hold_back",
    /// "stream_first", "buffer_full"), instead of `[stream] mode`.
    pub stream: Option<String>,
    /// Whether the guard scores this key's answer windows, instead of
    /// `[stream] guard`.
    pub stream_guard: Option<bool>,
    /// Accepted only to refuse it with a clear message: secrets never sit
    /// in the config file, which gets copied, committed and printed.
    pub key: Option<toml::Value>,
    /// This key's limits (requests/min, tokens/min, requests in parallel).
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub id: String,
    pub path: PathBuf,
    pub default_max_tokens: Option<usize>,
    /// Re-pack quantised weights at load: "q8_0", "q4_0", "f16" or "f32".
    pub requantize: Option<String>,
    /// How activations meet quantised weights: "int8" (default) or "f32".
    pub activation_dtype: Option<String>,
    #[serde(default)]
    pub engine: EngineSection,
    /// Sampling parameters for what a request leaves out.
    #[serde(default)]
    pub defaults: super::defaults::DefaultsSection,
    /// The tool-call format: "hermes" (or "qwen"), "smollm2", "llama3",
    /// "mistral"; absent: as the chat template shows.
    pub tool_parser: Option<String>,
}

/// Mirrors `sluice_runtime::EngineConfig`; absent fields take its defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    pub block_size: Option<usize>,
    pub kv_cache_bytes: Option<ByteSize>,
    pub num_kv_blocks: Option<usize>,
    pub max_num_seqs: Option<usize>,
    pub max_num_batched_tokens: Option<usize>,
    pub max_waiting: Option<usize>,
    pub threads: Option<usize>,
    pub enable_prefix_caching: Option<bool>,
    pub max_model_len: Option<usize>,
    /// "cpu" (the default) or "cuda:N".
    pub device: Option<String>,
    /// A GPU's KV cache element type: "bf16" (the default), "f16", "fp8_e4m3".
    pub kv_dtype: Option<String>,
    /// Seconds a finished turn of a session keeps its KV blocks warm; 0: off.
    pub session_keep_warm_secs: Option<u64>,
    /// Blocks held warm over all sessions at most (default: half the pool).
    pub session_warm_max_blocks: Option<usize>,
}

/// A byte count written as an integer (`1048576`) or with a binary unit
/// (`"512MiB"`, `"2GiB"`, `"64KiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '_')
            .unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: usize = digits.replace('_', "").parse().map_err(|_| {
            format!("`{text}` is not a size such as 1048576, \"64KiB\" or \"2GiB\"")
        })?;
        let shift = match unit.trim() {
            "" | "B" => 0,
            "KiB" => 10,
            "MiB" => 20,
            "GiB" => 30,
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{text}`; use B, KiB, MiB or GiB"
                ))
            }
        };
        n.checked_mul(1usize << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte count such as 1048576, \"64KiB\", \"512MiB\" or \"2GiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                usize::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                usize::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_binary_units() {
        assert_eq!(ByteSize::parse("1024").unwrap().0, 1024);
        assert_eq!(ByteSize::parse("64KiB").unwrap().0, 64 << 10);
        assert_eq!(ByteSize::parse("512MiB").unwrap().0, 512 << 20);
        assert_eq!(ByteSize::parse("2 GiB").unwrap().0, 2 << 30);
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("MiB").is_err());
    }
}
