//! `[auth.role_models]`: the models each role may use, on top of a key's
//! and a team's own allowlists.
//!
//! ```toml
//! [auth.role_models]
//! service = ["chat-small", "embed"]   # service callers: these two only
//! user = ["chat-small"]
//! ```
//!
//! A role without an entry may use every model; a caller with several roles
//! may use what any of them allows.

use std::collections::BTreeMap;

use super::{invalid, ConfigError};

/// The resolved `[auth.role_models]`: role name → models, sorted by role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleModels(pub BTreeMap<String, Vec<String>>);

pub(super) fn resolve(section: BTreeMap<String, Vec<String>>) -> Result<RoleModels, ConfigError> {
    for (role, models) in &section {
        super::oidc::check_role(&format!("auth.role_models.{role}"), role)?;
        if models.iter().any(|m| m.is_empty()) {
            return Err(invalid(
                format!("auth.role_models.{role}"),
                "a model name cannot be empty",
            ));
        }
    }
    Ok(RoleModels(section))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_must_be_sluice_roles() {
        let ok = BTreeMap::from([("service".to_string(), vec!["m".to_string()])]);
        assert_eq!(resolve(ok.clone()).unwrap().0, ok);
        let bad = BTreeMap::from([("root".to_string(), vec!["m".to_string()])]);
        let err = resolve(bad).unwrap_err().to_string();
        assert!(err.starts_with("auth.role_models.root"), "{err}");
    }
}
