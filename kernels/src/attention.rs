//! Causal attention over a paged KV cache.

use crate::ops::softmax;

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

/// Attention for the query rows of one sequence.
///
/// `q` holds `n_q` tokens of `n_heads * head_dim` values at consecutive
/// positions starting at `first_pos`; token `i` attends to keys `0..=first_pos+i`,
/// which must already be written to the cache. `out` has the shape of `q`.
pub fn paged_attention(
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
            softmax(&mut scores);
            let oh = &mut out[t * width + h * hd..t * width + (h + 1) * hd];
            oh.fill(0.0);
            for (p, s) in scores.iter().enumerate() {
                let off = kv.offset(block_table, p, kvh);
                for (o, v) in oh.iter_mut().zip(&kv.v[off..off + hd]) {
                    *o += s * v;
                }
            }
        }
    }
}
