//! Element-wise and row-wise operations of decoder and encoder layers.
//!
//! Loops are written in the shapes the compiler vectorises (independent
//! lanes for reductions, branch-free bodies), and `exp` is a polynomial
//! ([`exp_approx`]) rather than a libm call, which would keep softmax and
//! SiLU scalar.

use crate::cpu::{dot_lanes, Isa};
#[cfg(target_arch = "x86_64")]
use crate::cpu::{Avx2Simd, Avx512, Simd};

/// RMSNorm of each `dim`-wide row of `x` into `out`, scaled by `weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ms = sum_squares(xr) / dim as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// `Σ v²` in eight independent lanes, so that the loop vectorises.
fn sum_squares(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for l in 0..8 {
            lanes[l] += c[l] * c[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `gate[i] = silu(gate[i]) * up[i]`, the SwiGLU activation.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if let crate::cpu::Isa::Avx2(_) = crate::cpu::Isa::detect() {
        // SAFETY: the token proves the target features.
        return unsafe { silu_mul_avx2(gate, up) };
    }
    silu_mul_impl(gate, up)
}

/// [`silu_mul`] compiled for AVX2: eight lanes instead of the baseline's
/// four, and the same operations (Rust never fuses a multiply and an add
/// on its own), so the same bits.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
    silu_mul_impl(gate, up)
}

#[inline(always)]
fn silu_mul_impl(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_approx(-*g)) * u;
    }
}

/// `x[i] += y[i]`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Adds `bias` to every `bias.len()`-wide row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_assign(row, bias);
    }
}

/// In-place softmax; returns nothing, leaves a probability vector.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = exp_approx(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `Σ a[i]·b[i]` over the shorter length, with the widest SIMD the CPU has
/// (AVX2 + FMA, else portable lanes): for callers outside this crate, such
/// as the encoders' attention, whose dots are short and many.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if let Isa::Avx2(_) = Isa::detect() {
        // SAFETY: detection proved the features `Avx2Simd` is compiled for.
        return unsafe { dot_avx2(a, b) };
    }
    dot_lanes(a, b)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: the caller guarantees the target features.
    unsafe { <Avx2Simd as Simd>::dot(a, b) }
}

/// The exact (erf) GELU, `x·(1 + erf(x/√2))/2`, in place: BERT's and
/// DeBERTa's `"gelu"`. The loop body is branch-free and is compiled once
/// per instruction set, so it runs 16 (AVX-512) or 8 (AVX2) lanes wide; the
/// arithmetic per element is the same on every path (no fused operations),
/// so every path gives the same bits.
pub fn gelu_erf(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if Avx512::detect().is_some() {
            // SAFETY: detection proved AVX-512F.
            return unsafe { gelu_erf_avx512(x) };
        }
        if let Isa::Avx2(_) = Isa::detect() {
            // SAFETY: detection proved AVX2.
            return unsafe { gelu_erf_avx2(x) };
        }
    }
    gelu_erf_body(x)
}

