//! [`DeviceOps`] on an NVIDIA GPU: the kernels crate's CUDA kernels
//! ([`sluice_kernels::cuda::Gpu`]) for everything but the matrix products,
//! which go to cuBLAS (bf16 in, f32 accumulation; the LM head writes f32
//! logits). Weights are uploaded once as bf16, dequantised from GGUF a row
//! at a time. Decode steps are captured as one CUDA graph per batch bucket
//! on first use and replayed after.
//!
//! Every launch gets views of exactly the lengths the step needs (the
//! kernels check them), cut from buffers allocated once for the largest
//! step, so a captured graph's addresses stay valid.

mod kv;
pub mod probe;

pub use kv::CudaKv;
pub use probe::{environment, kernel_checks};

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use half::bf16;
use sluice_kernels::cuda::cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use sluice_kernels::cuda::cudarc::driver::{
    self, sys as driver_sys, CudaGraph, CudaSlice, CudaView, DevicePtr, DevicePtrMut,
};
use sluice_kernels::cuda::{Gpu, GpuError};
use sluice_kernels::cuda_twin::{
    AttentionShape as KernelAttention, EmbeddingShape, KvLayout, NormShape, RopeKvShape,
    RowSampling, SampleShape, SiluMulShape,
};
use sluice_models::{Llama, ModelError};

use super::ops::{DeviceOps, LayerKv, NormArgs, RopeTable, StepCtx};
use super::plan::PlanLimits;
use super::sizing::{plan_memory, KvDType, MemoryBudget, ModelShape};
use super::{DeviceExecutor, DeviceExecutorConfig, DeviceModel};
use crate::engine::EngineConfig;

/// cuBLAS's workspace, set explicitly so that it never allocates while a
/// graph is being captured (which would end the capture).
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// A weight matrix on the device: `rows` x `cols` bf16, row-major.
pub struct CudaMatrix {
    pub data: CudaSlice<bf16>,
    pub rows: usize,
    pub cols: usize,
}

/// The device and its libraries, shared by every executor on it.
struct Shared {
    gpu: Gpu,
    blas: CudaBlas,
    /// Kept alive for cuBLAS, which was handed its address.
    _workspace: CudaSlice<u8>,
    ordinal: u32,
}

/// A captured decode graph, owned by one executor.
struct OwnedGraph(CudaGraph);

// SAFETY: CUDA graphs are not internally synchronised and must not be used
// from two threads at once (cudarc leaves them !Send for that reason). An
// `OwnedGraph` lives in one `CudaOps`, which one executor owns and only the
// engine thread drives (`&mut self` on every use): it moves between threads
// once, when the executor is handed to the engine, and is never shared.
unsafe impl Send for OwnedGraph {}

/// [`DeviceOps`] on one GPU. Cloning shares the device; each clone keeps
/// its own graphs (they hold the addresses of one executor's buffers).
pub struct CudaOps {
    shared: Arc<Shared>,
    graphs: HashMap<usize, OwnedGraph>,
    /// Set when a capture failed: later steps run without graphs.
    graphs_unavailable: bool,
    /// The element type of KV caches this allocates.
    kv_dtype: KvDType,
}

impl Clone for CudaOps {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            graphs: HashMap::new(),
            graphs_unavailable: self.graphs_unavailable,
            kv_dtype: self.kv_dtype,
        }
    }
}

fn gpu_err(e: GpuError) -> ModelError {
    ModelError::Device(e.to_string())
}

fn drv(what: &'static str) -> impl FnOnce(driver::DriverError) -> ModelError {
    move |e| ModelError::Device(format!("{what}: {e}"))
}

fn too_short(what: &str, need: usize, have: usize) -> ModelError {
    ModelError::Device(format!(
        "{what}: {need} elements asked of a buffer of {have}"
    ))
}

/// The first `n` elements of `buf` as a view, or an error (never a panic).
fn head<'a, T>(buf: &'a CudaSlice<T>, n: usize, what: &str) -> Result<CudaView<'a, T>, ModelError> {
    buf.try_slice(..n)
        .ok_or_else(|| too_short(what, n, buf.len()))
}

