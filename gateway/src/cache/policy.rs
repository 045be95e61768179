//! Whether a request may read and/or write the cache.
//!
//! Design choice: by default only answers that would repeat are cached
//! (temperature 0, or a seed); a sampled answer served twice is a
//! behaviour change, so the client (`x-sluice-cache: on`) or the operator
//! (`cache_nondeterministic`) must ask for it, and even then `n > 1`
//! unseeded sampling is never cached (its choices are meant to differ).
//!
//! A sensitive request is never cached; a regulated one (which is
//! sensitive too) is, when its entry can be sealed and its prompt carries
//! no personal data: the PII stage found none, and that stage ran.

use axum::http::header::CACHE_CONTROL;
use axum::http::HeaderMap;

use crate::validate::Sampling;

pub const CACHE_HEADER: &str = "x-sluice-cache";

/// What the cache may do for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    /// Why neither, for the log.
    pub reason: &'static str,
}

impl Access {
    const fn none(reason: &'static str) -> Self {
        Self {
            read: false,
            write: false,
            reason,
        }
    }
}

/// The policy's inputs besides the request itself.
#[derive(Debug, Clone, Copy)]
pub struct PolicyInput<'a> {
    pub headers: &'a HeaderMap,
    pub sensitive: bool,
    pub regulated: bool,
    /// The PII stage found personal data in the prompt, or did not run.
    pub may_carry_pii: bool,
    /// The cache can seal entries (a master key is configured).
    pub sealing: bool,
    pub cache_nondeterministic: bool,
}

pub fn decide(input: PolicyInput<'_>, sampling: &Sampling, n: usize) -> Access {
    let PolicyInput {
        headers,
        sensitive,
        regulated,
        may_carry_pii,
        sealing,
        cache_nondeterministic,
    } = input;
    if regulated {
        if may_carry_pii {
            return Access::none("regulated: the prompt may carry personal data");
        }
        if !sealing {
            return Access::none("regulated: no master key to seal the entry");
        }
    } else if sensitive {
        return Access::none("sensitive");
    }
    let opt = headers
        .get(CACHE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    if opt.as_deref() == Some("off") {
        return Access::none("x-sluice-cache: off");
    }
    let directives: Vec<String> = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    if directives.iter().any(|d| d == "no-store") {
        return Access::none("cache-control: no-store");
    }
    // Log-probabilities are not stored, so they cannot be replayed.
    if sampling.logprobs.is_some() {
        return Access::none("logprobs");
    }
    let deterministic = sampling.temperature == 0.0 || sampling.seed.is_some();
    if !deterministic {
        if n > 1 {
            return Access::none("n > 1 sampled without a seed");
        }
        if !(cache_nondeterministic || opt.as_deref() == Some("on")) {
            return Access::none("sampled without a seed (opt in with x-sluice-cache: on)");
        }
    }
    Access {
        read: !directives.iter().any(|d| d == "no-cache"),
        write: true,
        reason: "",
    }
}
