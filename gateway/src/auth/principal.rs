//! [`Principal`]: who a request comes from, however it proved it (a key
//! from the config file, a virtual key from the store, an OIDC token), and
//! what that caller may do. The auth layer leaves one in every request's
//! extensions; limits, budgets, spend, audit and the admin API read it.

use std::fmt;
use std::sync::Arc;

use crate::sensitivity::TenantPolicy;

/// Who is calling and what they may do.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: Arc<str>,
    pub team: Option<Arc<str>>,
    pub user: Option<Arc<str>>,
    pub credential: Credential,
    pub roles: Roles,
    /// Models this caller may use; `None`: every model.
    pub allowed_models: Option<Arc<[String]>>,
    pub limits: CallerLimits,
    /// The caller's team's limits (shared by every key of the team).
    pub team_limits: CallerLimits,
    /// Sensitivity and guard action for this caller's requests.
    pub policy: TenantPolicy,
}

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// No keys are configured: every request is `anonymous`.
    Anonymous,
    /// A key from the config file or the environment.
    ConfigKey,
    /// A virtual key from the store, named by its public prefix.
    VirtualKey { prefix: Arc<str> },
    /// An OIDC access token.
    Jwt { issuer: Arc<str>, subject: Arc<str> },
}

/// The per-caller limits a virtual key (or a token's mapped team) carries;
/// `None` leaves the dimension unlimited at this scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallerLimits {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u32>,
}

/// What a caller may do on the admin API (and, for `user` and `service`,
/// only on the generation APIs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads everything, changes nothing.
    Auditor,
    /// Its own team's keys and budgets.
    TeamAdmin,
    User,
    Service,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Auditor,
        Role::TeamAdmin,
        Role::User,
        Role::Service,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::TeamAdmin => "team_admin",
            Role::User => "user",
            Role::Service => "service",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Role`]s.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles(u8);

impl Roles {
    pub fn of(roles: &[Role]) -> Self {
        Self(roles.iter().fold(0, |acc, r| acc | r.bit()))
    }
    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }
    pub fn insert(&mut self, role: Role) {
        self.0 |= role.bit();
    }
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Principal {
    /// The caller when no keys are configured.
    pub fn anonymous() -> Self {
        Self::for_tenant("anonymous", Credential::Anonymous, TenantPolicy::default())
    }

    /// A caller known only by tenant (a config-file key, or anonymous): the
    /// `user` role, every model, no per-caller limits.
    pub fn for_tenant(tenant: &str, credential: Credential, policy: TenantPolicy) -> Self {
        Self {
            tenant: Arc::from(tenant),
            team: None,
            user: None,
            credential,
            roles: Roles::of(&[Role::User]),
            allowed_models: None,
            limits: CallerLimits::default(),
            team_limits: CallerLimits::default(),
            policy,
        }
    }

    /// Narrows the models this caller may use to those in `models` too (a
    /// role's allowlist on top of the key's and the team's).
    pub fn restrict_models(&mut self, models: &[String]) {
        let narrowed: Vec<String> = match self.allowed_models.as_deref() {
            Some(current) => current
                .iter()
                .filter(|m| models.contains(m))
                .cloned()
                .collect(),
            None => models.to_vec(),
        };
        self.allowed_models = Some(Arc::from(narrowed));
    }

    pub fn may_use_model(&self, model: &str) -> bool {
        self.allowed_models
            .as_deref()
            .is_none_or(|models| models.iter().any(|m| m == model))
    }

    /// The virtual key's public prefix, if the caller used one.
    pub fn key_prefix(&self) -> Option<&str> {
        match &self.credential {
            Credential::VirtualKey { prefix } => Some(prefix),
            _ => None,
        }
    }

    /// Who did it, for the audit log: the key prefix, the token's subject,
    /// or the tenant.
    pub fn actor(&self) -> String {
        match &self.credential {
            Credential::VirtualKey { prefix } => format!("key:{prefix}"),
            Credential::Jwt { subject, .. } => format!("sub:{subject}"),
            Credential::ConfigKey => format!("tenant:{}", self.tenant),
            Credential::Anonymous => "anonymous".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names_and_the_set() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
        let set = Roles::of(&[Role::Auditor, Role::TeamAdmin]);
        assert!(set.contains(Role::Auditor) && set.contains(Role::TeamAdmin));
        assert!(!set.contains(Role::Admin) && !set.contains(Role::User));
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [Role::Auditor, Role::TeamAdmin]
        );
    }

    #[test]
    fn an_allowlist_limits_models_and_none_allows_all() {
        let mut p = Principal::anonymous();
        assert!(p.may_use_model("anything"));
        p.allowed_models = Some(Arc::from(vec!["a".to_string()]));
        assert!(p.may_use_model("a"));
        assert!(!p.may_use_model("b"));
    }

    #[test]
    fn a_restriction_intersects_with_the_allowlist() {
        let mut p = Principal::anonymous();
        p.restrict_models(&["a".to_string(), "b".to_string()]);
        assert!(p.may_use_model("a") && p.may_use_model("b") && !p.may_use_model("c"));
        p.restrict_models(&["b".to_string(), "c".to_string()]);
        assert!(!p.may_use_model("a") && p.may_use_model("b") && !p.may_use_model("c"));
    }
}