fn head_mut<'a, T>(
    buf: &'a mut CudaSlice<T>,
    n: usize,
    what: &str,
) -> Result<driver::CudaViewMut<'a, T>, ModelError> {
    let len = buf.len();
    buf.try_slice_mut(..n)
        .ok_or_else(|| too_short(what, n, len))
}

impl CudaOps {
    /// Opens GPU `ordinal`: never panics where there is no CUDA, and says
    /// what is missing.
    pub fn open(ordinal: u32) -> Result<Self, ModelError> {
        let gpu = Gpu::open(ordinal as usize).map_err(gpu_err)?;
        let blas = CudaBlas::new(gpu.stream().clone()).map_err(|e| {
            ModelError::Device(format!("cannot start cuBLAS (libcublas.so.13): {e}"))
        })?;
        let mut workspace = gpu
            .stream()
            .alloc_zeros::<u8>(CUBLAS_WORKSPACE_BYTES)
            .map_err(drv("allocating the cuBLAS workspace"))?;
        {
            let (ptr, _guard) = workspace.device_ptr_mut(gpu.stream());
            // SAFETY: the workspace outlives the handle (both live in `Shared`,
            // the handle is dropped first), and is used on the handle's stream only.
            unsafe {
                blas_sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut std::ffi::c_void,
                    CUBLAS_WORKSPACE_BYTES,
                )
            }
            .result()
            .map_err(|e| ModelError::Device(format!("cannot set the cuBLAS workspace: {e}")))?;
        }
        Ok(Self {
            shared: Arc::new(Shared {
                gpu,
                blas,
                _workspace: workspace,
                ordinal,
            }),
            graphs: HashMap::new(),
            graphs_unavailable: false,
            kv_dtype: KvDType::Bf16,
        })
    }

    /// These ops, allocating KV caches of `dtype` from now on.
    pub fn with_kv_dtype(mut self, dtype: KvDType) -> Self {
        self.kv_dtype = dtype;
        self
    }

    pub fn kv_dtype(&self) -> KvDType {
        self.kv_dtype
    }

    pub fn gpu(&self) -> &Gpu {
        &self.shared.gpu
    }

    pub fn ordinal(&self) -> u32 {
        self.shared.ordinal
    }

    /// (free, total) device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize), ModelError> {
        self.gpu()
            .ctx()
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        driver::result::mem_get_info().map_err(drv("reading free memory"))
    }

    /// Waits for every queued operation.
    pub fn synchronize(&self) -> Result<(), ModelError> {
        self.gpu()
            .stream()
            .synchronize()
            .map_err(drv("synchronising"))
    }

    /// Whether decode steps replay graphs (false after a failed capture).
    pub fn graphs_available(&self) -> bool {
        !self.graphs_unavailable
    }

    /// `out[m x n] = x[m x k] · w[n x k]ᵀ` in cuBLAS's column-major terms:
    /// `outᵀ (n x m) = W (n x k, i.e. Wᵀ column-major, transposed) · xᵀ`.
    fn gemm_into(
        &self,
        x: &CudaSlice<bf16>,
        w: &CudaMatrix,
        rows: usize,
        out: &mut dyn DevicePtrMut<u8>,
        out_type: blas_sys::cudaDataType,
    ) -> Result<(), ModelError> {
        let (n, k) = (w.rows, w.cols);
        let int = |v: usize| {
            i32::try_from(v)
                .map_err(|_| ModelError::Device(format!("gemm dimension {v} too large")))
        };
        let (m_i, n_i, k_i) = (int(rows)?, int(n)?, int(k)?);
        let x = head(x, rows * k, "gemm input")?;
        // cuBLAS runs in whatever context is current on this thread: the
        // engine's thread is not the one that opened the device.
        self.gpu()
            .ctx()
            .bind_to_thread()
            .map_err(drv("binding the context"))?;
        let stream = self.gpu().stream();
        let (a_ptr, _a) = w.data.device_ptr(stream);
        let (b_ptr, _b) = x.device_ptr(stream);
        let (c_ptr, _c) = out.device_ptr_mut(stream);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: shapes checked above (x holds rows*k, w n*k, out n*rows
        // elements of `out_type`, checked by the callers); all on one stream.
        unsafe {
            blas::gemm_ex(
                *self.shared.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                n_i,
                m_i,
                k_i,
                (&alpha) as *const f32 as *const _,
                a_ptr as *const _,
                blas_sys::cudaDataType::CUDA_R_16BF,
                k_i,
                b_ptr as *const _,
                blas_sys::cudaDataType::CUDA_R_16BF,
                k_i,
                (&beta) as *const f32 as *const _,
                c_ptr as *mut _,
                out_type,
                n_i,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| ModelError::Device(format!("cuBLAS gemm {rows}x{n}x{k}: {e}")))
    }

    fn kv_layout(kv: &LayerKv<CudaKv>, step: &StepCtx<'_, CudaSlice<i32>>) -> KvLayout {
        let a = step.attn;
        let block_len = a.kv_heads * a.block_size * a.head_dim;
        KvLayout {
            num_blocks: kv.k.len() / block_len.max(1),
            block_size: a.block_size,
            n_kv_heads: a.kv_heads,
            head_dim: a.head_dim,
        }
    }
}

/// A byte view of a typed buffer, for the one gemm entry point.
fn bytes_mut<'a, T>(
    buf: &'a mut CudaSlice<T>,
    elems: usize,
    what: &str,
) -> Result<driver::CudaViewMut<'a, u8>, ModelError> {
    let len = buf.len();
    if elems > len {
        return Err(too_short(what, elems, len));
    }
    let n = elems * std::mem::size_of::<T>();
    // SAFETY: a view of the first `elems` elements' bytes of a live buffer.
    unsafe { buf.transmute_mut::<u8>(n) }.ok_or_else(|| too_short(what, n, len))
}

