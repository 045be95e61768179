//! The operations one decoder step needs from a device, and nothing else.
//!
//! [`super::DeviceExecutor`] drives a step through this trait only, so the
//! same host code (packing, buffer plan, layer loop, logits rows) runs over
//! the CUDA implementation in production and over [`super::CpuOps`] in
//! tests, where its result is compared with [`crate::executor::CpuExecutor`].
//!
//! Every operation works on the first `rows` rows of buffers that were
//! allocated once for the largest step, so a step of any size reuses the same
//! memory (and a captured graph's addresses). Buffers are device handles:
//! the host never reads them except through [`DeviceOps::read_logits`].

use std::ops::Range;

use sluice_kernels::cuda_twin::RowSampling;
use sluice_kernels::rope::RopeStyle;
use sluice_models::ModelError;

/// The index arrays of a step, on the device (see [`super::plan::StepPlan`]).
pub struct StepIds<I> {
    pub tokens: I,
    pub positions: I,
    pub slot_mapping: I,
    pub block_tables: I,
    pub seq_lens: I,
    pub query_start: I,
    pub logits_rows: I,
}

/// The counts of a step that the host knows and the kernels need as
/// launch arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepShape {
    /// Rows computed, padding included.
    pub rows: usize,
    /// Sequences, padding included.
    pub seqs: usize,
    /// Rows whose logits are wanted.
    pub logits_rows: usize,
    /// Width of a block-table row.
    pub max_blocks_per_seq: usize,
    /// The most rows of one sequence: 1 means every sequence decodes one
    /// token (the decode kernel); more means a prefill chunk is in the step.
    pub max_query_len: usize,
    /// The most keys one sequence attends to.
    pub max_seq_len: usize,
}

/// Attention's fixed facts for a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    /// `1 / sqrt(head_dim)`.
    pub scale: f32,
}

impl AttentionShape {
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// What the attention-side operations of a step read besides their tensors.
pub struct StepCtx<'a, I> {
    pub ids: &'a StepIds<I>,
    pub shape: &'a StepShape,
    pub attn: &'a AttentionShape,
}

impl<I> Clone for StepCtx<'_, I> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I> Copy for StepCtx<'_, I> {}

/// An RMSNorm's scalars: `rows` rows of `dim` values, epsilon `eps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormArgs {
    pub eps: f32,
    pub rows: usize,
    pub dim: usize,
}

/// The rotary embedding as a device applies it.
pub struct RopeTable<F> {
    /// `head_dim / 2` inverse frequencies, scaling already applied.
    pub inv_freq: F,
    pub style: RopeStyle,
}

/// One layer's K and V cache (each in the ops' `Kv` type).
pub struct LayerKv<B> {
    pub k: B,
    pub v: B,
}

/// The operations of a decoder step. `Buf` holds GEMM inputs and outputs and
/// small weights (norms, biases) in the device's float type (bf16 on a GPU),
/// `Floats` f32 values: the residual stream (a bf16 residual would round
/// away the small sublayer outputs added to it), logits, RoPE frequencies
/// (which bf16 would put 1% off). `Mat` is a weight matrix
/// (`n` output rows x `k` inputs), `Ids` i32 indices, `Kv` one layer's K
/// or V cache in the element type the ops were opened with
/// (`sluice_kernels::cuda_twin::KvDType`).
pub trait DeviceOps {
    type Buf;
    type Mat;
    type Ids;
    type Floats;
    type Kv;

    /// A short name for logs and errors ("cpu", "cuda:0 (NVIDIA H100)").
    fn name(&self) -> String;

    fn alloc(&mut self, len: usize) -> Result<Self::Buf, ModelError>;
    fn alloc_ids(&mut self, len: usize) -> Result<Self::Ids, ModelError>;
    fn alloc_floats(&mut self, len: usize) -> Result<Self::Floats, ModelError>;
    /// A buffer holding `values`, converted to the device's float type.
    fn upload(&mut self, values: &[f32]) -> Result<Self::Buf, ModelError>;
    /// A buffer holding `values` as f32.
    fn upload_f32(&mut self, values: &[f32]) -> Result<Self::Floats, ModelError>;
    /// An `n x k` matrix from its rows, given one at a time by `row(r, out)`,
    /// so a quantised host matrix is dequantised a row at a time, never whole.
    fn upload_matrix(
        &mut self,
        n: usize,
        k: usize,
        row: &mut dyn FnMut(usize, &mut [f32]),
    ) -> Result<Self::Mat, ModelError>;
    /// A second matrix with the same values, copied on the device (the
    /// dummy-weight model fills one layer and copies it to the others).
    fn clone_matrix(&mut self, m: &Self::Mat) -> Result<Self::Mat, ModelError>;
    /// Overwrites the first `values.len()` entries of `dst`.
    fn write_ids(&mut self, dst: &mut Self::Ids, values: &[i32]) -> Result<(), ModelError>;
    /// One layer's K (or V) cache of `len` elements, zeroed.
    fn alloc_kv(&mut self, len: usize) -> Result<Self::Kv, ModelError>;
    /// Zeroes a cache tensor (KV memory on reset).
    fn zero(&mut self, kv: &mut Self::Kv) -> Result<(), ModelError>;

