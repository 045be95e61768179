//! Weight matrices and `out = x · Wᵀ`, batched so that the weights are read
//! once per call however many activation rows there are.
//!
//! Two paths, picked by the weight format:
//!
//! - **int8** (Q4_0, Q4_1, Q8_0; `int8.rs`): the `m` activation rows are
//!   quantised once to 8-bit blocks of 32 with their block sums
//!   (`quantize_act.rs`), and each (weight row, activation row) pair is an
//!   integer dot product per block, scaled by the two block scales — the
//!   scheme of llama.cpp's `vec_dot_q4_1_q8_1`. One activation row reads the
//!   GGML blocks of eight weight rows directly (`avx2.rs`); from two rows on,
//!   the kernel reads tiles of eight weight rows repacked (once, when the
//!   [`Matrix`] is built) so that one `maddubs` serves all eight and every
//!   unpacked block is reused for every activation row (`avx2_repack.rs`).
//! - **f32** (F32, F16, BF16, Q4_K, Q6_K; `float.rs`): a sub-tile of weight
//!   rows is dequantised to f32 once (F32 rows are used in place) and an
//!   FMA kernel runs 3 activation rows x 4 weight rows at a time over it.
//!
//! - **packed f32** (`packed.rs`): weights repacked once into k-major
//!   panels of 24 output features and an outer-product kernel over them,
//!   for callers whose every call has many rows (encoders); a separate
//!   type, [`PackedMatrix`], so that the decoder's path is unchanged.
//!
//! All split the output columns (weight rows) into rayon tasks; a task
//! covers its rows for all `m` activation rows while they are in cache.
//! Kernels exist as AVX2 (chosen at run time) and as portable Rust the
//! compiler vectorises for the baseline target.
//!
//! Every path is batch-invariant: `out[i, j]` is bit-identical whatever `m`
//! is, wherever row `i` sits in the batch and however the columns are split
//! into tasks, because each kernel variant of an instruction set computes an
//! element with the same floating-point operations in the same order (the
//! serving engine promises a sequence the same greedy tokens whatever it is
//! batched with; `int8.rs` and `float.rs` say how each path keeps to it).
//! AVX2 and portable results differ from each other in the last bits.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_repack;
mod float;
mod int8;
mod packed;
mod quantize_act;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod vnni;

use rayon::prelude::*;

pub use packed::{matmul_packed, PackedMatrix, PANEL};

use crate::cpu::Isa;
use crate::quant::{dequantize_row, quantize_row, WeightDType};
use crate::KernelError;

/// A weight matrix of `rows` output features by `cols` input features, stored
/// row-major in a GGML block format.
///
/// On an AVX2 CPU a Q4_0/Q4_1/Q8_0 matrix also keeps its weights repacked
/// for the batched kernel (`avx2_repack.rs`), built once here rather than on
/// every call with two or more activation rows (which re-read and rewrote
/// all weights each decode step). The GGML bytes stay too: `bytes`,
/// `row_bytes`, `dequantize_row` and the one-row kernel read them. Memory
/// cost of the second copy: a 4-bit tile takes 24 bytes per 32 values
/// (Q4_1's GGML block: 20, Q4_0's: 18), a Q8_0 tile 36 (GGML: 34), so about
/// 1.2x / 1.33x / 1.06x the GGML size more. For SmolLM2-135M in Q4_1 with a
/// Q8_0 embedding (~96 MB of weights, ~106 M layer and 28 M embedding
/// values) that is about +80 MB for the layers and +32 MB for the embedding
/// matrix, ~+112 MB in all. The tiles sit behind an `Arc`, so `clone` shares
/// them (it still copies the GGML bytes).
#[derive(Clone)]
pub struct Matrix {
    dtype: WeightDType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
    /// One tile per [`avx2_repack::NR`] rows, when built (see above).
    #[cfg(target_arch = "x86_64")]
    tiles: Option<std::sync::Arc<[avx2_repack::Tile]>>,
}

