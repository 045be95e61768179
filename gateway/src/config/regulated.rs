//! The `[regulated]` section: which tenants and teams are regulated besides
//! the keys marked `regulated = true`, and the master key that wraps each
//! tenant's data key (encryption at rest).
//!
//! ```toml
//! [regulated]
//! tenants = ["bank"]                  # every key of these tenants
//! teams = ["risk"]                    # every key of these teams (virtual keys)
//! master_key_env = "SLUICE_MASTER_KEY"  # or master_key_file = "/etc/sluice/master.key"
//! ```
//!
//! The master key is at least 32 bytes. Without one, `[sessions]
//! encryption_key_env` is the master key; without either, regulated
//! requests are never cached and their sessions are stored plain (said in
//! the log at start).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{invalid, ConfigError, EnvLookup, Secret};

/// The shortest master key accepted (bytes).
pub const MIN_MASTER_BYTES: usize = 32;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegulatedSection {
    #[serde(default)]
    pub tenants: Vec<String>,
    #[serde(default)]
    pub teams: Vec<String>,
    pub master_key_env: Option<String>,
    pub master_key_file: Option<PathBuf>,
}

/// Where the master key was read from (for `check-config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    Env(String),
    File(PathBuf),
    /// `[sessions] encryption_key_env`.
    Sessions,
}

/// The resolved `[regulated]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegulatedSettings {
    pub tenants: BTreeSet<String>,
    pub teams: BTreeSet<String>,
    /// Wraps every tenant's data key; `None`: nothing is encrypted at rest.
    pub master_key: Option<(MasterKeySource, Secret)>,
}

impl RegulatedSettings {
    /// Whether a caller of `tenant` (and `team`) is regulated by the lists.
    pub fn covers(&self, tenant: &str, team: Option<&str>) -> bool {
        self.tenants.contains(tenant) || team.is_some_and(|t| self.teams.contains(t))
    }
}

impl RegulatedSettings {
    /// `check-config`'s `[regulated]`: the master key by where it came from.
    pub(super) fn table(&self) -> toml::Table {
        use toml::Value;
        let list = |names: &BTreeSet<String>| {
            Value::Array(names.iter().map(|n| Value::String(n.clone())).collect())
        };
        let mut t = toml::Table::new();
        t.insert("tenants".into(), list(&self.tenants));
        t.insert("teams".into(), list(&self.teams));
        let master = match &self.master_key {
            Some((MasterKeySource::Env(var), _)) => format!("<redacted: env {var}>"),
            Some((MasterKeySource::File(path), _)) => {
                format!("<redacted: file {}>", path.display())
            }
            Some((MasterKeySource::Sessions, _)) => {
                "<redacted: [sessions] encryption_key_env>".to_string()
            }
            None => "none: regulated answers are not cached".to_string(),
        };
        t.insert("master_key".into(), Value::String(master));
        t
    }
}

impl RegulatedSection {
    /// `sessions_key`: `[sessions] encryption_key_env`, the master key when
    /// this section names none.
    pub fn resolve(
        self,
        base_dir: &Path,
        env: EnvLookup<'_>,
        sessions_key: Option<&Secret>,
    ) -> Result<RegulatedSettings, ConfigError> {
        let Self {
            tenants,
            teams,
            master_key_env,
            master_key_file,
        } = self;
        for (i, t) in tenants.iter().enumerate() {
            if t.trim().is_empty() {
                return Err(invalid(format!("regulated.tenants[{i}]"), "is empty"));
            }
        }
        for (i, t) in teams.iter().enumerate() {
            if t.trim().is_empty() {
                return Err(invalid(format!("regulated.teams[{i}]"), "is empty"));
            }
        }
        let master_key = match (master_key_env, master_key_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "regulated.master_key_env",
                    "give master_key_env or master_key_file, not both",
                ))
            }
            (Some(var), None) => {
                let value = env(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    invalid(
                        "regulated.master_key_env",
                        format!("the environment variable `{var}` is not set"),
                    )
                })?;
                Some((MasterKeySource::Env(var), checked("master_key_env", value)?))
            }
            (None, Some(path)) => {
                let path = super::resolve::resolve_path(base_dir, &path);
                let value = std::fs::read_to_string(&path).map_err(|e| {
                    invalid(
                        "regulated.master_key_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let value = value.trim_end_matches(['\n', '\r']).to_string();
                Some((
                    MasterKeySource::File(path),
                    checked("master_key_file", value)?,
                ))
            }
            (None, None) => sessions_key.map(|s| (MasterKeySource::Sessions, s.clone())),
        };
        Ok(RegulatedSettings {
            tenants: tenants.into_iter().collect(),
            teams: teams.into_iter().collect(),
            master_key,
        })
    }
}

fn checked(field: &str, value: String) -> Result<Secret, ConfigError> {
    if value.len() < MIN_MASTER_BYTES {
        return Err(invalid(
            format!("regulated.{field}"),
            format!("the master key must hold at least {MIN_MASTER_BYTES} bytes"),
        ));
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn lists_cover_tenants_and_teams() {
        let s = RegulatedSection {
            tenants: vec!["bank".into()],
            teams: vec!["risk".into()],
            ..Default::default()
        }
        .resolve(Path::new("."), &no_env, None)
        .unwrap();
        assert!(s.covers("bank", None));
        assert!(s.covers("shop", Some("risk")));
        assert!(!s.covers("shop", Some("sales")));
        assert!(!s.covers("shop", None));
        assert_eq!(s.master_key, None);
    }

    #[test]
    fn the_master_key_comes_from_the_environment_a_file_or_the_sessions_key() {
        let env = |k: &str| (k == "M").then(|| "m".repeat(32));
        let s = RegulatedSection {
            master_key_env: Some("M".into()),
            ..Default::default()
        }
        .resolve(Path::new("."), &env, None)
        .unwrap();
        assert_eq!(s.master_key.unwrap().0, MasterKeySource::Env("M".into()));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("master.key"),
            format!("{}\n", "f".repeat(40)),
        )
        .unwrap();
        let s = RegulatedSection {
            master_key_file: Some("master.key".into()),
            ..Default::default()
        }
        .resolve(dir.path(), &no_env, None)
        .unwrap();
        let (source, secret) = s.master_key.unwrap();
        assert_eq!(source, MasterKeySource::File(dir.path().join("master.key")));
        assert_eq!(
            secret.expose(),
            "f".repeat(40),
            "the newline is not part of the key"
        );

        let sessions = Secret::new("s".repeat(32));
        let s = RegulatedSection::default()
            .resolve(Path::new("."), &no_env, Some(&sessions))
            .unwrap();
        assert_eq!(s.master_key, Some((MasterKeySource::Sessions, sessions)));
    }

    #[test]
    fn a_short_or_missing_master_key_is_refused() {
        let env = |k: &str| (k == "M").then(|| "short".to_string());
        let err = RegulatedSection {
            master_key_env: Some("M".into()),
            ..Default::default()
        }
        .resolve(Path::new("."), &env, None)
        .unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
        let err = RegulatedSection {
            master_key_env: Some("UNSET".into()),
            ..Default::default()
        }
        .resolve(Path::new("."), &no_env, None)
        .unwrap_err();
        assert!(err.to_string().contains("not set"), "{err}");
    }
}
