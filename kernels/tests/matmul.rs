//! The public matmul contract, through the public API only: every format,
//! batch sizes 1..33, odd output counts, checked against f64 products of the
//! dequantised weights within the error the format's path allows.

// Test helpers outside #[test] functions may unwrap too (clippy.toml only
// exempts the test functions themselves).
#![allow(clippy::unwrap_used)]

mod common;

use common::Rng;
use sluice_kernels::quant::quantize_row;
use sluice_kernels::{matmul, KernelError, Matrix, WeightDType};

fn random_matrix(rng: &mut Rng, dtype: WeightDType, n: usize, k: usize) -> Matrix {
    if matches!(dtype, WeightDType::Q4K | WeightDType::Q6K) {
        // No quantiser for K-quants: random bytes with small finite scales.
        let mut data: Vec<u8> = (0..n * dtype.row_bytes(k))
            .map(|_| rng.next_u64() as u8)
            .collect();
        let at: &[usize] = if dtype == WeightDType::Q4K {
            &[0, 2]
        } else {
            &[208]
        };
        for block in data.chunks_exact_mut(dtype.block_bytes()) {
            for &a in at {
                block[a..a + 2].copy_from_slice(&0x2000u16.to_le_bytes()); // 2^-7
            }
        }
        return Matrix::from_raw(dtype, n, k, data).unwrap();
    }
    let values = rng.vec(n * k);
    Matrix::quantize(dtype, n, k, &values).unwrap()
}

#[test]
fn matmul_matches_dequantised_weights_for_every_format_and_batch() {
    let mut rng = Rng::new(11);
    for dtype in [
        WeightDType::F32,
        WeightDType::F16,
        WeightDType::BF16,
        WeightDType::Q4_0,
        WeightDType::Q4_1,
        WeightDType::Q8_0,
        WeightDType::Q4K,
        WeightDType::Q6K,
    ] {
        let (n, k) = if dtype.block_values() == 256 {
            (19, 512)
        } else {
            (19, 96)
        };
        let w = random_matrix(&mut rng, dtype, n, k);
        let mut wd = vec![0.0f32; n * k];
        for (r, row) in wd.chunks_exact_mut(k).enumerate() {
            w.dequantize_row(r, row);
        }
        let int8 = matches!(
            dtype,
            WeightDType::Q4_0 | WeightDType::Q4_1 | WeightDType::Q8_0
        );
        for m in [1, 3, 8, 33] {
            let x = rng.vec(m * k);
            let mut out = vec![f32::NAN; m * n];
            matmul(&w, &x, m, &mut out);
            for i in 0..m {
                for j in 0..n {
                    let (wr, xr) = (&wd[j * k..][..k], &x[i * k..][..k]);
                    let exact: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let abs: f64 = wr
                        .iter()
                        .zip(xr)
                        .map(|(a, b)| (*a as f64 * *b as f64).abs())
                        .sum();
                    // The int8 path rounds each activation by at most half a
                    // step of its block (amax/254); the float path only rounds
                    // its f32 sums.
                    let act: f64 = if int8 {
                        xr.chunks(32)
                            .zip(wr.chunks(32))
                            .map(|(xb, wb)| {
                                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                                amax / 254.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>()
                            })
                            .sum()
                    } else {
                        0.0
                    };
                    let tol = act * 1.001 + 1e-5 * abs + 1e-6;
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - exact).abs() <= tol,
                        "{dtype:?} m={m} [{i},{j}]: {got} vs {exact}"
                    );
                }
            }
        }
    }
}

#[test]
fn matrices_refuse_bad_shapes() {
    assert!(matches!(
        Matrix::from_raw(WeightDType::Q4_0, 2, 64, vec![0; 71]),
        Err(KernelError::WrongByteLength {
            expected: 72,
            got: 71,
            ..
        })
    ));
    assert!(matches!(
        Matrix::from_raw(WeightDType::Q4K, 1, 512 + 32, vec![0; 0]),
        Err(KernelError::RowNotBlockAligned { block: 256, .. })
    ));
    assert!(matches!(
        Matrix::quantize(WeightDType::Q8_0, 2, 32, &[0.0; 63]),
        Err(KernelError::WrongValueCount {
            rows: 2,
            cols: 32,
            got: 63
        })
    ));
}

#[test]
fn quantize_row_output_dequantises_back_to_the_input_within_a_step() {
    let mut rng = Rng::new(12);
    let x = rng.vec(128);
    for dtype in [
        WeightDType::Q4_0,
        WeightDType::Q4_1,
        WeightDType::Q8_0,
        WeightDType::F16,
    ] {
        let bytes = quantize_row(dtype, &x).unwrap();
        let w = Matrix::from_raw(dtype, 1, 128, bytes).unwrap();
        let mut back = vec![0.0; 128];
        w.dequantize_row(0, &mut back);
        // Values are in [-1, 1): a 4-bit step is at most 2/15.
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= 2.0 / 15.0, "{dtype:?}: {a} vs {b}");
        }
    }
}

#[test]
fn requantised_weights_give_nearly_the_same_products() {
    let mut rng = Rng::new(13);
    let w = random_matrix(&mut rng, WeightDType::F32, 24, 64);
    let x = rng.vec(2 * 64);
    let mut want = vec![0.0; 48];
    matmul(&w, &x, 2, &mut want);
    for to in [WeightDType::Q8_0, WeightDType::F16, WeightDType::BF16] {
        let q = w.requantize(to).unwrap();
        let mut got = vec![0.0; 48];
        matmul(&q, &x, 2, &mut got);
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() < 0.05, "{to:?}: {g} vs {e}");
        }
    }
}
