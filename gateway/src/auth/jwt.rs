//! OIDC bearer tokens: [`JwtVerifier`] is the [`CredentialCheck`] that
//! claims tokens shaped like a JWS, verifies them against the issuer's keys
//! ([`super::jwks`]) and maps their claims to a [`Principal`].
//!
//! The order of the checks is the point: the header's `alg` is read and
//! judged before anything else (`none`, `HS*` and anything not configured
//! are refused outright, so a token "signed" with the public key as an HMAC
//! secret never reaches a verifier), then the unverified `iss` (a foreign
//! token cannot make the server fetch keys), then the key, whose own type
//! and `alg` must fit the header's, and only then the signature and the
//! claims (`iss`, `aud`, `exp` required, `nbf` honoured, skew at most the
//! configured leeway).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::future::BoxFuture;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use super::jwks::JwksCache;
use super::{Credential, CredentialCheck, Principal, Role, Roles};
use crate::audit::{actions, Audit, AuditEvent, AuditOutcome};
use crate::config::{is_tenant_name, OidcSettings, TenantSource};
use crate::error::ApiError;
use crate::sensitivity::TenantPolicy;

/// Logins remembered for the once-per-token audit record before expired
/// ones are swept out; past the cap the memory starts over.
const LOGIN_MEMO_SWEEP: usize = 10_000;
const LOGIN_MEMO_CAP: usize = 100_000;

/// Verifies OIDC access tokens (`[auth.oidc]`).
pub struct JwtVerifier {
    settings: OidcSettings,
    issuer: Arc<str>,
    /// One per accepted alg: `jsonwebtoken` wants every alg of a
    /// validation in the key's family, and the header's alg is judged
    /// before a validation is picked anyway.
    validations: Vec<(Algorithm, Validation)>,
    jwks: Arc<JwksCache>,
    audit: Audit,
    /// (subject, jti or iat) → exp: who has been audited as logged in.
    logins: Mutex<HashMap<(Arc<str>, String), u64>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("jwks", &self.jwks)
            .finish_non_exhaustive()
    }
}

/// The HTTP client the key set is read with: rustls with ring (the
/// gateway's one TLS stack), a connect timeout.
pub fn http_client() -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("the OIDC key set's HTTP client: {e}"))
}

