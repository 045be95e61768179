//! The `[auth.oidc]` section: bearer tokens signed by an OpenID Connect
//! issuer, verified against its published keys (JWKS), their claims mapped
//! to a tenant, a team, a user and roles.
//!
//! ```toml
//! [auth.oidc]
//! issuer = "https://idp.example.com/realms/acme"
//! audience = "sluice"                 # or ["sluice", "sluice-admin"]
//! jwks_url = "https://idp.example.com/realms/acme/protocol/openid-connect/certs"
//! # or: discovery = true             (reads <issuer>/.well-known/openid-configuration)
//! leeway_seconds = 30                 # clock skew allowed on exp/nbf, at most 60
//! algorithms = ["RS256", "ES256"]     # default: every RS*, PS*, ES256/384
//! tenant_claim = "org"                # or a fixed: tenant = "acme"
//! team_claim = "groups.0"
//! user_claim = "email"                # default "sub"
//! roles_claim = "realm_access.roles"
//! role_map = { "sluice-admins" = "admin", "auditors" = "auditor" }
//! default_roles = ["user"]            # when the token maps to no role
//! jwks_refetch_seconds = 60           # unknown `kid`: at most one refetch per this
//! ```
//!
//! Design choice: HMAC (`HS*`) and `none` cannot be configured at all: a
//! shared secret has no place beside a JWKS, and accepting it is how the
//! "HS256 signed with the public key" forgery works.

use std::collections::BTreeMap;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::{invalid, ConfigError};

/// Clock skew allowed when none is configured.
const DEFAULT_LEEWAY_SECONDS: u64 = 30;
/// The most clock skew one may allow: beyond it an expired token lives on.
const MAX_LEEWAY_SECONDS: u64 = 60;
const DEFAULT_REFETCH_SECONDS: u64 = 60;
/// How often the key set is reread even when every `kid` is known, so a
/// key the issuer withdrew stops working.
const DEFAULT_JWKS_MAX_AGE_SECONDS: u64 = 3600;
/// The sluice role names a `role_map` may name (`auth::Role`'s).
const ROLE_NAMES: [&str; 5] = ["admin", "auditor", "team_admin", "user", "service"];
/// The signature algorithms a JWKS-verified token may use.
pub const ASYMMETRIC_ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    pub issuer: Option<String>,
    pub audience: Option<OneOrMany>,
    pub jwks_url: Option<String>,
    pub discovery: Option<bool>,
    pub leeway_seconds: Option<u64>,
    pub algorithms: Option<Vec<String>>,
    pub tenant_claim: Option<String>,
    pub tenant: Option<String>,
    pub team_claim: Option<String>,
    pub user_claim: Option<String>,
    pub roles_claim: Option<String>,
    pub role_map: Option<BTreeMap<String, String>>,
    pub default_roles: Option<Vec<String>>,
    pub jwks_refetch_seconds: Option<u64>,
    pub jwks_max_age_seconds: Option<u64>,
}

/// `audience = "a"` or `audience = ["a", "b"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Where the issuer's keys are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    Url(String),
    /// `jwks_uri` from `<issuer>/.well-known/openid-configuration`.
    Discovery {
        config_url: String,
    },
}

/// Where a token names its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSource {
    /// A claim, by dotted path.
    Claim(String),
    /// Every token's caller belongs to this tenant.
    Fixed(String),
}

/// The resolved `[auth.oidc]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    pub leeway_seconds: u64,
    pub algorithms: Vec<Algorithm>,
    pub tenant: TenantSource,
    pub team_claim: Option<String>,
    pub user_claim: String,
    pub roles_claim: Option<String>,
    /// IdP role name → sluice role name (checked to be one).
    pub role_map: BTreeMap<String, String>,
    pub default_roles: Vec<String>,
    /// At most one refetch on an unknown `kid` per this.
    pub refetch_interval: Duration,
    pub jwks_max_age: Duration,
}

