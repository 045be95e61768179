//! The `[telemetry]` section: OpenTelemetry traces exported over OTLP/gRPC,
//! and the log format.
//!
//! ```toml
//! [telemetry]
//! endpoint = "http://127.0.0.1:4317"   # OTLP/gRPC collector; absent: no traces exported
//! service_name = "sluice"              # the `service.name` resource attribute
//! sampling_ratio = 1.0                 # share of new traces kept (a client's decision is followed)
//! timeout_ms = 5000                    # one export call, connection included
//! headers = { "x-tenant" = "ops" }     # gRPC metadata on every export
//! headers_env = "SLUICE_OTLP_HEADERS"  # more of them, `k=v,k2=v2`, from the environment (secrets)
//! queue = 8192                         # finished spans waiting for export; past it they are dropped and counted
//! batch = 512                          # spans per export call
//! flush_ms = 1000                      # the longest a span waits for its batch
//! record_content = false               # prompts and answers on the spans (never by default)
//! log_format = "text"                  # or "json" (`SLUICE_LOG_FORMAT` overrides)
//! ```
//!
//! Environment: `SLUICE_OTLP_ENDPOINT` overrides `endpoint`,
//! `SLUICE_LOG_FORMAT` overrides `log_format`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, EnvLookup, Secret};

const DEFAULT_SERVICE_NAME: &str = "sluice";
const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// A few seconds of spans at thousands of requests per second, a dozen
/// spans each: enough to ride out a collector's hiccup, small enough (a
/// span is ~1 KiB) that a dead collector costs a few MiB at most.
const DEFAULT_QUEUE: usize = 8_192;
const DEFAULT_BATCH: usize = 512;
const DEFAULT_FLUSH_MS: u64 = 1_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    pub endpoint: Option<String>,
    pub service_name: Option<String>,
    pub sampling_ratio: Option<f64>,
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub headers_env: Option<String>,
    pub queue: Option<usize>,
    pub batch: Option<usize>,
    pub flush_ms: Option<u64>,
    #[serde(default)]
    pub record_content: bool,
    pub log_format: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, with the trace and span ids of the request
    /// the line belongs to.
    Json,
}

impl LogFormat {
    /// `"text"` or `"json"`; `key` names the setting in the error.
    pub fn parse(key: &str, text: &str) -> Result<Self, ConfigError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(invalid(
                key,
                format!("must be \"text\" or \"json\", not \"{other}\""),
            )),
        }
    }
}

/// Where and how traces are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// `http://host:port` of an OTLP/gRPC receiver.
    pub endpoint: String,
    /// gRPC metadata sent with every export (may hold a token: never logged).
    pub headers: Vec<(String, Secret)>,
    pub timeout: Duration,
    pub queue: usize,
    pub batch: usize,
    pub flush: Duration,
}

/// The resolved `[telemetry]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// `None`: no traces are exported (and no spans are built).
    pub otlp: Option<OtlpSettings>,
    pub service_name: String,
    /// In [0, 1]: the share of new traces sampled.
    pub sampling_ratio: f64,
    /// Prompts and answers recorded on spans.
    pub record_content: bool,
    pub log_format: LogFormat,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp: None,
            service_name: DEFAULT_SERVICE_NAME.to_string(),
            sampling_ratio: 1.0,
            record_content: false,
            log_format: LogFormat::Text,
        }
    }
}

impl TelemetrySection {
    pub fn resolve(self, env: EnvLookup<'_>) -> Result<TelemetrySettings, ConfigError> {
        let positive = |key: &str, value: Option<usize>, default: usize| match value {
            Some(0) => Err(invalid(
                format!("telemetry.{key}"),
                "must be at least 1 (leave it out for the default)",
            )),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let millis = |key: &str, value: Option<u64>, default: u64| match value {
            Some(0) => Err(invalid(format!("telemetry.{key}"), "must be at least 1")),
            Some(ms) => Ok(Duration::from_millis(ms)),
            None => Ok(Duration::from_millis(default)),
        };
        let sampling_ratio = self.sampling_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sampling_ratio) {
            return Err(invalid(
                "telemetry.sampling_ratio",
                format!("must be between 0 and 1, not {sampling_ratio}"),
            ));
        }
        let service_name = self
            .service_name
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
        if service_name.trim().is_empty() {
            return Err(invalid("telemetry.service_name", "must not be empty"));
        }
        let log_format = match env("SLUICE_LOG_FORMAT").filter(|v| !v.trim().is_empty()) {
            Some(var) => LogFormat::parse("SLUICE_LOG_FORMAT", &var)?,
            None => match &self.log_format {
                Some(text) => LogFormat::parse("telemetry.log_format", text)?,
                None => LogFormat::Text,
            },
        };
        let (endpoint, endpoint_key) = match env("SLUICE_OTLP_ENDPOINT") {
            Some(var) if !var.trim().is_empty() => (Some(var), "SLUICE_OTLP_ENDPOINT"),
            _ => (self.endpoint, "telemetry.endpoint"),
        };
        let otlp = match endpoint {
            Some(endpoint) => {
                let endpoint = endpoint.trim().trim_end_matches('/').to_string();
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(invalid(
                        endpoint_key,
                        format!("`{endpoint}` is not an http:// or https:// URL of an OTLP/gRPC receiver"),
                    ));
                }
                let mut headers: Vec<(String, Secret)> = self
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k, Secret::new(v)))
                    .collect();
                if let Some(var) = &self.headers_env {
                    let text = env(var).ok_or_else(|| {
                        invalid("telemetry.headers_env", format!("{var} is not set"))
                    })?;
                    headers.extend(parse_headers(var, &text)?);
                }
                for (name, _) in &headers {
                    let valid = !name.is_empty()
                        && name.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)
                        });
                    if !valid {
                        return Err(invalid(
                            "telemetry.headers",
                            format!("`{name}` is not a gRPC metadata name (lower-case letters, digits, - _ .)"),
                        ));
                    }
                }
                Some(OtlpSettings {
                    endpoint,
                    headers,
                    timeout: millis("timeout_ms", self.timeout_ms, DEFAULT_TIMEOUT_MS)?,
                    queue: positive("queue", self.queue, DEFAULT_QUEUE)?,
                    batch: positive("batch", self.batch, DEFAULT_BATCH)?,
                    flush: millis("flush_ms", self.flush_ms, DEFAULT_FLUSH_MS)?,
                })
            }
            None => None,
        };
        Ok(TelemetrySettings {
            otlp,
            service_name,
            sampling_ratio,
            record_content: self.record_content,
            log_format,
        })
    }
}

