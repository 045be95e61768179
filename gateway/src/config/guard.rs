//! The `[guard]` section: which head scores prompt injection, over which
//! encoder, at what threshold, and which Hugging Face classifiers join it.
//!
//! Design decision: with no `[guard]` section the guard is on with the head
//! built into the binary (the one committed in `models/guard/`) over the
//! default embedding encoder. A guard that silently switched itself off
//! because a key was missing would be the unsafe default; turning it off
//! takes `enabled = false`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// The labels that count as prompt injection when a classifier entry names
/// none (Prompt Guard 1 and 2, deberta-v3 injection classifiers).
pub const DEFAULT_INJECTION_LABELS: &[&str] =
    &["MALICIOUS", "INJECTION", "JAILBREAK", "PROMPT_INJECTION"];
/// The id `/v1/moderations` answers to.
pub const DEFAULT_GUARD_ID: &str = "sluice-guard";
const DEFAULT_MAX_INPUTS: usize = 64;
/// The longest one guard call may take by default. A short chat prompt
/// takes milliseconds, but a moderations request is up to 64 texts, each
/// scored whole (512-token windows) and sentence by sentence: two texts of
/// ~1,500 tokens took over 10 s on a loaded 2-core machine. Past 30 s the
/// encoders are stuck or far behind, and an answer serves the caller better
/// than waiting out the server's request timeout (600 s).
const DEFAULT_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSection {
    pub enabled: Option<bool>,
    /// The id clients name as `model` in `/v1/moderations`.
    pub id: Option<String>,
    /// A head written by `sluice guard train` (`.safetensors`; its `.json`
    /// sits beside it). Absent: the built-in head.
    pub head: Option<PathBuf>,
    /// Overrides the threshold in the head's metadata; the older name of
    /// `t_high`.
    pub threshold: Option<f32>,
    /// Scores below this are allowed outright (default: the head's `t_low`).
    pub t_low: Option<f32>,
    /// Scores from this up are flagged, or blocked under `action = "block"`;
    /// between `t_low` and `t_high` a text is "uncertain", the band the
    /// external moderation stage reads (default: the head's threshold).
    pub t_high: Option<f32>,
    /// The embedding encoder the head reads; absent: the first embedding encoder.
    pub encoder: Option<String>,
    #[serde(default)]
    pub classifiers: Vec<ClassifierEntry>,
    /// "any" (default): flagged when the head or any classifier flags.
    /// "replace": the classifiers alone decide; the head is not run.
    pub mode: Option<String>,
    /// Most inputs one `/v1/moderations` request may carry.
    pub max_inputs: Option<usize>,
    /// What a flagged chat or completion request gets: "flag" (default),
    /// "block" or "off"; a key's `guard` overrides it.
    pub action: Option<String>,
    /// Which chat and completion requests are scored: "every" (default) or "off".
    pub score: Option<String>,
    /// The longest one guard call (a moderations request, one request's
    /// scoring) may take before it answers with a timeout.
    pub timeout_ms: Option<u64>,
}

/// `"prompt-guard"` or `{ encoder = "prompt-guard", labels = [...], threshold = 0.5 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ClassifierEntry {
    Id(String),
    Table(ClassifierTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierTable {
    pub encoder: String,
    pub labels: Option<Vec<String>>,
    pub threshold: Option<f32>,
}

/// What a chat or completion request the guard flags gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardAction {
    /// Answered as usual; logged, counted and marked `x-sluice-guard: flagged`.
    Flag,
    /// Refused with a 400 whose code is `content_policy_violation`.
    Block,
    /// Not scored at all.
    Off,
}

