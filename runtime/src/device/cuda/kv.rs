//! One layer's K or V cache on the GPU, in the element type the engine was
//! configured with (`[models.engine] kv_dtype`), and the launches of the
//! two kernels that touch it, each picking its kernel variant by that type.
//! Scales are 1.0 (vLLM's default without calibrated scales; see
//! `sluice_kernels::cuda_twin::KvScales`).

use std::sync::Arc;

use half::{bf16, f16};
use sluice_kernels::cuda::cudarc::driver::{CudaSlice, CudaStream};
use sluice_kernels::cuda::{AttentionBuffers, DeviceKv, Gpu, In, RopeKvBuffers};
use sluice_kernels::cuda_twin::{AttentionShape, Fp8E4m3, KvDType, KvScales, RopeKvShape};
use sluice_models::ModelError;

use super::{drv, gpu_err, head, head_mut};

/// A K or V cache tensor of one layer.
pub enum CudaKv {
    Bf16(CudaSlice<bf16>),
    F16(CudaSlice<f16>),
    Fp8E4m3(CudaSlice<Fp8E4m3>),
}

impl CudaKv {
    /// `len` zeroed elements of `dtype`.
    pub fn alloc(stream: &Arc<CudaStream>, dtype: KvDType, len: usize) -> Result<Self, ModelError> {
        let what = drv("allocating the KV cache");
        Ok(match dtype {
            KvDType::Bf16 => Self::Bf16(stream.alloc_zeros(len).map_err(what)?),
            KvDType::F16 => Self::F16(stream.alloc_zeros(len).map_err(what)?),
            KvDType::Fp8E4m3 => Self::Fp8E4m3(stream.alloc_zeros(len).map_err(what)?),
        })
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Bf16(s) => s.len(),
            Self::F16(s) => s.len(),
            Self::Fp8E4m3(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> KvDType {
        match self {
            Self::Bf16(_) => KvDType::Bf16,
            Self::F16(_) => KvDType::F16,
            Self::Fp8E4m3(_) => KvDType::Fp8E4m3,
        }
    }

    pub fn zero(&mut self, stream: &Arc<CudaStream>) -> Result<(), ModelError> {
        let what = drv("zeroing the KV cache");
        match self {
            Self::Bf16(s) => stream.memset_zeros(s).map_err(what),
            Self::F16(s) => stream.memset_zeros(s).map_err(what),
            Self::Fp8E4m3(s) => stream.memset_zeros(s).map_err(what),
        }
    }
}

fn mismatch(k: &CudaKv, v: &CudaKv) -> ModelError {
    ModelError::Device(format!(
        "K cache is {}, V cache is {}: a layer's caches must share a type",
        k.dtype().as_str(),
        v.dtype().as_str()
    ))
}

/// The inputs of RoPE + KV write other than the cache.
pub struct RopeKvInputs<'a> {
    pub qkv: In<'a, bf16>,
    pub bias: Option<In<'a, bf16>>,
    pub positions: In<'a, i32>,
    pub slots: In<'a, i32>,
    pub inv_freq: In<'a, f32>,
}

/// RoPE + KV write into `k`, `v` (their first `shape.kv.layer_len()`
/// elements), rotated q into `q_out`.
pub fn rope_kv_write(
    gpu: &Gpu,
    shape: &RopeKvShape,
    inputs: RopeKvInputs<'_>,
    q_out: &mut CudaSlice<bf16>,
    q_len: usize,
    (k, v): (&mut CudaKv, &mut CudaKv),
) -> Result<(), ModelError> {
    fn launch<K: DeviceKv>(
        gpu: &Gpu,
        shape: &RopeKvShape,
        inputs: RopeKvInputs<'_>,
        q_out: &mut CudaSlice<bf16>,
        q_len: usize,
        k: &mut CudaSlice<K>,
        v: &mut CudaSlice<K>,
    ) -> Result<(), ModelError> {
        let layer_len = shape.kv.layer_len();
        let mut q_out = head_mut(q_out, q_len, "q")?;
        let mut k = head_mut(k, layer_len, "k cache")?;
        let mut v = head_mut(v, layer_len, "v cache")?;
        let RopeKvInputs {
            qkv,
            bias,
            positions,
            slots,
            inv_freq,
        } = inputs;
        let buffers = RopeKvBuffers {
            qkv,
            bias,
            positions,
            slots,
            inv_freq,
            q_out: &mut q_out,
            k_cache: &mut k,
            v_cache: &mut v,
            kv_scales: KvScales::ONE,
        };
        gpu.rope_kv_write(shape, buffers).map_err(gpu_err)
    }
    match (k, v) {
        (CudaKv::Bf16(k), CudaKv::Bf16(v)) => launch(gpu, shape, inputs, q_out, q_len, k, v),
        (CudaKv::F16(k), CudaKv::F16(v)) => launch(gpu, shape, inputs, q_out, q_len, k, v),
        (CudaKv::Fp8E4m3(k), CudaKv::Fp8E4m3(v)) => launch(gpu, shape, inputs, q_out, q_len, k, v),
        (k, v) => Err(mismatch(k, v)),
    }
}

/// The inputs of paged attention other than the cache.
pub struct AttentionInputs<'a> {
    pub q: In<'a, bf16>,
    pub block_tables: In<'a, i32>,
    pub context_lens: In<'a, i32>,
    /// `None` for a decode step (one query per sequence).
    pub query_starts: Option<In<'a, i32>>,
}

/// Paged attention over `k`, `v` into the first `out_len` values of `out`.
pub fn attention(
    gpu: &Gpu,
    shape: &AttentionShape,
    inputs: AttentionInputs<'_>,
    (k, v): (&CudaKv, &CudaKv),
    out: &mut CudaSlice<bf16>,
    out_len: usize,
) -> Result<(), ModelError> {
    fn launch<K: DeviceKv>(
        gpu: &Gpu,
        shape: &AttentionShape,
        inputs: AttentionInputs<'_>,
        k: &CudaSlice<K>,
        v: &CudaSlice<K>,
        out: &mut CudaSlice<bf16>,
        out_len: usize,
    ) -> Result<(), ModelError> {
        let layer_len = shape.kv.layer_len();
        let k = head(k, layer_len, "k cache")?;
        let v = head(v, layer_len, "v cache")?;
        let mut out = head_mut(out, out_len, "attention output")?;
        let decode = inputs.query_starts.is_none();
        let buffers = AttentionBuffers {
            q: inputs.q,
            k_cache: &k,
            v_cache: &v,
            kv_scales: KvScales::ONE,
            block_tables: inputs.block_tables,
            context_lens: inputs.context_lens,
            query_starts: inputs.query_starts,
            out: &mut out,
        };
        if decode {
            gpu.paged_attention_decode(shape, buffers)
        } else {
            gpu.paged_attention_prefill(shape, buffers)
        }
        .map_err(gpu_err)
    }
    match (k, v) {
        (CudaKv::Bf16(k), CudaKv::Bf16(v)) => launch(gpu, shape, inputs, k, v, out, out_len),
        (CudaKv::F16(k), CudaKv::F16(v)) => launch(gpu, shape, inputs, k, v, out, out_len),
        (CudaKv::Fp8E4m3(k), CudaKv::Fp8E4m3(v)) => launch(gpu, shape, inputs, k, v, out, out_len),
        (k, v) => Err(mismatch(k, v)),
    }
}
