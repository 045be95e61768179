//! Attention over a paged KV cache: causal for decoders
//! ([`paged_attention`]), and every query against all keys for encoders
//! ([`bidirectional_attention`], the same kernel with another key range).
//!
//! The unit of work is one query token against one KV head: the `group`
//! query heads that share that KV head (GQA) are done together, so every key
//! and value vector is read once per group rather than once per head, and
//! their outputs are one contiguous chunk of `out` — which is what lets rayon
//! hand chunks to threads without any unsafe sharing. Each worker keeps one
//! scores buffer (`group × keys`) for all the chunks it takes.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use crate::cpu::Avx2Simd;
use crate::cpu::{Isa, Portable, Simd};
use crate::ops::exp_approx;

/// One layer's K and V storage: `[block][slot][kv_head][head_dim]` each.
pub struct PagedKv<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl PagedKv<'_> {
    /// Offset of (position, kv head) in `k`/`v`, through the block table.
    pub fn offset(&self, block_table: &[u32], pos: usize, kv_head: usize) -> usize {
        let block = block_table[pos / self.block_size] as usize;
        let slot = pos % self.block_size;
        ((block * self.block_size + slot) * self.n_kv_heads + kv_head) * self.head_dim
    }
}

/// Below this many multiply-adds (QK plus PV) a call stays on the calling
/// thread: a rayon hand-off costs more than a short decode step's attention.
const PAR_MIN_WORK: usize = 1 << 16;

/// Attention for the query rows of one sequence.
///
/// `q` holds `n_q` tokens of `n_heads * head_dim` values at consecutive
/// positions starting at `first_pos`; token `i` attends to keys `0..=first_pos+i`,
/// which must already be written to the cache. `out` has the shape of `q`.
/// `n_heads` must be a multiple of `kv.n_kv_heads`.
pub fn paged_attention(
    q: &[f32],
    first_pos: usize,
    n_heads: usize,
    kv: &PagedKv<'_>,
    block_table: &[u32],
    scale: f32,
    out: &mut [f32],
) {
    paged_attention_with(
        Isa::detect(),
        q,
        first_pos,
        n_heads,
        kv,
        block_table,
        scale,
        out,
    )
}

/// Attention of every query row in `q` against all of keys `0..n_keys`
/// (no causal mask): an encoder's self-attention over one input, whose
/// keys and values are laid out as one block (`block_size >= n_keys`,
/// `block_table = [0]`) or paged like a decoder's. `q` and `out` are
/// `[tokens][n_heads * head_dim]`.
pub fn bidirectional_attention(
    q: &[f32],
    n_keys: usize,
    n_heads: usize,
    kv: &PagedKv<'_>,
    block_table: &[u32],
    scale: f32,
    out: &mut [f32],
) {
    attention_with(
        Isa::detect(),
        q,
        Keys::All(n_keys),
        n_heads,
        kv,
        block_table,
        scale,
        out,
    )
}

/// Which keys a query token sees.
#[derive(Clone, Copy)]
enum Keys {
    /// Token `i` of the call sees keys `0..=first_pos + i`.
    Causal { first_pos: usize },
    /// Every token sees keys `0..n`.
    All(usize),
}

impl Keys {
    fn for_token(self, t: usize) -> usize {
        match self {
            Keys::Causal { first_pos } => first_pos + t + 1,
            Keys::All(n) => n,
        }
    }
}

/// [`paged_attention`] on a given instruction set (tests run both).
#[allow(clippy::too_many_arguments)]
pub(crate) fn paged_attention_with(
    isa: Isa,
    q: &[f32],
    first_pos: usize,
    n_heads: usize,
    kv: &PagedKv<'_>,
    block_table: &[u32],
    scale: f32,
    out: &mut [f32],
) {
    let keys = Keys::Causal { first_pos };
    attention_with(isa, q, keys, n_heads, kv, block_table, scale, out)
}

