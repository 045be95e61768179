//! A tiny, fast, seedable random generator for sampling.
//!
//! Each sequence owns its own [`SeqRng`], so a seeded request draws the same
//! numbers whatever else shares its batch (OpenAI `seed` semantics). The
//! algorithm is xoshiro256** (Blackman & Vigna), seeded through SplitMix64 so
//! that nearby seeds (0, 1, 2, ...) still give unrelated streams. We do not
//! take the `rand` crate for this: sampling needs one uniform float per token
//! and nothing else, and owning the algorithm keeps seeded outputs stable
//! across dependency upgrades.
//!
//! Nothing here is cryptographic: do not use it for keys, tokens or nonces.

use std::sync::atomic::{AtomicU64, Ordering};

/// Gives every unseeded generator of this process a distinct input even when
/// two are created within the same clock tick.
static ENTROPY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Per-sequence random generator (xoshiro256**).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqRng {
    s: [u64; 4],
}

/// One SplitMix64 step: advances `state` and returns a well-mixed output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SeqRng {
    /// A generator whose stream depends only on `seed`.
    pub fn seeded(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        // SplitMix64 is a bijection of its counter, so four consecutive
        // outputs are never all zero (the one state xoshiro must avoid).
        Self { s }
    }

    /// A generator for unseeded requests: mixes the wall clock, a stack
    /// address (varies with ASLR and thread) and a process-wide counter.
    /// Unpredictable enough to make sampled outputs differ between requests;
    /// NOT cryptographic.
    pub fn from_entropy() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let local = 0u8;
        let addr = std::ptr::addr_of!(local) as usize as u64;
        let count = ENTROPY_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut mix = nanos;
        let a = splitmix64(&mut mix);
        let mut mix = addr ^ a;
        let b = splitmix64(&mut mix);
        let mut mix = count.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ b;
        Self::seeded(splitmix64(&mut mix))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.s;
        let result = s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= t;
        *s3 = s3.rotate_left(45);
        result
    }

    /// A uniform float in `[0, 1)`: the top 24 bits scaled by 2^-24, so every
    /// value is exactly representable and 1.0 is never returned.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_same_stream() {
        let mut a = SeqRng::seeded(42);
        let mut b = SeqRng::seeded(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn nearby_seeds_give_different_streams() {
        let a: Vec<u64> = {
            let mut r = SeqRng::seeded(0);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = SeqRng::seeded(1);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_ne!(a, b);
    }

    #[test]
    fn next_f32_stays_in_unit_interval_and_looks_uniform() {
        let mut r = SeqRng::seeded(7);
        let n = 100_000;
        let mut sum = 0.0f64;
        let mut buckets = [0usize; 10];
        for _ in 0..n {
            let x = r.next_f32();
            assert!((0.0..1.0).contains(&x), "{x}");
            sum += x as f64;
            buckets[(x * 10.0) as usize] += 1;
        }
        let mean = sum / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        for b in buckets {
            assert!((9_000..11_000).contains(&b), "bucket {b}");
        }
    }

    #[test]
    fn entropy_generators_differ() {
        let mut a = SeqRng::from_entropy();
        let mut b = SeqRng::from_entropy();
        assert_ne!(a.next_u64(), b.next_u64());
    }
}
