//! AVX2 + FMA + F16C matmul kernels, reachable only through the
//! [`Avx2`] token (see [`crate::cpu`]), whose existence is what makes each
//! `unsafe` call into a `#[target_feature]` function sound.
//!
//! Int8 dot products follow ggml: `maddubs` multiplies unsigned bytes by
//! signed bytes and adds pairs into i16, `madd` with ones widens pairs into
//! i32. For `maddubs` not to saturate, `2·|u|·|s| <= 32767`: 2·15·127 for
//! 4-bit weights, and 2·128·127 for Q8_0 through the sign trick
//! `|w| · sign(y, w)` (activations are never -128).
//!
//! Batch invariance: a weight row's block is first dotted *exactly* (an i32
//! `isum`), and only then enters f32, through [`scale_block`] and
//! [`offset_block`] with one weight row per lane. The one-row kernel here and
//! the repacked kernel in `avx2_repack.rs` both go through those two
//! functions, block by block in order, and finish with the same single add,
//! so an output element is the same sequence of roundings whichever kernel,
//! batch size or position in the batch produced it.

use std::arch::x86_64::*;

use super::avx2_repack::NR;
use super::float::GROUP;
use super::int8::Format;
use super::quantize_act::QuantizedActs;
use crate::cpu::{hsum, Avx2};
use crate::quant::{dequantize_row_impl, WeightDType};

impl Avx2 {
    /// Weight rows `weights` (whole GGML rows, `row_bytes` each) against the
    /// single activation row of `acts`; row r's result into `out[r]`.
    pub(crate) fn int8_gemv(
        self,
        format: Format,
        weights: &[u8],
        row_bytes: usize,
        acts: &QuantizedActs,
        out: &mut [f32],
    ) {
        let (k, nb) = (acts.k, acts.k / 32);
        // The lengths every unchecked access in the kernels relies on.
        assert!(k % 32 == 0 && row_bytes == nb * format.block_bytes());
        assert!(weights.len() == out.len() * row_bytes);
        assert!(acts.qs.len() >= k && acts.d.len() >= nb && acts.s.len() >= nb);
        for (chunk, out) in weights.chunks(NR * row_bytes).zip(out.chunks_mut(NR)) {
            // A partial group repeats its last row; those lanes are dropped.
            let rows: [*const u8; NR] =
                std::array::from_fn(|r| chunk[r.min(out.len() - 1) * row_bytes..].as_ptr());
            // The next group's bytes follow this one's; only ever prefetched,
            // so past the end of `weights` is harmless.
            let next = chunk.as_ptr().wrapping_add(NR * row_bytes);
            // SAFETY: `self` proves the target features; each pointer starts
            // a whole row of nb blocks, and the activation row has nb blocks.
            let res = unsafe {
                match format {
                    Format::Q4_0 => gemv_u4::<18, false>(rows, next, acts),
                    Format::Q4_1 => gemv_u4::<20, true>(rows, next, acts),
                    Format::Q8_0 => gemv_q8(rows, next, acts),
                }
            };
            out.copy_from_slice(&res[..out.len()]);
        }
    }

    /// `R` activation rows against the [`GROUP`] f32 weight rows in `w`
    /// (`GROUP * k` values); `out[i][r]` is the dot of row `i` with row `r`.
    ///
    /// Each (activation, weight row) pair has its own accumulator, fed in
    /// the same k order with the same FMAs and finished by the same `hsum`
    /// and tail whatever `R` is, so a pair's result does not depend on how
    /// many activation rows share the call (batch invariance).
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

/// `acc + f32(isum) · (d_w · d_x)`, lane r for weight row r: the first of
/// the two float steps per block that every AVX2 int8 kernel takes.
///
/// # Safety
/// AVX2 and FMA in the caller.
#[inline(always)]
pub(super) unsafe fn scale_block(acc: __m256, isum: __m256i, dw: __m256, dx: f32) -> __m256 {
    #[allow(unused_unsafe)]
    // SAFETY: register-only intrinsics; the caller has the target features.
    unsafe {
        _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(isum),
            _mm256_mul_ps(dw, _mm256_set1_ps(dx)),
            acc,
        )
    }
}

/// `acc_min + min_w · s_x`: the 4-bit formats' second step per block (Q4_0's
/// min is `-8·d_w`). Kept in its own accumulator, added to the first once at
/// the end.
///
/// # Safety
/// AVX2 and FMA in the caller.
#[inline(always)]
pub(super) unsafe fn offset_block(acc_min: __m256, mins: __m256, sx: f32) -> __m256 {
    #[allow(unused_unsafe)]
    // SAFETY: register-only intrinsics; the caller has the target features.
    unsafe {
        _mm256_fmadd_ps(mins, _mm256_set1_ps(sx), acc_min)
    }
}

/// Lane r = the sum of the eight i32 lanes of `v[r]` (exact: integer adds,
/// so the order does not matter).
#[inline(always)]
unsafe fn sum_lanes_8x8(v: [__m256i; NR]) -> __m256i {
    #[allow(unused_unsafe)]
    // SAFETY: register-only intrinsics; the caller has the target features.
    unsafe {
        let h01 = _mm256_hadd_epi32(v[0], v[1]);
        let h23 = _mm256_hadd_epi32(v[2], v[3]);
        let h45 = _mm256_hadd_epi32(v[4], v[5]);
        let h67 = _mm256_hadd_epi32(v[6], v[7]);
        // h0123 lane j (j < 4) is the sum of v[j]'s lanes 0..4, lane 4 + j
        // that of its lanes 4..8; h4567 likewise for v[4 + j].
        let h0123 = _mm256_hadd_epi32(h01, h23);
        let h4567 = _mm256_hadd_epi32(h45, h67);
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(h0123, h4567),
            _mm256_permute2x128_si256::<0x31>(h0123, h4567),
        )
    }
}

