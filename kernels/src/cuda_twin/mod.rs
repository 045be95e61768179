//! CPU twins of the CUDA kernels in `kernels/cuda/`, and the shapes both
//! share.
//!
//! No emulator runs CUDA on a CPU, so each kernel is written a second time
//! in Rust from the same index arithmetic: the same grid and block loops,
//! the same element each thread owns, the same order of additions in every
//! reduction (warp butterflies, block sums, the online softmax's merge).
//! Bits still differ a little — nvcc fuses multiply-adds, and CUDA's
//! `expf`/`sincosf` are not Rust's — so the twins are compared with the
//! device at a tolerance, while the twins themselves are tested here
//! against the crate's reference kernels (and plain f32 definitions) on
//! every build, without a GPU.
//!
//! The shapes ([`EmbeddingShape`], [`NormShape`], [`RopeKvShape`],
//! [`AttentionShape`], [`SampleShape`], the [`KvLayout`]) are the same
//! types the `cuda` feature's launch functions take, so a host-side plan
//! built for one runs on the other; their `validate` is the one place sizes
//! are checked. The twins also check index contents (block ids, slots,
//! lengths) that a device kernel cannot, and return [`KernelError`] rather
//! than index out of bounds. The layouts are written down in
//! `kernels/cuda/README.md`.

mod attention;
mod elementwise;
mod gemv;
#[cfg(test)]
mod kv_dtype_tests;
mod kv_elem;
mod norm;
mod reduce;
mod rope_kv;
mod sample;

pub use attention::{paged_attention, AttentionBuffers};
pub use elementwise::{embedding_gather, residual_add, silu_mul};
pub use gemv::gemv_q8_0;
pub use kv_elem::{Fp8E4m3, KvDType, KvElem, KvScales};
pub use norm::{add_rms_norm, rms_norm};
pub use rope_kv::{rope_kv_write, RopeKvBuffers};
pub use sample::{sample, sample_reference, RowSampling, HOST_SAMPLES};

use crate::rope::RopeStyle;
use crate::KernelError;

/// Threads in a warp.
pub const WARP: usize = 32;
/// Threads per block of the embedding gather, residual add and SiLU·mul.
pub const ELEMENTWISE_THREADS: usize = 256;
/// Threads per block (one block per row) of the RMSNorms.
pub const NORM_THREADS: usize = 256;
/// Threads per block (one block per token) of RoPE + KV write.
pub const ROPE_THREADS: usize = 128;
/// Warps per block (one block per query token and head) of paged attention.
pub const ATTN_WARPS: usize = 8;
/// Largest head size paged attention takes (each lane holds head_dim / 32 values).
pub const ATTN_MAX_HEAD_DIM: usize = 256;
/// Threads per block (one block per row) of sampling.
pub const SAMPLE_THREADS: usize = 1024;
/// Most candidates top-k / top-p keep on the device; beyond, the host samples.
pub const SAMPLE_MAX_CANDIDATES: usize = 1024;
/// Warps per block (one weight row per warp) of the Q8_0 GEMV.
pub const GEMV_WARPS: usize = 4;
/// Most activation rows one Q8_0 GEMV call takes.
pub const GEMV_MAX_BATCH: usize = 8;

/// Where K and V of one layer live: `[num_blocks][n_kv_heads][block_size][head_dim]`
/// elements each (head-major inside a block, see `kernels/cuda/README.md`),
/// of the cache's [`KvDType`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub num_blocks: usize,
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvLayout {
    /// Elements in one layer's K (or V) tensor.
    pub fn layer_len(&self) -> usize {
        self.num_blocks * self.block_len()
    }

    /// Elements of one block in one layer's K (or V) tensor.
    pub fn block_len(&self) -> usize {
        self.n_kv_heads * self.block_size * self.head_dim
    }

    /// Element offset of `(block, kv_head, offset in block, dim 0)`.
    pub fn offset(&self, block: usize, kv_head: usize, offset: usize) -> usize {
        ((block * self.n_kv_heads + kv_head) * self.block_size + offset) * self.head_dim
    }

    /// Element offset of `kv_head`'s vector at cache slot `slot`
    /// (`block * block_size + offset`, as in the `slots` tensor).
    pub fn slot_offset(&self, slot: usize, kv_head: usize) -> usize {
        self.offset(slot / self.block_size, kv_head, slot % self.block_size)
    }

    /// The `slots` entry of position `pos` of a sequence with this block table.
    pub fn slot_of(&self, block_table: &[u32], pos: usize) -> Option<usize> {
        let block = *block_table.get(pos / self.block_size)? as usize;
        Some(block * self.block_size + pos % self.block_size)
    }

    fn validate(&self) -> Result<(), KernelError> {
        if self.block_size == 0 || self.n_kv_heads == 0 {
            return Err(bad("block_size and n_kv_heads must be positive".into()));
        }
        if self.head_dim == 0
            || !self.head_dim.is_multiple_of(WARP)
            || self.head_dim > ATTN_MAX_HEAD_DIM
        {
            return Err(bad(format!(
                "head_dim {} must be a positive multiple of {WARP} up to {ATTN_MAX_HEAD_DIM}",
                self.head_dim
            )));
        }
        Ok(())
    }
}

