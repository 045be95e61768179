//! Twin of `kernels/cuda/rope_kv.cu`: per token, the cos/sin table of its
//! position, then every q and k pair rotated (q into `q_out`, k into its
//! cache slot) and v copied to its slot; bias added in f32 first. The cache
//! element type is `K` ([`KvElem`]: bf16, f16, fp8 e4m3 with its scales).

use half::bf16;

use super::{KvElem, KvLayout, KvScales, RopeKvLens, RopeKvShape};
use crate::rope::RopeStyle;
use crate::KernelError;

/// The host buffers of one RoPE + KV write (see `kernels/cuda/README.md`).
pub struct RopeKvBuffers<'a, K: KvElem = bf16> {
    /// `[tokens][(n_heads + 2 * n_kv_heads) * head_dim]`: q ‖ k ‖ v.
    pub qkv: &'a [bf16],
    /// One QKV row's bias (Qwen2), or `None`.
    pub bias: Option<&'a [bf16]>,
    pub positions: &'a [i32],
    /// Cache slot per token (`block * block_size + offset`); negative: write nothing.
    pub slots: &'a [i32],
    /// `head_dim / 2` inverse frequencies ([`crate::rope::Rope::inv_freq`]).
    pub inv_freq: &'a [f32],
    /// `[tokens][n_heads * head_dim]`: rotated q.
    pub q_out: &'a mut [bf16],
    /// This layer's K and V tensors in [`KvLayout`].
    pub k_cache: &'a mut [K],
    pub v_cache: &'a mut [K],
    /// What K and V are divided by when stored (fp8 only).
    pub kv_scales: KvScales,
}

pub fn rope_kv_write<K: KvElem>(
    shape: &RopeKvShape,
    buf: RopeKvBuffers<'_, K>,
) -> Result<(), KernelError> {
    shape.validate(&RopeKvLens {
        qkv: buf.qkv.len(),
        bias: buf.bias.map(<[bf16]>::len),
        positions: buf.positions.len(),
        slots: buf.slots.len(),
        inv_freq: buf.inv_freq.len(),
        q_out: buf.q_out.len(),
        k_cache: buf.k_cache.len(),
        v_cache: buf.v_cache.len(),
    })?;
    let kv: KvLayout = shape.kv;
    let (hd, half) = (kv.head_dim, kv.head_dim / 2);
    let q_dim = shape.n_heads * hd;
    let kv_dim = kv.n_kv_heads * hd;
    let width = shape.qkv_width();
    let (mut cos, mut sin) = (vec![0.0f32; half], vec![0.0f32; half]);
    for t in 0..shape.tokens {
        let row = &buf.qkv[t * width..(t + 1) * width];
        let at = |j: usize| row[j].to_f32() + buf.bias.map_or(0.0, |b| b[j].to_f32());
        let pos = buf.positions[t] as f32;
        for ((c, s), f) in cos.iter_mut().zip(sin.iter_mut()).zip(buf.inv_freq) {
            (*s, *c) = (pos * f).sin_cos();
        }
        let slot = match usize::try_from(buf.slots[t]) {
            Ok(slot) if slot < kv.num_blocks * kv.block_size => Some(slot),
            Ok(slot) => {
                return Err(KernelError::BadShape(format!(
                    "slot {slot} of token {t} is outside {} blocks of {}",
                    kv.num_blocks, kv.block_size
                )))
            }
            Err(_) => None,
        };
        for head in 0..shape.n_heads + kv.n_kv_heads {
            let base = head * hd;
            for i in 0..half {
                let (a, b) = match shape.style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::HalfSplit => (i, i + half),
                };
                let (x0, x1) = (at(base + a), at(base + b));
                let (c, s) = (cos[i], sin[i]);
                let (y0, y1) = (x0 * c - x1 * s, x0 * s + x1 * c);
                if head < shape.n_heads {
                    let q = &mut buf.q_out[t * q_dim + base..t * q_dim + base + hd];
                    q[a] = bf16::from_f32(y0);
                    q[b] = bf16::from_f32(y1);
                } else if let Some(slot) = slot {
                    let k_at = kv.slot_offset(slot, head - shape.n_heads);
                    buf.k_cache[k_at + a] = K::store(y0, buf.kv_scales.k);
                    buf.k_cache[k_at + b] = K::store(y1, buf.kv_scales.k);
                }
            }
        }
        if let Some(slot) = slot {
            for j in 0..kv_dim {
                let at_cache = kv.slot_offset(slot, j / hd) + j % hd;
                buf.v_cache[at_cache] = K::store(at(q_dim + kv_dim + j), buf.kv_scales.v);
            }
        }
    }
    Ok(())
}