#[allow(clippy::too_many_arguments)]
fn attention_with(
    isa: Isa,
    q: &[f32],
    keys: Keys,
    n_heads: usize,
    kv: &PagedKv<'_>,
    block_table: &[u32],
    scale: f32,
    out: &mut [f32],
) {
    let hd = kv.head_dim;
    let width = n_heads * hd;
    assert_eq!(out.len(), q.len(), "attention output shape mismatch");
    assert!(
        kv.n_kv_heads > 0 && n_heads.is_multiple_of(kv.n_kv_heads),
        "{n_heads} query heads do not split over {} KV heads",
        kv.n_kv_heads
    );
    if width == 0 || q.is_empty() {
        return;
    }
    let group = n_heads / kv.n_kv_heads;
    let n_q = q.len() / width;
    let most_keys = keys.for_token(n_q - 1);
    assert!(
        block_table.len() * kv.block_size >= most_keys,
        "block table of {} blocks cannot hold {most_keys} positions",
        block_table.len(),
    );
    let chunk = group * hd;
    let job = Job {
        q,
        keys,
        kv,
        block_table,
        scale,
        group,
        width,
        isa,
    };
    let mean_keys = keys.for_token(n_q / 2);
    if n_q * n_heads * mean_keys * hd * 2 < PAR_MIN_WORK {
        let mut scratch = Scratch::default();
        for (idx, o) in out.chunks_exact_mut(chunk).enumerate() {
            job.run(idx, o, &mut scratch);
        }
    } else {
        out.par_chunks_exact_mut(chunk)
            .enumerate()
            .for_each_init(Scratch::default, |scratch, (idx, o)| {
                job.run(idx, o, scratch)
            });
    }
}

/// Everything a (token, KV head) chunk needs, shared by all chunks.
struct Job<'a> {
    q: &'a [f32],
    keys: Keys,
    kv: &'a PagedKv<'a>,
    block_table: &'a [u32],
    scale: f32,
    group: usize,
    width: usize,
    isa: Isa,
}