/// `tokens` rows of `hidden` gathered from a `vocab`-row table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingShape {
    pub tokens: usize,
    pub vocab: usize,
    pub hidden: usize,
}

impl EmbeddingShape {
    /// Checks the lengths of `ids`, `table` and `out`.
    pub fn validate(&self, ids: usize, table: usize, out: usize) -> Result<(), KernelError> {
        expect_len("embedding ids", self.tokens, ids)?;
        expect_len("embedding table", self.vocab * self.hidden, table)?;
        expect_len("embedding output", self.tokens * self.hidden, out)
    }
}

/// `rows` rows of `dim` values, normalised with `eps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormShape {
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
}

impl NormShape {
    /// Checks `x` (`x_rows` rows, more than `rows` when gathering), the weight and `out`.
    pub fn validate(
        &self,
        x: usize,
        x_rows: usize,
        weight: usize,
        out: usize,
    ) -> Result<(), KernelError> {
        if self.dim == 0 {
            return Err(bad("norm dim must be positive".into()));
        }
        expect_len("norm input", x_rows * self.dim, x)?;
        expect_len("norm weight", self.dim, weight)?;
        expect_len("norm output", self.rows * self.dim, out)
    }
}

/// SiLU·mul of `rows` rows of gate ‖ up (`2 * ff` wide) into `ff`-wide rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiluMulShape {
    pub rows: usize,
    pub ff: usize,
}

impl SiluMulShape {
    pub fn validate(&self, gate_up: usize, out: usize) -> Result<(), KernelError> {
        expect_len("silu_mul gate_up", self.rows * 2 * self.ff, gate_up)?;
        expect_len("silu_mul output", self.rows * self.ff, out)
    }
}

/// RoPE + KV write of `tokens` fused QKV rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RopeKvShape {
    pub tokens: usize,
    pub n_heads: usize,
    pub kv: KvLayout,
    pub style: RopeStyle,
}

impl RopeKvShape {
    /// Width of one fused QKV row.
    pub fn qkv_width(&self) -> usize {
        (self.n_heads + 2 * self.kv.n_kv_heads) * self.kv.head_dim
    }

    /// The kernel's style code: 0 interleaved pairs, 1 half split.
    pub fn style_code(&self) -> i32 {
        match self.style {
            RopeStyle::Interleaved => 0,
            RopeStyle::HalfSplit => 1,
        }
    }

    /// Checks every buffer length; `bias` is `None` when there is no bias.
    pub fn validate(&self, lens: &RopeKvLens) -> Result<(), KernelError> {
        self.kv.validate()?;
        let (t, hd) = (self.tokens, self.kv.head_dim);
        if self.n_heads == 0 {
            return Err(bad("n_heads must be positive".into()));
        }
        expect_len("rope qkv", t * self.qkv_width(), lens.qkv)?;
        if let Some(b) = lens.bias {
            expect_len("rope bias", self.qkv_width(), b)?;
        }
        expect_len("rope positions", t, lens.positions)?;
        expect_len("rope slots", t, lens.slots)?;
        expect_len("rope inv_freq", hd / 2, lens.inv_freq)?;
        expect_len("rope q output", t * self.n_heads * hd, lens.q_out)?;
        expect_len("k cache", self.kv.layer_len(), lens.k_cache)?;
        expect_len("v cache", self.kv.layer_len(), lens.v_cache)
    }
}

/// Buffer lengths of one RoPE + KV write, for [`RopeKvShape::validate`].
#[derive(Debug, Clone, Copy)]
pub struct RopeKvLens {
    pub qkv: usize,
    pub bias: Option<usize>,
    pub positions: usize,
    pub slots: usize,
    pub inv_freq: usize,
    pub q_out: usize,
    pub k_cache: usize,
    pub v_cache: usize,
}

