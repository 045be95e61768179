//! Whether a request is sensitive: its data must not be stored (cache) or
//! leave the machine (router). One helper, so every stage agrees.
//!
//! Design choice: either side can mark it: the client per request
//! (`x-sluice-sensitive: true`) or the operator per tenant (`sensitive =
//! true` in `[[auth.keys]]`); a client cannot unmark a sensitive tenant.

use axum::http::HeaderMap;

pub const SENSITIVE_HEADER: &str = "x-sluice-sensitive";

/// True when the header says so (`true`/`1`/`yes`) or the tenant is sensitive.
pub fn is_sensitive(headers: &HeaderMap, tenant_sensitive: bool) -> bool {
    tenant_sensitive
        || headers
            .get(SENSITIVE_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_or_tenant_marks_a_request_sensitive() {
        let mut h = HeaderMap::new();
        assert!(!is_sensitive(&h, false));
        assert!(is_sensitive(&h, true));
        h.insert(SENSITIVE_HEADER, "TRUE".parse().unwrap());
        assert!(is_sensitive(&h, false));
        h.insert(SENSITIVE_HEADER, "false".parse().unwrap());
        assert!(!is_sensitive(&h, false));
        assert!(
            is_sensitive(&h, true),
            "a client cannot unmark a sensitive tenant"
        );
    }
}