impl DeviceOps for CudaOps {
    type Buf = CudaSlice<bf16>;
    type Mat = CudaMatrix;
    type Ids = CudaSlice<i32>;
    type Floats = CudaSlice<f32>;
    type Kv = CudaKv;

    fn name(&self) -> String {
        format!("cuda:{} ({})", self.shared.ordinal, self.gpu().name())
    }

    fn alloc(&mut self, len: usize) -> Result<Self::Buf, ModelError> {
        self.gpu()
            .stream()
            .alloc_zeros(len)
            .map_err(drv("allocating device memory"))
    }
    fn alloc_ids(&mut self, len: usize) -> Result<Self::Ids, ModelError> {
        self.gpu()
            .stream()
            .alloc_zeros(len)
            .map_err(drv("allocating device memory"))
    }
    fn alloc_floats(&mut self, len: usize) -> Result<Self::Floats, ModelError> {
        self.gpu()
            .stream()
            .alloc_zeros(len)
            .map_err(drv("allocating device memory"))
    }

    fn upload(&mut self, values: &[f32]) -> Result<Self::Buf, ModelError> {
        let host: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
        self.gpu()
            .stream()
            .clone_htod(&host)
            .map_err(drv("uploading"))
    }

    fn upload_f32(&mut self, values: &[f32]) -> Result<Self::Floats, ModelError> {
        self.gpu()
            .stream()
            .clone_htod(values)
            .map_err(drv("uploading"))
    }

    fn upload_matrix(
        &mut self,
        n: usize,
        k: usize,
        row: &mut dyn FnMut(usize, &mut [f32]),
    ) -> Result<Self::Mat, ModelError> {
        let mut data = self.alloc(n * k)?;
        // Converted and copied in chunks of rows: a 128k x 4096 embedding
        // never exists as f32 on the host.
        const CHUNK_VALUES: usize = 1 << 24;
        let rows_per_chunk = (CHUNK_VALUES / k.max(1)).max(1);
        let mut f32_row = vec![0.0f32; k];
        let mut chunk: Vec<bf16> = Vec::with_capacity(rows_per_chunk * k);
        let stream = self.gpu().stream().clone();
        let mut r = 0;
        while r < n {
            let end = (r + rows_per_chunk).min(n);
            chunk.clear();
            for i in r..end {
                row(i, &mut f32_row);
                chunk.extend(f32_row.iter().map(|&v| bf16::from_f32(v)));
            }
            let mut dst = data
                .try_slice_mut(r * k..end * k)
                .ok_or_else(|| too_short("upload_matrix", end * k, n * k))?;
            stream
                .memcpy_htod(&chunk, &mut dst)
                .map_err(drv("uploading weights"))?;
            // The host chunk is reused: wait until the copy has read it.
            stream.synchronize().map_err(drv("uploading weights"))?;
            r = end;
        }
        Ok(CudaMatrix {
            data,
            rows: n,
            cols: k,
        })
    }

