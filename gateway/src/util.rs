//! Small utilities every layer may use: response ids and the clock in
//! seconds. A leaf: it imports nothing from the crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, for `created`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch, as the store keeps times.
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A fresh response id such as `chatcmpl-3f9a...`: unique, not secret.
pub fn new_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // `RandomState` is randomly keyed per process (and per call), so ids do
    // not repeat across restarts; the counter keeps them apart within one.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let a = h.finish();
    h.write_u64(a);
    let b = h.finish();
    format!("{prefix}-{a:016x}{:08x}", b as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_prefixed() {
        let a = new_id("chatcmpl");
        let b = new_id("chatcmpl");
        assert!(a.starts_with("chatcmpl-") && a.len() == "chatcmpl-".len() + 24);
        assert_ne!(a, b);
    }
}
