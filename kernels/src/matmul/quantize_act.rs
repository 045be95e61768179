//! Activations quantised to 8 bits per block of 32, once per matmul call.
//!
//! The format is ggml's `block_q8_1` kept unpacked and in f32: per block a
//! scale `d = amax / 127`, 32 signed quants with `|q| <= 127`, and
//! `s = d · Σq`, the block sum that turns an offset weight format
//! (`w = d_w·q_w + min`) into one integer dot product plus `min · s`.
//! Quants never reach -128, which is what lets the AVX2 kernel's
//! sign trick (`|w| · sign(y, w)`) stay inside `maddubs`' i16 range.

use rayon::prelude::*;

use crate::cpu::Isa;

/// Activation rows of `k` values each (k a multiple of 32), quantised.
pub(crate) struct QuantizedActs {
    pub k: usize,
    /// `m * k` quants, row-major.
    pub qs: Vec<i8>,
    /// `m * k/32` block scales.
    pub d: Vec<f32>,
    /// `m * k/32` block sums `d · Σq`.
    pub s: Vec<f32>,
    /// `m * k/32` integer block sums `Σq` (the VNNI Q8_0 kernel's offset).
    pub sums: Vec<i32>,
}

/// Below this many values quantisation stays on the calling thread; it is
/// ~n times cheaper than the matmul it feeds.
const PAR_MIN_VALUES: usize = 1 << 16;

impl QuantizedActs {
    /// Quantises `x` (`m` rows of `k`, `k % 32 == 0`).
    pub(crate) fn new(x: &[f32], m: usize, k: usize, isa: Isa) -> Self {
        debug_assert_eq!(k % 32, 0);
        debug_assert_eq!(x.len(), m * k);
        let nb = k / 32;
        let mut qs = vec![0i8; m * k];
        let mut d = vec![0.0f32; m * nb];
        let mut s = vec![0.0f32; m * nb];
        let mut sums = vec![0i32; m * nb];
        let run = |x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], sums: &mut [i32]| {
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the token proves the target features.
                Isa::Avx2(_) => unsafe { quantize_blocks_avx2(x, qs, d, s, sums) },
                Isa::Scalar => quantize_blocks(x, qs, d, s, sums),
            }
        };
        if m * k >= PAR_MIN_VALUES && m > 1 {
            x.par_chunks_exact(k)
                .zip(qs.par_chunks_exact_mut(k))
                .zip(d.par_chunks_exact_mut(nb).zip(s.par_chunks_exact_mut(nb)))
                .zip(sums.par_chunks_exact_mut(nb))
                .for_each(|(((x, qs), (d, s)), sums)| run(x, qs, d, s, sums));
        } else {
            run(x, &mut qs, &mut d, &mut s, &mut sums);
        }
        Self { k, qs, d, s, sums }
    }

    /// Row `i`'s quants, scales and sums.
    #[cfg(test)]
    pub(crate) fn row(&self, i: usize) -> (&[i8], &[f32], &[f32]) {
        let nb = self.k / 32;
        (
            &self.qs[i * self.k..(i + 1) * self.k],
            &self.d[i * nb..(i + 1) * nb],
            &self.s[i * nb..(i + 1) * nb],
        )
    }
}

/// [`quantize_blocks`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_blocks_avx2(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    s: &mut [f32],
    sums: &mut [i32],
) {
    quantize_blocks(x, qs, d, s, sums)
}

#[inline(always)]
fn quantize_blocks(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], sums: &mut [i32]) {
    for ((((xb, qb), db), sb), sum) in x
        .chunks_exact(32)
        .zip(qs.chunks_exact_mut(32))
        .zip(d.iter_mut())
        .zip(s.iter_mut())
        .zip(sums.iter_mut())
    {
        if let (Ok(xb), Ok(qb)) = (<&[f32; 32]>::try_from(xb), <&mut [i8; 32]>::try_from(qb)) {
            (*db, *sb, *sum) = quantize_block(xb, qb);
        }
    }
}

/// Quantises 32 values; returns `(d, d · Σq, Σq)`.
#[inline(always)]
fn quantize_block(x: &[f32; 32], q: &mut [i8; 32]) -> (f32, f32, i32) {
    // Eight running maxima, so the reduction vectorises (a single fold over
    // `f32::max` is a dependency chain).
    let mut lanes = [0.0f32; 8];
    for c in x.chunks_exact(8) {
        for l in 0..8 {
            let v = c[l].abs();
            lanes[l] = if v > lanes[l] { v } else { lanes[l] };
        }
    }
    let amax = lanes.iter().fold(0.0f32, |a, &v| if v > a { v } else { a });
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    // Adding and subtracting 1.5·2^23 rounds to nearest (ties to even) in one
    // vectorisable step for |v| < 2^22; `f32::round` is a libm call on the
    // baseline target. |x·id| <= 127 up to rounding, and the clamp keeps
    // quants in -127..=127 whatever the input (NaN converts to 0).
    const MAGIC: f32 = 12_582_912.0;
    let mut sum = 0i32;
    for (qv, &xv) in q.iter_mut().zip(x) {
        let r = ((xv * id + MAGIC) - MAGIC).clamp(-127.0, 127.0) as i8;
        *qv = r;
        sum += r as i32;
    }
    (d, d * sum as f32, sum)
}
