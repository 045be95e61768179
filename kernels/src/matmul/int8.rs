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
//! Two kernel layouts:
//!
//! - **direct** (one activation row, and the portable path): weight blocks
//!   are read straight from the GGML bytes, unpacked in registers and dotted
//!   against up to [`MR`] activation rows before the next block is read. A
//!   task runs over chunks of activation rows small enough for L1, and within
//!   a chunk over its weight rows.
//! - **repacked** (AVX2, two rows or more; `avx2_repack.rs`): eight weight
//!   rows at a time are rearranged so that one SIMD multiply serves all
//!   eight, which more than halves the work per (row, activation) pair.
//!
//! Both give the same results up to f32 summation order.

#[cfg(target_arch = "x86_64")]
use super::avx2_repack::NR;
use super::quantize_act::QuantizedActs;
use super::{run_tiles, Matrix};
use crate::cpu::Isa;
use crate::quant::{f16_bits_to_f32, WeightDType};

/// Activation rows one kernel call dots a weight row against, reusing each
/// unpacked weight block from a register that many times.
pub(crate) const MR: usize = 4;

/// Task granularity in weight rows where there is no repacked tile.
#[cfg(not(target_arch = "x86_64"))]
const NR: usize = 8;

/// From this many activation rows on, AVX2 repacks weight tiles (see
/// `avx2_repack`): the repack costs about one unbatched pass.
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

/// Activation rows per pass over a task's weight rows: ~16 KiB of quants,
/// which stay in L1 while the weight rows stream by.
fn act_chunk_rows(k: usize) -> usize {
    ((16 * 1024 / k) / MR * MR).max(MR)
}

pub(super) fn matmul(w: &Matrix, x: &[f32], m: usize, out: &mut [f32], isa: Isa) {
    let (n, k) = (w.rows(), w.cols());
    let format = match w.dtype() {
        WeightDType::Q4_0 => Format::Q4_0,
        WeightDType::Q4_1 => Format::Q4_1,
        _ => Format::Q8_0,
    };
    let rb = w.dtype().row_bytes(k);
    let acts = QuantizedActs::new(x, m, k, isa);
    #[cfg(target_arch = "x86_64")]
    if let (Isa::Avx2(t), true) = (isa, m >= REPACK_MIN_M) {
        run_tiles(n, m, k, NR, out, |first, rows, out_t| {
            let bytes = &w.bytes()[first * rb..(first + rows) * rb];
            t.int8_tiles(format, bytes, rb, &acts, m, out_t);
        });
        return;
    }
    let mc = act_chunk_rows(k);
    run_tiles(n, m, k, NR, out, |first, rows, out_t| {
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
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2(t) => t.int8_rows(&job, out_t),
                Isa::Scalar => scalar_rows(&job, out_t),
            }
        }
    });
}

/// Weight rows (whole rows of GGML blocks) against activation rows
/// `acts_from..acts_to`; result (r, i) goes to `out_t[r * m + i]`.
pub(crate) struct Job<'a> {
    pub format: Format,
    pub weights: &'a [u8],
    pub acts: &'a QuantizedActs,
    pub acts_from: usize,
    pub acts_to: usize,
    pub m: usize,
}

/// Portable kernel: each weight block is widened once to i16, then dotted
/// with each activation row in i32 (a shape the compiler maps to `pmaddwd`).
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
