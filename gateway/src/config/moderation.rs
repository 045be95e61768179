//! The `[moderation]` section: the external moderation service (L3) that
//! gives a second opinion on what the guard calls uncertain (a score
//! between `[guard] t_low` and `t_high`). Absent: no L3, and an uncertain
//! request is served as the guard left it.
//!
//! ```toml
//! [moderation]
//! provider = "azure-prompt-shields"  # | "azure-text-analyze" | "openai"
//! endpoint = "https://my-resource.cognitiveservices.azure.com"
//! api_key_env = "AZURE_CONTENT_SAFETY_KEY"   # or api_key_file
//! timeout_ms = 300        # the whole call, retries none
//! on_error = "allow"      # timeout, 5xx, malformed body: "allow" | "block"
//! on_prem = false         # true: sensitive requests may be sent to it too
//! # azure-text-analyze: the severity (0-7) from which a category flags
//! severity_thresholds = { Hate = 4, SelfHarm = 4, Sexual = 4, Violence = 4 }
//! # openai: the moderation model, and scores that flag instead of `flagged`
//! model = "omni-moderation-latest"
//! category_thresholds = { "violence" = 0.5 }
//! ```
//!
//! `endpoint` is the Azure resource's endpoint (the adapter adds
//! `/contentsafety/text:...`), or for `openai` the base up to and including
//! `/v1` (the adapter adds `/moderations`), as `[[providers]] base_url`.
//!
//! Design decision: `on_error` has no silent default in the sense of a
//! hidden policy: it is `allow` unless set, printed by `check-config`, and
//! every use is a metric and an audit record, so a service that is down
//! shows as a rising `error_allowed` count rather than as nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};

use super::{invalid, ConfigError, EnvLookup, KeySource, Secret};

/// The issue's budget for the whole external call.
pub const DEFAULT_MODERATION_TIMEOUT_MS: u64 = 300;
/// Azure's harm categories (`text:analyze`).
pub const AZURE_CATEGORIES: &[&str] = &["Hate", "SelfHarm", "Sexual", "Violence"];
/// Azure's "medium" severity: what its own content filters block by default.
const DEFAULT_AZURE_SEVERITY: u8 = 4;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModerationSection {
    pub provider: Option<String>,
    pub endpoint: Option<String>,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub timeout_ms: Option<u64>,
    pub on_error: Option<String>,
    pub on_prem: Option<bool>,
    /// `azure-text-analyze` only.
    pub severity_thresholds: Option<BTreeMap<String, u8>>,
    /// `openai` only.
    pub model: Option<String>,
    /// `openai` only.
    pub category_thresholds: Option<BTreeMap<String, f64>>,
}

/// Which API the service speaks, and the thresholds that API needs.
#[derive(Debug, Clone, PartialEq)]
pub enum ModerationApi {
    /// Azure AI Content Safety Prompt Shields (`text:shieldPrompt`): an
    /// attack is detected or not, in the prompt and in each document.
    AzurePromptShields,
    /// Azure AI Content Safety `text:analyze`: a severity per harm
    /// category; flagged when one reaches its threshold.
    AzureTextAnalyze {
        /// Category (`Hate`, `SelfHarm`, `Sexual`, `Violence`) -> the
        /// lowest severity that flags.
        severity_thresholds: BTreeMap<String, u8>,
    },
    /// OpenAI-style `/v1/moderations`.
    OpenAi {
        /// The moderation model to ask for; `None`: the service's default.
        model: Option<String>,
        /// Category -> the lowest score that flags; empty: the service's
        /// own `flagged` decides.
        category_thresholds: BTreeMap<String, f64>,
    },
}

impl ModerationApi {
    /// The `provider` name, as metrics, headers and audit records say it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::AzurePromptShields => "azure-prompt-shields",
            Self::AzureTextAnalyze { .. } => "azure-text-analyze",
            Self::OpenAi { .. } => "openai",
        }
    }
}

/// What an uncertain request gets when the service does not answer in
/// time, answers 5xx (or any non-2xx) or answers something unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnModerationError {
    /// Served as the guard left it (`uncertain`).
    Allow,
    /// Treated as flagged: refused under `[guard] action = "block"`.
    Block,
}

impl OnModerationError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Block => "block",
        }
    }
}

