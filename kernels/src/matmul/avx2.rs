//! AVX2 + FMA + F16C matmul kernels, reachable only through the
//! [`Avx2`] token (see [`crate::cpu`]), whose existence is what makes each
//! `unsafe` call into a `#[target_feature]` function sound.
//!
//! Int8 dot products follow ggml: `maddubs` multiplies unsigned bytes by
//! signed bytes and adds pairs into i16, `madd` with ones widens pairs into
//! i32, and a block's eight i32 lanes are scaled in f32 by one FMA. For
//! `maddubs` not to saturate, `2·|u|·|s| <= 32767`: 2·15·127 for 4-bit
//! weights, and 2·128·127 for Q8_0 through the sign trick
//! `|w| · sign(y, w)` (activations are never -128).

use std::arch::x86_64::*;

use super::float::GROUP;
use super::int8::{Format, Job, MR};
use crate::cpu::{hsum, Avx2};
use crate::quant::{dequantize_row_impl, WeightDType};

impl Avx2 {
    /// The int8 path's work for one task and one chunk of activation rows.
    pub(crate) fn int8_rows(self, job: &Job<'_>, out_t: &mut [f32]) {
        let a = job.acts;
        let (k, nb) = (a.k, a.k / 32);
        let rb = nb * job.format.block_bytes();
        let rows = job.weights.len() / rb.max(1);
        // The lengths every unchecked access below relies on.
        assert!(k % 32 == 0 && rows * rb == job.weights.len() && out_t.len() == rows * job.m);
        assert!(job.acts_from <= job.acts_to && job.acts_to <= job.m);
        assert!(a.qs.len() >= job.acts_to * k && a.d.len() >= job.acts_to * nb);
        assert!(a.s.len() >= job.acts_to * nb);
        // SAFETY: `self` proves the target features; lengths checked above.
        unsafe {
            match job.format {
                Format::Q4_0 => rows_q4::<18, false>(job, out_t),
                Format::Q4_1 => rows_q4::<20, true>(job, out_t),
                Format::Q8_0 => rows_q8(job, out_t),
            }
        }
    }

    /// `R` activation rows against the [`GROUP`] f32 weight rows in `w`
    /// (`GROUP * k` values); `out[i][r]` is the dot of row `i` with row `r`.
    #[inline]
    pub(crate) fn dot_f32_tile<const R: usize>(
        self,
        x: [&[f32]; R],
        w: &[f32],
        k: usize,
    ) -> [[f32; GROUP]; R] {
        assert!(w.len() == GROUP * k && x.iter().all(|xi| xi.len() == k));
        // SAFETY: `self` proves the target features; lengths checked above.
        unsafe { dot_f32_tile::<R>(x, w, k) }
    }

