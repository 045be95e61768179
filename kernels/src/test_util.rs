//! Shared helpers for the unit tests: a tiny deterministic RNG and random
//! weight matrices in every format.

use half::f16;

use crate::{Matrix, WeightDType};

/// xorshift64*: deterministic, dependency-free, good enough for test data.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub(crate) fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Activation-like values: mostly in [-1, 1), one in 64 an outlier up to
    /// ±20, as LLM hidden states have.
    pub(crate) fn activations(&mut self, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| {
                let v = self.uniform();
                if self.below(64) == 0 {
                    v * 20.0
                } else {
                    v
                }
            })
            .collect()
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// A random `rows x cols` matrix in `dtype`. Float and 32-block formats go
/// through the quantisers from random values; K-quants (which have no
/// quantiser here) and a raw Q8_0 variant are random bytes with sane f16
/// scales, so every bit pattern of the quants occurs (Q8_0's -128 included).
pub(crate) fn random_matrix(rng: &mut Rng, dtype: WeightDType, rows: usize, cols: usize) -> Matrix {
    let scale = |rng: &mut Rng, at: usize, b: &mut [u8], mag: f32| {
        let v = f16::from_f32(rng.uniform() * mag).to_le_bytes();
        b[at..at + 2].copy_from_slice(&v);
    };
    match dtype {
        WeightDType::Q4K | WeightDType::Q6K => {
            let mut data = rng.bytes(rows * dtype.row_bytes(cols));
            for b in data.chunks_exact_mut(dtype.block_bytes()) {
                if dtype == WeightDType::Q4K {
                    scale(rng, 0, b, 0.01);
                    scale(rng, 2, b, 0.01);
                } else {
                    scale(rng, 208, b, 0.01);
                }
            }
            Matrix::from_raw(dtype, rows, cols, data).unwrap()
        }
        _ => {
            let values: Vec<f32> = (0..rows * cols).map(|_| rng.uniform() * 0.1).collect();
            Matrix::quantize(dtype, rows, cols, &values).unwrap()
        }
    }
}

/// Q8_0 from random bytes: quants cover all of -128..=127.
pub(crate) fn random_raw_q8_0(rng: &mut Rng, rows: usize, cols: usize) -> Matrix {
    let mut data = rng.bytes(rows * WeightDType::Q8_0.row_bytes(cols));
    for b in data.chunks_exact_mut(34) {
        b[..2].copy_from_slice(&f16::from_f32(rng.uniform() * 0.01).to_le_bytes());
    }
    Matrix::from_raw(WeightDType::Q8_0, rows, cols, data).unwrap()
}