impl OidcSection {
    pub fn resolve(self) -> Result<OidcSettings, ConfigError> {
        let Self {
            issuer,
            audience,
            jwks_url,
            discovery,
            leeway_seconds,
            algorithms,
            tenant_claim,
            tenant,
            team_claim,
            user_claim,
            roles_claim,
            role_map,
            default_roles,
            jwks_refetch_seconds,
            jwks_max_age_seconds,
        } = self;
        let at = |field: &str| format!("auth.oidc.{field}");
        let issuer = issuer.filter(|i| !i.is_empty()).ok_or_else(|| {
            invalid(
                at("issuer"),
                "required: the `iss` your identity provider puts in its tokens",
            )
        })?;
        let audiences = match audience {
            Some(OneOrMany::One(a)) => vec![a],
            Some(OneOrMany::Many(list)) => list,
            None => Vec::new(),
        };
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            return Err(invalid(
                at("audience"),
                "required: the `aud` tokens for this server carry (a token for another \
                 service must not be accepted here)",
            ));
        }
        let jwks = match (jwks_url, discovery.unwrap_or(false)) {
            (Some(_), true) => {
                return Err(invalid(
                    at("jwks_url"),
                    "set jwks_url or discovery = true, not both",
                ))
            }
            (Some(url), false) => {
                check_http_url(&at("jwks_url"), &url)?;
                JwksSource::Url(url)
            }
            (None, true) => {
                check_http_url(&at("issuer"), &issuer)?;
                JwksSource::Discovery {
                    config_url: format!(
                        "{}/.well-known/openid-configuration",
                        issuer.trim_end_matches('/')
                    ),
                }
            }
            (None, false) => {
                return Err(invalid(
                    at("jwks_url"),
                    "required: the URL of the issuer's key set (JWKS), or discovery = true to \
                     read it from <issuer>/.well-known/openid-configuration",
                ))
            }
        };
        let leeway_seconds = leeway_seconds.unwrap_or(DEFAULT_LEEWAY_SECONDS);
        if leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(invalid(
                at("leeway_seconds"),
                format!("{leeway_seconds} is more than {MAX_LEEWAY_SECONDS}: clock skew beyond a minute keeps expired tokens alive"),
            ));
        }
        let algorithms = match algorithms {
            None => ASYMMETRIC_ALGORITHMS.to_vec(),
            Some(names) if names.is_empty() => {
                return Err(invalid(at("algorithms"), "name at least one algorithm"))
            }
            Some(names) => names
                .iter()
                .map(|name| parse_algorithm(&at("algorithms"), name))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let tenant = match (tenant_claim, tenant) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    at("tenant"),
                    "set tenant_claim or tenant, not both",
                ))
            }
            (Some(claim), None) => TenantSource::Claim(check_claim(&at("tenant_claim"), claim)?),
            (None, Some(fixed)) => {
                if !is_tenant_name(&fixed) {
                    return Err(invalid(
                        at("tenant"),
                        format!("`{fixed}` must be 1-64 characters of A-Z a-z 0-9 - _ ."),
                    ));
                }
                TenantSource::Fixed(fixed)
            }
            (None, None) => {
                return Err(invalid(
                    at("tenant_claim"),
                    "say which tenant a token's caller belongs to: tenant_claim = \"<claim>\" \
                     or a fixed tenant = \"<name>\"",
                ))
            }
        };
        let team_claim = team_claim
            .map(|c| check_claim(&at("team_claim"), c))
            .transpose()?;
        let user_claim = check_claim(
            &at("user_claim"),
            user_claim.unwrap_or_else(|| "sub".into()),
        )?;
        let roles_claim = roles_claim
            .map(|c| check_claim(&at("roles_claim"), c))
            .transpose()?;
        let role_map = role_map.unwrap_or_default();
        for (idp, ours) in &role_map {
            check_role(&format!("auth.oidc.role_map.{idp}"), ours)?;
        }
        let default_roles = default_roles.unwrap_or_else(|| vec!["user".into()]);
        for role in &default_roles {
            check_role(&at("default_roles"), role)?;
        }
        let refetch = jwks_refetch_seconds.unwrap_or(DEFAULT_REFETCH_SECONDS);
        if refetch > 86_400 {
            return Err(invalid(
                at("jwks_refetch_seconds"),
                format!("{refetch} is more than a day: a rotated key would be refused that long"),
            ));
        }
        let max_age = jwks_max_age_seconds.unwrap_or(DEFAULT_JWKS_MAX_AGE_SECONDS);
        if !(10..=7 * 86_400).contains(&max_age) {
            return Err(invalid(
                at("jwks_max_age_seconds"),
                format!("{max_age} is outside 10..=604800"),
            ));
        }
        Ok(OidcSettings {
            issuer,
            audiences,
            jwks,
            leeway_seconds,
            algorithms,
            tenant,
            team_claim,
            user_claim,
            roles_claim,
            role_map,
            default_roles,
            refetch_interval: Duration::from_secs(refetch),
            jwks_max_age: Duration::from_secs(max_age),
        })
    }
}

