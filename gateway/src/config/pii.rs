//! The `[pii]` section: which kinds of personal data the gateway looks for
//! in requests and answers, and what it does with each.
//!
//! ```toml
//! [pii]
//! enabled = true
//! output = true                    # redact answers too (default true)
//! default = "mask"                 # a kind not listed below
//! hash_key_env = "SLUICE_PII_KEY"  # the keyed hash's secret (else a random one per process)
//! [pii.actions]
//! email = "pseudonymize"           # placeholders to cloud deployments, restored in the answer
//! card = "block"                   # 400 content_policy_violation
//! ip = "allow"
//! secret = "hash"                  # [SECRET:1f2e...]: equal values, equal tokens, per tenant
//! ```
//!
//! Kinds: `email`, `phone`, `card`, `iban`, `inn`, `snils`, `ogrn`,
//! `ogrnip`, `account`, `passport`, `ip`, `secret`.

use std::collections::HashMap;

use serde::Deserialize;

use super::{invalid, ConfigError, EnvLookup, Secret};

/// A kind of personal data (or secret) the detector recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiEntity {
    Email,
    Phone,
    Card,
    Iban,
    Inn,
    Snils,
    Ogrn,
    Ogrnip,
    /// A Russian bank account (20 digits).
    Account,
    Passport,
    Ip,
    /// API keys, JWTs, private keys.
    Secret,
}

impl PiiEntity {
    pub const ALL: [Self; 12] = [
        Self::Email,
        Self::Phone,
        Self::Card,
        Self::Iban,
        Self::Inn,
        Self::Snils,
        Self::Ogrn,
        Self::Ogrnip,
        Self::Account,
        Self::Passport,
        Self::Ip,
        Self::Secret,
    ];

    /// The name in config, headers, metrics and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::Card => "card",
            Self::Iban => "iban",
            Self::Inn => "inn",
            Self::Snils => "snils",
            Self::Ogrn => "ogrn",
            Self::Ogrnip => "ogrnip",
            Self::Account => "account",
            Self::Passport => "passport",
            Self::Ip => "ip",
            Self::Secret => "secret",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// What a detected value gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiAction {
    /// Left as it is.
    Allow,
    /// Replaced by the kind's tag, `[EMAIL]`.
    Mask,
    /// Replaced by a keyed hash, `[EMAIL:3f2a9c1b0d]`: equal values give
    /// equal tokens within a tenant; not reversible.
    Hash,
    /// The request is refused (400 `content_policy_violation`).
    Block,
    /// Replaced by `<PII_EMAIL_1>` before the request leaves for a cloud
    /// deployment, and put back in the answer; the local engine sees it.
    Pseudonymize,
}

impl PiiAction {
    pub fn parse(key: &str, text: &str) -> Result<Self, ConfigError> {
        match text {
            "allow" => Ok(Self::Allow),
            "mask" => Ok(Self::Mask),
            "hash" => Ok(Self::Hash),
            "block" => Ok(Self::Block),
            "pseudonymize" => Ok(Self::Pseudonymize),
            other => Err(invalid(
                key,
                format!(
                    "`{other}` is not \"allow\", \"mask\", \"hash\", \"block\" or \"pseudonymize\""
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Mask => "mask",
            Self::Hash => "hash",
            Self::Block => "block",
            Self::Pseudonymize => "pseudonymize",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiSection {
    pub enabled: Option<bool>,
    pub output: Option<bool>,
    pub default: Option<String>,
    pub hash_key_env: Option<String>,
    #[serde(default)]
    pub actions: HashMap<String, String>,
}

/// The resolved `[pii]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PiiSettings {
    pub enabled: bool,
    /// Redact answers as well as requests.
    pub output: bool,
    /// The action of every kind, in [`PiiEntity::ALL`] order.
    pub actions: [PiiAction; 12],
    /// The keyed hash's secret; `None`: a random one per process (tokens
    /// then differ between instances and restarts).
    pub hash_key: Option<Secret>,
}

impl Default for PiiSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            output: true,
            actions: [PiiAction::Mask; 12],
            hash_key: None,
        }
    }
}

impl PiiSettings {
    pub fn action(&self, entity: PiiEntity) -> PiiAction {
        let i = PiiEntity::ALL
            .iter()
            .position(|e| *e == entity)
            .unwrap_or_default();
        self.actions.get(i).copied().unwrap_or(PiiAction::Mask)
    }
}

impl PiiSection {
    pub fn resolve(self, env: EnvLookup<'_>) -> Result<PiiSettings, ConfigError> {
        let Self {
            enabled,
            output,
            default,
            hash_key_env,
            actions,
        } = self;
        let default = match default {
            Some(text) => PiiAction::parse("pii.default", &text)?,
            None => PiiAction::Mask,
        };
        let mut resolved = [default; 12];
        for (name, action) in &actions {
            let key = format!("pii.actions.{name}");
            let entity = PiiEntity::parse(name).ok_or_else(|| {
                let known: Vec<&str> = PiiEntity::ALL.iter().map(|e| e.as_str()).collect();
                invalid(&key, format!("unknown kind; known: {}", known.join(", ")))
            })?;
            let i = PiiEntity::ALL
                .iter()
                .position(|e| *e == entity)
                .unwrap_or_default();
            resolved[i] = PiiAction::parse(&key, action)?;
        }
        let hash_key = match hash_key_env {
            Some(var) => {
                let value = env(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    invalid("pii.hash_key_env", format!("${var} is not set or empty"))
                })?;
                Some(Secret::new(value))
            }
            None => None,
        };
        Ok(PiiSettings {
            enabled: enabled.unwrap_or(false),
            output: output.unwrap_or(true),
            actions: resolved,
            hash_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn listed_kinds_override_the_default() {
        let section: PiiSection = toml::from_str(
            "enabled = true\ndefault = \"hash\"\n[actions]\ncard = \"block\"\nemail = \"pseudonymize\"\n",
        )
        .unwrap();
        let s = section.resolve(&no_env).unwrap();
        assert!(s.enabled);
        assert_eq!(s.action(PiiEntity::Card), PiiAction::Block);
        assert_eq!(s.action(PiiEntity::Email), PiiAction::Pseudonymize);
        assert_eq!(s.action(PiiEntity::Phone), PiiAction::Hash);
    }

    #[test]
    fn unknown_kind_or_action_names_the_key() {
        let section: PiiSection = toml::from_str("[actions]\nemial = \"mask\"\n").unwrap();
        let err = section.resolve(&no_env).unwrap_err().to_string();
        assert!(err.contains("pii.actions.emial"), "{err}");
        let section: PiiSection = toml::from_str("[actions]\nemail = \"drop\"\n").unwrap();
        let err = section.resolve(&no_env).unwrap_err().to_string();
        assert!(err.contains("pii.actions.email"), "{err}");
    }

    #[test]
    fn a_missing_hash_key_variable_is_an_error() {
        let section: PiiSection = toml::from_str("hash_key_env = \"NOPE\"\n").unwrap();
        assert!(section.resolve(&no_env).is_err());
    }
}
