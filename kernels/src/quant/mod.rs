//! GGML weight formats: block layouts, dequantisation and reference quantisers.
//!
//! Layouts follow ggml-common.h exactly, so that bytes read from a GGUF file
//! can be used without conversion, and bytes we write can be read by llama.cpp.
//! Dequantisation here is the plain per-row form; the matmul kernels unpack
//! blocks their own way but must agree with it (the tests check that).

mod kquants;
mod quantize;

pub use quantize::quantize_row;

/// The storage type of a weight matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightDType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
}

impl WeightDType {
    /// Values per block (1 for plain float types).
    pub fn block_values(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block_values() > 1
    }

    /// Bytes that one row of `cols` values takes.
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_values() * self.block_bytes()
    }
}

#[inline(always)]
pub(crate) fn read_f16(bytes: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// IEEE half bits to f32 without branches, so that a loop over a row
/// vectorises (`half`'s scalar conversion checks for F16C on every call).
///
/// The 15 exponent+mantissa bits are moved into f32 position and rebased by
/// multiplying with 2^112, which also turns half subnormals into the right f32
/// normals; only infinities and NaNs (exponent all ones) need a fix-up.
#[inline(always)]
pub(crate) fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let em = (h & 0x7fff) as u32;
    // 2^112 as an f32: exponent field 127 + 112.
    let rebased = (f32::from_bits(em << 13) * f32::from_bits((127 + 112) << 23)).to_bits();
    let bits = if em >= 0x7c00 {
        (em << 13) | 0x7f80_0000
    } else {
        rebased
    };
    f32::from_bits(bits | sign)
}

/// Dequantises one row (`row` holds `out.len()` values).
pub fn dequantize_row(dtype: WeightDType, row: &[u8], out: &mut [f32]) {
    dequantize_row_impl(dtype, row, out)
}

/// The body of [`dequantize_row`], inlined into callers compiled for wider
/// SIMD (the matmul's AVX2 tile loader) so that its loops vectorise for them.
#[inline(always)]
pub(crate) fn dequantize_row_impl(dtype: WeightDType, row: &[u8], out: &mut [f32]) {
    match dtype {
        WeightDType::F32 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        WeightDType::F16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        WeightDType::BF16 => {
            // bf16 is the top half of an f32: the conversion is a shift.
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        WeightDType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(row.chunks_exact(18)) {
                let d = read_f16(b, 0);
                for i in 0..16 {
                    let q = b[2 + i];
                    o[i] = ((q & 0x0f) as i32 - 8) as f32 * d;
                    o[i + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        WeightDType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(row.chunks_exact(20)) {
                let d = read_f16(b, 0);
                let m = read_f16(b, 2);
                for i in 0..16 {
                    let q = b[4 + i];
                    o[i] = (q & 0x0f) as f32 * d + m;
                    o[i + 16] = (q >> 4) as f32 * d + m;
                }
            }
        }
        WeightDType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(row.chunks_exact(34)) {
                let d = read_f16(b, 0);
                for i in 0..32 {
                    o[i] = (b[2 + i] as i8) as f32 * d;
                }
            }
        }
        WeightDType::Q4K => {
            for (o, b) in out.chunks_exact_mut(256).zip(row.chunks_exact(144)) {
                kquants::dequantize_q4k_block(b, o);
            }
        }
        WeightDType::Q6K => {
            for (o, b) in out.chunks_exact_mut(256).zip(row.chunks_exact(210)) {
                kquants::dequantize_q6k_block(b, o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    #[test]
    fn f16_conversion_matches_half_for_every_bit_pattern() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_bits_to_f32(h);
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
    }
}