impl std::fmt::Debug for Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Matrix({:?}, {}x{})", self.dtype, self.rows, self.cols)
    }
}

impl Matrix {
    /// Wraps raw bytes (as stored in GGUF or safetensors) after checking their length.
    pub fn from_raw(
        dtype: WeightDType,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, KernelError> {
        let block = dtype.block_values();
        if !cols.is_multiple_of(block) {
            return Err(KernelError::RowNotBlockAligned { dtype, block, cols });
        }
        let expected = rows * dtype.row_bytes(cols);
        if data.len() != expected {
            return Err(KernelError::WrongByteLength {
                dtype,
                rows,
                cols,
                expected,
                got: data.len(),
            });
        }
        #[cfg(target_arch = "x86_64")]
        let tiles = int8::repack(dtype, cols, &data, Isa::detect()).map(Into::into);
        Ok(Self {
            dtype,
            rows,
            cols,
            data,
            #[cfg(target_arch = "x86_64")]
            tiles,
        })
    }

    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> Self {
        assert_eq!(values.len(), rows * cols, "matrix shape mismatch");
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self {
            dtype: WeightDType::F32,
            rows,
            cols,
            data,
            #[cfg(target_arch = "x86_64")]
            tiles: None,
        }
    }

    /// Quantises f32 values (`rows * cols`, row-major) into `dtype`.
    pub fn quantize(
        dtype: WeightDType,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> Result<Self, KernelError> {
        if values.len() != rows * cols {
            return Err(KernelError::WrongValueCount {
                rows,
                cols,
                got: values.len(),
            });
        }
        // Validate once up front so that the parallel loop below cannot fail
        // halfway (an empty matrix would otherwise skip the check).
        quantize_row(dtype, &values[..0])?;
        if !cols.is_multiple_of(dtype.block_values()) {
            return Err(KernelError::RowNotBlockAligned {
                dtype,
                block: dtype.block_values(),
                cols,
            });
        }
        let rows_bytes: Result<Vec<Vec<u8>>, KernelError> = values
            .par_chunks(cols.max(1))
            .take(rows)
            .map(|row| quantize_row(dtype, row))
            .collect();
        Self::from_raw(dtype, rows, cols, rows_bytes?.concat())
    }

    /// Converts to another storage type by dequantising each row and
    /// quantising it again (the "requantise weights at load" knob). Converting
    /// to the same type returns a copy without touching the values.
    pub fn requantize(&self, to: WeightDType) -> Result<Matrix, KernelError> {
        if to == self.dtype {
            return Ok(self.clone());
        }
        // Refuse an unsupported target before looking at the shape.
        quantize_row(to, &[])?;
        let block = to.block_values();
        if !self.cols.is_multiple_of(block) {
            return Err(KernelError::RowNotBlockAligned {
                dtype: to,
                block,
                cols: self.cols,
            });
        }
        let rows: Result<Vec<Vec<u8>>, KernelError> = (0..self.rows)
            .into_par_iter()
            .map_init(
                || vec![0.0f32; self.cols],
                |buf, r| {
                    self.dequantize_row(r, buf);
                    quantize_row(to, buf)
                },
            )
            .collect();
        Self::from_raw(to, self.rows, self.cols, rows?.concat())
    }

    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The tiles repacked at construction, if any (AVX2, int8 formats).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn tiles(&self) -> Option<&[avx2_repack::Tile]> {
        self.tiles.as_deref()
    }

    /// Heap bytes held by the repacked tiles (0 without them), on top of
    /// `bytes().len()`.
    pub fn repacked_bytes(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        if let Some(tiles) = &self.tiles {
            return tiles.iter().map(avx2_repack::Tile::heap_bytes).sum();
        }
        0
    }

    /// This matrix without its repacked tiles, so that tests can run the
    /// repack-per-call path.
    #[cfg(test)]
    pub(crate) fn without_tiles(&self) -> Matrix {
        Matrix {
            #[cfg(target_arch = "x86_64")]
            tiles: None,
            ..self.clone()
        }
    }

    pub fn row_bytes(&self, r: usize) -> &[u8] {
        let rb = self.dtype.row_bytes(self.cols);
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Dequantises row `r` into `out` (`out.len() == cols`); used for embedding lookups.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize_row(self.dtype, self.row_bytes(r), out);
    }
}

/// `out[i*n + j] = Σ_k x[i*k_dim + k] · w[j, k]` for `m` activation rows.
///
/// For Q4_0/Q4_1/Q8_0 weights the activations are quantised to 8 bits per
/// block of 32 first (as llama.cpp does), so results differ from an f32
/// product by that rounding: per block at most `amax/254` per activation.
pub fn matmul(w: &Matrix, x: &[f32], m: usize, out: &mut [f32]) {
    matmul_with(w, x, m, out, Isa::detect());
}

/// The instruction set the batched int8 kernels run on in this process:
/// `"avx512-vnni"`, `"avx2"` or `"portable"` (benchmarks record it, since
/// `SLUICE_KERNELS_NO_VNNI` can change it on the same CPU).
pub fn int8_kernel_isa() -> &'static str {
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) if t.vnni512().is_some() => "avx512-vnni",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(_) => "avx2",
        Isa::Scalar => "portable",
    }
}

