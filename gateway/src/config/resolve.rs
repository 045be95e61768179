//! File, then environment, then flags: from [`FileConfig`] to [`Config`],
//! checking every value and naming the key of each one that is wrong.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::defaults::DefaultsSection;
use super::file::{EngineSection, FileConfig, KeySection, ModelSection};
use super::models::{id_from_path, resolve_model};
use super::{
    invalid, ApiKey, Config, ConfigError, EnvLookup, GuardAction, KeySource, Overrides, Secret,
    ServerConfig, DEFAULT_LISTEN, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_REQUEST_TIMEOUT_SECONDS, DEFAULT_SHUTDOWN_GRACE_SECONDS, DEMO_MODEL_ID,
};

/// Every core for a gateway that hosts no model or encoder; half of them,
/// at least one, beside ones that do (the other half is the engines' and
/// encoders'). On 2 cores one worker once served more than two (the added
/// p50 at 1 connection 0.13 -> 0.08 ms, 13% more requests/s at 16), when
/// the gateway's work per request was a third of today's; once it grew,
/// the one worker became the bound while the load generator and the mock
/// left the other core partly idle, and two served 12% more requests/s at
/// 16 connections (8% more governed) with the same p50 at 1 connection
/// (bench/RESULTS.md, session 11).
fn default_http_threads(hosts_models: bool) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if hosts_models {
        (cores / 2).max(1)
    } else {
        cores
    }
}