impl Job<'_> {
    /// Chunk `idx` = token `idx / n_kv_heads`, KV head `idx % n_kv_heads`:
    /// the outputs of query heads `kv_head * group ..` of that token.
    fn run(&self, idx: usize, out: &mut [f32], scratch: &mut Scratch) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the token proves AVX2, FMA and F16C.
            Isa::Avx2(_) => unsafe { run_avx2(self, idx, out, scratch) },
            // SAFETY: the portable primitives have no requirements.
            Isa::Scalar => unsafe { self.run_with::<Portable>(idx, out, scratch) },
        }
    }

    /// The body of [`Job::run`] for one set of vector primitives.
    ///
    /// # Safety
    /// `S`'s target features must be enabled (see [`Simd`]).
    #[inline(always)]
    unsafe fn run_with<S: Simd>(&self, idx: usize, out: &mut [f32], scratch: &mut Scratch) {
        let kv = self.kv;
        let (hd, group) = (kv.head_dim, self.group);
        let (t, kv_head) = (idx / kv.n_kv_heads, idx % kv.n_kv_heads);
        let n_keys = self.keys.for_token(t);
        let q_at = t * self.width + kv_head * group * hd;
        let q = &self.q[q_at..q_at + group * hd];

        // Where each position's vector of this KV head starts in k and v,
        // through the block table once.
        let rows = &mut scratch.rows;
        rows.clear();
        let bs = kv.block_size;
        for (b, &block) in self
            .block_table
            .iter()
            .take(n_keys.div_ceil(bs))
            .enumerate()
        {
            let base = (block as usize * bs * kv.n_kv_heads + kv_head) * hd;
            let live = bs.min(n_keys - b * bs);
            rows.extend((0..live).map(|slot| base + slot * kv.n_kv_heads * hd));
        }
        let key = |p: usize| &kv.k[rows[p]..rows[p] + hd];

        // Scores, four keys at a time (one horizontal reduction for all
        // four), every head of the group while those keys are in L1. Plain
        // loops, not closures, around the primitives: a closure is not
        // compiled with its caller's target features.
        let scores = &mut scratch.scores;
        scores.clear();
        scores.resize(group * n_keys, 0.0);
        let mut p = 0;
        while p + 4 <= n_keys {
            // A decode step reads every running sequence's keys and values
            // of every layer, tens of MB, mostly from memory: ask for the
            // keys two steps ahead and for the values the weighted sums
            // below will read (about 15% less time in attention at eight
            // sequences).
            for (a, &at) in rows.iter().enumerate().skip(p).take(4) {
                if a + 8 < n_keys {
                    S::prefetch(key(a + 8));
                }
                S::prefetch(&kv.v[at..at + hd]);
            }
            let k4 = [key(p), key(p + 1), key(p + 2), key(p + 3)];
            for (g, qh) in q.chunks_exact(hd).enumerate() {
                // SAFETY: forwarded from the caller.
                let d = unsafe { S::dot4(qh, k4) };
                for (s, d) in scores[g * n_keys + p..g * n_keys + p + 4].iter_mut().zip(d) {
                    *s = d * self.scale;
                }
            }
            p += 4;
        }
        for p in p..n_keys {
            for (g, qh) in q.chunks_exact(hd).enumerate() {
                // SAFETY: forwarded from the caller.
                scores[g * n_keys + p] = unsafe { S::dot(qh, key(p)) } * self.scale;
            }
        }

        // Softmax numerators; the normalisation is applied to the output.
        let mut inv_sums = [0.0f32; 16];
        let mut inv_sums_heap = Vec::new();
        let inv_sum: &mut [f32] = if group <= inv_sums.len() {
            &mut inv_sums[..group]
        } else {
            inv_sums_heap.resize(group, 0.0);
            &mut inv_sums_heap
        };
        for (row, inv) in scores.chunks_exact_mut(n_keys).zip(inv_sum.iter_mut()) {
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            // Two loops: the exponentials vectorise only without the serial sum.
            for s in row.iter_mut() {
                *s = exp_approx(*s - max);
            }
            *inv = 1.0 / sum_lanes(row);
        }

        // Weighted sums of values, each value row read once for all heads.
        out.fill(0.0);
        // SAFETY: forwarded from the caller.
        unsafe { S::weighted_sums(out, scores, rows, kv.v) };
        for (o, inv) in out.chunks_exact_mut(hd).zip(inv_sum.iter()) {
            for v in o.iter_mut() {
                *v *= inv;
            }
        }
    }
}

/// Per-worker buffers, reused across the chunks a worker takes.
#[derive(Default)]
struct Scratch {
    /// `group × keys` scores, then softmax numerators.
    scores: Vec<f32>,
    /// Offset of each key position's vector in `k` / `v`.
    rows: Vec<usize>,
}

/// [`Job::run_with`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2(job: &Job<'_>, idx: usize, out: &mut [f32], scratch: &mut Scratch) {
    // SAFETY: this function has the features Avx2Simd needs.
    unsafe { job.run_with::<Avx2Simd>(idx, out, scratch) }
}