/// Paged attention of `n_tokens` queries from `n_seqs` sequences (decode:
/// `n_tokens == n_seqs`, one query each).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    pub n_seqs: usize,
    pub n_tokens: usize,
    pub n_heads: usize,
    pub kv: KvLayout,
    /// Row stride of `block_tables`.
    pub max_blocks_per_seq: usize,
    /// Multiplies q·k (`1 / sqrt(head_dim)` for Llama).
    pub scale: f32,
}

impl AttentionShape {
    /// Checks every buffer length; `query_starts` is `None` for decode.
    pub fn validate(&self, lens: &AttentionLens) -> Result<(), KernelError> {
        self.kv.validate()?;
        if self.n_heads == 0 || !self.n_heads.is_multiple_of(self.kv.n_kv_heads) {
            return Err(bad(format!(
                "{} query heads do not split over {} KV heads",
                self.n_heads, self.kv.n_kv_heads
            )));
        }
        let width = self.n_heads * self.kv.head_dim;
        match lens.query_starts {
            None if self.n_tokens != self.n_seqs => {
                return Err(bad(format!(
                    "decode attention takes one query per sequence: {} tokens for {} sequences",
                    self.n_tokens, self.n_seqs
                )))
            }
            None => {}
            Some(n) => expect_len("attention query_starts", self.n_seqs + 1, n)?,
        }
        expect_len("attention q", self.n_tokens * width, lens.q)?;
        expect_len("k cache", self.kv.layer_len(), lens.k_cache)?;
        expect_len("v cache", self.kv.layer_len(), lens.v_cache)?;
        expect_len(
            "attention block_tables",
            self.n_seqs * self.max_blocks_per_seq,
            lens.block_tables,
        )?;
        expect_len("attention context_lens", self.n_seqs, lens.context_lens)?;
        expect_len("attention output", self.n_tokens * width, lens.out)
    }
}

/// Buffer lengths of one attention call, for [`AttentionShape::validate`].
#[derive(Debug, Clone, Copy)]
pub struct AttentionLens {
    pub q: usize,
    pub k_cache: usize,
    pub v_cache: usize,
    pub block_tables: usize,
    pub context_lens: usize,
    pub query_starts: Option<usize>,
    pub out: usize,
}

/// `batch` activation rows of `cols` against a `rows x cols` Q8_0 matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemvShape {
    pub rows: usize,
    pub cols: usize,
    pub batch: usize,
}

impl GemvShape {
    /// Checks the weight bytes, `x` and `out`.
    pub fn validate(&self, w: usize, x: usize, out: usize) -> Result<(), KernelError> {
        if !self.cols.is_multiple_of(32) {
            return Err(bad(format!(
                "Q8_0 rows hold blocks of 32 values, not {}",
                self.cols
            )));
        }
        if self.batch > GEMV_MAX_BATCH {
            return Err(bad(format!(
                "the Q8_0 GEMV takes at most {GEMV_MAX_BATCH} rows, not {}",
                self.batch
            )));
        }
        expect_len("gemv weight bytes", self.rows * self.cols / 32 * 34, w)?;
        expect_len("gemv x", self.batch * self.cols, x)?;
        expect_len("gemv output", self.batch * self.rows, out)
    }
}

/// Sampling of `rows` logits rows of `vocab` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleShape {
    pub rows: usize,
    pub vocab: usize,
}

impl SampleShape {
    pub fn validate(&self, logits: usize, params: usize, out: usize) -> Result<(), KernelError> {
        if self.vocab == 0 {
            return Err(bad("vocab must be positive".into()));
        }
        expect_len("sample logits", self.rows * self.vocab, logits)?;
        expect_len("sample params", self.rows, params)?;
        expect_len("sample output", self.rows, out)
    }
}

/// `max |got - want| / max |want|`: the error relative to the tensor's
/// scale (an element-wise ratio explodes near zero). 0 for empty or all-zero
/// `want` when `got` matches it; infinite when lengths differ or a value is NaN.
pub fn max_relative_error(got: &[f32], want: &[f32]) -> f32 {
    if got.len() != want.len() {
        return f32::INFINITY;
    }
    let scale = want.iter().fold(0.0f32, |m, w| m.max(w.abs()));
    let mut worst = 0.0f32;
    for (g, w) in got.iter().zip(want) {
        let d = (g - w).abs();
        if d.is_nan() {
            return f32::INFINITY;
        }
        worst = worst.max(d);
    }
    if worst == 0.0 {
        0.0
    } else {
        worst / scale.max(f32::MIN_POSITIVE)
    }
}

fn expect_len(what: &'static str, expected: usize, got: usize) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::WrongLength {
            what,
            expected,
            got,
        })
    }
}

fn bad(message: String) -> KernelError {
    KernelError::BadShape(message)
}

#[cfg(test)]
mod tests;