impl OidcSettings {
    /// For `check-config`: the section as resolved, defaults filled in.
    pub(super) fn to_toml(&self) -> toml::Table {
        use toml::Value;
        let text = |s: &str| Value::String(s.to_string());
        let list = |items: &[String]| Value::Array(items.iter().map(|s| text(s)).collect());
        let mut t = toml::Table::new();
        t.insert("issuer".into(), text(&self.issuer));
        t.insert("audience".into(), list(&self.audiences));
        match &self.jwks {
            JwksSource::Url(url) => t.insert("jwks_url".into(), text(url)),
            JwksSource::Discovery { .. } => t.insert("discovery".into(), Value::Boolean(true)),
        };
        t.insert(
            "leeway_seconds".into(),
            Value::Integer(self.leeway_seconds as i64),
        );
        let algorithms: Vec<String> = self.algorithms.iter().map(|a| format!("{a:?}")).collect();
        t.insert("algorithms".into(), list(&algorithms));
        match &self.tenant {
            TenantSource::Claim(claim) => t.insert("tenant_claim".into(), text(claim)),
            TenantSource::Fixed(tenant) => t.insert("tenant".into(), text(tenant)),
        };
        if let Some(claim) = &self.team_claim {
            t.insert("team_claim".into(), text(claim));
        }
        t.insert("user_claim".into(), text(&self.user_claim));
        if let Some(claim) = &self.roles_claim {
            t.insert("roles_claim".into(), text(claim));
        }
        let role_map: toml::Table = self
            .role_map
            .iter()
            .map(|(idp, ours)| (idp.clone(), text(ours)))
            .collect();
        t.insert("role_map".into(), Value::Table(role_map));
        t.insert("default_roles".into(), list(&self.default_roles));
        t.insert(
            "jwks_refetch_seconds".into(),
            Value::Integer(self.refetch_interval.as_secs() as i64),
        );
        t.insert(
            "jwks_max_age_seconds".into(),
            Value::Integer(self.jwks_max_age.as_secs() as i64),
        );
        t
    }
}

fn parse_algorithm(key: &str, name: &str) -> Result<Algorithm, ConfigError> {
    if name.eq_ignore_ascii_case("none") || name.to_ascii_uppercase().starts_with("HS") {
        return Err(invalid(
            key,
            format!(
                "`{name}` cannot be accepted: tokens verified against a JWKS must be signed \
                 with RS*, PS* or ES256/ES384"
            ),
        ));
    }
    ASYMMETRIC_ALGORITHMS
        .into_iter()
        .find(|a| format!("{a:?}") == name)
        .ok_or_else(|| {
            invalid(
                key,
                format!("`{name}` is not one of RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384"),
            )
        })
}

fn check_http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{url}` must be an http:// or https:// URL"),
        ))
    }
}

fn check_claim(key: &str, claim: String) -> Result<String, ConfigError> {
    if claim.is_empty() || claim.starts_with('.') || claim.ends_with('.') || claim.contains("..") {
        return Err(invalid(
            key,
            format!("`{claim}` is not a claim path such as `sub` or `realm_access.roles`"),
        ));
    }
    Ok(claim)
}

pub(super) fn check_role(key: &str, role: &str) -> Result<(), ConfigError> {
    if ROLE_NAMES.contains(&role) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{role}` is not a sluice role (admin, auditor, team_admin, user, service)"),
        ))
    }
}

