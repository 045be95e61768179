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

mod file;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_runtime::EngineConfig;

pub use file::ByteSize;
use file::{EngineSection, FileConfig, KeySection, ModelSection};

/// The id under which the demo chat model is served.
pub const DEMO_MODEL_ID: &str = "smollm2-135m-instruct";
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MAX_BODY_BYTES: usize = 2 << 20;
const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 30;
const DEFAULT_REQUEST_TIMEOUT_SECONDS: u64 = 600;
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
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub request_timeout: Duration,
    pub allow_unauthenticated: bool,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub id: String,
    pub path: PathBuf,
    pub default_max_tokens: usize,
    pub engine: EngineConfig,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub keys: Vec<ApiKey>,
    pub models: Vec<ModelConfig>,
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
                let file: FileConfig =
                    toml::from_str(&text).map_err(|e| ConfigError::Parse {
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

    /// The effective configuration as TOML, keys replaced by their source.
    pub fn to_redacted_toml(&self) -> String {
        use toml::{Table, Value};
        fn int(n: usize) -> Value {
            Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
        }
        let mut server = Table::new();
        server.insert("listen".into(), Value::String(self.server.listen.to_string()));
        server.insert("max_body_bytes".into(), int(self.server.max_body_bytes));
        server.insert(
            "shutdown_grace_seconds".into(),
            int(self.server.shutdown_grace.as_secs() as usize),
        );
        server.insert(
            "request_timeout_seconds".into(),
            int(self.server.request_timeout.as_secs() as usize),
        );
        server.insert(
            "allow_unauthenticated".into(),
            Value::Boolean(self.server.allow_unauthenticated),
        );
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|k| {
                let mut t = Table::new();
                t.insert("tenant".into(), Value::String(k.tenant.clone()));
                t.insert("key".into(), Value::String(format!("<redacted: {}>", k.source)));
                Value::Table(t)
            })
            .collect();
        let mut auth = Table::new();
        auth.insert("keys".into(), Value::Array(keys));
        let models: Vec<Value> = self
            .models
            .iter()
            .map(|m| {
                let e = &m.engine;
                let mut engine = Table::new();
                engine.insert("block_size".into(), int(e.block_size));
                engine.insert("kv_cache_bytes".into(), int(e.kv_cache_bytes));
                if let Some(n) = e.num_kv_blocks {
                    engine.insert("num_kv_blocks".into(), int(n));
                }
                engine.insert("max_num_seqs".into(), int(e.max_num_seqs));
                engine.insert("max_num_batched_tokens".into(), int(e.max_num_batched_tokens));
                engine.insert("max_waiting".into(), int(e.max_waiting));
                if let Some(n) = e.threads {
                    engine.insert("threads".into(), int(n));
                }
                engine.insert(
                    "enable_prefix_caching".into(),
                    Value::Boolean(e.enable_prefix_caching),
                );
                if let Some(n) = e.max_model_len {
                    engine.insert("max_model_len".into(), int(n));
                }
                let mut t = Table::new();
                t.insert("id".into(), Value::String(m.id.clone()));
                t.insert("path".into(), Value::String(m.path.display().to_string()));
                t.insert("default_max_tokens".into(), int(m.default_max_tokens));
                t.insert("engine".into(), Value::Table(engine));
                Value::Table(t)
            })
            .collect();
        let mut root = Table::new();
        root.insert("server".into(), Value::Table(server));
        root.insert("auth".into(), Value::Table(auth));
        root.insert("models".into(), Value::Array(models));
        toml::to_string_pretty(&root).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// File, then environment, then flags.
fn resolve(
    file: FileConfig,
    base_dir: &Path,
    overrides: &Overrides,
    env: EnvLookup<'_>,
) -> Result<Config, ConfigError> {
    let FileConfig {
        server,
        auth,
        models,
    } = file;

    let (listen_text, listen_key) = match (&overrides.listen, env("SLUICE_LISTEN"), server.listen) {
        (Some(flag), _, _) => (flag.clone(), "--listen"),
        (None, Some(var), _) => (var, "SLUICE_LISTEN"),
        (None, None, Some(file)) => (file, "server.listen"),
        (None, None, None) => (DEFAULT_LISTEN.to_string(), "server.listen"),
    };
    let listen = parse_listen(&listen_text).map_err(|m| invalid(listen_key, m))?;

    let max_body_bytes = server
        .max_body_bytes
        .map_or(DEFAULT_MAX_BODY_BYTES, |b| b.0);
    if !(1024..=(1 << 30)).contains(&max_body_bytes) {
        return Err(invalid(
            "server.max_body_bytes",
            format!("{max_body_bytes} is outside 1KiB..=1GiB"),
        ));
    }
    let grace = server
        .shutdown_grace_seconds
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECONDS);
    if grace > 3600 {
        return Err(invalid(
            "server.shutdown_grace_seconds",
            format!("{grace} is more than an hour"),
        ));
    }
    let timeout = server
        .request_timeout_seconds
        .unwrap_or(DEFAULT_REQUEST_TIMEOUT_SECONDS);
    if timeout == 0 {
        return Err(invalid("server.request_timeout_seconds", "must be at least 1"));
    }
    let allow_unauthenticated = overrides.allow_unauthenticated
        || match env("SLUICE_ALLOW_UNAUTHENTICATED") {
            Some(v) => parse_bool(&v).ok_or_else(|| {
                invalid("SLUICE_ALLOW_UNAUTHENTICATED", format!("`{v}` is not true or false"))
            })?,
            None => server.allow_unauthenticated.unwrap_or(false),
        };

    let mut keys = Vec::new();
    for (i, k) in auth.keys.into_iter().enumerate() {
        keys.push(resolve_key(i, k, base_dir, env)?);
    }
    if let Some(list) = env("SLUICE_API_KEYS") {
        keys.extend(parse_keys_variable(&list)?);
    }
    let mut seen = HashSet::new();
    for k in &keys {
        if !seen.insert(k.secret.expose()) {
            return Err(invalid(
                "auth.keys",
                format!("tenant `{}` ({}) reuses another tenant's key", k.tenant, k.source),
            ));
        }
    }
    if keys.is_empty() && !listen.ip().is_loopback() && !allow_unauthenticated {
        return Err(invalid(
            listen_key,
            format!(
                "{listen} is not a loopback address and no API key is configured; add \
                 [[auth.keys]] (or set SLUICE_API_KEYS=tenant:key), or allow it explicitly with \
                 server.allow_unauthenticated = true or --allow-unauthenticated"
            ),
        ));
    }

    let models = match (&overrides.model, overrides.model_id.as_deref()) {
        (Some(path), id) => {
            let id = id.map_or_else(|| id_from_path(path), str::to_string);
            vec![ModelSection {
                id,
                path: path.clone(),
                default_max_tokens: None,
                engine: EngineSection::default(),
            }]
        }
        (None, Some(_)) => return Err(invalid("--model-id", "needs --model PATH")),
        (None, None) if models.is_empty() => vec![ModelSection {
            id: DEMO_MODEL_ID.into(),
            path: sluice_models::demo_chat_model_path(),
            default_max_tokens: None,
            engine: EngineSection::default(),
        }],
        (None, None) => models,
    };
    let mut ids = HashSet::new();
    let mut resolved = Vec::with_capacity(models.len());
    for (i, m) in models.into_iter().enumerate() {
        let m = resolve_model(i, m, base_dir)?;
        if !ids.insert(m.id.clone()) {
            return Err(invalid(format!("models[{i}].id"), format!("`{}` is used twice", m.id)));
        }
        resolved.push(m);
    }

    Ok(Config {
        server: ServerConfig {
            listen,
            max_body_bytes,
            shutdown_grace: Duration::from_secs(grace),
            request_timeout: Duration::from_secs(timeout),
            allow_unauthenticated,
        },
        keys,
        models: resolved,
    })
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    // `localhost` is the one name accepted: resolving names would make the
    // bound address (and so the loopback check) depend on DNS.
    let text = match text.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => text.to_string(),
    };
    text.parse()
        .map_err(|_| format!("`{text}` is not an address such as 127.0.0.1:8080 or [::1]:8080"))
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

fn check_tenant(key: &str, tenant: &str) -> Result<(), ConfigError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("tenant `{tenant}` must be 1-64 characters of A-Z a-z 0-9 - _ ."),
        ))
    }
}

