//! `check-config`'s output: the effective configuration as TOML, each key
//! shown only by where it came from.

use toml::{Table, Value};

use super::{Config, SamplingDefaults};

mod upstreams;
use upstreams::{provider_table, route_table};

impl Config {
    /// The effective configuration as TOML, keys replaced by their source.
    pub fn to_redacted_toml(&self) -> String {
        let mut server = Table::new();
        server.insert(
            "listen".into(),
            Value::String(self.server.listen.to_string()),
        );
        if let Some(addr) = self.server.metrics_listen {
            server.insert("metrics_listen".into(), Value::String(addr.to_string()));
        }
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
        server.insert("max_in_flight".into(), int(self.server.max_in_flight));
        server.insert("http_threads".into(), int(self.server.http_threads));
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|k| {
                let mut t = Table::new();
                t.insert("tenant".into(), Value::String(k.tenant.clone()));
                t.insert(
                    "key".into(),
                    Value::String(format!("<redacted: {}>", k.source)),
                );
                if k.sensitive {
                    t.insert("sensitive".into(), Value::Boolean(true));
                }
                if k.regulated {
                    t.insert("regulated".into(), Value::Boolean(true));
                }
                if let Some(g) = k.guard {
                    t.insert("guard".into(), Value::String(g.as_str().into()));
                }
                if let Some(s) = k.stream {
                    t.insert("stream".into(), Value::String(s.as_str().into()));
                }
                if let Some(g) = k.stream_guard {
                    t.insert("stream_guard".into(), Value::Boolean(g));
                }
                Value::Table(t)
            })
            .collect();
        let mut auth = Table::new();
        auth.insert("keys".into(), Value::Array(keys));
        self.virtual_keys_into(&mut auth);
        if let Some(oidc) = &self.oidc {
            auth.insert("oidc".into(), Value::Table(oidc.to_toml()));
        }
        if !self.role_models.0.is_empty() {
            let roles = self
                .role_models
                .0
                .iter()
                .map(|(role, models)| {
                    let models = models.iter().map(|m| Value::String(m.clone())).collect();
                    (role.clone(), Value::Array(models))
                })
                .collect();
            auth.insert("role_models".into(), Value::Table(roles));
        }
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
                engine.insert(
                    "max_num_batched_tokens".into(),
                    int(e.max_num_batched_tokens),
                );
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
                engine.insert("device".into(), Value::String(e.device.to_string()));
                if e.kv_dtype != Default::default() {
                    engine.insert("kv_dtype".into(), Value::String(e.kv_dtype.as_str().into()));
                }
                engine.insert(
                    "session_keep_warm_secs".into(),
                    int(e.session_keep_warm.as_secs() as usize),
                );
                if let Some(n) = e.session_warm_max_blocks {
                    engine.insert("session_warm_max_blocks".into(), int(n));
                }
                let mut t = Table::new();
                t.insert("id".into(), Value::String(m.id.clone()));
                t.insert("path".into(), Value::String(m.path.display().to_string()));
                t.insert("default_max_tokens".into(), int(m.default_max_tokens));
                let activations = match m.activations {
                    sluice_models::ActivationPrecision::Int8 => "int8",
                    sluice_models::ActivationPrecision::F32 => "f32",
                };
                t.insert("activation_dtype".into(), Value::String(activations.into()));
                if let Some(d) = m.requantize {
                    let name = format!("{d:?}").to_lowercase();
                    t.insert("requantize".into(), Value::String(name));
                }
                if let Some(format) = m.tool_parser {
                    t.insert("tool_parser".into(), Value::String(format.name().into()));
                }
                t.insert("engine".into(), Value::Table(engine));
                t.insert("defaults".into(), Value::Table(defaults_table(&m.defaults)));
                Value::Table(t)
            })
            .collect();
        let mut root = Table::new();
        root.insert("server".into(), Value::Table(server));
        root.insert("auth".into(), Value::Table(auth));
        root.insert("models".into(), Value::Array(models));
        let encoders: Vec<Value> = self
            .encoders
            .iter()
            .map(|e| {
                let mut t = Table::new();
                t.insert("id".into(), Value::String(e.id.clone()));
                t.insert("kind".into(), Value::String(e.kind.as_str().into()));
                t.insert("path".into(), Value::String(e.path.display().to_string()));
                t.insert("max_batch_size".into(), int(e.pool.max_batch_size));
                t.insert(
                    "max_wait_us".into(),
                    int(e.pool.max_wait.as_micros() as usize),
                );
                t.insert("queue_capacity".into(), int(e.pool.queue_capacity));
                t.insert("threads".into(), int(e.pool.threads));
                Value::Table(t)
            })
            .collect();
        root.insert("encoders".into(), Value::Array(encoders));
        root.insert("guard".into(), Value::Table(self.guard_table()));
        root.insert("defence".into(), Value::Table(self.defence.table()));
        if let Some(moderation) = &self.moderation {
            root.insert("moderation".into(), Value::Table(moderation.table()));
        }
        root.insert("stream".into(), Value::Table(self.stream.table()));
        root.insert("regulated".into(), Value::Table(self.regulated.table()));
        root.insert("telemetry".into(), Value::Table(self.telemetry.table()));
        root.insert("cache".into(), Value::Table(self.cache_table()));
        root.insert(
            "providers".into(),
            Value::Array(self.providers.iter().map(provider_table).collect()),
        );
        root.insert(
            "routes".into(),
            Value::Array(self.routes.iter().map(route_table).collect()),
        );
        let mut admin = Table::new();
        if let Some(source) = &self.admin_key_source {
            admin.insert("key".into(), Value::String(format!("<redacted: {source}>")));
        }
        root.insert("admin".into(), Value::Table(admin));
        root.insert("store".into(), Value::Table(self.store_table()));
        toml::to_string_pretty(&root).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