impl GuardAction {
    pub fn parse(key: &str, text: &str) -> Result<Self, ConfigError> {
        match text {
            "flag" => Ok(Self::Flag),
            "block" => Ok(Self::Block),
            "off" => Ok(Self::Off),
            other => Err(invalid(
                key,
                format!("`{other}` is not \"flag\", \"block\" or \"off\""),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flag => "flag",
            Self::Block => "block",
            Self::Off => "off",
        }
    }
}

/// Which chat and completion requests the guard scores. The escalation
/// policy (score only what the rules layer flags) comes with that layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardScoring {
    Every,
    Off,
}

impl GuardScoring {
    pub fn parse(key: &str, text: &str) -> Result<Self, ConfigError> {
        match text {
            "every" => Ok(Self::Every),
            "off" => Ok(Self::Off),
            other => Err(invalid(
                key,
                format!("`{other}` is not \"every\" or \"off\""),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Every => "every",
            Self::Off => "off",
        }
    }
}

/// How the head and the classifiers combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardMode {
    Any,
    Replace,
}

/// Where the head comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadSource {
    BuiltIn,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ClassifierGuardConfig {
    /// An encoder of kind "classifier".
    pub encoder: String,
    /// Labels (case-insensitive) whose probabilities add up to the
    /// `prompt_injection` score.
    pub injection_labels: Vec<String>,
    pub threshold: f32,
}

/// The resolved `[guard]` section.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    pub enabled: bool,
    pub id: String,
    pub head: HeadSource,
    /// `t_high`: flagged from here up.
    pub threshold: Option<f32>,
    /// Allowed below here; `None`: the head's own.
    pub t_low: Option<f32>,
    pub encoder: Option<String>,
    pub classifiers: Vec<ClassifierGuardConfig>,
    pub mode: GuardMode,
    pub max_inputs: usize,
    /// What a flagged chat or completion request gets, unless its key says.
    pub action: GuardAction,
    /// Which chat and completion requests are scored, unless the route says.
    pub score: GuardScoring,
    pub timeout: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            id: DEFAULT_GUARD_ID.into(),
            head: HeadSource::BuiltIn,
            threshold: None,
            t_low: None,
            encoder: None,
            classifiers: Vec::new(),
            mode: GuardMode::Any,
            max_inputs: DEFAULT_MAX_INPUTS,
            action: GuardAction::Flag,
            score: GuardScoring::Every,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
        }
    }
}

fn check_probability(key: &str, value: f32) -> Result<f32, ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(key, format!("{value} is not between 0 and 1")))
    }
}