/// The instruction set [`matmul_packed`] (the encoders' f32 path) runs on
/// in this process: `"avx512"`, `"avx2"` or `"portable"`
/// (`SLUICE_KERNELS_NO_AVX512` can change it on the same CPU).
pub fn packed_kernel_isa() -> &'static str {
    packed::PackedIsa::detect().name()
}

/// How activations meet quantised (Q4_0/Q4_1/Q8_0) weights: the engine's
/// "activation dtype" knob. Other weight formats always use f32 activations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ActivationPrecision {
    /// Quantise activations to 8 bits per block of 32 and dot in integers
    /// (llama.cpp's scheme): fastest, rounding of `amax/254` per activation.
    #[default]
    Int8,
    /// Keep activations in f32 and dequantise weight tiles instead: slower,
    /// no activation rounding.
    F32,
}

/// [`matmul`] with the activation precision chosen by the caller. Batch
/// invariance holds for both precisions.
pub fn matmul_with_precision(
    w: &Matrix,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    precision: ActivationPrecision,
) {
    let isa = Isa::detect();
    let int8_weights = matches!(
        w.dtype,
        WeightDType::Q4_0 | WeightDType::Q4_1 | WeightDType::Q8_0
    );
    if precision == ActivationPrecision::F32 && int8_weights {
        if !nothing_to_compute(w.rows, w.cols, x, m, out) {
            float::matmul(w, x, m, out, isa);
        }
    } else {
        matmul_with(w, x, m, out, isa);
    }
}

pub(crate) fn matmul_with(w: &Matrix, x: &[f32], m: usize, out: &mut [f32], isa: Isa) {
    if nothing_to_compute(w.rows, w.cols, x, m, out) {
        return;
    }
    match w.dtype {
        WeightDType::Q4_0 | WeightDType::Q4_1 | WeightDType::Q8_0 => {
            int8::matmul(w, x, m, out, isa)
        }
        WeightDType::F32
        | WeightDType::F16
        | WeightDType::BF16
        | WeightDType::Q4K
        | WeightDType::Q6K => float::matmul(w, x, m, out, isa),
    }
}

/// Checks the shapes of `out = x · Wᵀ` (`W` is `n x k`, `x` has `m` rows)
/// and settles the empty ones: true when `out` is already complete.
fn nothing_to_compute(n: usize, k: usize, x: &[f32], m: usize, out: &mut [f32]) -> bool {
    assert_eq!(x.len(), m * k, "activation shape mismatch");
    assert_eq!(out.len(), m * n, "output shape mismatch");
    if k == 0 {
        // An empty sum.
        out.fill(0.0);
    }
    m == 0 || n == 0 || k == 0
}