/// `Σ x` in eight independent lanes, so that it vectorises.
#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..8 {
            lanes[l] += c[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The plain definition: per token and head, scores over all keys through
/// [`PagedKv::offset`], a softmax, and the weighted sum of values. Slow; the
/// yardstick for tests.
pub fn paged_attention_reference(
    q: &[f32],
    first_pos: usize,
    n_heads: usize,
    kv: &PagedKv<'_>,
    block_table: &[u32],
    scale: f32,
    out: &mut [f32],
) {
    let hd = kv.head_dim;
    let group = n_heads / kv.n_kv_heads;
    let width = n_heads * hd;
    let n_q = q.len() / width;
    for t in 0..n_q {
        let n_keys = first_pos + t + 1;
        let mut scores = vec![0.0f32; n_keys];
        for h in 0..n_heads {
            let kvh = h / group;
            let qh = &q[t * width + h * hd..t * width + (h + 1) * hd];
            for (p, s) in scores.iter_mut().enumerate() {
                let off = kv.offset(block_table, p, kvh);
                *s = qh
                    .iter()
                    .zip(&kv.k[off..off + hd])
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                    * scale;
            }
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let oh = &mut out[t * width + h * hd..t * width + (h + 1) * hd];
            oh.fill(0.0);
            for (p, s) in scores.iter().enumerate() {
                let off = kv.offset(block_table, p, kvh);
                for (o, v) in oh.iter_mut().zip(&kv.v[off..off + hd]) {
                    *o += s / sum * v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Rng;

    /// Bidirectional attention of token i equals causal attention of one
    /// query sitting at the last key position: every token sees all keys.
    #[test]
    fn bidirectional_attention_sees_every_key() {
        let mut rng = Rng::new(22);
        let (n_heads, hd, n) = (3, 20, 9);
        let (k, v): (Vec<f32>, Vec<f32>) = (0..n * n_heads * hd)
            .map(|_| (rng.uniform(), rng.uniform()))
            .unzip();
        let kv = PagedKv {
            k: &k,
            v: &v,
            block_size: n,
            n_kv_heads: n_heads,
            head_dim: hd,
        };
        let width = n_heads * hd;
        let q: Vec<f32> = (0..n * width).map(|_| rng.uniform()).collect();
        let mut got = vec![f32::NAN; q.len()];
        bidirectional_attention(&q, n, n_heads, &kv, &[0], 0.4, &mut got);
        for t in 0..n {
            let mut want = vec![0.0; width];
            let qt = &q[t * width..(t + 1) * width];
            paged_attention_reference(qt, n - 1, n_heads, &kv, &[0], 0.4, &mut want);
            for (i, (g, w)) in got[t * width..(t + 1) * width]
                .iter()
                .zip(&want)
                .enumerate()
            {
                assert!((g - w).abs() < 1e-5, "token {t} [{i}]: {g} vs {w}");
            }
        }
    }

    /// Both instruction sets against the reference, over group sizes that
    /// take every head batching of the value sums (1, 2, 3, 3+1) and head
    /// sizes with and without an 8-wide tail.
    #[test]
    fn every_instruction_set_matches_the_reference() {
        let mut rng = Rng::new(21);
        for (n_heads, n_kv, hd) in [(2, 2, 64), (4, 2, 12), (6, 2, 72), (8, 2, 8), (4, 1, 20)] {
            let (bs, first_pos, n_q): (usize, usize, usize) = (4, 6, 3);
            let n_blocks = (first_pos + n_q).div_ceil(bs) + 1;
            let len = n_blocks * bs * n_kv * hd;
            let (k, v): (Vec<f32>, Vec<f32>) =
                (0..len).map(|_| (rng.uniform(), rng.uniform())).unzip();
            let kv = PagedKv {
                k: &k,
                v: &v,
                block_size: bs,
                n_kv_heads: n_kv,
                head_dim: hd,
            };
            let table: Vec<u32> = (0..n_blocks as u32).rev().collect();
            let q: Vec<f32> = (0..n_q * n_heads * hd).map(|_| rng.uniform()).collect();
            let mut want = vec![0.0; q.len()];
            paged_attention_reference(&q, first_pos, n_heads, &kv, &table, 0.3, &mut want);
            let mut isas = vec![Isa::Scalar];
            if !matches!(Isa::detect(), Isa::Scalar) {
                isas.push(Isa::detect());
            }
            for isa in isas {
                let mut got = vec![f32::NAN; q.len()];
                paged_attention_with(isa, &q, first_pos, n_heads, &kv, &table, 0.3, &mut got);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() < 1e-5,
                        "{isa:?} {n_heads}/{n_kv}x{hd} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }
}
