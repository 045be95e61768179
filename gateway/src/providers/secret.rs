//! Reading a provider's secret from the environment or a file. The value is
//! held as [`crate::config::Secret`], whose `Debug` is redacted, so a provider
//! printed with `{:?}` (or logged) never shows its key.

use std::path::Path;

use super::ProviderError;
use crate::config::Secret;

/// Exactly one of `env` / `file`; `what` names the config keys in errors.
pub(super) fn read_secret(
    what: (&str, &str),
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Secret, ProviderError> {
    let value = match (env, file) {
        (Some(name), None) => std::env::var(name).map_err(|_| {
            ProviderError::Config(format!(
                "{}: the environment variable {name} is not set",
                what.0
            ))
        })?,
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            ProviderError::Config(format!("{}: cannot read {}: {e}", what.1, path.display()))
        })?,
        (Some(_), Some(_)) => {
            return Err(ProviderError::Config(format!(
                "give {} or {}, not both",
                what.0, what.1
            )))
        }
        (None, None) => {
            return Err(ProviderError::Config(format!(
                "give {} or {}",
                what.0, what.1
            )))
        }
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(ProviderError::Config(format!(
            "{}/{}: the secret is empty",
            what.0, what.1
        )));
    }
    Ok(Secret::new(value))
}
