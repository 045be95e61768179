//! The providers' and routes' part of `check-config`'s output: base URLs
//! and headers redacted, resilience and deployments spelled out.

use toml::{Table, Value};

use super::super::{DeploymentSpec, ProviderConfig, ResilienceConfig, RouteSpec, TargetSpec};
use super::{int, int_u64, redact_header, redact_url};

/// One `[[providers]]` entry. Destructured without `..`: a new field must
/// be placed here, and whoever adds it decides whether it is a secret.
pub(super) fn provider_table(p: &ProviderConfig) -> Value {
    let mut t = Table::new();
    let text = |s: &str| Value::String(s.to_string());
    let path = |p: &std::path::Path| Value::String(p.display().to_string());
    let resilience = match p {
        ProviderConfig::Openai {
            name,
            base_url,
            api_key_env,
            api_key_file,
            headers,
            dialect,
            resilience,
        } => {
            t.insert("kind".into(), text("openai"));
            t.insert("name".into(), text(name));
            t.insert("dialect".into(), text(dialect.as_str()));
            t.insert("base_url".into(), Value::String(redact_url(base_url)));
            if let Some(v) = api_key_env {
                t.insert("api_key_env".into(), text(v));
            }
            if let Some(v) = api_key_file {
                t.insert("api_key_file".into(), path(v));
            }
            let shown: Table = headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(redact_header(k, v))))
                .collect();
            t.insert("headers".into(), Value::Table(shown));
            resilience
        }
        ProviderConfig::Gigachat {
            name,
            base_url,
            oauth_url,
            auth_key_env,
            auth_key_file,
            scope,
            ca_bundle,
            token_refresh_margin_ms,
            resilience,
        } => {
            t.insert("kind".into(), text("gigachat"));
            t.insert("name".into(), text(name));
            if let Some(v) = base_url {
                t.insert("base_url".into(), Value::String(redact_url(v)));
            }
            if let Some(v) = oauth_url {
                t.insert("oauth_url".into(), Value::String(redact_url(v)));
            }
            if let Some(v) = auth_key_env {
                t.insert("auth_key_env".into(), text(v));
            }
            if let Some(v) = auth_key_file {
                t.insert("auth_key_file".into(), path(v));
            }
            t.insert("scope".into(), text(scope));
            if let Some(v) = ca_bundle {
                t.insert("ca_bundle".into(), path(v));
            }
            if let Some(v) = token_refresh_margin_ms {
                t.insert("token_refresh_margin_ms".into(), int_u64(*v));
            }
            resilience
        }
        ProviderConfig::Yandex {
            name,
            base_url,
            folder_id,
            api_key_env,
            api_key_file,
            iam_token_env,
            iam_token_file,
            resilience,
        } => {
            t.insert("kind".into(), text("yandex"));
            t.insert("name".into(), text(name));
            if let Some(v) = base_url {
                t.insert("base_url".into(), Value::String(redact_url(v)));
            }
            t.insert("folder_id".into(), text(folder_id));
            if let Some(v) = api_key_env {
                t.insert("api_key_env".into(), text(v));
            }
            if let Some(v) = api_key_file {
                t.insert("api_key_file".into(), path(v));
            }
            if let Some(v) = iam_token_env {
                t.insert("iam_token_env".into(), text(v));
            }
            if let Some(v) = iam_token_file {
                t.insert("iam_token_file".into(), path(v));
            }
            resilience
        }
    };
    t.insert(
        "resilience".into(),
        Value::Table(resilience_table(resilience)),
    );
    Value::Table(t)
}