#[inline(always)]
fn gelu_erf_body(x: &mut [f32]) {
    for v in x {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_erf_avx512(x: &mut [f32]) {
    gelu_erf_body(x)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_erf_avx2(x: &mut [f32]) {
    gelu_erf_body(x)
}

/// erf to ~2e-7: Numerical Recipes' erfc Chebyshev fit (fractional error
/// < 1.2e-7) with the branch-free [`exp_approx`]. `std` has no erf.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_77))))))));
    let erf = 1.0 - t * exp_approx(poly);
    if x >= 0.0 {
        erf
    } else {
        -erf
    }
}

/// `e^x` to within 2 ulp for `x` in [-87.3, 88.7] (beyond, it saturates at
/// those ends; NaN stays NaN), branch-free so that loops over it vectorise.
///
/// Cephes' `expf`: `x = n·ln2 + r` with `|r| <= ln2/2`, `e^r` by a degree-6
/// polynomial, and `2^n` added to the exponent bits.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_54, 88.722_83);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // n is in -126..=128 here, so the exponent stays in range.
    f32::from_bits(e.to_bits().wrapping_add(((n as i32) << 23) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_mul_gives_the_portable_bits() {
        let gate: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let up: Vec<f32> = (0..1000).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let (mut fast, mut plain) = (gate.clone(), gate);
        silu_mul(&mut fast, &up);
        silu_mul_impl(&mut plain, &up);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fast), bits(&plain));
        // silu(x)·u at a few points, against f64.
        for (i, x) in [0usize, 400, 500, 999]
            .iter()
            .map(|&i| (i, (i as f32 - 500.0) * 0.037))
        {
            let want = x as f64 / (1.0 + (-(x as f64)).exp()) * up[i] as f64;
            assert!(
                (fast[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{x}"
            );
        }
    }

    #[test]
    fn exp_approx_is_within_two_ulp_over_its_range() {
        let mut worst = 0.0f64;
        let steps = 200_000;
        for i in 0..=steps {
            let x = -87.0 + 175.5 * i as f32 / steps as f32;
            let want = (x as f64).exp();
            let rel = ((exp_approx(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_approx(0.0), 1.0);
        assert!(exp_approx(f32::NAN).is_nan());
        assert!(exp_approx(-1000.0) < 1e-37);
        assert!(exp_approx(1000.0) > 3e38);
    }

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-1.0, -0.842_700_8),
            (2.0, 0.995_322_3),
        ] {
            assert!((erf(x) - want).abs() < 1e-6, "erf({x}) = {}", erf(x));
        }
    }

    /// Every instruction set's loop gives the scalar formula's bits, and
    /// GELU itself is within 1e-6 of an f64 one (tails included).
    #[test]
    fn gelu_erf_is_the_same_on_every_path_and_close_to_f64() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.021).collect();
        let mut fast = x.clone();
        gelu_erf(&mut fast);
        for (v, got) in x.iter().zip(&fast) {
            let scalar = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
            assert_eq!(got.to_bits(), scalar.to_bits(), "gelu({v})");
            let v = *v as f64;
            let erf64 = libm_erf(v / std::f64::consts::SQRT_2);
            let want = 0.5 * v * (1.0 + erf64);
            assert!(
                (*got as f64 - want).abs() < 1e-6 * (1.0 + want.abs()),
                "gelu({v}) = {got} vs {want}"
            );
        }
    }

    /// erf in f64 by Simpson's rule on `2/√π ∫₀ˣ e^(-t²) dt` (2000
    /// intervals: error far below 1e-12 for the |x| < 8 used here), as the
    /// test's yardstick.
    fn libm_erf(x: f64) -> f64 {
        let n = 2000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let inner: f64 = (1..n)
            .map(|i| f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
            .sum();
        (f(0.0) + inner + f(x)) * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn dot_matches_a_plain_sum() {
        for len in [0, 1, 7, 8, 31, 32, 33, 100] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-5, "len {len}");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut x = vec![1.0, 3.0, -2.0, 3.0, 10.0, -10.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[4] > 0.99 && x[1] == x[3] && x[0] > x[2] && x[2] > x[5]);
    }

    #[test]
    fn silu_mul_matches_its_formula() {
        let mut g: Vec<f32> = (-40..40).map(|i| i as f32 * 0.37).collect();
        let u: Vec<f32> = (0..80).map(|i| 1.0 + i as f32 * 0.01).collect();
        let want: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64)
            .collect();
        silu_mul(&mut g, &u);
        for (got, want) in g.iter().zip(want) {
            assert!(
                (*got as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn rms_norm_scales_rows_to_unit_rms() {
        let x: Vec<f32> = (0..2 * 19).map(|i| (i as f32 - 11.0) * 0.3).collect();
        let w = vec![2.0f32; 19];
        let mut out = vec![0.0; x.len()];
        rms_norm(&x, &w, 0.0, &mut out);
        for row in out.chunks_exact(19) {
            let rms = (row.iter().map(|v| (v / 2.0) * (v / 2.0)).sum::<f32>() / 19.0).sqrt();
            assert!((rms - 1.0).abs() < 1e-5, "{rms}");
        }
    }
}
