//! Twin of `kernels/cuda/attention.cu`: one block per (query token, query
//! head); warp `w` walks keys `w, w + 4, ...` with its own online softmax,
//! lane `l` owning dims `l*dpl .. (l+1)*dpl`; the warps merge in order.
//! The cache element type is `K` ([`KvElem`]), widened to f32 as it is read.

use half::bf16;
use rayon::prelude::*;

use super::reduce::warp_sum;
use super::{AttentionLens, AttentionShape, KvElem, KvScales, ATTN_WARPS, WARP};
use crate::KernelError;

/// The host buffers of one attention call (see `kernels/cuda/README.md`).
pub struct AttentionBuffers<'a, K: KvElem = bf16> {
    /// `[tokens][n_heads * head_dim]`, rotated.
    pub q: &'a [bf16],
    /// This layer's K and V in [`super::KvLayout`].
    pub k_cache: &'a [K],
    pub v_cache: &'a [K],
    /// `[seqs][max_blocks_per_seq]` block ids.
    pub block_tables: &'a [i32],
    /// KV length of each sequence after this step's tokens; 0 = padding row.
    pub context_lens: &'a [i32],
    /// `[seqs + 1]` query ranges for prefill; `None` for decode (one query per sequence).
    pub query_starts: Option<&'a [i32]>,
    /// `[tokens][n_heads * head_dim]`.
    pub out: &'a mut [bf16],
    /// What K and V are multiplied by when read (fp8 only).
    pub kv_scales: KvScales,
}

/// Causal paged attention, decode or chunked prefill (see [`AttentionBuffers`]).
pub fn paged_attention<K: KvElem>(
    shape: &AttentionShape,
    buf: AttentionBuffers<'_, K>,
) -> Result<(), KernelError> {
    shape.validate(&AttentionLens {
        q: buf.q.len(),
        k_cache: buf.k_cache.len(),
        v_cache: buf.v_cache.len(),
        block_tables: buf.block_tables.len(),
        context_lens: buf.context_lens.len(),
        query_starts: buf.query_starts.map(<[i32]>::len),
        out: buf.out.len(),
    })?;
    let plan = queries(shape, &buf)?;
    let hd = shape.kv.head_dim;
    let job = Job { shape, buf: &buf };
    let mut out = vec![bf16::ZERO; buf.out.len()];
    out.par_chunks_exact_mut(hd).enumerate().for_each(|(i, o)| {
        let (token, head) = (i / shape.n_heads, i % shape.n_heads);
        let (seq, n_keys) = plan[token];
        job.run(token, head, seq, n_keys, o);
    });
    buf.out.copy_from_slice(&out);
    Ok(())
}

/// Each query token's sequence and key count, with every index it will
/// follow checked (a device kernel would read out of bounds instead).
fn queries<K: KvElem>(
    shape: &AttentionShape,
    buf: &AttentionBuffers<'_, K>,
) -> Result<Vec<(usize, usize)>, KernelError> {
    let kv = shape.kv;
    let bad = KernelError::BadShape;
    let mut plan = Vec::with_capacity(shape.n_tokens);
    for s in 0..shape.n_seqs {
        let ctx = usize::try_from(buf.context_lens[s])
            .map_err(|_| bad(format!("context_lens[{s}] is negative")))?;
        let (start, end) = match buf.query_starts {
            None => (s, s + 1),
            Some(qs) => {
                let (a, b) = (qs[s], qs[s + 1]);
                match (usize::try_from(a), usize::try_from(b)) {
                    (Ok(a), Ok(b)) if a <= b && b <= shape.n_tokens => (a, b),
                    _ => {
                        return Err(bad(format!(
                            "query_starts[{s}..={}] = {a}..{b} is not a range of the tokens",
                            s + 1
                        )))
                    }
                }
            }
        };
        if start != plan.len() {
            return Err(bad(format!(
                "query_starts[{s}] = {start} does not follow the previous sequence"
            )));
        }
        let q_len = end - start;
        if ctx < q_len && !(buf.query_starts.is_none() && ctx == 0) {
            return Err(bad(format!(
                "sequence {s} has {q_len} queries but only {ctx} keys"
            )));
        }
        if ctx.div_ceil(kv.block_size) > shape.max_blocks_per_seq {
            return Err(bad(format!(
                "sequence {s}'s {ctx} keys need more than {} blocks",
                shape.max_blocks_per_seq
            )));
        }
        let table =
            &buf.block_tables[s * shape.max_blocks_per_seq..][..ctx.div_ceil(kv.block_size)];
        if let Some(b) = table
            .iter()
            .find(|&&b| usize::try_from(b).map_or(true, |b| b >= kv.num_blocks))
        {
            return Err(bad(format!(
                "sequence {s}'s block table names block {b} of {}",
                kv.num_blocks
            )));
        }
        for i in 0..q_len {
            let n_keys = if buf.query_starts.is_none() {
                ctx
            } else {
                ctx - q_len + i + 1
            };
            plan.push((s, n_keys));
        }
    }
    if plan.len() != shape.n_tokens {
        return Err(bad(format!(
            "query_starts cover {} of {} tokens",
            plan.len(),
            shape.n_tokens
        )));
    }
    Ok(plan)
}