fn resilience_table(r: &ResilienceConfig) -> Table {
    let ResilienceConfig {
        connect_timeout_ms,
        first_byte_timeout_ms,
        between_chunks_timeout_ms,
        total_timeout_ms,
        max_attempts,
        backoff_base_ms,
        backoff_max_ms,
        max_retry_after_ms,
        breaker_failures,
        breaker_cooldown_ms,
    } = r;
    let mut t = Table::new();
    t.insert("connect_timeout_ms".into(), int_u64(*connect_timeout_ms));
    t.insert(
        "first_byte_timeout_ms".into(),
        int_u64(*first_byte_timeout_ms),
    );
    t.insert(
        "between_chunks_timeout_ms".into(),
        int_u64(*between_chunks_timeout_ms),
    );
    t.insert("total_timeout_ms".into(), int_u64(*total_timeout_ms));
    t.insert("max_attempts".into(), int_u64(u64::from(*max_attempts)));
    t.insert("backoff_base_ms".into(), int_u64(*backoff_base_ms));
    t.insert("backoff_max_ms".into(), int_u64(*backoff_max_ms));
    t.insert("max_retry_after_ms".into(), int_u64(*max_retry_after_ms));
    t.insert(
        "breaker_failures".into(),
        int_u64(u64::from(*breaker_failures)),
    );
    t.insert("breaker_cooldown_ms".into(), int_u64(*breaker_cooldown_ms));
    t
}

pub(super) fn route_table(r: &RouteSpec) -> Value {
    let RouteSpec {
        model,
        strategy,
        seed,
        sensitive_wait,
        guard,
        reward,
        deployments,
    } = r;
    let mut t = Table::new();
    t.insert("model".into(), Value::String(model.clone()));
    t.insert("strategy".into(), Value::String(strategy.as_str().into()));
    if let Some(s) = seed {
        t.insert("seed".into(), int_u64(*s));
    }
    if let Some(g) = guard {
        t.insert("guard".into(), Value::String(g.as_str().into()));
    }
    t.insert(
        "sensitive_wait_ms".into(),
        int_u64(u64::try_from(sensitive_wait.as_millis()).unwrap_or(u64::MAX)),
    );
    let mut rt = Table::new();
    rt.insert(
        "latency_scale_ms".into(),
        Value::Float(reward.latency_scale_ms),
    );
    rt.insert(
        "per_token_scale_ms".into(),
        Value::Float(reward.per_token_scale_ms),
    );
    rt.insert("cost_scale_usd".into(), Value::Float(reward.cost_scale_usd));
    t.insert("reward".into(), Value::Table(rt));
    t.insert(
        "deployments".into(),
        Value::Array(deployments.iter().map(deployment_table).collect()),
    );
    Value::Table(t)
}

fn deployment_table(d: &DeploymentSpec) -> Value {
    let DeploymentSpec { settings, target } = d;
    let mut t = Table::new();
    t.insert("name".into(), Value::String(settings.name.clone()));
    match target {
        TargetSpec::Local { model, saturation } => {
            t.insert("local".into(), Value::String(model.clone()));
            t.insert(
                "max_queue_wait_ms".into(),
                Value::Float(saturation.max_queue_wait_ms),
            );
            t.insert(
                "min_free_kv_fraction".into(),
                Value::Float(saturation.min_free_kv_fraction),
            );
        }
        TargetSpec::Provider {
            provider,
            upstream_model,
            resilience,
        } => {
            t.insert("provider".into(), Value::String(provider.clone()));
            t.insert(
                "upstream_model".into(),
                Value::String(upstream_model.clone()),
            );
            if let Some(r) = resilience {
                t.insert("resilience".into(), Value::Table(resilience_table(r)));
            }
        }
    }
    t.insert("priority".into(), int_u64(u64::from(settings.priority)));
    t.insert("weight".into(), Value::Float(settings.weight));
    t.insert(
        "price_input_per_1k".into(),
        Value::Float(settings.price.input_per_1k),
    );
    t.insert(
        "price_output_per_1k".into(),
        Value::Float(settings.price.output_per_1k),
    );
    if let Some(n) = settings.max_concurrency {
        t.insert("max_concurrency".into(), int(n));
    }
    t.insert(
        "residency".into(),
        Value::String(settings.residency.as_str().into()),
    );
    t.insert(
        "capabilities".into(),
        Value::Array(
            settings
                .capabilities
                .iter()
                .map(|c| Value::String(c.as_str().into()))
                .collect(),
        ),
    );
    Value::Table(t)
}
