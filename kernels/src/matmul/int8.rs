//! Q4_0 / Q4_1 / Q8_0 weights against 8-bit activations.
//!
//! Every weight block is `w = d·q + min` with integer `q`: Q4_1 as stored,
//! Q4_0 as `d·q - 8d` with `q` in 0..=15, Q8_0 as `d·q` with signed `q`.
//! Against an activation block `(d_x, q_x, s = d_x·Σq_x)`:
//!
//! ```text
//! Σ w·x  =  d·d_x · Σ q·q_x  +  min · s
//! ```
//!
//! The integer sum is exact (|Σ| < 2^24, so its f32 conversion is too).
//!
//! Kernels:
//!
//! - **one row** (AVX2, `m == 1`; `avx2.rs`): eight weight rows at a time
//!   are read straight from the GGML bytes, each block dotted against the
//!   activation block, and the eight exact block sums gathered into one
//!   vector, one row per lane.
//! - **repacked** (AVX2, two rows or more; `avx2_repack.rs`): eight weight
//!   rows at a time are rearranged so that one SIMD multiply serves all
//!   eight, which more than halves the work per (row, activation) pair. The
//!   `Matrix` does this once when it is built and keeps the tiles.
//! - **repacked, VNNI** (AVX-512 VNNI, two rows or more; `vnni.rs`): the
//!   same tiles, two at a time, with `vpdpbusd` on 512-bit registers.
//! - **portable**: each weight block is widened once and dotted against
//!   every activation row of a chunk.
//!
//! Batch invariance: an output element must not depend on `m`, on where
//! its activation row sits in the batch, or on how the columns are split
//! into tasks (continuous batching promises a sequence the same tokens
//! whatever it shares a step with). So every kernel of one instruction set
//! turns a block's exact integer sum into f32 by the same operations, in
//! block order, into per-(row, activation) accumulators: on AVX2
//! `acc = fma(isum, d·d_x, acc)`, `acc_min = fma(min, s, acc_min)`, and
//! `acc + acc_min` at the end; the portable kernel is one code path for
//! every `m`. The AVX2 and portable results differ from each other (FMA
//! against separate roundings), but a process uses one of them.

#[cfg(target_arch = "x86_64")]
use super::avx2_repack::NR;
use super::quantize_act::QuantizedActs;
#[cfg(target_arch = "x86_64")]
use super::vnni::NR2;
use super::{run_tiles, Matrix, TaskLayout};
use crate::cpu::Isa;
use crate::quant::{f16_bits_to_f32, WeightDType};

/// The portable kernel's activation chunks are a multiple of this many rows.
const MR: usize = 4;

/// Task granularity in weight rows where there is no repacked tile.
#[cfg(not(target_arch = "x86_64"))]
const NR: usize = 8;

/// From this many activation rows on, AVX2 uses the repacked weight tiles
/// (see `avx2_repack`; built once with the matrix, or per call for a matrix
/// without them, where the repack costs about one pass of the one-row kernel).
#[cfg(target_arch = "x86_64")]
const REPACK_MIN_M: usize = 2;

/// The block formats this path handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl Format {
    pub(crate) fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
        }
    }
}

impl Format {
    fn of(dtype: WeightDType) -> Option<Self> {
        match dtype {
            WeightDType::Q4_0 => Some(Format::Q4_0),
            WeightDType::Q4_1 => Some(Format::Q4_1),
            WeightDType::Q8_0 => Some(Format::Q8_0),
            _ => None,
        }
    }
}

/// The batched kernel's tiles for a `cols`-wide matrix of GGML bytes `data`
/// (length already checked), where that kernel will run: AVX2 and an int8
/// format, with at least one row and column.
#[cfg(target_arch = "x86_64")]
pub(super) fn repack(
    dtype: WeightDType,
    cols: usize,
    data: &[u8],
    isa: Isa,
) -> Option<Vec<super::avx2_repack::Tile>> {
    let (Isa::Avx2(t), Some(format)) = (isa, Format::of(dtype)) else {
        return None;
    };
    let rb = dtype.row_bytes(cols);
    if rb == 0 || data.is_empty() {
        return None;
    }
    Some(t.repack(format, data, rb))
}

/// Activation rows per pass over a task's weight rows: ~16 KiB of quants,
/// which stay in L1 while the weight rows stream by.
fn act_chunk_rows(k: usize) -> usize {
    ((16 * 1024 / k) / MR * MR).max(MR)
}

