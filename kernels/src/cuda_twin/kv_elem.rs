//! The KV cache's element types: bf16 (the default), f16, and fp8 e4m3 with
//! a scale per tensor, as vLLM's `kv_cache_dtype = "fp8_e4m3"`: a value
//! `x` is stored as `fp8(x / scale)` and read as `float(stored) * scale`.
//! fp8 halves the cache (twice the blocks in the same memory) for about
//! two decimal digits of precision; without calibrated scales the scale is
//! 1.0, as in vLLM, which keeps keys and values of the usual magnitudes
//! (|x| well under 448, e4m3's largest value) in range.
//!
//! The conversions here are bit-exact with CUDA's: `__float2bfloat16_rn`,
//! `__float2half_rn` and `__nv_fp8_e4m3(float)` (round to nearest even,
//! saturating to ±448, NaN kept) and their exact widenings back to f32.

use half::{bf16, f16};

/// How the KV cache stores an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum KvDType {
    /// What the rest of the step computes in; no conversion error beyond it.
    #[default]
    Bf16,
    /// Three more mantissa bits than bf16, a narrower range (±65504).
    F16,
    /// fp8 e4m3 (the "fn" variant: no infinities, ±448), a scale per tensor.
    Fp8E4m3,
}

impl KvDType {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            KvDType::Bf16 | KvDType::F16 => 2,
            KvDType::Fp8E4m3 => 1,
        }
    }

    /// The configuration's spelling: `"bf16"`, `"f16"`, `"fp8_e4m3"`.
    pub fn as_str(self) -> &'static str {
        match self {
            KvDType::Bf16 => "bf16",
            KvDType::F16 => "f16",
            KvDType::Fp8E4m3 => "fp8_e4m3",
        }
    }

    /// Parses the configuration's spelling (see [`Self::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        [KvDType::Bf16, KvDType::F16, KvDType::Fp8E4m3]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

/// The per-tensor scales of one layer's K and V (1.0 for bf16/f16, which
/// ignore them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvScales {
    pub k: f32,
    pub v: f32,
}

impl KvScales {
    /// No scaling: vLLM's default when a checkpoint ships no KV scales.
    pub const ONE: KvScales = KvScales { k: 1.0, v: 1.0 };
}

impl Default for KvScales {
    fn default() -> Self {
        Self::ONE
    }
}

/// An element of the KV cache: how a kernel stores an f32 in it and reads
/// it back. `scale` is the tensor's (only fp8 uses it).
pub trait KvElem: Copy + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static {
    const DTYPE: KvDType;
    fn store(v: f32, scale: f32) -> Self;
    fn load(self, scale: f32) -> f32;
}

impl KvElem for bf16 {
    const DTYPE: KvDType = KvDType::Bf16;
    fn store(v: f32, _scale: f32) -> Self {
        bf16::from_f32(v)
    }
    fn load(self, _scale: f32) -> f32 {
        self.to_f32()
    }
}

impl KvElem for f16 {
    const DTYPE: KvDType = KvDType::F16;
    fn store(v: f32, _scale: f32) -> Self {
        f16::from_f32(v)
    }
    fn load(self, _scale: f32) -> f32 {
        self.to_f32()
    }
}

/// One fp8 e4m3 value as stored (CUDA's `__nv_fp8_e4m3`): sign, 4 exponent
/// bits (bias 7), 3 mantissa bits; `S.1111.111` is NaN, there is no infinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[repr(transparent)]
pub struct Fp8E4m3(pub u8);

impl Fp8E4m3 {
    /// The largest finite value.
    pub const MAX: f32 = 448.0;
    const NAN: u8 = 0x7F;

    /// Round to nearest even, saturating to ±448 (CUDA's `__NV_SATFINITE`);
    /// NaN stays NaN.
    pub fn from_f32(v: f32) -> Self {
        let sign = if v.is_sign_negative() { 0x80 } else { 0 };
        if v.is_nan() {
            return Self(sign | Self::NAN);
        }
        let a = v.abs();
        if a >= Self::MAX {
            return Self(sign | 0x7E);
        }
        // Smallest normal is 2^-6; below it the step is 2^-9 (subnormals),
        // and a subnormal that rounds up to 8 steps is the smallest normal,
        // whose code is 8: the carry is the encoding's.
        let code = if a < 1.0 / 64.0 {
            (a * 512.0).round_ties_even() as u8
        } else {
            // 2^e <= a < 2^(e+1), e in -6..=8; scaling by powers of two is exact.
            let e = (a.to_bits() >> 23) as i32 - 127;
            let mantissa = a / 2f32.powi(e) - 1.0;
            let steps = (mantissa * 8.0).round_ties_even() as i32;
            // A mantissa rounding up to 8 carries into the exponent. Below
            // 448 the largest result is 0x7E (448 itself).
            ((e + 7) * 8 + steps) as u8
        };
        Self(sign | code)
    }