pub(super) fn resolve_guard(
    section: Option<GuardSection>,
    base_dir: &Path,
) -> Result<GuardConfig, ConfigError> {
    let Some(GuardSection {
        enabled,
        id,
        head,
        threshold,
        t_low,
        t_high,
        encoder,
        classifiers,
        mode,
        max_inputs,
        action,
        score,
        timeout_ms,
    }) = section
    else {
        return Ok(GuardConfig::default());
    };
    let defaults = GuardConfig::default();
    let action = match action {
        Some(a) => GuardAction::parse("guard.action", &a)?,
        None => defaults.action,
    };
    let score = match score {
        Some(s) => GuardScoring::parse("guard.score", &s)?,
        None => defaults.score,
    };
    let mode = match mode.as_deref() {
        None | Some("any") => GuardMode::Any,
        Some("replace") => GuardMode::Replace,
        Some(other) => {
            return Err(invalid(
                "guard.mode",
                format!("`{other}` is not \"any\" or \"replace\""),
            ))
        }
    };
    let classifiers = classifiers
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let (encoder, labels, threshold) = match entry {
                ClassifierEntry::Id(id) => (id, None, None),
                ClassifierEntry::Table(t) => (t.encoder, t.labels, t.threshold),
            };
            let key = format!("guard.classifiers[{i}]");
            if encoder.trim().is_empty() {
                return Err(invalid(format!("{key}.encoder"), "must name an encoder id"));
            }
            let injection_labels = match labels {
                Some(l) if l.is_empty() => {
                    return Err(invalid(
                        format!("{key}.labels"),
                        "list at least one label, or leave it out for the default rule",
                    ))
                }
                Some(l) => l,
                None => DEFAULT_INJECTION_LABELS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            };
            Ok(ClassifierGuardConfig {
                encoder,
                injection_labels,
                threshold: check_probability(
                    &format!("{key}.threshold"),
                    threshold.unwrap_or(0.5),
                )?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if mode == GuardMode::Replace && classifiers.is_empty() {
        return Err(invalid(
            "guard.mode",
            "\"replace\" needs at least one entry in guard.classifiers",
        ));
    }
    let max_inputs = max_inputs.unwrap_or(defaults.max_inputs);
    if max_inputs == 0 {
        return Err(invalid("guard.max_inputs", "must be at least 1"));
    }
    let timeout = match timeout_ms {
        None => defaults.timeout,
        Some(0) => return Err(invalid("guard.timeout_ms", "must be at least 1")),
        Some(ms) => Duration::from_millis(ms),
    };
    let threshold = match (threshold, t_high) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "guard.t_high",
                "give `t_high` or its older name `threshold`, not both",
            ))
        }
        (Some(t), None) => Some(check_probability("guard.threshold", t)?),
        (None, Some(t)) => Some(check_probability("guard.t_high", t)?),
        (None, None) => None,
    };
    let t_low = t_low
        .map(|t| check_probability("guard.t_low", t))
        .transpose()?;
    if let (Some(low), Some(high)) = (t_low, threshold) {
        if low > high {
            return Err(invalid(
                "guard.t_low",
                format!(
                    "{low} is above t_high {high}; the uncertain band runs from t_low up to t_high"
                ),
            ));
        }
    }
    Ok(GuardConfig {
        enabled: enabled.unwrap_or(true),
        id: id.unwrap_or(defaults.id),
        head: head.map_or(HeadSource::BuiltIn, |p| {
            HeadSource::File(if p.is_absolute() { p } else { base_dir.join(p) })
        }),
        threshold,
        t_low,
        encoder,
        classifiers,
        mode,
        max_inputs,
        action,
        score,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GuardConfig, ConfigError> {
        #[derive(Deserialize)]
        struct Wrapper {
            guard: Option<GuardSection>,
        }
        let w: Wrapper = toml::from_str(text).map_err(|e| invalid("toml", e.to_string()))?;
        resolve_guard(w.guard, Path::new("/etc/sluice"))
    }

    #[test]
    fn no_section_means_the_built_in_head_on() {
        let g = parse("").unwrap();
        assert!(g.enabled);
        assert_eq!(g.head, HeadSource::BuiltIn);
        assert_eq!(g.mode, GuardMode::Any);
        assert_eq!(g.id, DEFAULT_GUARD_ID);
        assert_eq!(g.timeout, Duration::from_millis(DEFAULT_TIMEOUT_MS));
    }

    #[test]
    fn classifiers_take_ids_or_tables_and_relative_heads_follow_the_file() {
        let g = parse(
            r#"[guard]
head = "heads/h.safetensors"
threshold = 0.7
classifiers = ["pg", { encoder = "deberta", labels = ["LABEL_1"], threshold = 0.9 }]
mode = "replace"
"#,
        )
        .unwrap();
        assert_eq!(
            g.head,
            HeadSource::File(PathBuf::from("/etc/sluice/heads/h.safetensors"))
        );
        assert_eq!(g.threshold, Some(0.7));
        assert_eq!(g.mode, GuardMode::Replace);
        assert_eq!(g.classifiers[0].encoder, "pg");
        assert!(g.classifiers[0]
            .injection_labels
            .contains(&"MALICIOUS".to_string()));
        assert_eq!(g.classifiers[1].injection_labels, ["LABEL_1"]);
        assert_eq!(g.classifiers[1].threshold, 0.9);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = parse("[guard]\nmode = \"all\"\n").unwrap_err().to_string();
        assert!(err.contains("guard.mode"), "{err}");
        let err = parse("[guard]\nmode = \"replace\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("classifiers"), "{err}");
        let err = parse("[guard]\ntimeout_ms = 0\n").unwrap_err().to_string();
        assert!(err.contains("guard.timeout_ms"), "{err}");
        assert_eq!(
            parse("[guard]\ntimeout_ms = 250\n").unwrap().timeout,
            Duration::from_millis(250)
        );
        let err = parse("[guard]\nt_low = 0.7\nt_high = 0.4\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("guard.t_low"), "{err}");
        let err = parse("[guard]\nthreshold = 0.5\nt_high = 0.4\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("guard.t_high"), "{err}");
        let band = parse("[guard]\nt_low = 0.2\nt_high = 0.8\n").unwrap();
        assert_eq!((band.t_low, band.threshold), (Some(0.2), Some(0.8)));
        let err = parse("[guard]\nthreshold = 1.5\n").unwrap_err().to_string();
        assert!(err.contains("guard.threshold"), "{err}");
        let err = parse("[guard]\nclassifiers = [{ encoder = \"x\", threshold = -1.0 }]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("guard.classifiers[0].threshold"), "{err}");
    }
}