impl TelemetrySettings {
    /// The section as `check-config` prints it: header names, never their
    /// values (a header is where a collector's token goes).
    pub fn table(&self) -> toml::Table {
        use toml::Value;
        let int = |n: u128| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        let mut t = toml::Table::new();
        if let Some(otlp) = &self.otlp {
            t.insert("endpoint".into(), Value::String(otlp.endpoint.clone()));
            t.insert("timeout_ms".into(), int(otlp.timeout.as_millis()));
            t.insert("queue".into(), int(otlp.queue as u128));
            t.insert("batch".into(), int(otlp.batch as u128));
            t.insert("flush_ms".into(), int(otlp.flush.as_millis()));
            let headers = otlp
                .headers
                .iter()
                .map(|(name, _)| (name.clone(), Value::String("<redacted>".into())))
                .collect();
            t.insert("headers".into(), Value::Table(headers));
        }
        t.insert(
            "service_name".into(),
            Value::String(self.service_name.clone()),
        );
        t.insert("sampling_ratio".into(), Value::Float(self.sampling_ratio));
        t.insert("record_content".into(), Value::Boolean(self.record_content));
        let format = match self.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        t.insert("log_format".into(), Value::String(format.into()));
        t
    }
}

/// `k=v,k2=v2` (the OTLP exporters' convention for headers in a variable).
fn parse_headers(var: &str, text: &str) -> Result<Vec<(String, Secret)>, ConfigError> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                invalid(
                    var,
                    "must be `name=value` pairs separated by commas (the value is not shown)",
                )
            })?;
            Ok((
                k.trim().to_ascii_lowercase(),
                Secret::new(v.trim().to_string()),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str, vars: &[(&str, &str)]) -> Result<TelemetrySettings, ConfigError> {
        let section: TelemetrySection = toml::from_str(text).unwrap();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        section.resolve(&env)
    }

    #[test]
    fn telemetry_is_off_and_content_unrecorded_by_default() {
        let t = resolve("", &[]).unwrap();
        assert_eq!(t, TelemetrySettings::default());
        assert!(t.otlp.is_none());
        assert!(!t.record_content);
    }

    #[test]
    fn an_endpoint_turns_export_on_with_headers_from_file_and_environment() {
        let t = resolve(
            r#"
            endpoint = "http://127.0.0.1:4317/"
            sampling_ratio = 0.25
            headers = { "x-team" = "ops" }
            headers_env = "OTLP_HEADERS"
            queue = 10
            "#,
            &[("OTLP_HEADERS", "authorization=Bearer abc, x-b = 2")],
        )
        .unwrap();
        let otlp = t.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://127.0.0.1:4317");
        assert_eq!(otlp.queue, 10);
        assert_eq!(otlp.batch, DEFAULT_BATCH);
        let names: Vec<&str> = otlp.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["x-team", "authorization", "x-b"]);
        assert_eq!(otlp.headers[1].1.expose(), "Bearer abc");
        assert_eq!(t.sampling_ratio, 0.25);
    }

    #[test]
    fn the_environment_overrides_endpoint_and_log_format() {
        let t = resolve(
            r#"log_format = "text""#,
            &[
                ("SLUICE_OTLP_ENDPOINT", "http://collector:4317"),
                ("SLUICE_LOG_FORMAT", "JSON"),
            ],
        )
        .unwrap();
        assert_eq!(t.otlp.unwrap().endpoint, "http://collector:4317");
        assert_eq!(t.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("sampling_ratio = 1.5", "telemetry.sampling_ratio"),
            (r#"log_format = "xml""#, "telemetry.log_format"),
            (r#"endpoint = "127.0.0.1:4317""#, "telemetry.endpoint"),
            ("endpoint = \"http://c:4317\"\nqueue = 0", "telemetry.queue"),
            (
                "endpoint = \"http://c:4317\"\nheaders = { \"Bad Name\" = \"x\" }",
                "telemetry.headers",
            ),
            (
                "endpoint = \"http://c:4317\"\nheaders_env = \"UNSET\"",
                "telemetry.headers_env",
            ),
        ] {
            let err = resolve(text, &[]).unwrap_err().to_string();
            assert!(err.starts_with(key), "{text}: {err}");
        }
    }
}