/// The tenant names the config's keys may use, for a fixed tenant and for
/// a tenant read from a token alike.
pub fn is_tenant_name(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OidcSettings, ConfigError> {
        let section: OidcSection = toml::from_str(text).unwrap();
        section.resolve()
    }

    const MINIMAL: &str = r#"
        issuer = "https://idp.example"
        audience = "sluice"
        jwks_url = "https://idp.example/jwks"
        tenant = "acme"
    "#;

    #[test]
    fn the_minimal_section_gets_safe_defaults() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.leeway_seconds, 30);
        assert_eq!(s.algorithms, ASYMMETRIC_ALGORITHMS.to_vec());
        assert_eq!(s.user_claim, "sub");
        assert_eq!(s.default_roles, ["user"]);
        assert_eq!(s.audiences, ["sluice"]);
        assert_eq!(s.tenant, TenantSource::Fixed("acme".into()));
        assert_eq!(s.refetch_interval, Duration::from_secs(60));
    }

    #[test]
    fn discovery_reads_the_well_known_document() {
        let s = parse(
            r#"
            issuer = "https://idp.example/realms/a/"
            audience = ["x", "y"]
            discovery = true
            tenant_claim = "org.id"
            "#,
        )
        .unwrap();
        assert_eq!(
            s.jwks,
            JwksSource::Discovery {
                config_url: "https://idp.example/realms/a/.well-known/openid-configuration".into()
            }
        );
        assert_eq!(s.audiences, ["x", "y"]);
        assert_eq!(s.tenant, TenantSource::Claim("org.id".into()));
    }

    #[test]
    fn each_mistake_names_its_key() {
        let cases = [
            ("leeway_seconds = 61", "auth.oidc.leeway_seconds"),
            ("algorithms = [\"HS256\"]", "auth.oidc.algorithms"),
            ("algorithms = [\"none\"]", "auth.oidc.algorithms"),
            ("algorithms = [\"RS999\"]", "auth.oidc.algorithms"),
            ("algorithms = []", "auth.oidc.algorithms"),
            ("role_map = { boss = \"root\" }", "auth.oidc.role_map.boss"),
            ("default_roles = [\"superuser\"]", "auth.oidc.default_roles"),
            ("roles_claim = \"a..b\"", "auth.oidc.roles_claim"),
            ("tenant_claim = \"org\"", "auth.oidc.tenant"),
        ];
        for (extra, key) in cases {
            let err = parse(&format!("{MINIMAL}\n{extra}")).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("{key}:")),
                "{extra}: {err}"
            );
        }
        for (drop, key) in [
            ("issuer", "auth.oidc.issuer"),
            ("audience", "auth.oidc.audience"),
            ("jwks_url", "auth.oidc.jwks_url"),
            ("tenant", "auth.oidc.tenant_claim"),
        ] {
            let text: String = MINIMAL
                .lines()
                .filter(|l| !l.trim_start().starts_with(&format!("{drop} ")))
                .collect::<Vec<_>>()
                .join("\n");
            let err = parse(&text).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("{key}:")),
                "{drop}: {err}"
            );
        }
    }

    #[test]
    fn the_rendered_section_reads_back_the_same() {
        let s = parse(&format!(
            "{MINIMAL}\nrole_map = {{ a = \"admin\" }}\nroles_claim = \"r\""
        ))
        .unwrap();
        let shown = toml::to_string(&s.to_toml()).unwrap();
        assert_eq!(parse(&shown).unwrap(), s, "{shown}");
    }

    #[test]
    fn an_unknown_field_is_refused() {
        let err = toml::from_str::<OidcSection>(&format!("{MINIMAL}\nleeway = 5")).unwrap_err();
        assert!(err.to_string().contains("leeway"), "{err}");
    }
}
