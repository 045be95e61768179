//! F32 / F16 / BF16 / Q4_K / Q6_K weights: dequantise a sub-tile of weight
//! rows to f32 once, then run every activation row against it.
//!
//! K-quants go this way rather than through an int8 kernel because their
//! 256-value super-blocks carry per-32 scales *and* mins in six bits; for a
//! batch the dequantisation is paid once per weight row, and the f32 FMA loop
//! is then the same as for float weights.
//!
//! Batch invariance: a weight row is dequantised the same way whatever the
//! batch, and every tile shape (1, 2 or 3 activation rows against a group)
//! computes each output element in its own accumulator with the same
//! operations in the same order ([`dot_tile`]), so splitting the activation
//! rows or the columns differently never changes a result's bits.

use super::{run_tiles, Matrix, TaskLayout};
use crate::cpu::{dot_lanes, Isa};
use crate::quant::{dequantize_row, WeightDType};

/// Weight rows per kernel call; tiles are padded to a multiple.
pub(crate) const GROUP: usize = 4;

/// Activation rows per kernel call: 3 x [`GROUP`] accumulators fill 12 of the
/// 16 AVX2 registers, leaving room for the loaded operands.
const MR: usize = 3;

/// Weight rows dequantised at once per task: ~64 KiB of f32, an L2-resident
/// sub-tile.
fn sub_tile_rows(k: usize) -> usize {
    ((16 * 1024 / k) / GROUP * GROUP).max(GROUP)
}

/// Activation rows per pass over a sub-tile: ~24 KiB, so they stay in L1
/// while the sub-tile's groups go by.
fn act_chunk_rows(k: usize) -> usize {
    ((6 * 1024 / k) / MR * MR).max(MR)
}

pub(super) fn matmul(w: &Matrix, x: &[f32], m: usize, out: &mut [f32], isa: Isa) {
    let (n, k) = (w.rows(), w.cols());
    let (ts, mc) = (sub_tile_rows(k), act_chunk_rows(k));
    let layout = TaskLayout::RowMajor;
    run_tiles(n, m, k, GROUP, layout, out, |first, rows, out_t| {
        let mut tile = Vec::new();
        for s0 in (0..rows).step_by(ts) {
            let sr = (rows - s0).min(ts);
            let padded = sr.div_ceil(GROUP) * GROUP;
            // F32 weights are used in place when they are whole groups (the
            // kernel reads GROUP rows at a time) and aligned; anything else
            // is dequantised into the tile, its padding rows left stale
            // because their results are never stored.
            let direct = (w.dtype() == WeightDType::F32 && padded == sr)
                .then(|| as_f32(&w.bytes()[(first + s0) * k * 4..(first + s0 + sr) * k * 4]))
                .flatten();
            let weights = match direct {
                Some(weights) => weights,
                None => {
                    tile.resize(padded * k, 0.0);
                    for (r, dst) in tile.chunks_exact_mut(k).take(sr).enumerate() {
                        let src = w.row_bytes(first + s0 + r);
                        match isa {
                            #[cfg(target_arch = "x86_64")]
                            Isa::Avx2(t) => t.dequantize_row(w.dtype(), src, dst),
                            Isa::Scalar => dequantize_row(w.dtype(), src, dst),
                        }
                    }
                    &tile[..]
                }
            };
            let out_t = &mut out_t[s0 * m..(s0 + sr) * m];
            for i0 in (0..m).step_by(mc) {
                sub_tile(isa, weights, sr, x, k, m, i0..(i0 + mc).min(m), out_t);
            }
        }
    });
}

/// Little-endian f32 bytes viewed as f32s, when their address is aligned.
fn as_f32(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every bit pattern is a valid f32, and `align_to` only puts the
    // correctly aligned middle part in `mid`.
    let (pre, mid, post) = unsafe { bytes.align_to::<f32>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

/// `rows` weight rows (`weights` holds them padded to whole groups) against
/// activation rows `acts`; result (r, i) into `out_t[r * m + i]`.
#[allow(clippy::too_many_arguments)]
fn sub_tile(
    isa: Isa,
    weights: &[f32],
    rows: usize,
    x: &[f32],
    k: usize,
    m: usize,
    acts: std::ops::Range<usize>,
    out_t: &mut [f32],
) {
    let row = |i: usize| &x[i * k..(i + 1) * k];
    for g in 0..rows.div_ceil(GROUP) {
        let wg = &weights[g * GROUP * k..(g + 1) * GROUP * k];
        let live = (rows - g * GROUP).min(GROUP);
        let mut store = |i: usize, dots: &[f32; GROUP]| {
            for (r, v) in dots.iter().take(live).enumerate() {
                out_t[(g * GROUP + r) * m + i] = *v;
            }
        };
        let mut i = acts.start;
        while i < acts.end {
            match acts.end - i {
                1 => store(i, &dot_tile(isa, [row(i)], wg, k)[0]),
                2 => {
                    let d = dot_tile(isa, [row(i), row(i + 1)], wg, k);
                    d.iter().enumerate().for_each(|(t, d)| store(i + t, d));
                }
                _ => {
                    let d = dot_tile(isa, [row(i), row(i + 1), row(i + 2)], wg, k);
                    d.iter().enumerate().for_each(|(t, d)| store(i + t, d));
                }
            }
            i += (acts.end - i).min(MR);
        }
    }
}

/// `R` activation rows against the [`GROUP`] weight rows in `w`; each
/// (activation, weight row) dot is computed the same way for every `R`.
#[inline]
pub(crate) fn dot_tile<const R: usize>(
    isa: Isa,
    x: [&[f32]; R],
    w: &[f32],
    k: usize,
) -> [[f32; GROUP]; R] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => t.dot_f32_tile(x, w, k),
        Isa::Scalar => {
            let mut out = [[0.0f32; GROUP]; R];
            for (o, xi) in out.iter_mut().zip(x) {
                for (r, v) in o.iter_mut().enumerate() {
                    *v = dot_lanes(xi, &w[r * k..(r + 1) * k]);
                }
            }
            out
        }
    }
}