fn check_secret(key: &str, secret: &str) -> Result<(), ConfigError> {
    if secret.is_empty() {
        return Err(invalid(key, "the key is empty"));
    }
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(key, "the key contains whitespace or control characters"));
    }
    Ok(())
}

fn resolve_key(
    i: usize,
    k: KeySection,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<ApiKey, ConfigError> {
    let KeySection {
        tenant,
        key_env,
        key_file,
        key,
    } = k;
    let at = |field: &str| format!("auth.keys[{i}].{field}");
    check_tenant(&at("tenant"), &tenant)?;
    if key.is_some() {
        return Err(invalid(
            at("key"),
            "inline keys are not allowed; put the key in an environment variable (key_env) \
             or a file (key_file)",
        ));
    }
    let (source, secret, field) = match (key_env, key_file) {
        (Some(name), None) => {
            let value = env(&name).ok_or_else(|| {
                invalid(at("key_env"), format!("environment variable {name} is not set"))
            })?;
            (KeySource::Env(name), value.trim().to_string(), "key_env")
        }
        (None, Some(path)) => {
            let path = resolve_path(base_dir, &path);
            let value = std::fs::read_to_string(&path).map_err(|e| {
                invalid(at("key_file"), format!("cannot read {}: {e}", path.display()))
            })?;
            (KeySource::File(path), value.trim().to_string(), "key_file")
        }
        (Some(_), Some(_)) => {
            return Err(invalid(at("key_env"), "give key_env or key_file, not both"));
        }
        (None, None) => return Err(invalid(at("key_env"), "give key_env or key_file")),
    };
    check_secret(&at(field), &secret)?;
    Ok(ApiKey {
        tenant,
        source,
        secret: Secret::new(secret),
    })
}

fn parse_keys_variable(list: &str) -> Result<Vec<ApiKey>, ConfigError> {
    let mut keys = Vec::new();
    for (i, entry) in list.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
        let key = format!("SLUICE_API_KEYS[{i}]");
        let Some((tenant, secret)) = entry.split_once(':') else {
            return Err(invalid(key, "expected tenant:key"));
        };
        check_tenant(&key, tenant.trim())?;
        check_secret(&key, secret.trim())?;
        keys.push(ApiKey {
            tenant: tenant.trim().to_string(),
            source: KeySource::KeysVariable,
            secret: Secret::new(secret.trim().to_string()),
        });
    }
    Ok(keys)
}