impl JwtVerifier {
    /// A verifier; call [`JwtVerifier::start`] (inside the runtime) to read
    /// the key set.
    pub fn new(settings: OidcSettings, client: reqwest::Client, audit: Audit) -> Self {
        let validations = settings
            .algorithms
            .iter()
            .map(|&alg| {
                let mut validation = Validation::new(alg);
                validation.leeway = settings.leeway_seconds;
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.validate_aud = true;
                validation.set_audience(&settings.audiences);
                validation.set_issuer(&[&settings.issuer]);
                validation.set_required_spec_claims(&["exp", "iss", "aud"]);
                (alg, validation)
            })
            .collect();
        let jwks = Arc::new(JwksCache::new(
            client,
            settings.jwks.clone(),
            settings.refetch_interval,
        ));
        Self {
            issuer: Arc::from(settings.issuer.as_str()),
            settings,
            validations,
            jwks,
            audit,
            logins: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the key set now and every `jwks_max_age` after, in the
    /// background.
    pub fn start(&self) {
        self.jwks.spawn_refresher(self.settings.jwks_max_age);
    }

    /// The key cache (tests read and refresh it).
    pub fn jwks(&self) -> &Arc<JwksCache> {
        &self.jwks
    }

    /// The caller a token proves, or 401 saying why not.
    pub async fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let (header, payload) = split(token).ok_or(ApiError::Unauthorized(
            "The bearer token is not a well-formed JWT.",
        ))?;
        let header = decode_json(header).ok_or(ApiError::Unauthorized(
            "The bearer token's header is not base64url-encoded JSON.",
        ))?;
        let alg = self.judge_header(&header)?;
        let unverified = decode_json(payload).ok_or(ApiError::Unauthorized(
            "The bearer token's claims are not base64url-encoded JSON.",
        ))?;
        match unverified.get("iss") {
            Some(Value::String(iss)) if *iss == *self.issuer => {}
            Some(_) => {
                return Err(ApiError::Unauthorized(
                    "The token was issued by an issuer this server does not trust (`iss`).",
                ))
            }
            None => return Err(ApiError::Unauthorized("The token has no `iss` claim.")),
        }
        let kid = header.get("kid").and_then(Value::as_str);
        let key = self
            .jwks
            .key_for(kid, alg)
            .await
            .ok_or(ApiError::Unauthorized(
                "The token is signed by a key the issuer does not publish (unknown `kid`); if the \
             issuer just rotated its keys, retry in a minute.",
            ))?;
        if !key.kind.fits(alg) || key.alg.is_some_and(|a| a != alg) {
            return Err(ApiError::Unauthorized(
                "The token's `alg` does not fit its key (the key's type or `alg` says otherwise).",
            ));
        }
        let validation = self
            .validations
            .iter()
            .find_map(|(a, v)| (*a == alg).then_some(v))
            .ok_or(ApiError::Unauthorized(
                "The token's signing algorithm is not accepted here (auth.oidc.algorithms).",
            ))?;
        let data = jsonwebtoken::decode::<Value>(token, &key.key, validation).map_err(|e| {
            tracing::debug!(error = %e, "token refused");
            ApiError::Unauthorized(reason(e.kind()))
        })?;
        let principal = self.principal(&data.claims)?;
        self.audit_login(&principal, &data.claims);
        Ok(principal)
    }

    /// The header's `alg`, if this server accepts it.
    fn judge_header(&self, header: &Value) -> Result<Algorithm, ApiError> {
        let name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(ApiError::Unauthorized("The token's header has no `alg`."))?;
        if name.eq_ignore_ascii_case("none") {
            return Err(ApiError::Unauthorized(
                "Unsigned tokens (`alg: none`) are refused.",
            ));
        }
        if name.to_ascii_uppercase().starts_with("HS") {
            return Err(ApiError::Unauthorized(
                "HMAC-signed tokens (HS256/384/512) are refused: this server verifies tokens \
                 with the issuer's public keys (RS*, PS*, ES*).",
            ));
        }
        if header.get("crit").is_some() {
            return Err(ApiError::Unauthorized(
                "The token's header names critical extensions (`crit`) this server does not \
                 support.",
            ));
        }
        self.settings
            .algorithms
            .iter()
            .copied()
            .find(|a| format!("{a:?}") == name)
            .ok_or(ApiError::Unauthorized(
                "The token's signing algorithm is not accepted here (auth.oidc.algorithms).",
            ))
    }

    fn principal(&self, claims: &Value) -> Result<Principal, ApiError> {
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => Arc::<str>::from(s.as_str()),
            _ => return Err(ApiError::Unauthorized("The token has no `sub` claim.")),
        };
        let tenant = match &self.settings.tenant {
            TenantSource::Fixed(tenant) => tenant.clone(),
            TenantSource::Claim(path) => {
                let tenant = claim_text(claims, path).ok_or(ApiError::Unauthorized(
                    "The token has no claim naming its tenant (auth.oidc.tenant_claim).",
                ))?;
                if !is_tenant_name(&tenant) {
                    return Err(ApiError::Unauthorized(
                        "The token's tenant claim must be 1-64 characters of A-Z a-z 0-9 - _ .",
                    ));
                }
                tenant
            }
        };
        let team = match &self.settings.team_claim {
            None => None,
            Some(path) => match claim_text(claims, path) {
                None => None,
                Some(team) if is_team_name(&team) => Some(Arc::<str>::from(team)),
                Some(_) => {
                    return Err(ApiError::Unauthorized(
                        "The token's team claim must be 1-128 printable characters.",
                    ))
                }
            },
        };
        let user = claim_text(claims, &self.settings.user_claim).map(Arc::<str>::from);
        let mut principal = Principal::for_tenant(
            &tenant,
            Credential::Jwt {
                issuer: self.issuer.clone(),
                subject,
            },
            TenantPolicy::default(),
        );
        principal.team = team;
        principal.user = user;
        principal.roles = self.roles(claims);
        Ok(principal)
    }