/// The f16 scale `d` (lane r) and the f16 pair after it (the Q4_1 min) of
/// block `b` of each of the eight rows, as f32.
///
/// # Safety
/// AVX2 and F16C in the caller; block `b` of every row exists (at least 4 bytes).
#[inline(always)]
unsafe fn block_scales<const BB: usize>(rows: &[*const u8; NR], b: usize) -> (__m256, __m256) {
    // SAFETY: forwarded from the caller.
    unsafe {
        // Lane r: d_r in the low 16 bits, the next two bytes in the high.
        let at = b * BB;
        let pairs = _mm256_setr_epi32(
            read_i32(rows[0].add(at)),
            read_i32(rows[1].add(at)),
            read_i32(rows[2].add(at)),
            read_i32(rows[3].add(at)),
            read_i32(rows[4].add(at)),
            read_i32(rows[5].add(at)),
            read_i32(rows[6].add(at)),
            read_i32(rows[7].add(at)),
        );
        // Per 128-bit half, the four low u16 then the four high ones...
        let split = _mm256_setr_epi8(
            0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, //
            0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
        );
        // ...then the 64-bit groups reordered to d0..d7 | hi0..hi7.
        let s = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(pairs, split));
        (
            _mm256_cvtph_ps(_mm256_castsi256_si128(s)),
            _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(s)),
        )
    }
}

/// Prefetches block `b`'s share (`NR * BB` bytes) of the next group of
/// eight rows, so that a matrix streamed from memory arrives ahead of use:
/// the hardware prefetcher does not follow eight interleaved row streams
/// as it does one row read front to back.
#[inline(always)]
fn prefetch_part<const BB: usize>(next: *const u8, b: usize) {
    let mut at = b * NR * BB;
    while at < (b + 1) * NR * BB {
        #[allow(unused_unsafe)]
        // SAFETY: a prefetch is a hint that never faults, whatever the address.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(at).cast())
        };
        at += 64;
    }
}

/// # Safety
/// `p` points at 4 readable bytes.
#[inline(always)]
unsafe fn read_i32(p: *const u8) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe { p.cast::<i32>().read_unaligned() }
}

/// Eight Q4_0/Q4_1 weight rows (`BB`-byte blocks, starting at `rows`)
/// against the one activation row of `a`.
///
/// Each row's block is unpacked and dotted as ggml does, and the eight
/// blocks' i32 lanes are then summed into one vector of eight exact
/// per-row sums, so the float steps are those of the repacked kernel.
///
/// # Safety
/// AVX2, FMA, F16C; every row holds `a.k / 32` blocks; `a` has a row.
/// `next` (the following group, prefetched) may point anywhere.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_u4<const BB: usize, const HAS_MIN: bool>(
    rows: [*const u8; NR],
    next: *const u8,
    a: &QuantizedActs,
) -> [f32; NR] {
    let nb = a.k / 32;
    // SAFETY: blocks b < nb of each row; activation offsets b·32 + 32 <= k
    // and b < nb.
    unsafe {
        let mask = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let (mut acc, mut acc_min) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for b in 0..nb {
            prefetch_part::<BB>(next, b);
            let y = _mm256_loadu_si256(a.qs.as_ptr().add(b * 32).cast());
            // Hand-written loop rather than `array::from_fn`: a closure does
            // not inherit this function's target features.
            let mut dots = [_mm256_setzero_si256(); NR];
            for (dot, row) in dots.iter_mut().zip(&rows) {
                let packed = _mm_loadu_si128(row.add(b * BB + BB - 16).cast());
                let wq =
                    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed), mask);
                *dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, y), ones);
            }
            let (dw, min) = block_scales::<BB>(&rows, b);
            let mins = if HAS_MIN {
                min
            } else {
                _mm256_mul_ps(dw, _mm256_set1_ps(-8.0))
            };
            acc = scale_block(acc, sum_lanes_8x8(dots), dw, *a.d.get_unchecked(b));
            acc_min = offset_block(acc_min, mins, *a.s.get_unchecked(b));
        }
        let mut out = [0.0f32; NR];
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(acc, acc_min));
        out
    }
}

/// Eight Q8_0 weight rows against the one activation row of `a`, as
/// [`gemv_u4`] with the sign trick.
///
/// # Safety
/// As [`gemv_u4`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_q8(rows: [*const u8; NR], next: *const u8, a: &QuantizedActs) -> [f32; NR] {
    let nb = a.k / 32;
    // SAFETY: as in gemv_u4.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            prefetch_part::<34>(next, b);
            let y = _mm256_loadu_si256(a.qs.as_ptr().add(b * 32).cast());
            let mut dots = [_mm256_setzero_si256(); NR];
            for (dot, row) in dots.iter_mut().zip(&rows) {
                let wq = _mm256_loadu_si256(row.add(b * 34 + 2).cast());
                // |-128| wraps to -128, which maddubs reads as unsigned 128.
                let p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(wq), _mm256_sign_epi8(y, wq));
                *dot = _mm256_madd_epi16(p16, ones);
            }
            let (dw, _) = block_scales::<34>(&rows, b);
            acc = scale_block(acc, sum_lanes_8x8(dots), dw, *a.d.get_unchecked(b));
        }
        let mut out = [0.0f32; NR];
        _mm256_storeu_ps(out.as_mut_ptr(), acc);
        out
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