    /// [`crate::quant::dequantize_row`] compiled for AVX2, so that its loops
    /// vectorise 8 floats wide.
    pub(crate) fn dequantize_row(self, dtype: WeightDType, row: &[u8], out: &mut [f32]) {
        // SAFETY: `self` proves the target features.
        unsafe { dequantize_row_avx2(dtype, row, out) }
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_row_avx2(dtype: WeightDType, row: &[u8], out: &mut [f32]) {
    if dtype != WeightDType::F16 {
        return dequantize_row_impl(dtype, row, out);
    }
    // F16 rows convert eight values per `vcvtph2ps`.
    let n = out.len().min(row.len() / 2);
    let n8 = n / 8 * 8;
    let mut i = 0;
    while i < n8 {
        // SAFETY: reads row[2i..2i + 16] and writes out[i..i + 8], both in
        // bounds since i + 8 <= n8 <= n.
        unsafe {
            let h = _mm_loadu_si128(row.as_ptr().add(2 * i).cast());
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    dequantize_row_impl(dtype, &row[2 * n8..2 * n], &mut out[n8..n]);
}

/// Results of `R` activation rows starting at `i` into `out[i..i + R]`.
macro_rules! for_each_row_chunk {
    ($job:expr, $out:expr, $kernel:ident [$($gen:tt),*] ($($arg:expr),*)) => {{
        let (mut i, to) = ($job.acts_from, $job.acts_to);
        while i + MR <= to {
            $out[i..i + MR].copy_from_slice(&$kernel::<MR, $($gen),*>($($arg,)* i));
            i += MR;
        }
        match to - i {
            3 => $out[i..to].copy_from_slice(&$kernel::<3, $($gen),*>($($arg,)* i)),
            2 => $out[i..to].copy_from_slice(&$kernel::<2, $($gen),*>($($arg,)* i)),
            1 => $out[i..to].copy_from_slice(&$kernel::<1, $($gen),*>($($arg,)* i)),
            _ => {}
        }
    }};
}

/// # Safety
/// AVX2, FMA and F16C; the lengths checked in [`Avx2::int8_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_q4<const BB: usize, const HAS_MIN: bool>(job: &Job<'_>, out_t: &mut [f32]) {
    let nb = job.acts.k / 32;
    for (wrow, out) in job
        .weights
        .chunks_exact(nb * BB)
        .zip(out_t.chunks_exact_mut(job.m))
    {
        // SAFETY: forwarded from the caller.
        unsafe { for_each_row_chunk!(job, out, q4_kernel[BB, HAS_MIN](wrow.as_ptr(), job)) }
    }
}

/// # Safety
/// AVX2, FMA and F16C; the lengths checked in [`Avx2::int8_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_q8(job: &Job<'_>, out_t: &mut [f32]) {
    let nb = job.acts.k / 32;
    for (wrow, out) in job
        .weights
        .chunks_exact(nb * 34)
        .zip(out_t.chunks_exact_mut(job.m))
    {
        // SAFETY: forwarded from the caller.
        unsafe { for_each_row_chunk!(job, out, q8_kernel[](wrow.as_ptr(), job)) }
    }
}

/// The f16 pair at `p` (d and, for Q4_1, the min) as f32 lanes 0 and 1.
#[inline(always)]
unsafe fn f16_pair(p: *const u8) -> __m128 {
    // SAFETY: the caller points at a block of at least 4 bytes.
    unsafe { _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned())) }
}

/// One Q4_0/Q4_1 weight row (`BB`-byte blocks at `w`) against activation
/// rows `i..i + R`.
///
/// Two accumulators per activation row: the block term and the min term
/// are separate FMA chains, so neither waits on the other's latency.
///
/// # Safety
/// AVX2, FMA, F16C; `w` holds `k/32` blocks; rows `i..i + R` exist.
#[inline(always)]
unsafe fn q4_kernel<const R: usize, const BB: usize, const HAS_MIN: bool>(
    w: *const u8,
    job: &Job<'_>,
    i: usize,
) -> [f32; R] {
    let a = job.acts;
    let (k, nb) = (a.k, a.k / 32);
    // SAFETY: blocks b < nb of the row at `w`; activation rows i..i + R
    // exist, so offsets (i + t)·k + b·32 + 32 and (i + t)·nb + b are in bounds.
    unsafe {
        let mask = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let (yq, yd, ys) = (
            a.qs.as_ptr().add(i * k),
            a.d.as_ptr().add(i * nb),
            a.s.as_ptr().add(i * nb),
        );
        let mut acc = [_mm256_setzero_ps(); R];
        let mut acc_min = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let blk = w.add(b * BB);
            let scales = f16_pair(blk);
            let dw = _mm256_broadcastss_ps(scales);
            // The min term lands in all eight lanes, which hsum adds up, so
            // it is added as min/8 (exact: a power of two). Q4_0's min is
            // -8d, i.e. -d per lane, which fnmadd applies below.
            let min8 = _mm256_mul_ps(
                _mm256_broadcastss_ps(_mm_movehdup_ps(scales)),
                _mm256_set1_ps(0.125),
            );
            let packed = _mm_loadu_si128(blk.add(BB - 16).cast());
            let wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed), mask);
            for t in 0..R {
                let y = _mm256_loadu_si256(yq.add(t * k + b * 32).cast());
                let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, y), ones);
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*yd.add(t * nb + b)));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[t]);
                let s = _mm256_set1_ps(*ys.add(t * nb + b));
                acc_min[t] = if HAS_MIN {
                    _mm256_fmadd_ps(min8, s, acc_min[t])
                } else {
                    _mm256_fnmadd_ps(dw, s, acc_min[t])
                };
            }
        }
        let mut out = [0.0f32; R];
        for t in 0..R {
            out[t] = hsum(_mm256_add_ps(acc[t], acc_min[t]));
        }
        out
    }
}