    fn clone_matrix(&mut self, m: &Self::Mat) -> Result<Self::Mat, ModelError> {
        let data = self
            .gpu()
            .stream()
            .clone_dtod(&m.data)
            .map_err(drv("copying a matrix"))?;
        Ok(CudaMatrix {
            data,
            rows: m.rows,
            cols: m.cols,
        })
    }

    fn write_ids(&mut self, dst: &mut Self::Ids, values: &[i32]) -> Result<(), ModelError> {
        let mut view = head_mut(dst, values.len(), "write_ids")?;
        self.gpu()
            .stream()
            .memcpy_htod(values, &mut view)
            .map_err(drv("writing step ids"))
    }

    fn alloc_kv(&mut self, len: usize) -> Result<Self::Kv, ModelError> {
        CudaKv::alloc(self.gpu().stream(), self.kv_dtype, len)
    }

    fn zero(&mut self, kv: &mut Self::Kv) -> Result<(), ModelError> {
        kv.zero(self.gpu().stream())
    }

    fn embedding(
        &mut self,
        table: &Self::Mat,
        tokens: &Self::Ids,
        rows: usize,
        out: &mut Self::Floats,
    ) -> Result<(), ModelError> {
        let shape = EmbeddingShape {
            tokens: rows,
            vocab: table.rows,
            hidden: table.cols,
        };
        let ids = head(tokens, rows, "embedding ids")?;
        let mut out = head_mut(out, rows * table.cols, "embedding output")?;
        self.gpu()
            .embedding_gather(&shape, &ids, &table.data, &mut out)
            .map_err(gpu_err)
    }

