//! Paged attention against plain attention over contiguous K/V in f64.

mod common;

use common::Rng;
use sluice_kernels::attention::{paged_attention, paged_attention_reference, PagedKv};

/// K and V of one sequence, `[pos][kv_head][head_dim]`, scattered into the
/// paged layout through a shuffled block table (with spare blocks around, so
/// that a wrong block lookup reads wrong data rather than out of bounds).
struct Case {
    k: Vec<f32>,
    v: Vec<f32>,
    paged_k: Vec<f32>,
    paged_v: Vec<f32>,
    table: Vec<u32>,
    block_size: usize,
    n_kv: usize,
    hd: usize,
}

impl Case {
    fn new(rng: &mut Rng, n_pos: usize, block_size: usize, n_kv: usize, hd: usize) -> Self {
        let row = n_kv * hd;
        let (k, v) = (rng.vec(n_pos * row), rng.vec(n_pos * row));
        let n_blocks = n_pos.div_ceil(block_size);
        let total_blocks = n_blocks + 3;
        let table: Vec<u32> = rng.permutation(total_blocks)[..n_blocks].to_vec();
        let mut paged_k = rng.vec(total_blocks * block_size * row);
        let mut paged_v = rng.vec(total_blocks * block_size * row);
        for pos in 0..n_pos {
            let at = (table[pos / block_size] as usize * block_size + pos % block_size) * row;
            paged_k[at..at + row].copy_from_slice(&k[pos * row..(pos + 1) * row]);
            paged_v[at..at + row].copy_from_slice(&v[pos * row..(pos + 1) * row]);
        }
        Self {
            k,
            v,
            paged_k,
            paged_v,
            table,
            block_size,
            n_kv,
            hd,
        }
    }

    fn kv(&self) -> PagedKv<'_> {
        PagedKv {
            k: &self.paged_k,
            v: &self.paged_v,
            block_size: self.block_size,
            n_kv_heads: self.n_kv,
            head_dim: self.hd,
        }
    }

    /// Causal attention over the contiguous K/V, in f64.
    fn contiguous(&self, q: &[f32], first_pos: usize, n_heads: usize, scale: f32) -> Vec<f64> {
        let (hd, row) = (self.hd, self.n_kv * self.hd);
        let group = n_heads / self.n_kv;
        let width = n_heads * hd;
        let mut out = vec![0.0f64; q.len()];
        for t in 0..q.len() / width {
            for h in 0..n_heads {
                let kvh = h / group;
                let qh = &q[t * width + h * hd..][..hd];
                let keys = first_pos + t + 1;
                let scores: Vec<f64> = (0..keys)
                    .map(|p| {
                        let kp = &self.k[p * row + kvh * hd..][..hd];
                        qh.iter()
                            .zip(kp)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (p, w) in e.iter().enumerate() {
                    let vp = &self.v[p * row + kvh * hd..][..hd];
                    for (o, v) in out[t * width + h * hd..][..hd].iter_mut().zip(vp) {
                        *o += w / sum * *v as f64;
                    }
                }
            }
        }
        out
    }
}

/// Runs both the fast and the reference paged attention and checks them
/// against contiguous attention. Outputs are convex combinations of values
/// in [-1, 1), and f32 rounding over `head_dim`-long dots and `keys`-long
/// sums stays far below 1e-5.
fn check(n_heads: usize, n_kv: usize, hd: usize, block_size: usize, first_pos: usize, n_q: usize) {
    let mut rng = Rng::new((n_heads * 1000 + n_kv * 100 + first_pos * 10 + n_q) as u64);
    let case = Case::new(&mut rng, first_pos + n_q, block_size, n_kv, hd);
    let q = rng.vec(n_q * n_heads * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let want = case.contiguous(&q, first_pos, n_heads, scale);
    let kv = case.kv();
    for fast in [true, false] {
        let mut out = vec![f32::NAN; q.len()];
        if fast {
            paged_attention(&q, first_pos, n_heads, &kv, &case.table, scale, &mut out);
        } else {
            paged_attention_reference(&q, first_pos, n_heads, &kv, &case.table, scale, &mut out);
        }
        for (i, (got, want)) in out.iter().zip(&want).enumerate() {
            assert!(
                (*got as f64 - want).abs() < 1e-5,
                "fast={fast} heads={n_heads}/{n_kv} pos={first_pos}+{n_q} [{i}]: {got} vs {want}"
            );
        }
    }
}

#[test]
fn decode_step_through_shuffled_blocks_matches_contiguous_attention() {
    check(4, 4, 16, 4, 10, 1);
}

#[test]
fn grouped_query_heads_share_their_kv_head() {
    // 6 query heads over 2 KV heads (groups of 3), and over 1 (MQA).
    check(6, 2, 8, 3, 7, 1);
    check(6, 1, 8, 3, 7, 2);
    // Groups of 4 with a head size that is not a multiple of 8.
    check(8, 2, 12, 4, 5, 3);
}

#[test]
fn prefill_chunk_after_cached_prefix_is_causal() {
    // 5 new tokens after 9 cached ones: token i sees 10 + i keys.
    check(4, 2, 16, 4, 9, 5);
    // From position 0, with a block size that does not divide the length.
    check(2, 1, 8, 5, 0, 7);
}

#[test]
fn large_batches_take_the_parallel_path_and_agree() {
    // 9 heads over 3 KV heads with head_dim 64, SmolLM2's shape: well above
    // the parallel threshold.
    check(9, 3, 64, 16, 40, 24);
}

#[test]
fn empty_query_writes_nothing() {
    let case = Case::new(&mut Rng::new(1), 4, 2, 1, 4);
    let mut out: Vec<f32> = Vec::new();
    paged_attention(&[], 3, 2, &case.kv(), &case.table, 0.5, &mut out);
}
