//! Configuration: one TOML file, then environment overrides, then command-line
//! flags, resolved into a [`Config`] with no `Option` where a default exists.
//!
//! Secrets (API keys) come only from the environment or from files; the
//! resolved [`Secret`] never prints itself, and [`Config::to_redacted_toml`]
//! shows where each key came from instead of the key.
//!
//! Every error names the key at fault (`models[0].engine.block_size: ...`);
//! TOML syntax and type errors come from the `toml` crate with their line,
//! column and span.

mod audit;
mod budgets;
mod cache;
mod capabilities;
mod defaults;
mod defence;
mod encoders;
mod file;
mod guard;
mod keys;
mod limits;
mod models;
mod moderation;
mod oidc;
mod pii;
mod providers;
mod regulated;
mod render;
mod resolve;
mod roles;
mod routes;
mod sessions;
mod spend;
mod store;
mod stream;
mod telemetry;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_runtime::EngineConfig;

pub use audit::{AuditMode, AuditSettings, AuditSinkConfig, SyslogTarget, SyslogTransport};
pub use budgets::BudgetSettings;
pub use cache::{Backend, Bounds, CacheSettings};
pub use capabilities::{Capabilities, Capability};
pub use defaults::SamplingDefaults;
pub use defence::{DefenceConfig, DefenceMode};
pub use encoders::{EncoderConfig, EncoderKind, DEMO_EMBEDDING_ID};
pub use file::ByteSize;
use file::FileConfig;
pub use guard::{
    ClassifierGuardConfig, GuardAction, GuardConfig, GuardMode, GuardScoring, HeadSource,
    DEFAULT_GUARD_ID, DEFAULT_INJECTION_LABELS,
};
pub use keys::{PepperSource, VirtualKeySettings};
pub use limits::{KeyLimits, LimitsSettings, ModelLimit, OnStoreDown};
pub use moderation::{
    ModerationApi, ModerationConfig, OnModerationError, AZURE_CATEGORIES,
    DEFAULT_MODERATION_TIMEOUT_MS,
};
pub use oidc::{is_tenant_name, JwksSource, OidcSettings, TenantSource, ASYMMETRIC_ALGORITHMS};
pub use pii::{PiiAction, PiiEntity, PiiSettings};
pub use providers::{OpenAiDialect, ProviderConfig, ResilienceConfig};
pub use regulated::{MasterKeySource, RegulatedSettings, MIN_MASTER_BYTES};
use resolve::resolve;
pub use roles::RoleModels;
pub use routes::{
    DeploymentSettings, DeploymentSpec, Price, Residency, RewardScales, RouteSpec,
    SaturationLimits, Strategy, TargetSpec,
};
pub use sessions::{HotSettings, SessionSettings};
pub use spend::{ReferencePrice, SpendSettings};
pub use store::{default_data_dir, StoreLocation, StoreSettings};
pub use stream::{RouteStream, StreamGuardHead, StreamMode, StreamSettings};
pub use telemetry::{LogFormat, OtlpSettings, TelemetrySettings};

/// The id under which the demo chat model is served.
pub const DEMO_MODEL_ID: &str = "smollm2-135m-instruct";
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MAX_BODY_BYTES: usize = 2 << 20;
const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 30;
const DEFAULT_REQUEST_TIMEOUT_SECONDS: u64 = 600;
/// Requests the API serves at once unless `[server] max_in_flight` says
/// otherwise: past it, a newcomer gets 429 at once rather than a share of an
/// overloaded process (every one of them holds a connection, a body and
/// possibly an upstream call).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// `max_tokens` when a request gives none: the rest of the context, capped here.
const DEFAULT_MAX_TOKENS: usize = 4096;

