//! Whether a request is sensitive: its data must be served by `on_prem`
//! deployments only and never leave the machine.
//!
//! A request is sensitive when its API key's policy says so
//! (`sensitive = true` in `[[auth.keys]]`) or when it carries the header
//! `x-sluice-sensitive: true` (or `1`). Design choice: the header can only
//! raise sensitivity, never lower it: a key marked sensitive stays sensitive
//! whatever a client sends, so a compromised or careless client cannot move
//! a tenant's data to the cloud.
//!
//! A *regulated* caller (`regulated = true` on its key, its tenant or team
//! in `[regulated]`) is always sensitive too: [`TenantPolicy::regulate`]
//! sets both, and [`is_sensitive`] reads either, so every stage that skips
//! or confines sensitive requests (the router's residency filter, external
//! moderation) treats regulated ones the same without knowing the word.
//! Regulated adds what only the chain knows how to do: no cache for a
//! prompt that carries PII, encryption at rest of what it stores, and a
//! fail-closed audit.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;

use crate::config::{GuardAction, StreamMode};

/// The header that marks one request as sensitive.
pub const SENSITIVE_HEADER: &str = "x-sluice-sensitive";

/// What a tenant's key says about its requests; put in the request's
/// extensions by the auth middleware next to its `Tenant`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantPolicy {
    /// Every request of this tenant is sensitive.
    pub sensitive: bool,
    /// Every request of this tenant is regulated (and so sensitive).
    pub regulated: bool,
    /// What this key's flagged requests get; `None`: `[guard] action`.
    pub guard: Option<GuardAction>,
    /// How this key's answers are analysed; `None`: the route's `[stream]` mode.
    pub stream: Option<StreamMode>,
    /// Whether the guard scores this key's answer windows; `None`: the
    /// route's `[stream] guard`.
    pub stream_guard: Option<bool>,
}

impl TenantPolicy {
    /// Marks the caller regulated, which makes it sensitive as well.
    pub fn regulate(&mut self) {
        self.regulated = true;
        self.sensitive = true;
    }
}

/// The request's sensitivity from its headers and its tenant's policy.
pub fn is_sensitive(headers: &HeaderMap, policy: Option<&TenantPolicy>) -> bool {
    if policy.is_some_and(|p| p.sensitive || p.regulated) {
        return true;
    }
    headers.get_all(SENSITIVE_HEADER).iter().any(|v| {
        v.to_str()
            .map(|s| {
                let s = s.trim();
                s == "1" || s.eq_ignore_ascii_case("true")
            })
            .unwrap_or(false)
    })
}

/// Extractor: the request's sensitivity, for the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sensitivity(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for Sensitivity {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(Self(is_sensitive(
            &parts.headers,
            parts.extensions.get::<TenantPolicy>(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SENSITIVE_HEADER, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn header_true_or_one_marks_the_request() {
        assert!(is_sensitive(&headers("true"), None));
        assert!(is_sensitive(&headers("1"), None));
        assert!(is_sensitive(&headers(" TRUE "), None));
        assert!(!is_sensitive(&headers("0"), None));
        assert!(!is_sensitive(&headers("yes please"), None));
        assert!(!is_sensitive(&HeaderMap::new(), None));
    }

    #[test]
    fn a_sensitive_key_cannot_be_lowered_by_the_header() {
        let policy = TenantPolicy {
            sensitive: true,
            regulated: false,
            guard: None,
            stream: None,
            stream_guard: None,
        };
        assert!(is_sensitive(&headers("false"), Some(&policy)));
        assert!(is_sensitive(&HeaderMap::new(), Some(&policy)));
        assert!(!is_sensitive(
            &HeaderMap::new(),
            Some(&TenantPolicy::default())
        ));
    }

    #[test]
    fn a_regulated_caller_is_sensitive_whatever_the_header_says() {
        let mut policy = TenantPolicy::default();
        policy.regulate();
        assert!(policy.sensitive && policy.regulated);
        assert!(is_sensitive(&headers("false"), Some(&policy)));
        // Even a policy built by hand with only `regulated` set.
        let by_hand = TenantPolicy {
            regulated: true,
            ..TenantPolicy::default()
        };
        assert!(is_sensitive(&HeaderMap::new(), Some(&by_hand)));
    }
}
