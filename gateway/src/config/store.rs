//! The `[store]` section: where keys, spend and audit records live.
//!
//! ```toml
//! [store]
//! # PostgreSQL, shared by every instance (from the environment: a URL
//! # carries a password):
//! url_env = "SLUICE_STORE_URL"
//! # or one SQLite file (the default: `$SLUICE_DATA_DIR/sluice.db`):
//! path = "/var/lib/sluice/sluice.db"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{invalid, ConfigError, EnvLookup, Secret};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// A SQLite file, relative to the config file's folder.
    pub path: Option<PathBuf>,
    /// The variable holding a `postgres://` (or `sqlite://`) URL.
    pub url_env: Option<String>,
    /// A URL written in the file (no password in it, presumably).
    pub url: Option<String>,
}

/// Where the durable store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// One SQLite file (created, with its folder, at start).
    Sqlite(PathBuf),
    /// A PostgreSQL URL (a secret: it may carry a password).
    Postgres(Secret),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub location: StoreLocation,
}

/// `$SLUICE_DATA_DIR`, else `$XDG_DATA_HOME/sluice`, else
/// `$HOME/.local/share/sluice`, else `./sluice-data`.
pub fn default_data_dir(env: EnvLookup<'_>) -> PathBuf {
    if let Some(dir) = env("SLUICE_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = env("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("sluice");
    }
    if let Some(home) = env("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/share/sluice");
    }
    PathBuf::from("sluice-data")
}

impl StoreSection {
    pub fn resolve(
        self,
        base_dir: &Path,
        env: EnvLookup<'_>,
    ) -> Result<StoreSettings, ConfigError> {
        let url = match (&self.url_env, &self.url) {
            (Some(_), Some(_)) => {
                return Err(invalid("store", "set `url_env` or `url`, not both"));
            }
            (Some(var), None) => Some(env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                invalid(
                    "store.url_env",
                    format!("the environment variable `{var}` is not set (it should hold the store's URL)"),
                )
            })?),
            (None, Some(url)) => Some(url.clone()),
            (None, None) => env("SLUICE_STORE_URL").filter(|v| !v.is_empty()),
        };
        let location = match (url, self.path) {
            (Some(_), Some(_)) => {
                return Err(invalid("store", "set a `path` or a URL, not both"));
            }
            (Some(url), None) => parse_url(&url)?,
            (None, Some(path)) => StoreLocation::Sqlite(base_dir.join(path)),
            (None, None) => StoreLocation::Sqlite(default_data_dir(env).join("sluice.db")),
        };
        Ok(StoreSettings { location })
    }
}

fn parse_url(url: &str) -> Result<StoreLocation, ConfigError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(StoreLocation::Postgres(Secret::new(url.to_string())))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        Ok(StoreLocation::Sqlite(PathBuf::from(path)))
    } else {
        Err(invalid(
            "store.url",
            "the store's URL must start with `postgres://`, `postgresql://` or `sqlite://`",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_default_is_a_sqlite_file_in_the_data_dir() {
        let env = env_of(&[("SLUICE_DATA_DIR", "/data"), ("HOME", "/home/u")]);
        let s = StoreSection::default()
            .resolve(Path::new("/etc"), &env)
            .unwrap();
        assert_eq!(s.location, StoreLocation::Sqlite("/data/sluice.db".into()));
        let env = env_of(&[("HOME", "/home/u")]);
        let s = StoreSection::default()
            .resolve(Path::new("/etc"), &env)
            .unwrap();
        assert_eq!(
            s.location,
            StoreLocation::Sqlite("/home/u/.local/share/sluice/sluice.db".into())
        );
    }

    #[test]
    fn a_url_picks_the_backend_and_a_bad_one_names_the_key() {
        let env = env_of(&[("DB", "postgres://u@127.0.0.1/test")]);
        let section = StoreSection {
            url_env: Some("DB".into()),
            ..Default::default()
        };
        let s = section.resolve(Path::new("."), &env).unwrap();
        assert!(matches!(s.location, StoreLocation::Postgres(_)));
        let section = StoreSection {
            url: Some("mysql://x".into()),
            ..Default::default()
        };
        let err = section.resolve(Path::new("."), &env).unwrap_err();
        assert!(err.to_string().starts_with("store.url:"), "{err}");
        let section = StoreSection {
            url_env: Some("MISSING".into()),
            ..Default::default()
        };
        let err = section.resolve(Path::new("."), &env).unwrap_err();
        assert!(err.to_string().contains("MISSING"), "{err}");
    }

    #[test]
    fn a_relative_path_is_beside_the_config_file() {
        let section = StoreSection {
            path: Some("db/s.db".into()),
            ..Default::default()
        };
        let s = section
            .resolve(Path::new("/etc/sluice"), &env_of(&[]))
            .unwrap();
        assert_eq!(
            s.location,
            StoreLocation::Sqlite("/etc/sluice/db/s.db".into())
        );
    }
}