impl Config {
    /// `[auth]`'s virtual-key settings: where the pepper comes from, never it.
    fn virtual_keys_into(&self, auth: &mut Table) {
        let pepper = match &self.virtual_keys.pepper {
            super::PepperSource::Env(_) => "<redacted: env SLUICE_KEY_PEPPER>".to_string(),
            super::PepperSource::File(path) => format!("<redacted: file {}>", path.display()),
            super::PepperSource::Unset => "<generated beside a SQLite store>".to_string(),
        };
        auth.insert("pepper".into(), Value::String(pepper));
        if let Some(url) = &self.virtual_keys.redis_url {
            auth.insert("redis_url".into(), Value::String(redact_url(url.expose())));
        }
    }

    fn store_table(&self) -> Table {
        let mut t = Table::new();
        match &self.store.location {
            super::StoreLocation::Sqlite(path) => {
                t.insert("path".into(), Value::String(path.display().to_string()));
            }
            super::StoreLocation::Postgres(url) => {
                t.insert("url".into(), Value::String(redact_url(url.expose())));
            }
        }
        t
    }

    fn cache_table(&self) -> Table {
        let c = &self.cache;
        let mut t = Table::new();
        t.insert("enabled".into(), Value::Boolean(c.enabled));
        match &c.backend {
            super::cache::Backend::Memory => {
                t.insert("backend".into(), Value::String("memory".into()));
            }
            super::cache::Backend::Redis { url, prefix } => {
                t.insert("backend".into(), Value::String("redis".into()));
                t.insert("redis_url".into(), Value::String(redact_url(url)));
                t.insert("redis_prefix".into(), Value::String(prefix.clone()));
            }
        }
        t.insert("ttl_seconds".into(), int(c.ttl.as_secs() as usize));
        t.insert("max_entries".into(), int(c.bounds.max_entries));
        t.insert("max_bytes".into(), int(c.bounds.max_bytes));
        t.insert("max_per_scope".into(), int(c.bounds.max_per_scope));
        t.insert("semantic".into(), Value::Boolean(c.semantic));
        t.insert(
            "similarity_threshold".into(),
            Value::Float(f64::from(c.similarity_threshold)),
        );
        t.insert("top_k".into(), int(c.top_k));
        t.insert(
            "cache_nondeterministic".into(),
            Value::Boolean(c.cache_nondeterministic),
        );
        t.insert(
            "embed_timeout_ms".into(),
            Value::Integer(i64::try_from(c.embed_timeout.as_millis()).unwrap_or(i64::MAX)),
        );
        t
    }