/// One Q8_0 weight row against activation rows `i..i + R`. Even and odd
/// blocks go to separate accumulators to halve the FMA dependency chain
/// (unrolled by hand: an indexed accumulator array would live in memory).
///
/// # Safety
/// AVX2, FMA, F16C; `w` holds `k/32` blocks; rows `i..i + R` exist.
#[inline(always)]
unsafe fn q8_kernel<const R: usize>(w: *const u8, job: &Job<'_>, i: usize) -> [f32; R] {
    let a = job.acts;
    let (k, nb) = (a.k, a.k / 32);
    // SAFETY: as in q4_kernel.
    unsafe {
        let (yq, yd) = (a.qs.as_ptr().add(i * k), a.d.as_ptr().add(i * nb));
        let mut even = [_mm256_setzero_ps(); R];
        let mut odd = [_mm256_setzero_ps(); R];
        let mut b = 0;
        while b + 2 <= nb {
            q8_block(w, yq, yd, k, nb, b, &mut even);
            q8_block(w, yq, yd, k, nb, b + 1, &mut odd);
            b += 2;
        }
        if b < nb {
            q8_block(w, yq, yd, k, nb, b, &mut even);
        }
        let mut out = [0.0f32; R];
        for t in 0..R {
            out[t] = hsum(_mm256_add_ps(even[t], odd[t]));
        }
        out
    }
}

/// Block `b` of a Q8_0 row against `R` activation rows, into `acc`.
///
/// # Safety
/// As [`q8_kernel`], and `b < nb`.
#[inline(always)]
unsafe fn q8_block<const R: usize>(
    w: *const u8,
    yq: *const i8,
    yd: *const f32,
    k: usize,
    nb: usize,
    b: usize,
    acc: &mut [__m256; R],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let blk = w.add(b * 34);
        let dw = _mm256_broadcastss_ps(f16_pair(blk));
        let wq = _mm256_loadu_si256(blk.add(2).cast());
        // |-128| wraps to -128, which maddubs reads as unsigned 128.
        let wabs = _mm256_abs_epi8(wq);
        for (t, acc) in acc.iter_mut().enumerate() {
            let y = _mm256_loadu_si256(yq.add(t * k + b * 32).cast());
            let p16 = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(y, wq));
            let dot = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*yd.add(t * nb + b)));
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, *acc);
        }
    }
}

/// # Safety
/// AVX2, FMA, F16C; `w.len() == GROUP * k` and every `x[i].len() == k`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32_tile<const R: usize>(x: [&[f32]; R], w: &[f32], k: usize) -> [[f32; GROUP]; R] {
    let k8 = k / 8 * 8;
    // SAFETY: loads at kk + 8 <= k8 <= k = x[i].len() and
    // r·k + kk + 8 <= GROUP·k = w.len().
    unsafe {
        // R x GROUP accumulators (12 of the 16 ymm registers for R = 3), each
        // x vector loaded once per step and reused against GROUP rows.
        let mut acc = [[_mm256_setzero_ps(); GROUP]; R];
        let mut kk = 0;
        while kk < k8 {
            let mut xv = [_mm256_setzero_ps(); R];
            for (v, xi) in xv.iter_mut().zip(x.iter()) {
                *v = _mm256_loadu_ps(xi.as_ptr().add(kk));
            }
            for r in 0..GROUP {
                let wv = _mm256_loadu_ps(w.as_ptr().add(r * k + kk));
                for (acc, xv) in acc.iter_mut().zip(&xv) {
                    acc[r] = _mm256_fmadd_ps(*xv, wv, acc[r]);
                }
            }
            kk += 8;
        }
        let mut out = [[0.0f32; GROUP]; R];
        for ((out, acc), xi) in out.iter_mut().zip(&acc).zip(x) {
            for (r, (o, acc)) in out.iter_mut().zip(acc).enumerate() {
                let tail: f32 = (k8..k).map(|t| xi[t] * w[r * k + t]).sum();
                *o = hsum(*acc) + tail;
            }
        }
        out
    }
}