/// The resolved `[moderation]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ModerationConfig {
    pub api: ModerationApi,
    /// Without a trailing `/`.
    pub endpoint: String,
    /// `None`: no credential sent (an on-premises service may need none).
    pub key: Option<(KeySource, Secret)>,
    pub timeout: Duration,
    pub on_error: OnModerationError,
    /// The service runs on the premises: sensitive requests may reach it.
    pub on_prem: bool,
}

impl ModerationSection {
    pub(super) fn resolve(
        self,
        base_dir: &Path,
        env: EnvLookup<'_>,
    ) -> Result<ModerationConfig, ConfigError> {
        let Self {
            provider,
            endpoint,
            api_key_env,
            api_key_file,
            timeout_ms,
            on_error,
            on_prem,
            severity_thresholds,
            model,
            category_thresholds,
        } = self;
        let provider = provider.ok_or_else(|| {
            invalid(
                "moderation.provider",
                "give the service's API: \"azure-prompt-shields\", \"azure-text-analyze\" or \
                 \"openai\"",
            )
        })?;
        let only = |key: &str, set: bool, wanted: &str| {
            if set && provider != wanted {
                Err(invalid(
                    format!("moderation.{key}"),
                    format!("applies to provider \"{wanted}\" only, not \"{provider}\""),
                ))
            } else {
                Ok(())
            }
        };
        only(
            "severity_thresholds",
            severity_thresholds.is_some(),
            "azure-text-analyze",
        )?;
        only("model", model.is_some(), "openai")?;
        only(
            "category_thresholds",
            category_thresholds.is_some(),
            "openai",
        )?;
        let api = match provider.as_str() {
            "azure-prompt-shields" => ModerationApi::AzurePromptShields,
            "azure-text-analyze" => ModerationApi::AzureTextAnalyze {
                severity_thresholds: azure_severities(severity_thresholds.unwrap_or_default())?,
            },
            "openai" => {
                let category_thresholds = category_thresholds.unwrap_or_default();
                for (category, score) in &category_thresholds {
                    if !(0.0..=1.0).contains(score) || score.is_nan() {
                        return Err(invalid(
                            format!("moderation.category_thresholds.{category}"),
                            format!("{score} is not in [0, 1]"),
                        ));
                    }
                }
                ModerationApi::OpenAi {
                    model: model.filter(|m| !m.trim().is_empty()),
                    category_thresholds,
                }
            }
            other => {
                return Err(invalid(
                    "moderation.provider",
                    format!(
                        "`{other}` is not \"azure-prompt-shields\", \"azure-text-analyze\" or \
                         \"openai\""
                    ),
                ))
            }
        };
        let endpoint = endpoint
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .ok_or_else(|| invalid("moderation.endpoint", "give the service's URL"))?;
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(invalid(
                "moderation.endpoint",
                format!("`{endpoint}` is not an http:// or https:// URL"),
            ));
        }
        if endpoint.contains(['?', '#']) {
            return Err(invalid(
                "moderation.endpoint",
                "give the base URL without a query or fragment: the adapter adds the path and \
                 api-version",
            ));
        }
        let key = read_key(api_key_env, api_key_file, base_dir, env)?;
        if key.is_none() && !matches!(api, ModerationApi::OpenAi { .. }) {
            return Err(invalid(
                "moderation.api_key_env",
                "Azure AI Content Safety needs a key: give api_key_env or api_key_file",
            ));
        }
        let timeout_ms = timeout_ms.unwrap_or(DEFAULT_MODERATION_TIMEOUT_MS);
        if !(1..=60_000).contains(&timeout_ms) {
            return Err(invalid(
                "moderation.timeout_ms",
                format!("{timeout_ms} is not between 1 and 60000"),
            ));
        }
        let on_error = match on_error.as_deref() {
            None | Some("allow") => OnModerationError::Allow,
            Some("block") => OnModerationError::Block,
            Some(other) => {
                return Err(invalid(
                    "moderation.on_error",
                    format!("`{other}` is not \"allow\" or \"block\""),
                ))
            }
        };
        Ok(ModerationConfig {
            api,
            endpoint,
            key,
            timeout: Duration::from_millis(timeout_ms),
            on_error,
            on_prem: on_prem.unwrap_or(false),
        })
    }
}