    fn guard_table(&self) -> Table {
        let g = &self.guard;
        let mut t = Table::new();
        t.insert("enabled".into(), Value::Boolean(g.enabled));
        t.insert("id".into(), Value::String(g.id.clone()));
        let head = match &g.head {
            super::HeadSource::BuiltIn => "built-in".to_string(),
            super::HeadSource::File(p) => p.display().to_string(),
        };
        t.insert("head".into(), Value::String(head));
        if let Some(th) = g.threshold {
            t.insert("threshold".into(), Value::Float(f64::from(th)));
        }
        if let Some(low) = g.t_low {
            t.insert("t_low".into(), Value::Float(f64::from(low)));
        }
        if let Some(e) = &g.encoder {
            t.insert("encoder".into(), Value::String(e.clone()));
        }
        let mode = match g.mode {
            super::GuardMode::Any => "any",
            super::GuardMode::Replace => "replace",
        };
        t.insert("mode".into(), Value::String(mode.into()));
        t.insert("action".into(), Value::String(g.action.as_str().into()));
        t.insert("score".into(), Value::String(g.score.as_str().into()));
        t.insert(
            "max_inputs".into(),
            Value::Integer(i64::try_from(g.max_inputs).unwrap_or(i64::MAX)),
        );
        t.insert(
            "timeout_ms".into(),
            Value::Integer(i64::try_from(g.timeout.as_millis()).unwrap_or(i64::MAX)),
        );
        let classifiers = g
            .classifiers
            .iter()
            .map(|c| {
                let mut ct = Table::new();
                ct.insert("encoder".into(), Value::String(c.encoder.clone()));
                ct.insert(
                    "labels".into(),
                    Value::Array(
                        c.injection_labels
                            .iter()
                            .cloned()
                            .map(Value::String)
                            .collect(),
                    ),
                );
                ct.insert("threshold".into(), Value::Float(f64::from(c.threshold)));
                Value::Table(ct)
            })
            .collect();
        t.insert("classifiers".into(), Value::Array(classifiers));
        t
    }
}

/// A model's effective sampling defaults (config over
/// `generation_config.json`); fields left to the request are absent.
fn defaults_table(d: &SamplingDefaults) -> Table {
    let SamplingDefaults {
        temperature,
        top_p,
        top_k,
        min_p,
        repetition_penalty,
        presence_penalty,
        frequency_penalty,
        max_tokens,
    } = d;
    let mut t = Table::new();
    let floats = [
        ("temperature", temperature),
        ("top_p", top_p),
        ("min_p", min_p),
        ("repetition_penalty", repetition_penalty),
        ("presence_penalty", presence_penalty),
        ("frequency_penalty", frequency_penalty),
    ];
    for (name, v) in floats {
        if let Some(x) = v {
            // Through the shortest decimal of the f32, so 0.2 prints as 0.2.
            let x: f64 = x.to_string().parse().unwrap_or(f64::from(*x));
            t.insert(name.into(), Value::Float(x));
        }
    }
    if let Some(k) = top_k {
        t.insert("top_k".into(), int(*k));
    }
    if let Some(n) = max_tokens {
        t.insert("max_tokens".into(), int(*n));
    }
    t
}

/// Header values are printed unless the header's name suggests a
/// credential: the config says headers are not secrets, but a bearer token
/// pasted into one must still not reach a terminal or a CI log.
fn redact_header(name: &str, value: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let secret = ["auth", "key", "token", "secret", "cookie", "password"]
        .iter()
        .any(|w| lower.contains(w));
    if secret {
        "<redacted>".into()
    } else {
        value.to_string()
    }
}

fn int_u64(n: u64) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn int(n: usize) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// `redis://user:secret@host` → `redis://user:<redacted>@host`: a Redis
/// (or provider) URL may carry its password, which must not be printed;
/// nor may a query string, where some APIs take their key (`?key=...`).
pub(super) fn redact_url(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((base, _)) => (base, "?<redacted>"),
        None => (url, ""),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("{url}{query}");
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:<redacted>@{host}{query}")
        }
        None => format!("{url}{query}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redis_passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://:<redacted>@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("rediss://app:s3cr3t@cache.internal"),
            "rediss://app:<redacted>@cache.internal"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("https://api.example.com/v1?key=s3cr3t"),
            "https://api.example.com/v1?<redacted>"
        );
    }
}