/// File, then environment, then flags.
pub(super) fn resolve(
    file: FileConfig,
    base_dir: &Path,
    overrides: &Overrides,
    env: EnvLookup<'_>,
) -> Result<Config, ConfigError> {
    let FileConfig {
        server,
        auth,
        models,
        providers,
        routes,
        cache,
        admin,
        encoders,
        guard,
        defence,
        moderation,
        store,
        limits,
        spend,
        audit,
        budgets,
        pii,
        sessions,
        stream,
        regulated,
        telemetry,
    } = file;
    let cache_settings = cache.resolve(env)?;
    let sessions_settings = sessions.resolve(env)?;
    let regulated_settings =
        regulated.resolve(base_dir, env, sessions_settings.encryption_key.as_ref())?;
    let limits = limits.resolve(env, &cache_settings)?;
    let cache_redis = match &cache_settings.backend {
        super::Backend::Redis { url, .. } => Some(url.as_str()),
        super::Backend::Memory => None,
    };
    let budget_settings = budgets.resolve(env, cache_redis)?;
    let (admin_key_source, admin_key) = admin.resolve(base_dir, env)?.unzip();

    let (listen_text, listen_key) = match (&overrides.listen, env("SLUICE_LISTEN"), server.listen) {
        (Some(flag), _, _) => (flag.clone(), "--listen"),
        (None, Some(var), _) => (var, "SLUICE_LISTEN"),
        (None, None, Some(file)) => (file, "server.listen"),
        (None, None, None) => (DEFAULT_LISTEN.to_string(), "server.listen"),
    };
    let listen = parse_listen(&listen_text).map_err(|m| invalid(listen_key, m))?;
    let metrics_listen = server
        .metrics_listen
        .as_deref()
        .map(parse_listen)
        .transpose()
        .map_err(|m| invalid("server.metrics_listen", m))?;
    if metrics_listen.is_some_and(|m| m == listen && m.port() != 0) {
        return Err(invalid(
            "server.metrics_listen",
            format!("{listen} is the API's own address; give /metrics another"),
        ));
    }

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
        return Err(invalid(
            "server.request_timeout_seconds",
            "must be at least 1",
        ));
    }
    let max_in_flight = server.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    if max_in_flight == 0 {
        return Err(invalid("server.max_in_flight", "must be at least 1"));
    }
    if let Some(n) = server.http_threads.filter(|n| !(1..=1024).contains(n)) {
        return Err(invalid(
            "server.http_threads",
            format!("{n} is not between 1 and 1024"),
        ));
    }
    let allow_unauthenticated = overrides.allow_unauthenticated
        || match env("SLUICE_ALLOW_UNAUTHENTICATED") {
            Some(v) => parse_bool(&v).ok_or_else(|| {
                invalid(
                    "SLUICE_ALLOW_UNAUTHENTICATED",
                    format!("`{v}` is not true or false"),
                )
            })?,
            None => server.allow_unauthenticated.unwrap_or(false),
        };

    let virtual_keys = super::keys::resolve(auth.pepper_file, auth.redis_url, base_dir, env)?;
    let oidc = auth.oidc.map(|o| o.resolve()).transpose()?;
    let role_models = super::roles::resolve(auth.role_models)?;
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
                format!(
                    "tenant `{}` ({}) reuses another tenant's key",
                    k.tenant, k.source
                ),
            ));
        }
    }
    // Regulated mode promises encryption at rest: no master key, no start.
    let regulated_key = keys.iter().position(|k| k.regulated);
    let regulated_lists =
        !regulated_settings.tenants.is_empty() || !regulated_settings.teams.is_empty();
    if regulated_settings.master_key.is_none() && (regulated_key.is_some() || regulated_lists) {
        let at = regulated_key.map_or_else(
            || "regulated".to_string(),
            |i| format!("auth.keys[{i}].regulated"),
        );
        return Err(invalid(
            at,
            "regulated callers need a master key to encrypt what they store: set \
             [regulated] master_key_env or master_key_file (at least 32 bytes)",
        ));
    }
    if keys.is_empty() && oidc.is_none() && !listen.ip().is_loopback() && !allow_unauthenticated {
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
                requantize: None,
                activation_dtype: None,
                engine: EngineSection::default(),
                defaults: DefaultsSection::default(),
                tool_parser: None,
            }]
        }
        (None, Some(_)) => return Err(invalid("--model-id", "needs --model PATH")),
        // A gateway-only config (routes to providers, no [[models]]) loads no model.
        (None, None) if models.is_empty() && routes.is_empty() => vec![ModelSection {
            id: DEMO_MODEL_ID.into(),
            path: sluice_models::demo_chat_model_path(),
            default_max_tokens: None,
            requantize: None,
            activation_dtype: None,
            engine: EngineSection::default(),
            defaults: super::defaults::demo_defaults(),
            tool_parser: None,
        }],
        (None, None) => models,
    };
    let mut ids = HashSet::new();
    let mut resolved = Vec::with_capacity(models.len());
    for (i, m) in models.into_iter().enumerate() {
        let m = resolve_model(i, m, base_dir)?;
        if !ids.insert(m.id.clone()) {
            return Err(invalid(
                format!("models[{i}].id"),
                format!("`{}` is used twice", m.id),
            ));
        }
        resolved.push(m);
    }

    super::routes::check_providers(&providers)?;
    let routes = super::routes::resolve_routes(routes, &providers, &resolved)?;
    let encoders = super::encoders::resolve_encoders(encoders, base_dir)?;
    // One name, one model: `/v1/models/{id}` and the endpoints look ids up
    // across chat models, encoders and routes.
    for (i, e) in encoders.iter().enumerate() {
        if resolved.iter().any(|m| m.id == e.id) || routes.iter().any(|r| r.model == e.id) {
            return Err(invalid(
                format!("encoders[{i}].id"),
                format!("`{}` is already a chat model's or a route's name", e.id),
            ));
        }
    }

    let http_threads = server
        .http_threads
        .unwrap_or_else(|| default_http_threads(!resolved.is_empty() || !encoders.is_empty()));

    Ok(Config {
        server: ServerConfig {
            listen,
            metrics_listen,
            max_body_bytes,
            shutdown_grace: Duration::from_secs(grace),
            request_timeout: Duration::from_secs(timeout),
            allow_unauthenticated,
            max_in_flight,
            http_threads,
        },
        keys,
        models: resolved,
        providers,
        routes,
        cache: cache_settings,
        admin_key,
        admin_key_source,
        encoders,
        guard: super::guard::resolve_guard(guard, base_dir)?,
        defence: defence.resolve(base_dir)?,
        moderation: moderation.map(|m| m.resolve(base_dir, env)).transpose()?,
        store: store.resolve(base_dir, env)?,
        virtual_keys,
        limits,
        budgets: budget_settings,
        spend: spend.resolve()?,
        audit: audit.resolve(base_dir, env)?,
        oidc,
        role_models,
        pii: pii.resolve(env)?,
        sessions: sessions_settings,
        stream: stream.resolve(base_dir)?,
        regulated: regulated_settings,
        telemetry: telemetry.resolve(env)?,
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

pub(super) fn parse_bool(text: &str) -> Option<bool> {
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
        return Err(invalid(
            key,
            "the key contains whitespace or control characters",
        ));
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
        sensitive,
        regulated,
        guard,
        stream,
        stream_guard,
        rpm,
        tpm,
        max_parallel,
    } = k;
    let at = |field: &str| format!("auth.keys[{i}].{field}");
    check_tenant(&at("tenant"), &tenant)?;
    super::limits::check_positive(&at("rpm"), rpm.map(u64::from))?;
    super::limits::check_positive(&at("tpm"), tpm)?;
    super::limits::check_positive(&at("max_parallel"), max_parallel.map(u64::from))?;
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
                invalid(
                    at("key_env"),
                    format!("environment variable {name} is not set"),
                )
            })?;
            (KeySource::Env(name), value.trim().to_string(), "key_env")
        }
        (None, Some(path)) => {
            let path = resolve_path(base_dir, &path);
            let value = std::fs::read_to_string(&path).map_err(|e| {
                invalid(
                    at("key_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            (KeySource::File(path), value.trim().to_string(), "key_file")
        }
        (Some(_), Some(_)) => {
            return Err(invalid(at("key_env"), "give key_env or key_file, not both"));
        }
        (None, None) => return Err(invalid(at("key_env"), "give key_env or key_file")),
    };
    check_secret(&at(field), &secret)?;
    let guard = guard
        .map(|g| GuardAction::parse(&at("guard"), &g))
        .transpose()?;
    let stream = stream
        .map(|s| super::StreamMode::parse(&at("stream"), &s))
        .transpose()?;
    Ok(ApiKey {
        tenant,
        source,
        secret: Secret::new(secret),
        sensitive: sensitive.unwrap_or(false),
        regulated: regulated.unwrap_or(false),
        guard,
        stream,
        stream_guard,
        limits: super::KeyLimits {
            rpm,
            tpm,
            max_parallel,
        },
    })
}

fn parse_keys_variable(list: &str) -> Result<Vec<ApiKey>, ConfigError> {
    let mut keys = Vec::new();
    for (i, entry) in list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
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
            sensitive: false,
            regulated: false,
            guard: None,
            stream: None,
            stream_guard: None,
            limits: super::KeyLimits::default(),
        });
    }
    Ok(keys)
}

/// `~/x` expands to the home folder; a relative path is relative to the config file.
pub(super) fn resolve_path(base_dir: &Path, path: &Path) -> PathBuf {
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
