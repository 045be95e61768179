//! `check-config`'s output: the effective configuration as TOML, each key
//! shown only by where it came from.

use toml::{Table, Value};

use super::Config;

impl Config {
    /// The effective configuration as TOML, keys replaced by their source.
    pub fn to_redacted_toml(&self) -> String {
        let mut server = Table::new();
        server.insert(
            "listen".into(),
            Value::String(self.server.listen.to_string()),
        );
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
                t.insert(
                    "key".into(),
                    Value::String(format!("<redacted: {}>", k.source)),
                );
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
                t.insert("engine".into(), Value::Table(engine));
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
        root.insert("cache".into(), Value::Table(self.cache_table()));
        toml::to_string_pretty(&root).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

impl Config {
    fn cache_table(&self) -> Table {
        let c = &self.cache;
        let mut t = Table::new();
        t.insert("enabled".into(), Value::Boolean(c.enabled));
        match &c.backend {
            crate::cache::Backend::Memory => {
                t.insert("backend".into(), Value::String("memory".into()));
            }
            crate::cache::Backend::Redis { url, prefix } => {
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
        if let Some(e) = &g.encoder {
            t.insert("encoder".into(), Value::String(e.clone()));
        }
        let mode = match g.mode {
            super::GuardMode::Any => "any",
            super::GuardMode::Replace => "replace",
        };
        t.insert("mode".into(), Value::String(mode.into()));
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

fn int(n: usize) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// `redis://user:secret@host` → `redis://user:<redacted>@host`: a Redis URL
/// may carry its password, which must not be printed.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:<redacted>@{host}")
        }
        None => url.to_string(),
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
    }
}