/// Every Azure category at its default severity, overridden by the file's.
fn azure_severities(given: BTreeMap<String, u8>) -> Result<BTreeMap<String, u8>, ConfigError> {
    let mut out: BTreeMap<String, u8> = AZURE_CATEGORIES
        .iter()
        .map(|c| (c.to_string(), DEFAULT_AZURE_SEVERITY))
        .collect();
    for (category, severity) in given {
        let key = format!("moderation.severity_thresholds.{category}");
        if !AZURE_CATEGORIES.contains(&category.as_str()) {
            return Err(invalid(
                key,
                format!(
                    "not one of Azure's categories ({})",
                    AZURE_CATEGORIES.join(", ")
                ),
            ));
        }
        if severity > 7 {
            return Err(invalid(key, format!("{severity} is not a severity (0-7)")));
        }
        out.insert(category, severity);
    }
    Ok(out)
}

fn read_key(
    api_key_env: Option<String>,
    api_key_file: Option<PathBuf>,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<Option<(KeySource, Secret)>, ConfigError> {
    let (source, value, key) = match (api_key_env, api_key_file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(invalid(
                "moderation.api_key_env",
                "give api_key_env or api_key_file, not both",
            ))
        }
        (Some(name), None) => {
            let value = env(&name).ok_or_else(|| {
                invalid(
                    "moderation.api_key_env",
                    format!("environment variable {name} is not set"),
                )
            })?;
            (KeySource::Env(name), value, "moderation.api_key_env")
        }
        (None, Some(path)) => {
            let path = if path.is_absolute() {
                path
            } else {
                base_dir.join(path)
            };
            let value = std::fs::read_to_string(&path).map_err(|e| {
                invalid(
                    "moderation.api_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            (KeySource::File(path), value, "moderation.api_key_file")
        }
    };
    let value = value.trim();
    // A header value: no line breaks or control characters.
    if value.is_empty() || value.chars().any(|c| c.is_control()) {
        return Err(invalid(key, "the key is empty or holds control characters"));
    }
    Ok(Some((source, Secret::new(value.to_string()))))
}

impl ModerationConfig {
    /// The section as `check-config` prints it (the key as its source).
    pub(super) fn table(&self) -> Table {
        let mut t = Table::new();
        t.insert("provider".into(), Value::String(self.api.name().into()));
        t.insert(
            "endpoint".into(),
            Value::String(super::render::redact_url(&self.endpoint)),
        );
        if let Some((source, _)) = &self.key {
            t.insert(
                "api_key".into(),
                Value::String(format!("<redacted: {source}>")),
            );
        }
        t.insert(
            "timeout_ms".into(),
            Value::Integer(i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX)),
        );
        t.insert(
            "on_error".into(),
            Value::String(self.on_error.as_str().into()),
        );
        t.insert("on_prem".into(), Value::Boolean(self.on_prem));
        match &self.api {
            ModerationApi::AzurePromptShields => {}
            ModerationApi::AzureTextAnalyze {
                severity_thresholds,
            } => {
                let s = severity_thresholds
                    .iter()
                    .map(|(c, v)| (c.clone(), Value::Integer(i64::from(*v))))
                    .collect();
                t.insert("severity_thresholds".into(), Value::Table(s));
            }
            ModerationApi::OpenAi {
                model,
                category_thresholds,
            } => {
                if let Some(model) = model {
                    t.insert("model".into(), Value::String(model.clone()));
                }
                let s = category_thresholds
                    .iter()
                    .map(|(c, v)| (c.clone(), Value::Float(*v)))
                    .collect();
                t.insert("category_thresholds".into(), Value::Table(s));
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(text: &str, env: EnvLookup<'_>) -> Result<ModerationConfig, ConfigError> {
        #[derive(Deserialize)]
        struct Wrapper {
            moderation: ModerationSection,
        }
        let w: Wrapper = toml::from_str(text).unwrap();
        w.moderation.resolve(Path::new("/etc/sluice"), env)
    }

    fn parse(text: &str) -> Result<ModerationConfig, ConfigError> {
        parse_with(text, &|name| {
            (name == "CS_KEY").then(|| "k-123".to_string())
        })
    }

    #[test]
    fn an_azure_section_resolves_with_the_default_timeout_and_allow() {
        let c = parse(
            "[moderation]\nprovider = \"azure-prompt-shields\"\n\
             endpoint = \"https://cs.example.com/\"\napi_key_env = \"CS_KEY\"\n",
        )
        .unwrap();
        assert_eq!(c.api, ModerationApi::AzurePromptShields);
        assert_eq!(c.endpoint, "https://cs.example.com");
        assert_eq!(c.timeout, Duration::from_millis(300));
        assert_eq!(c.on_error, OnModerationError::Allow);
        assert!(!c.on_prem);
        let (source, secret) = c.key.clone().unwrap();
        assert_eq!(source, KeySource::Env("CS_KEY".into()));
        assert_eq!(secret.expose(), "k-123");
        // check-config shows where the key came from, never the key.
        let shown = toml::to_string(&c.table()).unwrap();
        assert!(shown.contains("<redacted: env CS_KEY>"), "{shown}");
        assert!(!shown.contains("k-123"), "{shown}");
    }

    #[test]
    fn text_analyze_fills_every_category_and_takes_overrides() {
        let c = parse(
            "[moderation]\nprovider = \"azure-text-analyze\"\nendpoint = \"http://127.0.0.1:9\"\n\
             api_key_env = \"CS_KEY\"\non_error = \"block\"\ntimeout_ms = 50\n\
             severity_thresholds = { Violence = 2 }\n",
        )
        .unwrap();
        let ModerationApi::AzureTextAnalyze {
            severity_thresholds,
        } = &c.api
        else {
            panic!("{:?}", c.api);
        };
        assert_eq!(severity_thresholds["Violence"], 2);
        assert_eq!(severity_thresholds["Hate"], 4);
        assert_eq!(severity_thresholds.len(), 4);
        assert_eq!(c.on_error, OnModerationError::Block);
        assert_eq!(c.timeout, Duration::from_millis(50));
    }

    #[test]
    fn openai_needs_no_key_and_keeps_its_thresholds() {
        let c = parse(
            "[moderation]\nprovider = \"openai\"\nendpoint = \"http://127.0.0.1:9/v1\"\n\
             model = \"omni-moderation-latest\"\non_prem = true\n\
             category_thresholds = { \"violence\" = 0.5 }\n",
        )
        .unwrap();
        assert_eq!(
            c.api,
            ModerationApi::OpenAi {
                model: Some("omni-moderation-latest".into()),
                category_thresholds: [("violence".to_string(), 0.5)].into(),
            }
        );
        assert!(c.key.is_none());
        assert!(c.on_prem);
    }

    #[test]
    fn bad_values_name_their_key() {
        let head =
            "[moderation]\nendpoint = \"https://cs.example.com\"\napi_key_env = \"CS_KEY\"\n";
        for (rest, key) in [
            ("", "moderation.provider"),
            ("provider = \"perspective\"\n", "moderation.provider"),
            (
                "provider = \"azure-prompt-shields\"\ntimeout_ms = 0\n",
                "moderation.timeout_ms",
            ),
            (
                "provider = \"azure-prompt-shields\"\non_error = \"retry\"\n",
                "moderation.on_error",
            ),
            (
                "provider = \"azure-prompt-shields\"\nmodel = \"x\"\n",
                "moderation.model",
            ),
            (
                "provider = \"openai\"\nseverity_thresholds = { Hate = 2 }\n",
                "moderation.severity_thresholds",
            ),
            (
                "provider = \"azure-text-analyze\"\nseverity_thresholds = { Spam = 2 }\n",
                "moderation.severity_thresholds.Spam",
            ),
            (
                "provider = \"azure-text-analyze\"\nseverity_thresholds = { Hate = 9 }\n",
                "moderation.severity_thresholds.Hate",
            ),
            (
                "provider = \"openai\"\ncategory_thresholds = { hate = 1.5 }\n",
                "moderation.category_thresholds.hate",
            ),
        ] {
            let err = parse(&format!("{head}{rest}")).unwrap_err().to_string();
            assert!(err.contains(key), "{rest}: {err}");
        }
        // Azure without a key, an unset variable, a URL without a scheme.
        for (text, key) in [
            (
                "[moderation]\nprovider = \"azure-prompt-shields\"\nendpoint = \"https://x\"\n",
                "moderation.api_key_env",
            ),
            (
                "[moderation]\nprovider = \"openai\"\nendpoint = \"https://x/v1\"\napi_key_env = \"NOPE\"\n",
                "moderation.api_key_env",
            ),
            (
                "[moderation]\nprovider = \"openai\"\nendpoint = \"api.openai.com/v1\"\n",
                "moderation.endpoint",
            ),
            (
                "[moderation]\nprovider = \"openai\"\nendpoint = \"https://x/v1?key=k\"\n",
                "moderation.endpoint",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
