//! Which limits apply to a request: the caller's key, its team and the
//! model, each with up to three dimensions (requests/min, tokens/min,
//! requests in parallel). A request is checked against all of them at once.

use std::collections::HashMap;

use crate::auth::{CallerLimits, Principal};
use crate::config::ModelLimit;

use super::gcra::Rate;

/// Who a limit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeKind {
    /// The caller's key (or token subject, or config-key tenant).
    Key,
    Team,
    Model,
}

impl ScopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Team => "team",
            Self::Model => "model",
        }
    }
}

/// A rate dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Requests,
    Tokens,
    Parallel,
}

impl Dimension {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "rpm",
            Self::Tokens => "tpm",
            Self::Parallel => "max_parallel",
        }
    }
}

/// One limit to check: a scope's dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub kind: ScopeKind,
    /// The scope's name, as audit targets and messages show it
    /// (`key:ab12`, `tenant:alpha`, `team:red`, `model:gpt-4o`).
    pub scope: String,
    pub dimension: Dimension,
    /// The configured limit (per minute, or in parallel).
    pub limit: u64,
    /// For `Requests` and `Tokens`.
    pub rate: Option<Rate>,
}

impl Check {
    /// The counter's key below the limiter's prefix.
    pub fn key(&self) -> String {
        format!("{}:{}", self.scope, self.dimension.as_str())
    }
}

/// Every limit of every scope, by model.
#[derive(Debug, Default)]
pub struct Scopes {
    models: HashMap<String, CallerLimits>,
    burst: u32,
}

impl Scopes {
    pub fn new(models: &[ModelLimit], burst: u32) -> Self {
        Self {
            models: models
                .iter()
                .map(|m| {
                    (
                        m.model.clone(),
                        CallerLimits {
                            rpm: m.rpm,
                            tpm: m.tpm,
                            max_parallel: m.max_parallel,
                        },
                    )
                })
                .collect(),
            burst,
        }
    }

    /// The checks that apply to `principal` calling `model`, key first.
    pub fn checks(&self, principal: &Principal, model: &str) -> Vec<Check> {
        let mut checks = Vec::new();
        self.push(
            &mut checks,
            ScopeKind::Key,
            principal.actor(),
            principal.limits,
        );
        if let Some(team) = &principal.team {
            self.push(
                &mut checks,
                ScopeKind::Team,
                format!("team:{team}"),
                principal.team_limits,
            );
        }
        if let Some(limits) = self.models.get(model) {
            self.push(
                &mut checks,
                ScopeKind::Model,
                format!("model:{model}"),
                *limits,
            );
        }
        checks
    }

    fn push(&self, checks: &mut Vec<Check>, kind: ScopeKind, scope: String, limits: CallerLimits) {
        let CallerLimits {
            rpm,
            tpm,
            max_parallel,
        } = limits;
        if let Some(rpm) = rpm {
            checks.push(Check {
                kind,
                scope: scope.clone(),
                dimension: Dimension::Requests,
                limit: u64::from(rpm),
                rate: Some(Rate::requests(rpm, self.burst)),
            });
        }
        if let Some(tpm) = tpm {
            checks.push(Check {
                kind,
                scope: scope.clone(),
                dimension: Dimension::Tokens,
                limit: tpm,
                rate: Some(Rate::tokens(tpm)),
            });
        }
        if let Some(max) = max_parallel {
            checks.push(Check {
                kind,
                scope,
                dimension: Dimension::Parallel,
                limit: u64::from(max),
                rate: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn key_team_and_model_limits_all_apply() {
        let scopes = Scopes::new(
            &[ModelLimit {
                model: "m".into(),
                rpm: None,
                tpm: Some(1000),
                max_parallel: None,
            }],
            2,
        );
        let mut p = Principal::anonymous();
        p.limits.rpm = Some(60);
        p.limits.max_parallel = Some(1);
        p.team = Some(Arc::from("red"));
        p.team_limits.rpm = Some(600);
        let keys: Vec<String> = scopes.checks(&p, "m").iter().map(Check::key).collect();
        assert_eq!(
            keys,
            [
                "anonymous:rpm",
                "anonymous:max_parallel",
                "team:red:rpm",
                "model:m:tpm"
            ]
        );
        assert!(scopes.checks(&Principal::anonymous(), "other").is_empty());
    }
}