    /// `out[r] = table[tokens[r]]` (the residual stream, f32) for `rows` rows.
    fn embedding(
        &mut self,
        table: &Self::Mat,
        tokens: &Self::Ids,
        rows: usize,
        out: &mut Self::Floats,
    ) -> Result<(), ModelError>;
    /// RMSNorm of `rows` rows of `dim` residual values into the GEMM input
    /// type; with `row_ids`, row `r` of `out` is the norm of row
    /// `row_ids[r]` of `x` (the final norm reads only the wanted rows).
    fn rms_norm(
        &mut self,
        x: &Self::Floats,
        row_ids: Option<&Self::Ids>,
        weight: &Self::Buf,
        norm: NormArgs,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// `residual += delta` over the first `len` values.
    fn add(
        &mut self,
        residual: &mut Self::Floats,
        delta: &Self::Buf,
        len: usize,
    ) -> Result<(), ModelError>;
    /// `residual += delta`, then the RMSNorm of the result into `out`: one
    /// pass where the device fuses them.
    fn add_rms_norm(
        &mut self,
        residual: &mut Self::Floats,
        delta: &Self::Buf,
        weight: &Self::Buf,
        norm: NormArgs,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError> {
        self.add(residual, delta, norm.rows * norm.dim)?;
        self.rms_norm(residual, None, weight, norm, out)
    }
    /// `out = x · wᵀ` for `rows` rows.
    fn gemm(
        &mut self,
        x: &Self::Buf,
        w: &Self::Mat,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// `gemm` into f32 logits (the LM head).
    fn gemm_logits(
        &mut self,
        x: &Self::Buf,
        w: &Self::Mat,
        rows: usize,
        out: &mut Self::Floats,
    ) -> Result<(), ModelError>;
    /// For each row of `qkv` (`q | k | v`, plus `bias` when given): rotates q
    /// into `q_out`, and rotated k and v into the row's cache slot (none for
    /// slot -1).
    fn rope_kv_write(
        &mut self,
        qkv: &Self::Buf,
        bias: Option<&Self::Buf>,
        rope: &RopeTable<Self::Floats>,
        kv: &mut LayerKv<Self::Kv>,
        step: StepCtx<'_, Self::Ids>,
        q_out: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// Causal attention of each row's q against its sequence's keys through
    /// the block table, into `out` (`rows x q_dim`); zeros for a padding
    /// sequence (no keys).
    fn attention(
        &mut self,
        q: &Self::Buf,
        kv: &LayerKv<Self::Kv>,
        step: StepCtx<'_, Self::Ids>,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// `out = silu(gate) * up` for `rows` rows of `gate | up`.
    fn silu_mul(
        &mut self,
        gate_up: &Self::Buf,
        rows: usize,
        ff: usize,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// Logits `range` (row-major `[rows][vocab]`), on the host. Waits for
    /// the step to finish.
    fn read_logits(
        &mut self,
        src: &Self::Floats,
        range: Range<usize>,
    ) -> Result<Vec<f32>, ModelError>;
    /// Samples the first `params.len()` rows of `logits` (`vocab` wide)
    /// where they are, with the rules of `sluice_kernels::cuda_twin::sample`;
    /// brings back one id per row, or `HOST_SAMPLES` where the host must
    /// sample that row from its logits. Waits for the step to finish.
    fn sample(
        &mut self,
        logits: &Self::Floats,
        vocab: usize,
        params: &[RowSampling],
    ) -> Result<Vec<i32>, ModelError>;

    /// Runs `body` (a decode step of `bucket` rows, its ids already written)
    /// as a replay of a graph captured the first time, where the device has
    /// graphs. The default runs it directly.
    fn run_as_graph<S>(
        &mut self,
        _bucket: usize,
        state: &mut S,
        body: &mut dyn FnMut(&mut Self, &mut S) -> Result<(), ModelError>,
    ) -> Result<(), ModelError>
    where
        Self: Sized,
    {
        body(self, state)
    }
}
