//! One typed launch method per kernel. Each takes the shape struct its CPU
//! twin takes and device buffers ([`In`], [`Out`]: any `CudaSlice`,
//! `CudaView` or `CudaViewMut`), checks every buffer's length against the
//! shape (a kernel would read or write out of bounds instead), and queues
//! the kernel on [`Gpu::stream`]. Nothing synchronises: results are there
//! for the next operation on the same stream. Index contents (block ids,
//! slots) are the caller's promise; the twins check them on the CPU.

use cudarc::driver::{
    DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use half::bf16;

use super::{driver, Gpu, GpuError};
use crate::cuda_twin::{
    AttentionLens, AttentionShape, EmbeddingShape, Fp8E4m3, GemvShape, KvElem, KvScales, NormShape,
    RopeKvLens, RopeKvShape, RowSampling, SampleShape, SiluMulShape, ATTN_WARPS,
    ELEMENTWISE_THREADS, GEMV_WARPS, NORM_THREADS, ROPE_THREADS, SAMPLE_THREADS, WARP,
};
use crate::KernelError;

/// A device buffer a kernel reads.
pub type In<'a, T> = &'a dyn DevicePtr<T>;
/// A device buffer a kernel writes.
pub type Out<'a, T> = &'a mut dyn DevicePtrMut<T>;

// SAFETY: `#[repr(C)]` plain old data (four f32 and an i32), the layout of
// the kernel's `RowSampling`.
unsafe impl DeviceRepr for RowSampling {}
// SAFETY: one byte, the layout of CUDA's `__nv_fp8_e4m3`; all-zero bits are +0.
unsafe impl DeviceRepr for Fp8E4m3 {}
unsafe impl ValidAsZeroBits for Fp8E4m3 {}

/// A KV cache element the kernels have a variant for (bf16, f16, fp8 e4m3).
pub trait DeviceKv: KvElem + DeviceRepr + ValidAsZeroBits {}
impl<K: KvElem + DeviceRepr + ValidAsZeroBits> DeviceKv for K {}

/// The device buffers of [`Gpu::rope_kv_write`] (see `kernels/cuda/README.md`).
pub struct RopeKvBuffers<'a, K: DeviceKv = bf16> {
    /// `[tokens][(n_heads + 2 * n_kv_heads) * head_dim]`: q ‖ k ‖ v.
    pub qkv: In<'a, bf16>,
    /// One QKV row's bias (Qwen2), or `None`.
    pub bias: Option<In<'a, bf16>>,
    pub positions: In<'a, i32>,
    /// Cache slot per token; negative: write nothing (padding rows).
    pub slots: In<'a, i32>,
    /// `head_dim / 2` inverse frequencies ([`crate::rope::Rope::inv_freq`]).
    pub inv_freq: In<'a, f32>,
    /// `[tokens][n_heads * head_dim]`: rotated q.
    pub q_out: Out<'a, bf16>,
    /// This layer's K and V tensors.
    pub k_cache: Out<'a, K>,
    pub v_cache: Out<'a, K>,
    /// What K and V are divided by when stored (fp8 only).
    pub kv_scales: KvScales,
}

/// The device buffers of [`Gpu::paged_attention_decode`] and [`Gpu::paged_attention_prefill`].
pub struct AttentionBuffers<'a, K: DeviceKv = bf16> {
    /// `[tokens][n_heads * head_dim]`, rotated.
    pub q: In<'a, bf16>,
    pub k_cache: In<'a, K>,
    pub v_cache: In<'a, K>,
    /// `[seqs][max_blocks_per_seq]`.
    pub block_tables: In<'a, i32>,
    /// KV length per sequence after this step; 0 = padding row.
    pub context_lens: In<'a, i32>,
    /// `[seqs + 1]` query ranges: required by prefill, ignored by decode.
    pub query_starts: Option<In<'a, i32>>,
    /// `[tokens][n_heads * head_dim]`.
    pub out: Out<'a, bf16>,
    /// What K and V are multiplied by when read (fp8 only).
    pub kv_scales: KvScales,
}

/// A null device pointer for an absent optional buffer.
const NULL: u64 = 0;

/// A dimension as the kernels' `int`.
fn int(what: &str, v: usize) -> Result<i32, GpuError> {
    i32::try_from(v).map_err(|_| {
        KernelError::BadShape(format!("{what} {v} does not fit a kernel's int")).into()
    })
}

