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

/// [`quantize_blocks`] in AVX2 intrinsics, with the same float operations
/// (so the same bits; a test compares them): the compiler's version of the
/// portable loop converts and inserts the 32 quants one at a time, which
/// made quantising ~5% of a batched decode step.
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
    use std::arch::x86_64::*;
    const MAGIC: f32 = 12_582_912.0;
    for ((((xb, qb), db), sb), sum) in x
        .chunks_exact(32)
        .zip(qs.chunks_exact_mut(32))
        .zip(d.iter_mut())
        .zip(s.iter_mut())
        .zip(sums.iter_mut())
    {
        // SAFETY: loads of xb[8c..8c + 8] for c < 4 and one 32-byte store
        // into qb, both exactly 32 long (chunks_exact); the features are
        // the caller's.
        unsafe {
            // Not `array::from_fn`: a closure would not inherit the features.
            let p = xb.as_ptr();
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            // |x| by clearing the sign; max(a, m) keeps m when a is NaN, as
            // the portable `if v > lane` does.
            let sign = _mm256_set1_ps(-0.0);
            let mut m = _mm256_setzero_ps();
            for v in &v {
                m = _mm256_max_ps(_mm256_andnot_ps(sign, *v), m);
            }
            // No lane is NaN, so the order of the horizontal max is free.
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
            let dv = amax / 127.0;
            let id = if dv != 0.0 { 1.0 / dv } else { 0.0 };
            let (idv, magic) = (_mm256_set1_ps(id), _mm256_set1_ps(MAGIC));
            let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
            let mut q = [_mm256_setzero_si256(); 4];
            for (q, v) in q.iter_mut().zip(&v) {
                let r = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(*v, idv), magic), magic);
                // NaN becomes 0, as `as i8` makes it; the rest are whole
                // numbers, clamped, so the conversion is exact.
                let ord = _mm256_cmp_ps::<_CMP_ORD_Q>(r, r);
                let r = _mm256_and_ps(_mm256_min_ps(_mm256_max_ps(r, lo), hi), ord);
                *q = _mm256_cvtps_epi32(r);
            }
            let total =
                _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let t4 = _mm_add_epi32(
                _mm256_castsi256_si128(total),
                _mm256_extracti128_si256::<1>(total),
            );
            let t2 = _mm_add_epi32(t4, _mm_unpackhi_epi64(t4, t4));
            let t1 = _mm_add_epi32(t2, _mm_shuffle_epi32::<0b01>(t2));
            let isum = _mm_cvtsi128_si32(t1);
            // Packing works per 128-bit half; the permute restores the order.
            let p16 = [
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            ];
            let p8 = _mm256_packs_epi16(p16[0], p16[1]);
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            let p8 = _mm256_permutevar8x32_epi32(p8, order);
            _mm256_storeu_si256(qb.as_mut_ptr().cast(), p8);
            (*db, *sb, *sum) = (dv, dv * isum as f32, isum);
        }
    }
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