/// Everything that can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// A secret string that never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where an API key was read from, for messages and `check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    File(PathBuf),
    /// The `SLUICE_API_KEYS` variable.
    KeysVariable,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env {name}"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::KeysVariable => f.write_str("env SLUICE_API_KEYS"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub tenant: String,
    pub source: KeySource,
    pub secret: Secret,
    /// Every request of this tenant is sensitive ([`crate::sensitivity`]).
    pub sensitive: bool,
    /// Every request of this key is regulated (and so sensitive): see
    /// [`crate::sensitivity`].
    pub regulated: bool,
    /// What this key's flagged requests get, instead of `[guard] action`.
    pub guard: Option<GuardAction>,
    /// How this key's answers are analysed, instead of `[stream]`'s mode.
    pub stream: Option<StreamMode>,
    /// Whether the guard scores this key's answer windows, instead of
    /// `[stream] guard`.
    pub stream_guard: Option<bool>,
    /// Requests/tokens per minute and in parallel for this key.
    pub limits: KeyLimits,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `/metrics` on its own address; `None`: on `listen`, see [`crate::metrics`].
    pub metrics_listen: Option<SocketAddr>,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub request_timeout: Duration,
    pub allow_unauthenticated: bool,
    /// API requests in flight at most (from arrival until the last byte of
    /// the answer, a stream's included).
    pub max_in_flight: usize,
    /// Worker threads of the async runtime that serves HTTP.
    pub http_threads: usize,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub id: String,
    pub path: PathBuf,
    pub default_max_tokens: usize,
    /// Weight format to re-pack quantised matrices into at load, if any.
    pub requantize: Option<sluice_models::WeightDType>,
    /// Activation precision against quantised weights.
    pub activations: sluice_models::ActivationPrecision,
    pub engine: EngineConfig,
    /// For what a request leaves out (`[models.defaults]` over
    /// `generation_config.json`).
    pub defaults: SamplingDefaults,
    /// How the model writes tool calls (`tool_parser`); `None`: as its
    /// chat template shows.
    pub tool_parser: Option<sluice_models::ToolFormat>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub keys: Vec<ApiKey>,
    pub models: Vec<ModelConfig>,
    /// Upstreams (`[[providers]]`), built by the router at start.
    pub providers: Vec<ProviderConfig>,
    /// The model map (`[[routes]]`); local models without a route are served directly.
    pub routes: Vec<RouteSpec>,
    pub cache: CacheSettings,
    /// The admin API's key (`[admin]`); no admin routes without one.
    pub admin_key: Option<Secret>,
    /// Where the admin key was read from, for `check-config`.
    pub admin_key_source: Option<KeySource>,
    /// In-process encoders (`[[encoders]]`).
    pub encoders: Vec<EncoderConfig>,
    pub guard: GuardConfig,
    /// The input defence's normalisation and rules (`[defence]`).
    pub defence: DefenceConfig,
    /// External moderation of the guard's uncertain band (`[moderation]`);
    /// `None`: no L3.
    pub moderation: Option<ModerationConfig>,
    /// The durable store (`[store]`): keys, spend, audit.
    pub store: StoreSettings,
    /// Virtual keys' pepper and invalidation Redis (`[auth]`).
    pub virtual_keys: VirtualKeySettings,
    /// Rate limits (`[limits]`).
    pub limits: LimitsSettings,
    /// Budgets (`[budgets]`): currency, time zone, counters, alerts.
    pub budgets: BudgetSettings,
    /// The spend log (`[spend]`).
    pub spend: SpendSettings,
    /// The audit log's sinks (`[audit]`).
    pub audit: AuditSettings,
    /// OIDC bearer tokens (`[auth.oidc]`).
    pub oidc: Option<OidcSettings>,
    /// The models each role may use (`[auth.role_models]`).
    pub role_models: RoleModels,
    /// Personal data in requests and answers (`[pii]`).
    pub pii: PiiSettings,
    /// Stored responses and conversations (`[sessions]`).
    pub sessions: SessionSettings,
    /// The analysers on every answer stream (`[stream]`).
    pub stream: StreamSettings,
    /// Regulated tenants and teams, and the master key (`[regulated]`).
    pub regulated: RegulatedSettings,
    /// Traces and the log format (`[telemetry]`).
    pub telemetry: TelemetrySettings,
}

/// What the command line adds on top of the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub model: Option<PathBuf>,
    pub model_id: Option<String>,
    pub allow_unauthenticated: bool,
}

/// Reads environment variables; a function so tests need not touch the process env.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Reads and resolves a configuration. With no file, serves `--model`, or
    /// the demo model when that is absent too.
    pub fn load(
        path: Option<&Path>,
        overrides: &Overrides,
        env: EnvLookup<'_>,
    ) -> Result<Self, ConfigError> {
        let (file, base_dir) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                let file: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.to_path_buf(),
                    message: e.to_string(),
                })?;
                let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
                (file, dir)
            }
            None => (FileConfig::default(), PathBuf::from(".")),
        };
        resolve(file, &base_dir, overrides, env)
    }

    /// Checks that every model's weights are where the config says.
    pub fn check_model_files(&self) -> Result<(), ConfigError> {
        encoders::check_encoder_files(&self.encoders)?;
        for (i, m) in self.models.iter().enumerate() {
            if m.path.exists() {
                continue;
            }
            if m.path == sluice_models::demo_chat_model_path() {
                return Err(invalid(
                    format!("models[{i}].path"),
                    format!(
                        "the demo model `{}` is not at {}; fetch it with `sluice fetch-models chat` \
                         (or `scripts/fetch-models.sh chat` in a clone of the repository)",
                        m.id,
                        m.path.display()
                    ),
                ));
            }
            return Err(invalid(
                format!("models[{i}].path"),
                format!("{} does not exist (model `{}`)", m.path.display(), m.id),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