struct Job<'a, 'b, K: KvElem> {
    shape: &'a AttentionShape,
    buf: &'a AttentionBuffers<'b, K>,
}

/// One warp's online softmax state.
struct WarpState {
    m: f32,
    l: f32,
    acc: Vec<f32>,
}

impl<K: KvElem> Job<'_, '_, K> {
    fn run(&self, token: usize, head: usize, seq: usize, n_keys: usize, out: &mut [bf16]) {
        let (shape, buf) = (self.shape, self.buf);
        let (kv, scales) = (shape.kv, buf.kv_scales);
        let hd = kv.head_dim;
        let dpl = hd / WARP;
        let kvh = head / (shape.n_heads / kv.n_kv_heads);
        let table = &buf.block_tables[seq * shape.max_blocks_per_seq..];
        let q: Vec<f32> = buf.q[(token * shape.n_heads + head) * hd..][..hd]
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let states: Vec<WarpState> = (0..ATTN_WARPS)
            .map(|w| {
                let mut st = WarpState {
                    m: f32::NEG_INFINITY,
                    l: 0.0,
                    acc: vec![0.0; hd],
                };
                for p in (w..n_keys).step_by(ATTN_WARPS) {
                    let block = table[p / kv.block_size] as usize;
                    let row = kv.offset(block, kvh, p % kv.block_size);
                    let k = &buf.k_cache[row..row + hd];
                    let v = &buf.v_cache[row..row + hd];
                    let partial: [f32; WARP] = std::array::from_fn(|lane| {
                        let mut s = 0.0f32;
                        for d in lane * dpl..(lane + 1) * dpl {
                            s += q[d] * k[d].load(scales.k);
                        }
                        s
                    });
                    let s = warp_sum(&partial) * shape.scale;
                    let m_new = st.m.max(s);
                    let alpha = (st.m - m_new).exp();
                    let e = (s - m_new).exp();
                    st.l = st.l * alpha + e;
                    for (a, v) in st.acc.iter_mut().zip(v) {
                        *a = *a * alpha + e * v.load(scales.v);
                    }
                    st.m = m_new;
                }
                st
            })
            .collect();
        let m_all = states.iter().fold(f32::NEG_INFINITY, |m, s| m.max(s.m));
        for (d, o) in out.iter_mut().enumerate() {
            if m_all == f32::NEG_INFINITY {
                *o = bf16::ZERO;
                continue;
            }
            let (mut num, mut den) = (0.0f32, 0.0f32);
            for st in &states {
                let f = if st.m == f32::NEG_INFINITY {
                    0.0
                } else {
                    (st.m - m_all).exp()
                };
                num += st.acc[d] * f;
                den += st.l * f;
            }
            *o = bf16::from_f32(num / den);
        }
    }
}