/// The plain definition of [`matmul`]: every weight row dequantised and
/// dotted in f32 against every activation row. Slow; kept as the yardstick
/// for tests and benchmarks.
pub fn matmul_reference(w: &Matrix, x: &[f32], m: usize, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "activation shape mismatch");
    assert_eq!(out.len(), m * n, "output shape mismatch");
    let mut wrow = vec![0.0f32; k];
    for j in 0..n {
        w.dequantize_row(j, &mut wrow);
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            out[i * n + j] = wrow.iter().zip(xi).map(|(a, b)| a * b).sum();
        }
    }
}

/// Below this many multiply-adds a task is not worth a rayon hand-off
/// (roughly 10 µs of work).
const MIN_TASK_WORK: usize = 1 << 16;

/// How a task of [`run_tiles`] lays out its `out_t` when `m > 1`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TaskLayout {
    /// `[row][activation]`: `out_t[r * m + i]`.
    RowMajor,
    /// `[activation][row]`: `out_t[i * rows + r]`, for kernels that produce
    /// one activation row's results for consecutive weight rows; gathering
    /// is then one copy per (task, activation row) instead of a transpose.
    ActivationMajor,
}

/// Runs `task(first_row, rows, out_t)` over tiles of the `n` weight rows
/// (multiples of `align` rows) in parallel, where `out_t` holds the tile's
/// results in `layout` (for `m == 1` both are the same), and gathers them
/// into `out` laid out `[activation][row]`.
///
/// Tasks own disjoint column ranges of `out`, which are not contiguous when
/// `m > 1`, so each task writes a contiguous buffer of its own and one pass
/// gathers them; that pass costs `m·n` moves against `m·n·k` multiply-adds.
fn run_tiles<F>(
    n: usize,
    m: usize,
    k: usize,
    align: usize,
    layout: TaskLayout,
    out: &mut [f32],
    task: F,
) where
    F: Fn(usize, usize, &mut [f32]) + Sync,
{
    let work = n * m * k;
    // Several tasks per thread, so a core slowed by another process does not
    // hold up the call; but none smaller than MIN_TASK_WORK.
    let tasks = (rayon::current_num_threads() * 4)
        .min(work / MIN_TASK_WORK)
        .max(1);
    // Whole kernel groups of `align` rows, so only the last task's is partial.
    let tile = n.div_ceil(tasks).div_ceil(align) * align;
    let run = |t: usize, chunk: &mut [f32]| task(t * tile, chunk.len() / m, chunk);
    if m == 1 {
        if tasks == 1 {
            run(0, out);
        } else {
            out.par_chunks_mut(tile)
                .enumerate()
                .for_each(|(t, c)| run(t, c));
        }
        return;
    }
    let mut out_t = vec![0.0f32; n * m];
    if tasks == 1 {
        run(0, &mut out_t);
    } else {
        out_t
            .par_chunks_mut(tile * m)
            .enumerate()
            .for_each(|(t, c)| run(t, c));
    }
    if layout == TaskLayout::ActivationMajor {
        for (t, chunk) in out_t.chunks(tile * m).enumerate() {
            let rows = chunk.len() / m;
            for (row, src) in out.chunks_exact_mut(n).zip(chunk.chunks_exact(rows)) {
                row[t * tile..t * tile + rows].copy_from_slice(src);
            }
        }
        return;
    }
    // Transpose in column blocks so that the reads of out_t stay in cache.
    const JB: usize = 64;
    for j0 in (0..n).step_by(JB) {
        let j1 = (j0 + JB).min(n);
        for (i, row) in out.chunks_exact_mut(n).enumerate() {
            for (j, o) in row[j0..j1].iter_mut().enumerate() {
                *o = out_t[(j0 + j) * m + i];
            }
        }
    }
}
