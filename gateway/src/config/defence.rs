//! The `[defence]` section: the input defence's normalisation (L0) and
//! rules (L1) stage, which runs before the guard.
//!
//! ```toml
//! [defence]
//! mode = "block"          # "block" | "flag" (default) | "off"
//! flag_threshold = 0.5    # a score from here is flagged
//! block_threshold = 0.8   # and from here refused, in "block" mode
//! rules_file = "rules.toml"  # adds, replaces or disables built-in rules
//! ```
//!
//! Design decision: on by default in `flag` mode, like the guard: the
//! built-in rules cost well under a millisecond and only mark requests;
//! refusing them is the operator's choice.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Table, Value};

use super::{invalid, ConfigError};

const DEFAULT_FLAG_THRESHOLD: f32 = 0.5;
const DEFAULT_BLOCK_THRESHOLD: f32 = 0.8;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefenceSection {
    pub mode: Option<String>,
    pub flag_threshold: Option<f32>,
    pub block_threshold: Option<f32>,
    pub rules_file: Option<PathBuf>,
}

/// What the stage does with a request whose score reaches a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefenceMode {
    /// Refused from `block_threshold` (400 `content_policy_violation`),
    /// flagged from `flag_threshold`.
    Block,
    /// Answered, and marked from `flag_threshold`.
    Flag,
    /// Not scanned.
    Off,
}

impl DefenceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Flag => "flag",
            Self::Off => "off",
        }
    }
}

/// The resolved `[defence]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct DefenceConfig {
    pub mode: DefenceMode,
    pub flag_threshold: f32,
    pub block_threshold: f32,
    /// A user's rules over the built-in ones; absolute.
    pub rules_file: Option<PathBuf>,
}

impl Default for DefenceConfig {
    fn default() -> Self {
        Self {
            mode: DefenceMode::Flag,
            flag_threshold: DEFAULT_FLAG_THRESHOLD,
            block_threshold: DEFAULT_BLOCK_THRESHOLD,
            rules_file: None,
        }
    }
}

impl DefenceSection {
    pub(super) fn resolve(self, base_dir: &Path) -> Result<DefenceConfig, ConfigError> {
        let Self {
            mode,
            flag_threshold,
            block_threshold,
            rules_file,
        } = self;
        let defaults = DefenceConfig::default();
        let mode = match mode.as_deref() {
            None => defaults.mode,
            Some("block") => DefenceMode::Block,
            Some("flag") => DefenceMode::Flag,
            Some("off") => DefenceMode::Off,
            Some(other) => {
                return Err(invalid(
                    "defence.mode",
                    format!("`{other}` is not \"block\", \"flag\" or \"off\""),
                ))
            }
        };
        let threshold = |key: &str, value: Option<f32>, default: f32| match value {
            None => Ok(default),
            Some(v) if v > 0.0 && v <= 1.0 => Ok(v),
            Some(v) => Err(invalid(key, format!("{v} is not in (0, 1]"))),
        };
        let flag_threshold = threshold(
            "defence.flag_threshold",
            flag_threshold,
            defaults.flag_threshold,
        )?;
        let block_threshold = threshold(
            "defence.block_threshold",
            block_threshold,
            defaults.block_threshold.max(flag_threshold),
        )?;
        if block_threshold < flag_threshold {
            return Err(invalid(
                "defence.block_threshold",
                format!("{block_threshold} is below defence.flag_threshold ({flag_threshold})"),
            ));
        }
        Ok(DefenceConfig {
            mode,
            flag_threshold,
            block_threshold,
            rules_file: rules_file.map(|p| if p.is_absolute() { p } else { base_dir.join(p) }),
        })
    }
}

impl DefenceConfig {
    /// The section as `check-config` prints it.
    pub(super) fn table(&self) -> Table {
        let mut t = Table::new();
        t.insert("mode".into(), Value::String(self.mode.as_str().into()));
        t.insert(
            "flag_threshold".into(),
            Value::Float(f64::from(self.flag_threshold)),
        );
        t.insert(
            "block_threshold".into(),
            Value::Float(f64::from(self.block_threshold)),
        );
        if let Some(path) = &self.rules_file {
            t.insert(
                "rules_file".into(),
                Value::String(path.display().to_string()),
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DefenceConfig, ConfigError> {
        #[derive(Deserialize)]
        struct Wrapper {
            #[serde(default)]
            defence: DefenceSection,
        }
        let w: Wrapper = toml::from_str(text).unwrap();
        w.defence.resolve(Path::new("/etc/sluice"))
    }

    #[test]
    fn absent_section_flags_with_the_built_in_rules() {
        assert_eq!(parse("").unwrap(), DefenceConfig::default());
    }

    #[test]
    fn section_resolves_and_relative_rules_file_is_beside_the_config() {
        let c = parse(
            "[defence]\nmode = \"block\"\nflag_threshold = 0.4\nblock_threshold = 0.9\nrules_file = \"r.toml\"\n",
        )
        .unwrap();
        assert_eq!(c.mode, DefenceMode::Block);
        assert_eq!((c.flag_threshold, c.block_threshold), (0.4, 0.9));
        assert_eq!(c.rules_file.unwrap(), Path::new("/etc/sluice/r.toml"));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[defence]\nmode = \"deny\"\n", "defence.mode"),
            (
                "[defence]\nflag_threshold = 0.0\n",
                "defence.flag_threshold",
            ),
            (
                "[defence]\nblock_threshold = 1.5\n",
                "defence.block_threshold",
            ),
            (
                "[defence]\nflag_threshold = 0.7\nblock_threshold = 0.6\n",
                "defence.block_threshold",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
