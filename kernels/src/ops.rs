//! Element-wise and row-wise operations of a decoder layer.
//!
//! Loops are written in the shapes the compiler vectorises (independent
//! lanes for reductions, branch-free bodies), and `exp` is a polynomial
//! ([`exp_approx`]) rather than a libm call, which would keep softmax and
//! SiLU scalar.

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