pub(super) fn matmul(w: &Matrix, x: &[f32], m: usize, out: &mut [f32], isa: Isa) {
    let (n, k) = (w.rows(), w.cols());
    let format = Format::of(w.dtype()).unwrap_or(Format::Q8_0);
    let rb = w.dtype().row_bytes(k);
    let acts = QuantizedActs::new(x, m, k, isa);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => {
            let vnni = t.vnni512().filter(|_| m >= REPACK_MIN_M);
            // The VNNI kernel takes tiles in pairs: tasks of whole pairs.
            let align = if vnni.is_some() { NR2 } else { NR };
            let layout = TaskLayout::ActivationMajor;
            run_tiles(n, m, k, align, layout, out, |first, rows, out_t| {
                let bytes = &w.bytes()[first * rb..(first + rows) * rb];
                if m >= REPACK_MIN_M {
                    // Tasks start on whole tiles (run_tiles aligns them).
                    match (w.tiles(), vnni) {
                        (Some(tiles), Some(v)) => {
                            let tiles = &tiles[first / NR..(first + rows).div_ceil(NR)];
                            v.int8_packed(format, tiles, rows, &acts, m, out_t);
                        }
                        (Some(tiles), None) => {
                            let tiles = &tiles[first / NR..(first + rows).div_ceil(NR)];
                            t.int8_packed(format, tiles, rows, &acts, m, out_t);
                        }
                        (None, _) => t.int8_tiles(format, bytes, rb, &acts, m, out_t),
                    }
                } else {
                    t.int8_gemv(format, bytes, rb, &acts, out_t);
                }
            })
        }
        Isa::Scalar => {
            let (mc, layout) = (act_chunk_rows(k), TaskLayout::RowMajor);
            run_tiles(n, m, k, NR, layout, out, |first, rows, out_t| {
                let bytes = &w.bytes()[first * rb..(first + rows) * rb];
                for i0 in (0..m).step_by(mc) {
                    let job = Job {
                        format,
                        weights: bytes,
                        acts: &acts,
                        acts_from: i0,
                        acts_to: (i0 + mc).min(m),
                        m,
                    };
                    scalar_rows(&job, out_t);
                }
            });
        }
    }
}

/// Weight rows (whole rows of GGML blocks) against activation rows
/// `acts_from..acts_to`; result (r, i) goes to `out_t[r * m + i]`.
struct Job<'a> {
    format: Format,
    weights: &'a [u8],
    acts: &'a QuantizedActs,
    acts_from: usize,
    acts_to: usize,
    m: usize,
}

/// Portable kernel: each weight block is widened once to i16, then dotted
/// with each activation row in i32 (a shape the compiler maps to `pmaddwd`).
/// Every element gets `o += d·d_x·isum + min·s` per block, in block order,
/// whichever chunk its activation row is in: batch-invariant by construction.
fn scalar_rows(job: &Job<'_>, out_t: &mut [f32]) {
    let a = job.acts;
    let (k, nb) = (a.k, a.k / 32);
    let bb = job.format.block_bytes();
    for (wrow, out) in job
        .weights
        .chunks_exact(nb * bb)
        .zip(out_t.chunks_exact_mut(job.m))
    {
        let out = &mut out[job.acts_from..job.acts_to];
        out.fill(0.0);
        for (b, blk) in wrow.chunks_exact(bb).enumerate() {
            let d = f16_bits_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
            let mut q = [0i16; 32];
            let min = match job.format {
                Format::Q8_0 => {
                    for (q, &v) in q.iter_mut().zip(&blk[2..34]) {
                        *q = v as i8 as i16;
                    }
                    0.0
                }
                Format::Q4_0 | Format::Q4_1 => {
                    let (lo, hi) = q.split_at_mut(16);
                    for ((l, h), &v) in lo.iter_mut().zip(hi).zip(&blk[bb - 16..]) {
                        *l = (v & 0x0f) as i16;
                        *h = (v >> 4) as i16;
                    }
                    if job.format == Format::Q4_1 {
                        f16_bits_to_f32(u16::from_le_bytes([blk[2], blk[3]]))
                    } else {
                        -8.0 * d
                    }
                }
            };
            for (t, o) in out.iter_mut().enumerate() {
                let i = job.acts_from + t;
                let y = &a.qs[i * k + b * 32..][..32];
                let isum: i32 = q.iter().zip(y).map(|(&w, &y)| w as i32 * y as i32).sum();
                *o += d * a.d[i * nb + b] * isum as f32 + min * a.s[i * nb + b];
            }
        }
    }
}