    fn rms_norm(
        &mut self,
        x: &Self::Floats,
        row_ids: Option<&Self::Ids>,
        weight: &Self::Buf,
        norm: NormArgs,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError> {
        let NormArgs { eps, rows, dim } = norm;
        let shape = NormShape { rows, dim, eps };
        let weight = head(weight, dim, "norm weight")?;
        let mut out = head_mut(out, rows * dim, "norm output")?;
        match row_ids {
            None => {
                let x = head(x, rows * dim, "norm input")?;
                self.gpu().rms_norm(&shape, &x, &weight, &mut out)
            }
            // Gathering: any row of `x` may be read.
            Some(ids) => {
                let ids = head(ids, rows, "norm row ids")?;
                self.gpu().rms_norm_rows(&shape, x, &ids, &weight, &mut out)
            }
        }
        .map_err(gpu_err)
    }

    fn add(
        &mut self,
        residual: &mut Self::Floats,
        delta: &Self::Buf,
        len: usize,
    ) -> Result<(), ModelError> {
        let delta = head(delta, len, "residual delta")?;
        let mut residual = head_mut(residual, len, "residual")?;
        self.gpu()
            .residual_add(&mut residual, &delta)
            .map_err(gpu_err)
    }

    fn add_rms_norm(
        &mut self,
        residual: &mut Self::Floats,
        delta: &Self::Buf,
        weight: &Self::Buf,
        norm: NormArgs,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError> {
        let NormArgs { eps, rows, dim } = norm;
        let shape = NormShape { rows, dim, eps };
        let delta = head(delta, rows * dim, "residual delta")?;
        let weight = head(weight, dim, "norm weight")?;
        let mut residual = head_mut(residual, rows * dim, "residual")?;
        let mut out = head_mut(out, rows * dim, "norm output")?;
        self.gpu()
            .add_rms_norm(&shape, &mut residual, &delta, &weight, &mut out)
            .map_err(gpu_err)
    }

    fn gemm(
        &mut self,
        x: &Self::Buf,
        w: &Self::Mat,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError> {
        let mut out = bytes_mut(out, rows * w.rows, "gemm output")?;
        self.gemm_into(x, w, rows, &mut out, blas_sys::cudaDataType::CUDA_R_16BF)
    }

    fn gemm_logits(
        &mut self,
        x: &Self::Buf,
        w: &Self::Mat,
        rows: usize,
        out: &mut Self::Floats,
    ) -> Result<(), ModelError> {
        let mut out = bytes_mut(out, rows * w.rows, "logits")?;
        self.gemm_into(x, w, rows, &mut out, blas_sys::cudaDataType::CUDA_R_32F)
    }

    fn rope_kv_write(
        &mut self,
        qkv: &Self::Buf,
        bias: Option<&Self::Buf>,
        rope: &RopeTable<Self::Floats>,
        kv: &mut LayerKv<Self::Kv>,
        step: StepCtx<'_, Self::Ids>,
        q_out: &mut Self::Buf,
    ) -> Result<(), ModelError> {
        let layout = Self::kv_layout(kv, &step);
        let StepCtx { ids, shape, attn } = step;
        let rows = shape.rows;
        let width = attn.q_dim() + 2 * attn.kv_dim();
        let kernel_shape = RopeKvShape {
            tokens: rows,
            n_heads: attn.heads,
            kv: layout,
            style: rope.style,
        };
        let qkv = head(qkv, rows * width, "qkv")?;
        let bias = bias.map(|b| head(b, width, "qkv bias")).transpose()?;
        let positions = head(&ids.positions, rows, "positions")?;
        let slots = head(&ids.slot_mapping, rows, "slots")?;
        let inputs = kv::RopeKvInputs {
            qkv: &qkv,
            bias: bias.as_ref().map(|b| b as &dyn DevicePtr<bf16>),
            positions: &positions,
            slots: &slots,
            inv_freq: &rope.inv_freq,
        };
        let LayerKv { k, v } = kv;
        kv::rope_kv_write(
            self.gpu(),
            &kernel_shape,
            inputs,
            q_out,
            rows * attn.q_dim(),
            (k, v),
        )
    }

    fn attention(
        &mut self,
        q: &Self::Buf,
        kv: &LayerKv<Self::Kv>,
        step: StepCtx<'_, Self::Ids>,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError> {
        let layout = Self::kv_layout(kv, &step);
        let StepCtx { ids, shape, attn } = step;
        let kernel_shape = KernelAttention {
            n_seqs: shape.seqs,
            n_tokens: shape.rows,
            n_heads: attn.heads,
            kv: layout,
            max_blocks_per_seq: shape.max_blocks_per_seq,
            scale: attn.scale,
        };
        let q = head(q, shape.rows * attn.q_dim(), "attention q")?;
        let tables = head(
            &ids.block_tables,
            shape.seqs * shape.max_blocks_per_seq,
            "block tables",
        )?;
        let lens = head(&ids.seq_lens, shape.seqs, "context lens")?;
        let starts = head(&ids.query_start, shape.seqs + 1, "query starts")?;
        let decode = shape.max_query_len <= 1 && shape.rows == shape.seqs;
        let inputs = kv::AttentionInputs {
            q: &q,
            block_tables: &tables,
            context_lens: &lens,
            query_starts: if decode { None } else { Some(&starts) },
        };
        let out_len = shape.rows * attn.q_dim();
        kv::attention(
            self.gpu(),
            &kernel_shape,
            inputs,
            (&kv.k, &kv.v),
            out,
            out_len,
        )
    }

    fn silu_mul(
        &mut self,
        gate_up: &Self::Buf,
        rows: usize,
        ff: usize,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError> {
        let gate_up = head(gate_up, rows * 2 * ff, "gate_up")?;
        let mut out = head_mut(out, rows * ff, "silu_mul output")?;
        self.gpu()
            .silu_mul(&SiluMulShape { rows, ff }, &gate_up, &mut out)
            .map_err(gpu_err)
    }

    fn read_logits(
        &mut self,
        src: &Self::Floats,
        range: Range<usize>,
    ) -> Result<Vec<f32>, ModelError> {
        let len = src.len();
        let view = src
            .try_slice(range.clone())
            .ok_or_else(|| too_short("logits", range.end, len))?;
        // Waits for the step: the copy is queued behind it on the one stream.
        self.gpu()
            .stream()
            .clone_dtoh(&view)
            .map_err(drv("reading logits"))
    }

    fn sample(
        &mut self,
        logits: &Self::Floats,
        vocab: usize,
        params: &[RowSampling],
    ) -> Result<Vec<i32>, ModelError> {
        let shape = SampleShape {
            rows: params.len(),
            vocab,
        };
        let logits = head(logits, shape.rows * vocab, "sample logits")?;
        // Sampling runs after the step's graph, outside it, so these small
        // per-step buffers need no fixed addresses.
        let stream = self.gpu().stream().clone();
        let d_params = stream
            .clone_htod(params)
            .map_err(drv("uploading sampling parameters"))?;
        let mut d_ids = stream
            .alloc_zeros::<i32>(shape.rows)
            .map_err(drv("allocating sampled ids"))?;
        self.gpu()
            .sample(&shape, &logits, &d_params, &mut d_ids)
            .map_err(gpu_err)?;
        // Waits for the kernel: the copy is queued behind it on the one stream.
        stream
            .clone_dtoh(&d_ids)
            .map_err(drv("reading sampled ids"))
    }

    fn run_as_graph<S>(
        &mut self,
        bucket: usize,
        state: &mut S,
        body: &mut dyn FnMut(&mut Self, &mut S) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        if self.graphs_unavailable {
            return body(self, state);
        }
        if let Some(OwnedGraph(graph)) = self.graphs.get(&bucket) {
            return graph.launch().map_err(drv("replaying a decode graph"));
        }
        let stream = self.gpu().stream().clone();
        stream
            .begin_capture(driver_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(drv("starting a graph capture"))?;
        let ran = body(self, state);
        let captured = stream.end_capture(
            driver_sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
        );
        match (ran, captured) {
            (Ok(()), Ok(Some(graph))) => {
                graph.launch().map_err(drv("launching a decode graph"))?;
                self.graphs.insert(bucket, OwnedGraph(graph));
                Ok(())
            }
            (Err(e), _) => Err(e),
            (Ok(()), failed) => {
                // Nothing ran while capturing: run the step directly, and
                // every later one too (a capture that fails once fails again).
                tracing::warn!(
                    bucket,
                    error = ?failed.err(),
                    "CUDA graph capture failed; decode steps run without graphs"
                );
                self.graphs_unavailable = true;
                body(self, state)
            }
        }
    }
}

/// The CUDA executor for an engine: the model's weights uploaded as bf16,
/// the KV cache sized from free memory (or `num_kv_blocks`), graphs on.
pub fn open_executor(
    model: &Llama,
    cfg: &EngineConfig,
    ordinal: u32,
) -> Result<DeviceExecutor<CudaOps>, ModelError> {
    let mut ops = CudaOps::open(ordinal)?.with_kv_dtype(cfg.kv_dtype);
    let mc = model.config();
    let shape = ModelShape::of(mc);
    let max_len = cfg
        .max_model_len
        .unwrap_or(mc.max_position_embeddings)
        .min(mc.max_position_embeddings);
    let mut limits = PlanLimits::for_engine(
        cfg.max_num_batched_tokens,
        cfg.max_num_seqs,
        max_len,
        cfg.block_size,
        0,
    );
    let (free, total) = ops.memory()?;
    let sized = plan_memory(
        &shape,
        &limits,
        cfg.kv_dtype,
        &MemoryBudget::for_card(free, total),
    )
    .map_err(|e| ModelError::Device(e.to_string()))?;
    limits.num_blocks = cfg.num_kv_blocks.unwrap_or(sized.num_blocks);
    tracing::info!(
        device = %ops.name(),
        weights_gib = sized.weight_bytes as f64 / (1u64 << 30) as f64,
        kv_blocks = limits.num_blocks,
        kv_dtype = cfg.kv_dtype.as_str(),
        "uploading the model to the GPU"
    );
    let weights = DeviceModel::upload(&mut ops, model)?;
    DeviceExecutor::new(
        ops,
        weights,
        DeviceExecutorConfig {
            limits,
            graphs: true,
        },
    )
}