    /// The token's roles through `role_map` (with no map, a sluice role
    /// name is taken as itself); unknown names are ignored; none at all
    /// gives `default_roles`.
    fn roles(&self, claims: &Value) -> Roles {
        let mut roles = Roles::default();
        let named: Vec<&str> = match self
            .settings
            .roles_claim
            .as_deref()
            .and_then(|path| claim(claims, path))
        {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(text)) => text.split_whitespace().collect(),
            _ => Vec::new(),
        };
        for name in named {
            let role = if self.settings.role_map.is_empty() {
                Role::parse(name)
            } else {
                self.settings
                    .role_map
                    .get(name)
                    .and_then(|ours| Role::parse(ours))
            };
            match role {
                Some(role) => roles.insert(role),
                None => tracing::debug!(role = name, "the token's role maps to no sluice role"),
            }
        }
        if roles == Roles::default() {
            for name in &self.settings.default_roles {
                if let Some(role) = Role::parse(name) {
                    roles.insert(role);
                }
            }
        }
        roles
    }

    /// One `auth.login` record per token (its `jti`, else its `iat`), not
    /// one per request.
    fn audit_login(&self, principal: &Principal, claims: &Value) {
        let Credential::Jwt { subject, .. } = &principal.credential else {
            return;
        };
        let token_id = claims
            .get("jti")
            .or_else(|| claims.get("iat"))
            .or_else(|| claims.get("exp"))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default();
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let first = {
            let mut logins = match self.logins.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if logins.len() >= LOGIN_MEMO_SWEEP {
                let now = crate::util::unix_now();
                logins.retain(|_, exp| *exp + self.settings.leeway_seconds >= now);
                if logins.len() >= LOGIN_MEMO_CAP {
                    logins.clear();
                }
            }
            logins.insert((subject.clone(), token_id), exp).is_none()
        };
        if first {
            let _ = self.audit.record(
                AuditEvent::new(actions::LOGIN, principal.actor(), AuditOutcome::Success)
                    .tenant(&*principal.tenant)
                    .target(&*self.issuer),
            );
        }
    }
}

impl CredentialCheck for JwtVerifier {
    fn claims(&self, token: &str) -> bool {
        looks_like_jws(token)
    }

    fn check<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Principal, ApiError>> {
        Box::pin(self.verify(token))
    }

    fn enforced(&self) -> bool {
        true
    }
}

/// Three base64url parts separated by dots, the first two non-empty (an
/// `alg: none` token's signature is empty: it is claimed, then refused).
/// A virtual key (`sk-…`) never is one.
pub fn looks_like_jws(token: &str) -> bool {
    if token.starts_with("sk-") {
        return false;
    }
    let base64url = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => {
            !h.is_empty() && !p.is_empty() && base64url(h) && base64url(p) && base64url(s)
        }
        _ => false,
    }
}

fn split(token: &str) -> Option<(&str, &str)> {
    let mut parts = token.split('.');
    let header = parts.next()?;
    let payload = parts.next()?;
    Some((header, payload))
}

fn decode_json(part: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.is_object().then_some(value)
}

/// Why `jsonwebtoken` refused a token, for the 401's message.
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => {
            "The token has expired; get a new one from your identity provider."
        }
        ErrorKind::ImmatureSignature => "The token is not valid yet (`nbf`).",
        ErrorKind::InvalidAudience => "The token is for another audience (`aud`) than this server.",
        ErrorKind::InvalidIssuer => {
            "The token was issued by an issuer this server does not trust (`iss`)."
        }
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "The token has no `exp` claim; tokens that never expire are refused.",
            "aud" => "The token has no `aud` claim; it must name this server's audience.",
            _ => "The token has no `iss` claim.",
        },
        ErrorKind::InvalidSignature => "The token's signature does not verify.",
        ErrorKind::InvalidClaimFormat(_) => {
            "A claim of the token (`exp`, `nbf`, `iss` or `aud`) has the wrong type."
        }
        _ => "The token is invalid.",
    }
}

/// A claim by dotted path (`realm_access.roles`, `groups.0`); a top-level
/// claim whose name itself has dots (`https://example.com/roles`) first.
pub fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.split('.')
        .try_fold(claims, |node, segment| match node {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
            _ => None,
        })
}

/// A claim as text: a string, or a number written out.
fn claim_text(claims: &Value, path: &str) -> Option<String> {
    match claim(claims, path)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn is_team_name(team: &str) -> bool {
    !team.is_empty() && team.chars().count() <= 128 && !team.chars().any(char::is_control)
}

#[cfg(test)]
mod tests;