    /// The exact value (NaN for the NaN codes).
    pub fn to_f32(self) -> f32 {
        let sign = if self.0 & 0x80 != 0 { -1.0 } else { 1.0 };
        let exp = i32::from((self.0 >> 3) & 0x0F);
        let mantissa = f32::from(self.0 & 0x07);
        if exp == 15 && mantissa == 7.0 {
            return f32::NAN;
        }
        let magnitude = if exp == 0 {
            mantissa / 8.0 / 64.0
        } else {
            (1.0 + mantissa / 8.0) * 2f32.powi(exp - 7)
        };
        sign * magnitude
    }
}

impl KvElem for Fp8E4m3 {
    const DTYPE: KvDType = KvDType::Fp8E4m3;
    fn store(v: f32, scale: f32) -> Self {
        Self::from_f32(v / scale)
    }
    fn load(self, scale: f32) -> f32 {
        self.to_f32() * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fp8_code_reads_back_to_itself() {
        for code in 0..=255u8 {
            let v = Fp8E4m3(code).to_f32();
            if code & 0x7F == 0x7F {
                assert!(v.is_nan(), "{code:#x}");
                continue;
            }
            // -0 reads as -0.0 and is stored back as the same code.
            assert_eq!(Fp8E4m3::from_f32(v).0, code, "{code:#x} = {v}");
        }
        assert_eq!(Fp8E4m3(0x7E).to_f32(), 448.0);
        assert_eq!(Fp8E4m3(0x08).to_f32(), 1.0 / 64.0);
        assert_eq!(Fp8E4m3(0x01).to_f32(), 1.0 / 512.0);
        assert_eq!(Fp8E4m3(0x38).to_f32(), 1.0);
    }

    #[test]
    fn fp8_rounds_to_nearest_even_and_saturates() {
        let f = |v: f32| Fp8E4m3::from_f32(v).to_f32();
        // Between 1 and 1.125 the midpoint 1.0625 goes to the even code (1.0),
        // between 1.125 and 1.25 the midpoint 1.1875 to 1.25.
        assert_eq!(f(1.0625), 1.0);
        assert_eq!(f(1.0626), 1.125);
        assert_eq!(f(1.1875), 1.25);
        // A mantissa rounding up carries into the exponent.
        assert_eq!(f(1.97), 2.0);
        // Subnormals, and the one that rounds up to the smallest normal.
        assert_eq!(f(3.0 / 1024.0), 2.0 / 512.0);
        assert_eq!(f(15.9 / 1024.0), 1.0 / 64.0);
        assert_eq!(f(1.0 / 2048.0), 0.0);
        // Saturation (CUDA's __NV_SATFINITE), infinities included.
        assert_eq!(f(460.0), 448.0);
        assert_eq!(f(1e9), 448.0);
        assert_eq!(f(f32::NEG_INFINITY), -448.0);
        assert!(f(f32::NAN).is_nan());
        // Relative error of a normal value is at most 2^-4.
        for i in 1..2000 {
            let v = i as f32 * 0.173 - 150.0;
            if v.abs() >= 1.0 / 64.0 {
                assert!((f(v) - v).abs() <= v.abs() / 16.0, "{v} -> {}", f(v));
            }
        }
    }

    #[test]
    fn fp8_scales_divide_on_store_and_multiply_on_load() {
        let stored = Fp8E4m3::store(900.0, 4.0);
        assert_eq!(stored.to_f32(), 224.0);
        assert_eq!(stored.load(4.0), 896.0);
        assert_eq!(
            bf16::store(3.3, 100.0).load(100.0),
            bf16::from_f32(3.3).to_f32()
        );
    }

    #[test]
    fn kv_dtypes_parse_their_configuration_names() {
        for d in [KvDType::Bf16, KvDType::F16, KvDType::Fp8E4m3] {
            assert_eq!(KvDType::parse(d.as_str()), Some(d));
        }
        assert_eq!(KvDType::parse("fp8"), None);
        assert_eq!(KvDType::Fp8E4m3.bytes(), 1);
    }
}
