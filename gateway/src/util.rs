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
///
/// A process-wide counter run through a keyed bijection: unique within the
/// process for 2^64 ids, unpredictable-looking and apart across processes
/// (the key is random per process). Called several times per request (the
/// request id, the lease, the spend row, the response), so it costs no
/// system call, no hasher set-up and no formatting machinery.
pub fn new_id(prefix: &str) -> String {
    let (k0, k1) = process_keys();
    let a = mix(next_count() ^ k0);
    let b = mix(a ^ k1) as u32;
    let mut id = String::with_capacity(prefix.len() + 25);
    id.push_str(prefix);
    id.push('-');
    push_hex(&mut id, a, 16);
    push_hex(&mut id, u64::from(b), 8);
    id
}

/// An id like [`new_id`] whose text sorts by the time it was made (to the
/// millisecond): `spend-<12 hex digits of ms><16 unique hex digits>`. A
/// store's index on such ids grows at its end, as a table's row ids do,
/// instead of at a random page per insert (every insert dirtying a
/// different page of a B-tree that outgrew the cache).
pub fn new_ordered_id(prefix: &str, at_ms: i64) -> String {
    let (k0, _) = process_keys();
    let unique = mix(next_count() ^ k0);
    let mut id = String::with_capacity(prefix.len() + 29);
    id.push_str(prefix);
    id.push('-');
    push_hex(&mut id, u64::try_from(at_ms).unwrap_or(0), 12);
    push_hex(&mut id, unique, 16);
    id
}

fn next_count() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Two random words drawn once per process (`RandomState` is randomly
/// keyed per process).
fn process_keys() -> (u64, u64) {
    use std::hash::{BuildHasher, Hasher};
    static KEYS: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    *KEYS.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(unix_now_ms() as u64);
        let k0 = h.finish();
        h.write_u64(k0);
        (k0, h.finish())
    })
}

/// splitmix64's finaliser: a bijection on u64 that spreads every input bit.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The low `digits` hex digits of `v`, most significant first.
fn push_hex(out: &mut String, v: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..digits).rev() {
        out.push(char::from(HEX[((v >> (shift * 4)) & 0xf) as usize]));
    }
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
        assert!(a[9..].bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    }

    #[test]
    fn ordered_ids_sort_by_time_and_stay_unique_within_a_millisecond() {
        let early = new_ordered_id("spend", 1_700_000_000_000);
        let same_ms = new_ordered_id("spend", 1_700_000_000_000);
        let later = new_ordered_id("spend", 1_700_000_000_001);
        assert!(early.starts_with("spend-018bcfe56800"), "{early}");
        assert_eq!(early.len(), "spend-".len() + 28);
        assert_ne!(early, same_ms);
        assert!(
            early < later && same_ms < later,
            "{early} {same_ms} {later}"
        );
    }
}