/// A grid dimension: at most `limit` blocks (65535 for y and z).
fn blocks(what: &str, v: usize, limit: u32) -> Result<u32, GpuError> {
    u32::try_from(v)
        .ok()
        .filter(|&b| b <= limit)
        .ok_or_else(|| {
            KernelError::BadShape(format!("{what} {v} exceeds the grid limit {limit}")).into()
        })
}

/// Blocks of a grid-stride loop over `n` elements: enough to fill the
/// device several times over, few enough to stay within the grid limit.
fn stride_blocks(n: usize) -> u32 {
    let wanted = n.div_ceil(ELEMENTWISE_THREADS).max(1);
    u32::try_from(wanted.min(1 << 16)).unwrap_or(1 << 16)
}

fn config(grid: (u32, u32, u32), threads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Gpu {
    /// `out[t] = table[ids[t]]` as f32 (the residual stream). Twin:
    /// [`crate::cuda_twin::embedding_gather`].
    pub fn embedding_gather(
        &self,
        shape: &EmbeddingShape,
        ids: In<'_, i32>,
        table: In<'_, bf16>,
        out: Out<'_, f32>,
    ) -> Result<(), GpuError> {
        shape.validate(ids.len(), table.len(), out.len())?;
        if shape.tokens == 0 || shape.hidden == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let (ids, _i) = ids.device_ptr(s);
        let (table, _t) = table.device_ptr(s);
        let (out, _o) = out.device_ptr_mut(s);
        let (vocab, hidden) = (int("vocab", shape.vocab)?, int("hidden", shape.hidden)?);
        let grid = (blocks("tokens", shape.tokens, i32::MAX as u32)?, 1, 1);
        let mut b = s.launch_builder(&self.kernels.embedding_gather);
        b.arg(&ids).arg(&table).arg(&out).arg(&vocab).arg(&hidden);
        // SAFETY: the argument list matches the kernel's signature; lengths checked above.
        unsafe { b.launch(config(grid, ELEMENTWISE_THREADS)) }
            .map_err(driver("launching embedding_gather"))?;
        Ok(())
    }

    /// `residual[i] += delta[i]`. Twin: [`crate::cuda_twin::residual_add`].
    pub fn residual_add(
        &self,
        residual: Out<'_, f32>,
        delta: In<'_, bf16>,
    ) -> Result<(), GpuError> {
        let n = residual.len();
        if delta.len() != n {
            return Err(KernelError::WrongLength {
                what: "residual_add delta",
                expected: n,
                got: delta.len(),
            }
            .into());
        }
        if n == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let (residual, _r) = residual.device_ptr_mut(s);
        let (delta, _d) = delta.device_ptr(s);
        let len = n as i64;
        let mut b = s.launch_builder(&self.kernels.residual_add);
        b.arg(&residual).arg(&delta).arg(&len);
        // SAFETY: the argument list matches the kernel's signature; lengths checked above.
        unsafe { b.launch(config((stride_blocks(n), 1, 1), ELEMENTWISE_THREADS)) }
            .map_err(driver("launching residual_add"))?;
        Ok(())
    }

    /// `out = silu(gate) * up` of gate ‖ up rows. Twin: [`crate::cuda_twin::silu_mul`].
    pub fn silu_mul(
        &self,
        shape: &SiluMulShape,
        gate_up: In<'_, bf16>,
        out: Out<'_, bf16>,
    ) -> Result<(), GpuError> {
        shape.validate(gate_up.len(), out.len())?;
        if shape.rows == 0 || shape.ff == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let (gate_up, _g) = gate_up.device_ptr(s);
        let (out, _o) = out.device_ptr_mut(s);
        let (rows, ff) = (int("rows", shape.rows)?, int("ff", shape.ff)?);
        let mut b = s.launch_builder(&self.kernels.silu_mul);
        b.arg(&gate_up).arg(&out).arg(&rows).arg(&ff);
        // SAFETY: the argument list matches the kernel's signature; lengths checked above.
        unsafe {
            b.launch(config(
                (stride_blocks(shape.rows * shape.ff), 1, 1),
                ELEMENTWISE_THREADS,
            ))
        }
        .map_err(driver("launching silu_mul"))?;
        Ok(())
    }

    /// `out[r] = rmsnorm(x[r]) * weight`, f32 in, bf16 out. Twin:
    /// [`crate::cuda_twin::rms_norm`] with `row_ids = None`.
    pub fn rms_norm(
        &self,
        shape: &NormShape,
        x: In<'_, f32>,
        weight: In<'_, bf16>,
        out: Out<'_, bf16>,
    ) -> Result<(), GpuError> {
        shape.validate(x.len(), shape.rows, weight.len(), out.len())?;
        self.launch_norm(shape, x, None, weight, out)
    }

    /// `out[r] = rmsnorm(x[row_ids[r]]) * weight`: the final norm of only
    /// the rows whose logits are wanted. `x` may have any number of rows.
    pub fn rms_norm_rows(
        &self,
        shape: &NormShape,
        x: In<'_, f32>,
        row_ids: In<'_, i32>,
        weight: In<'_, bf16>,
        out: Out<'_, bf16>,
    ) -> Result<(), GpuError> {
        let x_rows = x.len().checked_div(shape.dim).unwrap_or(0);
        shape.validate(x.len(), x_rows, weight.len(), out.len())?;
        if row_ids.len() != shape.rows {
            return Err(KernelError::WrongLength {
                what: "norm row_ids",
                expected: shape.rows,
                got: row_ids.len(),
            }
            .into());
        }
        self.launch_norm(shape, x, Some(row_ids), weight, out)
    }

    fn launch_norm(
        &self,
        shape: &NormShape,
        x: In<'_, f32>,
        row_ids: Option<In<'_, i32>>,
        weight: In<'_, bf16>,
        out: Out<'_, bf16>,
    ) -> Result<(), GpuError> {
        if shape.rows == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let (x, _x) = x.device_ptr(s);
        let (ids, _i) = match row_ids {
            Some(ids) => {
                let (p, g) = ids.device_ptr(s);
                (p, Some(g))
            }
            None => (NULL, None),
        };
        let (weight, _w) = weight.device_ptr(s);
        let (out, _o) = out.device_ptr_mut(s);
        let dim = int("dim", shape.dim)?;
        let grid = (blocks("rows", shape.rows, i32::MAX as u32)?, 1, 1);
        let mut b = s.launch_builder(&self.kernels.rms_norm);
        b.arg(&x)
            .arg(&ids)
            .arg(&weight)
            .arg(&out)
            .arg(&dim)
            .arg(&shape.eps);
        // SAFETY: the argument list matches the kernel's signature; lengths checked by the callers.
        unsafe { b.launch(config(grid, NORM_THREADS)) }.map_err(driver("launching rms_norm"))?;
        Ok(())
    }

    /// `residual += delta`, then `out = rmsnorm(residual) * weight`. Twin:
    /// [`crate::cuda_twin::add_rms_norm`].
    pub fn add_rms_norm(
        &self,
        shape: &NormShape,
        residual: Out<'_, f32>,
        delta: In<'_, bf16>,
        weight: In<'_, bf16>,
        out: Out<'_, bf16>,
    ) -> Result<(), GpuError> {
        shape.validate(residual.len(), shape.rows, weight.len(), out.len())?;
        if delta.len() != residual.len() {
            return Err(KernelError::WrongLength {
                what: "add_rms_norm delta",
                expected: residual.len(),
                got: delta.len(),
            }
            .into());
        }
        if shape.rows == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let (residual, _r) = residual.device_ptr_mut(s);
        let (delta, _d) = delta.device_ptr(s);
        let (weight, _w) = weight.device_ptr(s);
        let (out, _o) = out.device_ptr_mut(s);
        let dim = int("dim", shape.dim)?;
        let grid = (blocks("rows", shape.rows, i32::MAX as u32)?, 1, 1);
        let mut b = s.launch_builder(&self.kernels.add_rms_norm);
        b.arg(&residual)
            .arg(&delta)
            .arg(&weight)
            .arg(&out)
            .arg(&dim)
            .arg(&shape.eps);
        // SAFETY: the argument list matches the kernel's signature; lengths checked above.
        unsafe { b.launch(config(grid, NORM_THREADS)) }
            .map_err(driver("launching add_rms_norm"))?;
        Ok(())
    }

    /// RoPE on q and k of the new tokens, k and v into their cache slots.
    /// Twin: [`crate::cuda_twin::rope_kv_write`].
    pub fn rope_kv_write<K: DeviceKv>(
        &self,
        shape: &RopeKvShape,
        buf: RopeKvBuffers<'_, K>,
    ) -> Result<(), GpuError> {
        shape.validate(&RopeKvLens {
            qkv: buf.qkv.len(),
            bias: buf.bias.map(|b| b.len()),
            positions: buf.positions.len(),
            slots: buf.slots.len(),
            inv_freq: buf.inv_freq.len(),
            q_out: buf.q_out.len(),
            k_cache: buf.k_cache.len(),
            v_cache: buf.v_cache.len(),
        })?;
        if shape.tokens == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let (qkv, _a) = buf.qkv.device_ptr(s);
        let (bias, _b) = match buf.bias {
            Some(bias) => {
                let (p, g) = bias.device_ptr(s);
                (p, Some(g))
            }
            None => (NULL, None),
        };
        let (positions, _c) = buf.positions.device_ptr(s);
        let (slots, _d) = buf.slots.device_ptr(s);
        let (inv_freq, _e) = buf.inv_freq.device_ptr(s);
        let (q_out, _f) = buf.q_out.device_ptr_mut(s);
        let (k_cache, _g) = buf.k_cache.device_ptr_mut(s);
        let (v_cache, _h) = buf.v_cache.device_ptr_mut(s);
        let kv = shape.kv;
        let n_heads = int("n_heads", shape.n_heads)?;
        let n_kv = int("n_kv_heads", kv.n_kv_heads)?;
        let head_dim = int("head_dim", kv.head_dim)?;
        let block_size = int("block_size", kv.block_size)?;
        let style = shape.style_code();
        let grid = (blocks("tokens", shape.tokens, i32::MAX as u32)?, 1, 1);
        let (k_scale, v_scale) = (buf.kv_scales.k, buf.kv_scales.v);
        let mut b = s.launch_builder(self.kernels.rope_kv_write.get(K::DTYPE));
        b.arg(&qkv)
            .arg(&bias)
            .arg(&positions)
            .arg(&slots)
            .arg(&inv_freq);
        b.arg(&q_out).arg(&k_cache).arg(&v_cache);
        b.arg(&n_heads)
            .arg(&n_kv)
            .arg(&head_dim)
            .arg(&block_size)
            .arg(&style);
        b.arg(&k_scale).arg(&v_scale);
        // SAFETY: the argument list matches the kernel's signature; lengths checked above.
        unsafe { b.launch(config(grid, ROPE_THREADS)) }
            .map_err(driver("launching rope_kv_write"))?;
        Ok(())
    }

    /// Decode attention: token `s` is sequence `s`'s one query, seeing
    /// `context_lens[s]` keys (0: a padding row, zeros out).
    /// `buf.query_starts` must be `None`. Twin: [`crate::cuda_twin::paged_attention`].
    pub fn paged_attention_decode<K: DeviceKv>(
        &self,
        shape: &AttentionShape,
        buf: AttentionBuffers<'_, K>,
    ) -> Result<(), GpuError> {
        if buf.query_starts.is_some() {
            return Err(
                KernelError::BadShape("decode attention takes no query_starts".into()).into(),
            );
        }
        self.launch_attention(shape, buf)
    }

    /// Chunked-prefill attention: sequence `s`'s queries are tokens
    /// `query_starts[s]..query_starts[s+1]`, the last of them at position
    /// `context_lens[s] - 1`, each seeing every key up to its own position.
    /// Twin: [`crate::cuda_twin::paged_attention`].
    pub fn paged_attention_prefill<K: DeviceKv>(
        &self,
        shape: &AttentionShape,
        buf: AttentionBuffers<'_, K>,
    ) -> Result<(), GpuError> {
        if buf.query_starts.is_none() {
            return Err(
                KernelError::BadShape("prefill attention needs query_starts".into()).into(),
            );
        }
        self.launch_attention(shape, buf)
    }

    fn launch_attention<K: DeviceKv>(
        &self,
        shape: &AttentionShape,
        buf: AttentionBuffers<'_, K>,
    ) -> Result<(), GpuError> {
        shape.validate(&AttentionLens {
            q: buf.q.len(),
            k_cache: buf.k_cache.len(),
            v_cache: buf.v_cache.len(),
            block_tables: buf.block_tables.len(),
            context_lens: buf.context_lens.len(),
            query_starts: buf.query_starts.map(|q| q.len()),
            out: buf.out.len(),
        })?;
        if shape.n_tokens == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let (q, _a) = buf.q.device_ptr(s);
        let (k_cache, _b) = buf.k_cache.device_ptr(s);
        let (v_cache, _c) = buf.v_cache.device_ptr(s);
        let (tables, _d) = buf.block_tables.device_ptr(s);
        let (context_lens, _e) = buf.context_lens.device_ptr(s);
        let (query_starts, _f) = match buf.query_starts {
            Some(qs) => {
                let (p, g) = qs.device_ptr(s);
                (p, Some(g))
            }
            None => (NULL, None),
        };
        let (out, _g) = buf.out.device_ptr_mut(s);
        let kv = shape.kv;
        let n_seqs = int("n_seqs", shape.n_seqs)?;
        let n_heads = int("n_heads", shape.n_heads)?;
        let n_kv = int("n_kv_heads", kv.n_kv_heads)?;
        let head_dim = int("head_dim", kv.head_dim)?;
        let block_size = int("block_size", kv.block_size)?;
        let max_blocks = int("max_blocks_per_seq", shape.max_blocks_per_seq)?;
        let grid = (
            blocks("n_heads", shape.n_heads, i32::MAX as u32)?,
            blocks("query tokens", shape.n_tokens, 65_535)?,
            1,
        );
        let (k_scale, v_scale) = (buf.kv_scales.k, buf.kv_scales.v);
        let mut b = s.launch_builder(self.kernels.paged_attention.get(K::DTYPE));
        b.arg(&q)
            .arg(&k_cache)
            .arg(&v_cache)
            .arg(&tables)
            .arg(&context_lens)
            .arg(&query_starts);
        b.arg(&out)
            .arg(&n_seqs)
            .arg(&n_heads)
            .arg(&n_kv)
            .arg(&head_dim)
            .arg(&block_size);
        b.arg(&max_blocks).arg(&shape.scale);
        b.arg(&k_scale).arg(&v_scale);
        // SAFETY: the argument list matches the kernel's signature; lengths checked above.
        unsafe { b.launch(config(grid, ATTN_WARPS * WARP)) }
            .map_err(driver("launching paged_attention"))?;
        Ok(())
    }

    /// One token per logits row (f32 `[rows][vocab]`), or
    /// [`crate::cuda_twin::HOST_SAMPLES`] where the host must sample. Twin:
    /// [`crate::cuda_twin::sample`].
    pub fn sample(
        &self,
        shape: &SampleShape,
        logits: In<'_, f32>,
        params: In<'_, RowSampling>,
        out_ids: Out<'_, i32>,
    ) -> Result<(), GpuError> {
        shape.validate(logits.len(), params.len(), out_ids.len())?;
        if shape.rows == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let (logits, _l) = logits.device_ptr(s);
        let (params, _p) = params.device_ptr(s);
        let (out_ids, _o) = out_ids.device_ptr_mut(s);
        let vocab = int("vocab", shape.vocab)?;
        let grid = (blocks("rows", shape.rows, i32::MAX as u32)?, 1, 1);
        let mut b = s.launch_builder(&self.kernels.sample);
        b.arg(&logits).arg(&params).arg(&out_ids).arg(&vocab);
        // SAFETY: the argument list matches the kernel's signature; lengths checked above.
        unsafe { b.launch(config(grid, SAMPLE_THREADS)) }.map_err(driver("launching sample"))?;
        Ok(())
    }

    /// `out[t][r] = Σ_c W[r][c] · x[t][c]` with `W` in GGUF Q8_0 bytes as
    /// stored, for decode batches of at most 8 rows (stretch goal: not yet
    /// used by the executor). Twin: [`crate::cuda_twin::gemv_q8_0`].
    pub fn gemv_q8_0(
        &self,
        shape: &GemvShape,
        w: In<'_, u8>,
        x: In<'_, bf16>,
        out: Out<'_, bf16>,
    ) -> Result<(), GpuError> {
        shape.validate(w.len(), x.len(), out.len())?;
        if shape.rows == 0 || shape.batch == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let (w, _w) = w.device_ptr(s);
        let (x, _x) = x.device_ptr(s);
        let (out, _o) = out.device_ptr_mut(s);
        let (rows, cols, batch) = (
            int("rows", shape.rows)?,
            int("cols", shape.cols)?,
            int("batch", shape.batch)?,
        );
        let grid = (
            blocks(
                "row groups",
                shape.rows.div_ceil(GEMV_WARPS),
                i32::MAX as u32,
            )?,
            1,
            1,
        );
        let mut b = s.launch_builder(&self.kernels.gemv_q8_0);
        b.arg(&w)
            .arg(&x)
            .arg(&out)
            .arg(&rows)
            .arg(&cols)
            .arg(&batch);
        // SAFETY: the argument list matches the kernel's signature; lengths checked above.
        unsafe { b.launch(config(grid, GEMV_WARPS * WARP)) }
            .map_err(driver("launching gemv_q8_0"))?;
        Ok(())
    }
}