/// `~/x` expands to the home folder; a relative path is relative to the config file.
fn resolve_path(base_dir: &Path, path: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// A model id from its path: the file name without extension, or the folder name.
fn id_from_path(path: &Path) -> String {
    let stem = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    stem.map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_else(|| "model".into())
}

fn resolve_model(i: usize, m: ModelSection, base_dir: &Path) -> Result<ModelConfig, ConfigError> {
    let ModelSection {
        id,
        path,
        default_max_tokens,
        engine,
    } = m;
    let at = |field: &str| format!("models[{i}].{field}");
    let id_ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if !id_ok {
        return Err(invalid(
            at("id"),
            format!("`{id}` must be 1-128 characters of A-Z a-z 0-9 - _ . : /"),
        ));
    }
    let default_max_tokens = default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    if default_max_tokens == 0 {
        return Err(invalid(at("default_max_tokens"), "must be at least 1"));
    }
    Ok(ModelConfig {
        id,
        path: resolve_path(base_dir, &path),
        default_max_tokens,
        engine: resolve_engine(&at("engine"), engine)?,
    })
}

fn resolve_engine(at: &str, e: EngineSection) -> Result<EngineConfig, ConfigError> {
    let EngineSection {
        block_size,
        kv_cache_bytes,
        num_kv_blocks,
        max_num_seqs,
        max_num_batched_tokens,
        max_waiting,
        threads,
        enable_prefix_caching,
        max_model_len,
    } = e;
    let d = EngineConfig::default();
    let positive = |field: &str, v: Option<usize>, default: usize, max: usize| {
        let v = v.unwrap_or(default);
        if v == 0 || v > max {
            Err(invalid(format!("{at}.{field}"), format!("{v} is outside 1..={max}")))
        } else {
            Ok(v)
        }
    };
    let optional = |field: &str, v: Option<usize>, max: usize| match v {
        Some(n) if n == 0 || n > max => Err(invalid(
            format!("{at}.{field}"),
            format!("{n} is outside 1..={max}"),
        )),
        other => Ok(other),
    };
    let block_size = positive("block_size", block_size, d.block_size, 1024)?;
    let kv_cache_bytes = kv_cache_bytes.map_or(d.kv_cache_bytes, |b| b.0);
    if kv_cache_bytes < (1 << 20) {
        return Err(invalid(
            format!("{at}.kv_cache_bytes"),
            format!("{kv_cache_bytes} is less than 1MiB"),
        ));
    }
    Ok(EngineConfig {
        block_size,
        kv_cache_bytes,
        num_kv_blocks: optional("num_kv_blocks", num_kv_blocks, 1 << 24)?,
        max_num_seqs: positive("max_num_seqs", max_num_seqs, d.max_num_seqs, 4096)?,
        max_num_batched_tokens: positive(
            "max_num_batched_tokens",
            max_num_batched_tokens,
            d.max_num_batched_tokens,
            1 << 20,
        )?,
        // Zero waiting is legitimate: only the running sequences are accepted.
        max_waiting: max_waiting.unwrap_or(d.max_waiting),
        threads: optional("threads", threads, 1024)?,
        enable_prefix_caching: enable_prefix_caching.unwrap_or(d.enable_prefix_caching),
        max_model_len: optional("max_model_len", max_model_len, 1 << 24)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |name: &str| vars.get(name).cloned();
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "test.toml".into(),
            message: e.to_string(),
        })?;
        resolve(file, Path::new("/etc/sluice"), &Overrides::default(), &lookup)
    }

    fn err_of(text: &str, env: &[(&str, &str)]) -> String {
        load_str(text, env).unwrap_err().to_string()
    }

    #[test]
    fn no_config_serves_the_demo_model_on_loopback() {
        let cfg = load_str("", &[]).unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(cfg.models.len(), 1);
        assert_eq!(cfg.models[0].id, DEMO_MODEL_ID);
        assert_eq!(cfg.models[0].path, sluice_models::demo_chat_model_path());
        assert!(cfg.keys.is_empty());
    }

    #[test]
    fn full_example_resolves() {
        let cfg = load_str(
            r#"
            [server]
            listen = "0.0.0.0:9000"
            max_body_bytes = "1MiB"
            shutdown_grace_seconds = 5
            [[auth.keys]]
            tenant = "team-a"
            key_env = "TEAM_A_KEY"
            [[models]]
            id = "m1"
            path = "weights/m1.gguf"
            [models.engine]
            block_size = 32
            kv_cache_bytes = "64MiB"
            max_num_seqs = 4
            max_waiting = 0
            "#,
            &[("TEAM_A_KEY", "sk-aaaa")],
        )
        .unwrap();
        assert_eq!(cfg.server.max_body_bytes, 1 << 20);
        assert_eq!(cfg.keys[0].secret.expose(), "sk-aaaa");
        assert_eq!(cfg.models[0].path, Path::new("/etc/sluice/weights/m1.gguf"));
        assert_eq!(cfg.models[0].engine.block_size, 32);
        assert_eq!(cfg.models[0].engine.kv_cache_bytes, 64 << 20);
        assert_eq!(cfg.models[0].engine.max_waiting, 0);
        assert_eq!(cfg.models[0].engine.max_num_batched_tokens, 512);
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let e = err_of("[server]\nlisten_addr = \"x\"\n", &[]);
        assert!(e.contains("listen_addr"), "{e}");
    }

    #[test]
    fn unknown_section_is_refused() {
        let e = err_of("[cache]\nenabled = true\n", &[]);
        assert!(e.contains("cache"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = err_of("[[models]]\nid = \"m\"\npath = \"p\"\n[models.engine]\nblock_size = \"big\"\n", &[]);
        assert!(e.contains("block_size"), "{e}");
    }

    #[test]
    fn zero_knob_names_the_key() {
        let e = err_of("[[models]]\nid = \"m\"\npath = \"p\"\n[models.engine]\nmax_num_seqs = 0\n", &[]);
        assert!(e.starts_with("models[0].engine.max_num_seqs"), "{e}");
    }

    #[test]
    fn inline_key_is_refused() {
        let e = err_of("[[auth.keys]]\ntenant = \"a\"\nkey = \"sk-123\"\n", &[]);
        assert!(e.starts_with("auth.keys[0].key:"), "{e}");
        assert!(!e.contains("sk-123"), "{e}");
    }

    #[test]
    fn missing_key_variable_is_named() {
        let e = err_of("[[auth.keys]]\ntenant = \"a\"\nkey_env = \"NOPE\"\n", &[]);
        assert!(e.contains("auth.keys[0].key_env") && e.contains("NOPE"), "{e}");
    }

    #[test]
    fn non_loopback_without_keys_is_refused() {
        let e = err_of("[server]\nlisten = \"0.0.0.0:8080\"\n", &[]);
        assert!(e.starts_with("server.listen") && e.contains("allow_unauthenticated"), "{e}");
        let ok = load_str(
            "[server]\nlisten = \"0.0.0.0:8080\"\nallow_unauthenticated = true\n",
            &[],
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn environment_overrides_the_file() {
        let cfg = load_str(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("SLUICE_LISTEN", "0.0.0.0:7000"),
                ("SLUICE_API_KEYS", "alpha:key-one, beta:key-two"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.server.listen.port(), 7000);
        let tenants: Vec<_> = cfg.keys.iter().map(|k| k.tenant.as_str()).collect();
        assert_eq!(tenants, ["alpha", "beta"]);
        assert_eq!(cfg.keys[1].secret.expose(), "key-two");
    }

    #[test]
    fn malformed_keys_variable_does_not_echo_the_key() {
        let e = err_of("", &[("SLUICE_API_KEYS", "justasecret")]);
        assert!(e.starts_with("SLUICE_API_KEYS[0]") && !e.contains("justasecret"), "{e}");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = err_of("", &[("SLUICE_API_KEYS", "a:same,b:same")]);
        assert!(e.contains("reuses"), "{e}");
    }

    #[test]
    fn duplicate_model_ids_are_refused() {
        let e = err_of(
            "[[models]]\nid = \"m\"\npath = \"a\"\n[[models]]\nid = \"m\"\npath = \"b\"\n",
            &[],
        );
        assert!(e.starts_with("models[1].id"), "{e}");
    }

    #[test]
    fn bad_listen_is_named() {
        let e = err_of("[server]\nlisten = \"somewhere\"\n", &[]);
        assert!(e.starts_with("server.listen"), "{e}");
    }

    #[test]
    fn redacted_toml_never_shows_secrets() {
        let cfg = load_str("", &[("SLUICE_API_KEYS", "alpha:super-secret-value")]).unwrap();
        let text = cfg.to_redacted_toml();
        assert!(!text.contains("super-secret-value"), "{text}");
        assert!(text.contains("alpha") && text.contains("redacted"), "{text}");
        assert!(!format!("{cfg:?}").contains("super-secret-value"));
    }

    #[test]
    fn model_flag_replaces_the_model_list() {
        let vars = |_: &str| None;
        let cfg = resolve(
            FileConfig::default(),
            Path::new("."),
            &Overrides {
                model: Some("/models/Some-Model.Q8_0.gguf".into()),
                ..Overrides::default()
            },
            &vars,
        )
        .unwrap();
        assert_eq!(cfg.models[0].id, "some-model.q8_0");
    }

    #[test]
    fn missing_demo_model_names_the_fetch_command() {
        let mut cfg = load_str("", &[]).unwrap();
        cfg.models[0].path = sluice_models::demo_chat_model_path();
        if !cfg.models[0].path.exists() {
            let e = cfg.check_model_files().unwrap_err().to_string();
            assert!(e.contains("sluice fetch-models"), "{e}");
        }
    }
}
