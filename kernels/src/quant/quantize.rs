//! Reference quantisers, bit-for-bit those of ggml-quants.c
//! (`quantize_row_q4_0_ref`, `quantize_row_q4_1_ref`, `quantize_row_q8_0_ref`),
//! so that requantised weights are what llama.cpp would have written.

use half::{bf16, f16};

use super::WeightDType;
use crate::KernelError;

/// Quantises one row of values into `dtype`'s block layout.
///
/// K-quants are refused: their reference quantisers search for scales and
/// would be a port of their own; requantising *to* them is not something the
/// serving path needs.
pub fn quantize_row(dtype: WeightDType, values: &[f32]) -> Result<Vec<u8>, KernelError> {
    let block = dtype.block_values();
    if !values.len().is_multiple_of(block) {
        return Err(KernelError::RowNotBlockAligned {
            dtype,
            block,
            cols: values.len(),
        });
    }
    let mut out = Vec::with_capacity(dtype.row_bytes(values.len()));
    match dtype {
        WeightDType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        WeightDType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        WeightDType::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        WeightDType::Q4_0 => values
            .chunks_exact(32)
            .for_each(|x| quantize_block_q4_0(x, &mut out)),
        WeightDType::Q4_1 => values
            .chunks_exact(32)
            .for_each(|x| quantize_block_q4_1(x, &mut out)),
        WeightDType::Q8_0 => values
            .chunks_exact(32)
            .for_each(|x| quantize_block_q8_0(x, &mut out)),
        WeightDType::Q4K | WeightDType::Q6K => return Err(KernelError::UnsupportedTarget(dtype)),
    }
    Ok(out)
}

/// Symmetric 4-bit: the value of largest magnitude maps to -8 exactly (so the
/// sign of `d` follows it), the rest round to nearest by `+ 8.5` truncation.
fn quantize_block_q4_0(x: &[f32], out: &mut Vec<u8>) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    for j in 0..16 {
        // `as i8` truncates toward zero like C's (int8_t) cast; the argument
        // lies in [0.5, 16.5], so only the upper clamp can bite.
        let lo = ((x[j] * id + 8.5) as i8).clamp(0, 15) as u8;
        let hi = ((x[j + 16] * id + 8.5) as i8).clamp(0, 15) as u8;
        out.push(lo | (hi << 4));
    }
}

/// Asymmetric 4-bit: `min + d * q` with `q` in 0..=15 spanning [min, max].
fn quantize_block_q4_1(x: &[f32], out: &mut Vec<u8>) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
    for j in 0..16 {
        let lo = (((x[j] - min) * id + 0.5) as i8).clamp(0, 15) as u8;
        let hi = (((x[j + 16] - min) * id + 0.5) as i8).clamp(0, 15) as u8;
        out.push(lo | (hi << 4));
    }
}

/// Symmetric 8-bit with `d = amax / 127` and round-half-away-from-zero
/// (C's `roundf`, which is what `f32::round` is).
fn quantize_block_q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize_row;

    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect()
    }

    #[test]
    fn quantize_row_refuses_unaligned_rows_and_k_quants() {
        assert!(matches!(
            quantize_row(WeightDType::Q8_0, &[0.0; 33]),
            Err(KernelError::RowNotBlockAligned {
                block: 32,
                cols: 33,
                ..
            })
        ));
        assert!(matches!(
            quantize_row(WeightDType::Q4K, &[0.0; 256]),
            Err(KernelError::UnsupportedTarget(WeightDType::Q4K))
        ));
    }

    #[test]
    fn q4_0_maps_the_largest_magnitude_to_minus_eight() {
        let mut x = vec![0.0f32; 32];
        x[3] = -2.0;
        x[7] = 1.0;
        let bytes = quantize_row(WeightDType::Q4_0, &x).unwrap();
        assert_eq!(f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(), 0.25);
        // d = max / -8 = 0.25: -2.0 → -8 → stored 0; 1.0 → +4 → 12; zeros → 8.
        assert_eq!(bytes[2 + 3] & 0x0f, 0);
        assert_eq!(bytes[2 + 7] & 0x0f, 12);
        assert_eq!(bytes[2] & 0x0f, 8);
    }

    #[test]
    fn zero_blocks_quantise_to_zero() {
        for dtype in [WeightDType::Q4_0, WeightDType::Q4_1, WeightDType::Q8_0] {
            let bytes = quantize_row(dtype, &[0.0; 64]).unwrap();
            let mut out = vec![1.0; 64];
            dequantize_row(dtype, &bytes, &mut out);
            assert!(out.iter().all(|&v| v == 0.0), "{dtype:?}");
        }
    }

    /// The round trip error of each format is bounded by half a quantisation
    /// step (plus the f16 rounding of the scale and min).
    #[test]
    fn round_trip_error_is_within_half_a_step() {
        let x = values(256);
        for dtype in [
            WeightDType::F32,
            WeightDType::F16,
            WeightDType::BF16,
            WeightDType::Q4_0,
            WeightDType::Q4_1,
            WeightDType::Q8_0,
        ] {
            let bytes = quantize_row(dtype, &x).unwrap();
            assert_eq!(bytes.len(), dtype.row_bytes(x.len()), "{dtype:?}");
            let mut back = vec![0.0; x.len()];
            dequantize_row(dtype, &bytes, &mut back);
            for (b, (xb, yb)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
                let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let (lo, hi) = xb
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                let bound = match dtype {
                    WeightDType::F32 => 0.0,
                    WeightDType::F16 => amax * 2f32.powi(-11),
                    WeightDType::BF16 => amax * 2f32.powi(-8),
                    // Step amax/8; a value of the opposite sign to the
                    // extreme one at +8 steps is clamped to +7, a whole step
                    // off. Plus the f16 scale error times the largest quant.
                    WeightDType::Q4_0 => amax / 8.0 + amax * 2f32.powi(-11),
                    // Half a step of (hi - lo) / 15, plus f16 errors of d
                    // (times q <= 15) and of the min.
                    WeightDType::Q4_1 => (hi - lo) / 30.0 + 4.0 * amax * 2f32.powi(-11),
                    _ => amax / 254.0 + amax * 2f32.powi(-11),
                } * 1.01;
                for (i, (a, b2)) in xb.iter().zip(yb).enumerate() {
                    assert!(
                        (a - b2).abs() <= bound,
                        "{dtype:?} block {b} value {i}: {a} vs {b2} (bound {bound})"
                    );
                }
            }
        }
    }
}
