//! Fast matmul paths (AVX2 and portable) against plain f64 references.
//!
//! Tolerances are derived, not tuned:
//! - against "dequantised weights · (activations quantised then
//!   dequantised)", the int8 path differs only by f32 rounding: each block
//!   term is rounded twice and `nb` of them are summed, so the error is at
//!   most `(nb + 4) · 2^-23 · S`, where `S` bounds the magnitudes that are
//!   summed (the offset formats sum `d·q` and `min` separately, so their
//!   offsets count in `S`);
//! - against pure f32 activations, add the activation rounding: each value
//!   moves by at most half a step, `amax_b / 254`, so the dot moves by at most
//!   `Σ_b amax_b/254 · Σ_{j∈b} |w_j|`.

use super::quantize_act::QuantizedActs;
use super::*;
use crate::cpu::Isa;
use crate::quant::read_f16;
use crate::test_util::{random_matrix, random_raw_q8_0, Rng};

const EPS: f64 = f32::EPSILON as f64;

/// Every instruction set this CPU runs: portable, AVX2, and AVX2 with
/// AVX-512 VNNI where the CPU has it (then AVX2 alone too).
fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    match Isa::detect() {
        Isa::Scalar => {}
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => {
            if t.vnni512().is_some() {
                v.push(Isa::Avx2(t.without_vnni()));
            }
            v.push(Isa::Avx2(t));
        }
    }
    v
}

fn dequantised(w: &Matrix) -> Vec<f32> {
    let mut out = vec![0.0; w.rows() * w.cols()];
    for (r, row) in out.chunks_exact_mut(w.cols().max(1)).enumerate() {
        w.dequantize_row(r, row);
    }
    out
}

/// Magnitude of the per-block offset a format's kernel sums separately.
fn block_offsets(w: &Matrix) -> Vec<f32> {
    let bb = w.dtype().block_bytes();
    w.bytes()
        .chunks_exact(bb)
        .map(|b| match w.dtype() {
            WeightDType::Q4_0 => 8.0 * read_f16(b, 0).abs(),
            WeightDType::Q4_1 => read_f16(b, 2).abs(),
            _ => 0.0,
        })
        .collect()
}

/// The dequantised activations the int8 kernels actually see.
fn act_dequantised(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let q = QuantizedActs::new(x, m, k, Isa::Scalar);
    let mut out = Vec::with_capacity(m * k);
    for i in 0..m {
        let (qs, d, _) = q.row(i);
        for (j, &qv) in qs.iter().enumerate() {
            out.push(qv as f32 * d[j / 32]);
        }
    }
    out
}

fn check_int8(w: &Matrix, m: usize, rng: &mut Rng) {
    let (n, k) = (w.rows(), w.cols());
    let nb = k / 32;
    let x = rng.activations(m * k);
    let xq = act_dequantised(&x, m, k);
    let wd = dequantised(w);
    let offs = block_offsets(w);
    for isa in isas() {
        let mut out = vec![f32::NAN; m * n];
        matmul_with(w, &x, m, &mut out, isa);
        for i in 0..m {
            for j in 0..n {
                let (wr, xr, xqr) = (&wd[j * k..][..k], &x[i * k..][..k], &xq[i * k..][..k]);
                let (mut exact_q, mut exact_f, mut s, mut act_err) = (0f64, 0f64, 0f64, 0f64);
                for b in 0..nb {
                    let off = offs[j * nb + b] as f64;
                    let amax = xr[b * 32..][..32].iter().fold(0f32, |a, v| a.max(v.abs()));
                    let mut wabs = 0f64;
                    for t in b * 32..(b + 1) * 32 {
                        exact_q += wr[t] as f64 * xqr[t] as f64;
                        exact_f += wr[t] as f64 * xr[t] as f64;
                        s += (wr[t].abs() as f64 + 2.0 * off) * xqr[t].abs() as f64;
                        wabs += wr[t].abs() as f64;
                    }
                    act_err += amax as f64 / 254.0 * wabs;
                }
                let got = out[i * n + j] as f64;
                let tight = (nb as f64 + 4.0) * EPS * s + 1e-30;
                assert!(
                    (got - exact_q).abs() <= tight,
                    "{:?} {isa:?} m={m} n={n} k={k} [{i},{j}]: {got} vs {exact_q} (tol {tight})",
                    w.dtype()
                );
                let loose = act_err * 1.001 + tight;
                assert!(
                    (got - exact_f).abs() <= loose,
                    "{:?} {isa:?} vs f32 [{i},{j}]: {got} vs {exact_f} (tol {loose})",
                    w.dtype()
                );
            }
        }
    }
}

fn check_float(w: &Matrix, m: usize, rng: &mut Rng) {
    let (n, k) = (w.rows(), w.cols());
    let x = rng.activations(m * k);
    let wd = dequantised(w);
    for isa in isas() {
        let mut out = vec![f32::NAN; m * n];
        matmul_with(w, &x, m, &mut out, isa);
        for i in 0..m {
            for j in 0..n {
                let (wr, xr) = (&wd[j * k..][..k], &x[i * k..][..k]);
                let (exact, s) = exact_dot(wr, xr);
                let tol = (k as f64 / 8.0 + 4.0) * EPS * s + 1e-30;
                let got = out[i * n + j] as f64;
                assert!(
                    (got - exact).abs() <= tol,
                    "{:?} {isa:?} m={m} n={n} k={k} [{i},{j}]: {got} vs {exact} (tol {tol})",
                    w.dtype()
                );
            }
        }
    }
}

/// `Σ w·x` in f64, and `Σ |w·x|`, the magnitude its rounding error scales with.
fn exact_dot(w: &[f32], x: &[f32]) -> (f64, f64) {
    let products = || w.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64);
    (products().sum(), products().map(f64::abs).sum())
}

const MS: [usize; 4] = [1, 3, 8, 33];

#[test]
fn int8_formats_match_reference_for_every_batch_size() {
    let mut rng = Rng::new(1);
    for dtype in [WeightDType::Q4_0, WeightDType::Q4_1, WeightDType::Q8_0] {
        for (n, k) in [(1, 32), (37, 96), (13, 576)] {
            let w = random_matrix(&mut rng, dtype, n, k);
            for m in MS {
                check_int8(&w, m, &mut rng);
            }
        }
    }
}

#[test]
fn q8_0_with_minus_128_quants_matches_reference() {
    // ggml's quantiser never writes -128, but a file may hold it; the AVX2
    // sign trick must still not saturate.
    let mut rng = Rng::new(2);
    let w = random_raw_q8_0(&mut rng, 29, 256);
    for m in MS {
        check_int8(&w, m, &mut rng);
    }
}

#[test]
fn int8_path_covers_many_tasks_partial_tiles_and_activation_chunks() {
    // n = 301 rows at k = 576 spans several rayon tasks and ends in a
    // partial 8-row tile; m = 33 spans two 28-row activation chunks of the
    // portable kernel and a partial 4-row step of the repacked one.
    let mut rng = Rng::new(3);
    for dtype in [WeightDType::Q4_1, WeightDType::Q8_0] {
        let w = random_matrix(&mut rng, dtype, 301, 576);
        for m in [1, 33] {
            check_int8(&w, m, &mut rng);
        }
    }
}

#[test]
fn float_formats_match_reference_for_every_batch_size() {
    let mut rng = Rng::new(4);
    for (dtype, shapes) in [
        (WeightDType::F32, &[(7, 37), (33, 64), (5, 1), (16, 40)][..]),
        (WeightDType::F16, &[(7, 40), (33, 96)][..]),
        (WeightDType::BF16, &[(7, 40), (33, 96)][..]),
        (WeightDType::Q4K, &[(7, 256), (19, 512)][..]),
        (WeightDType::Q6K, &[(7, 256), (19, 512)][..]),
    ] {
        for &(n, k) in shapes {
            let w = random_matrix(&mut rng, dtype, n, k);
            for m in MS {
                check_float(&w, m, &mut rng);
            }
        }
    }
}

#[test]
fn float_path_covers_many_tasks_and_sub_tiles() {
    let mut rng = Rng::new(5);
    let w = random_matrix(&mut rng, WeightDType::Q6K, 203, 768);
    for m in [1, 33] {
        check_float(&w, m, &mut rng);
    }
}

/// A rayon pool of `threads` threads: rows computed in a narrow and a wide
/// pool see different column splits.
fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// A row's output bits, computed alone and at position `at` of a batch.
fn batch_mismatch(alone: &[f32], batched: &[f32], at: usize) -> Option<(usize, f32, f32)> {
    let n = alone.len();
    let row = &batched[at * n..(at + 1) * n];
    (0..n)
        .find(|&j| alone[j].to_bits() != row[j].to_bits())
        .map(|j| (j, alone[j], row[j]))
}

/// Continuous batching promises that a sequence's greedy output does not
/// depend on what else is in the batch, and a last-bit difference is enough
/// to flip a near-tie in argmax. So a row's result must not change with `m`,
/// with its position in the batch (first, last, in a partial kernel step or
/// activation chunk) or with how rayon splits the columns: each instruction
/// set's rows computed alone in a one-thread pool are compared bit for bit
/// with the same rows inside batches run in a five-thread pool (another
/// column split).
#[test]
fn matmul_rows_are_bit_identical_whatever_the_batch() {
    const POOL: usize = 64;
    let (narrow, wide) = (pool(1), pool(5));
    // (k, n): SmolLM2-135M's MLP shapes, plus one whose last weight tile or
    // group is partial (and, for F32, whose k is not a multiple of 8).
    let float: &[(usize, usize)] = &[(576, 1536), (1536, 576), (100, 37)];
    let int8: &[(usize, usize)] = &[(576, 1536), (1536, 576), (576, 301)];
    let k_quant: &[(usize, usize)] = &[(256, 1536), (512, 576), (1536, 576), (512, 37)];
    let mut rng = Rng::new(10);
    let mut failures = Vec::new();
    for (dtype, shapes) in [
        (WeightDType::F32, float),
        (WeightDType::F16, float),
        (WeightDType::BF16, float),
        (WeightDType::Q4_0, int8),
        (WeightDType::Q4_1, int8),
        (WeightDType::Q8_0, int8),
        (WeightDType::Q4K, k_quant),
        (WeightDType::Q6K, k_quant),
    ] {
        for &(k, n) in shapes {
            let w = random_matrix(&mut rng, dtype, n, k);
            let x = rng.activations(POOL * k);
            for isa in isas() {
                let alone: Vec<Vec<f32>> = (0..POOL)
                    .map(|i| {
                        let mut out = vec![f32::NAN; n];
                        narrow.install(|| matmul_with(&w, &x[i * k..][..k], 1, &mut out, isa));
                        out
                    })
                    .collect();
                for m in [2, 3, 5, 8, 9, 17, 33, 64, 300] {
                    // Batches of consecutive rows (wrapping), so that each
                    // row lands at several positions across the starts; at
                    // m = 300 each row is in the batch several times anyway.
                    let starts: &[usize] = if m > POOL {
                        &[0]
                    } else {
                        &[0, 5, POOL - 1 - m / 3]
                    };
                    for &start in starts {
                        let rows: Vec<usize> = (0..m).map(|t| (start + t) % POOL).collect();
                        let xb: Vec<f32> = rows
                            .iter()
                            .flat_map(|&i| x[i * k..][..k].iter().copied())
                            .collect();
                        let mut out = vec![f32::NAN; m * n];
                        wide.install(|| matmul_with(&w, &xb, m, &mut out, isa));
                        // The first differing row of each batch, so that a
                        // failure shows every format and path it affects.
                        let first = rows.iter().enumerate().find_map(|(at, &i)| {
                            batch_mismatch(&alone[i], &out, at).map(|d| (at, i, d))
                        });
                        if let Some((at, i, (j, a, b))) = first {
                            failures.push(format!(
                                "{dtype:?} {isa:?} k={k} n={n}: row {i} [{j}] alone {a:e} \
                                 ({:#010x}) but {b:e} ({:#010x}) at {at} of m={m}",
                                a.to_bits(),
                                b.to_bits()
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn empty_shapes_leave_nothing_to_do() {
    let w = Matrix::from_f32(3, 0, &[]);
    let mut out = vec![1.0; 6];
    matmul(&w, &[], 2, &mut out);
    assert_eq!(out, vec![0.0; 6]);
    let w = Matrix::from_f32(0, 4, &[]);
    matmul(&w, &[0.0; 8], 2, &mut []);
    let w = Matrix::from_f32(2, 4, &[0.0; 8]);
    matmul(&w, &[], 0, &mut []);
}

#[test]
fn matmul_reference_agrees_with_fast_path_on_f32() {
    let mut rng = Rng::new(6);
    let w = random_matrix(&mut rng, WeightDType::F32, 9, 48);
    let x = rng.activations(5 * 48);
    let (mut a, mut b) = (vec![0.0; 45], vec![0.0; 45]);
    matmul(&w, &x, 5, &mut a);
    matmul_reference(&w, &x, 5, &mut b);
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{p} vs {q}");
    }
}

#[test]
fn activation_quantisation_keeps_quants_within_127_and_sums_them() {
    let mut rng = Rng::new(7);
    let mut x = rng.activations(4 * 64);
    x[5] = 0.0;
    x[64..96].fill(0.0);
    x[200] = f32::NAN;
    for isa in isas() {
        let q = QuantizedActs::new(&x, 4, 64, isa);
        for i in 0..4 {
            let (qs, d, s) = q.row(i);
            for b in 0..2 {
                let qb = &qs[b * 32..][..32];
                assert!(qb.iter().all(|&v| v != i8::MIN));
                let sum: i32 = qb.iter().map(|&v| v as i32).sum();
                assert_eq!(s[b], d[b] * sum as f32);
            }
        }
        let (_, d, s) = q.row(1);
        assert_eq!((d[0], s[0]), (0.0, 0.0));
        // Both instruction sets quantise identically.
        let scalar = QuantizedActs::new(&x, 4, 64, Isa::Scalar);
        assert_eq!(q.qs, scalar.qs);
        assert_eq!(q.d, scalar.d);
        assert_eq!(q.sums, scalar.sums);
    }
}

/// The AVX2 quantiser is hand-written; it must give the portable one's
/// bits on ordinary activations too: scales spanning many magnitudes, ties
/// at half a step, blocks of one repeated value, -0.0 and tiny values.
#[test]
fn activation_quantisation_is_the_same_on_every_instruction_set() {
    let mut rng = Rng::new(13);
    let (m, k) = (9, 1536);
    let mut x = rng.activations(m * k);
    for (b, block) in x.chunks_exact_mut(32).enumerate() {
        let scale = 2f32.powi(b as i32 % 40 - 20);
        block.iter_mut().for_each(|v| *v *= scale);
    }
    // Exact half steps: amax 127 makes the step 1, so 0.5, 1.5, ... tie.
    for (t, v) in x[..32].iter_mut().enumerate() {
        *v = if t == 0 { 127.0 } else { t as f32 - 15.5 };
    }
    x[32..64].fill(-3.25);
    x[64..96].fill(-0.0);
    x[96..128].iter_mut().for_each(|v| *v *= 1e-38);
    let scalar = QuantizedActs::new(&x, m, k, Isa::Scalar);
    for isa in isas() {
        let q = QuantizedActs::new(&x, m, k, isa);
        assert_eq!(q.qs, scalar.qs, "{isa:?}");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&q.d), bits(&scalar.d), "{isa:?}");
        assert_eq!(bits(&q.s), bits(&scalar.s), "{isa:?}");
        assert_eq!(q.sums, scalar.sums, "{isa:?}");
    }
}

#[test]
fn requantize_round_trips_through_each_format() {
    let mut rng = Rng::new(8);
    let values: Vec<f32> = (0..6 * 64).map(|_| rng.uniform()).collect();
    let w = Matrix::from_f32(6, 64, &values);
    for to in [
        WeightDType::F16,
        WeightDType::BF16,
        WeightDType::Q4_0,
        WeightDType::Q4_1,
        WeightDType::Q8_0,
    ] {
        let q = w.requantize(to).unwrap();
        assert_eq!((q.dtype(), q.rows(), q.cols()), (to, 6, 64));
        // Requantising is row-wise dequantise + quantize_row.
        for r in 0..6 {
            let want = crate::quant::quantize_row(to, &values[r * 64..][..64]).unwrap();
            assert_eq!(q.row_bytes(r), &want[..], "{to:?} row {r}");
        }
        let back = q.requantize(WeightDType::F32).unwrap();
        assert_eq!(back.dtype(), WeightDType::F32);
    }
    assert!(matches!(
        w.requantize(WeightDType::Q6K),
        Err(KernelError::UnsupportedTarget(WeightDType::Q6K))
    ));
    let odd = Matrix::from_f32(1, 48, &[0.0; 48]);
    assert!(matches!(
        odd.requantize(WeightDType::Q8_0),
        Err(KernelError::RowNotBlockAligned { cols: 48, .. })
    ));
}

/// Tiles repacked once at construction give the same bits as repacking on
/// each call (the path a matrix without tiles takes), for every int8
/// format, including a partial last tile and several rayon tasks; clones
/// share the tiles, and byte-level accessors still see the GGML layout.
#[test]
fn tiles_repacked_at_construction_match_repacking_per_call() {
    let mut rng = Rng::new(11);
    let wide = pool(5);
    for dtype in [WeightDType::Q4_0, WeightDType::Q4_1, WeightDType::Q8_0] {
        for (k, n) in [(576, 301), (1536, 64), (32, 5)] {
            let w = random_matrix(&mut rng, dtype, n, k);
            assert_eq!(w.bytes().len(), n * dtype.row_bytes(k));
            let again = Matrix::from_raw(dtype, n, k, w.bytes().to_vec()).unwrap();
            assert_eq!(again.bytes(), w.bytes());
            #[cfg(target_arch = "x86_64")]
            if matches!(Isa::detect(), Isa::Avx2(_)) {
                assert!(w.tiles().is_some() && w.repacked_bytes() > 0);
                let copy = w.clone();
                assert!(std::ptr::eq(
                    copy.tiles().unwrap().as_ptr(),
                    w.tiles().unwrap().as_ptr()
                ));
            }
            let bare = w.without_tiles();
            assert_eq!(bare.repacked_bytes(), 0);
            for m in [2, 5, 9] {
                let x = rng.activations(m * k);
                for isa in isas() {
                    let (mut a, mut b) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                    wide.install(|| matmul_with(&w, &x, m, &mut a, isa));
                    wide.install(|| matmul_with(&bare, &x, m, &mut b, isa));
                    let same = a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(same, "{dtype:?} {isa:?} k={k} n={n} m={m}");
                }
            }
        }
    }
}

/// The packed f32 path against an f64 reference, and each row bit for bit
/// alone versus inside batches and column splits (as above), over shapes
/// with partial panels, every remainder of the 4-row kernel and k not a
/// multiple of 8.
#[test]
fn packed_matmul_matches_reference_and_is_batch_invariant() {
    let (narrow, wide) = (pool(1), pool(5));
    let mut rng = Rng::new(20);
    for (k, n) in [(384, 1536), (1536, 384), (100, 37), (7, 5), (24, 48)] {
        let w = random_matrix(&mut rng, WeightDType::F16, n, k);
        let packed = PackedMatrix::from_matrix(&w);
        let wd = dequantised(&w);
        assert_eq!((packed.rows(), packed.cols()), (n, k));
        let rows = 19;
        let x = rng.activations(rows * k);
        for isa in packed::PackedIsa::available() {
            let alone: Vec<Vec<f32>> = (0..rows)
                .map(|i| {
                    let mut out = vec![f32::NAN; n];
                    narrow.install(|| {
                        packed::matmul_packed_with(&packed, &x[i * k..][..k], 1, &mut out, isa)
                    });
                    out
                })
                .collect();
            for i in 0..rows {
                for j in 0..n {
                    let (wr, xr) = (&wd[j * k..][..k], &x[i * k..][..k]);
                    let (exact, s) = exact_dot(wr, xr);
                    // A sequential sum of k products: at most k + 1 roundings
                    // of magnitude s each.
                    let tol = (k as f64 + 1.0) * EPS * s + 1e-30;
                    let got = alone[i][j] as f64;
                    assert!(
                        (got - exact).abs() <= tol,
                        "{isa:?} n={n} k={k} [{i},{j}]: {got} vs {exact} (tol {tol})"
                    );
                }
            }
            for m in [2, 3, 4, 5, 6, 7, 8, 9, 11, 16, 17, 19] {
                for start in [0, (rows - m) / 2, rows - m] {
                    let xb = &x[start * k..(start + m) * k];
                    let mut out = vec![f32::NAN; m * n];
                    wide.install(|| packed::matmul_packed_with(&packed, xb, m, &mut out, isa));
                    for at in 0..m {
                        if let Some((j, a, b)) = batch_mismatch(&alone[start + at], &out, at) {
                            panic!(
                                "{isa:?} n={n} k={k}: row {} [{j}] alone {a:e} but {b:e} at {at} of m={m}",
                                start + at
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn packed_matrix_from_f32_equals_packing_the_f32_matrix() {
    let mut rng = Rng::new(21);
    let (n, k, m) = (50, 40, 6);
    let values: Vec<f32> = (0..n * k).map(|_| rng.uniform()).collect();
    let x = rng.activations(m * k);
    let (mut a, mut b) = (vec![0.0; m * n], vec![0.0; m * n]);
    matmul_packed(&PackedMatrix::from_f32(n, k, &values), &x, m, &mut a);
    let from_matrix = PackedMatrix::from_matrix(&Matrix::from_f32(n, k, &values));
    matmul_packed(&from_matrix, &x, m, &mut b);
    assert_eq!(a, b);
    // Partial last panel: 50 rows take two panels of 48.
    assert_eq!(from_matrix.heap_bytes(), 2 * PANEL * k * 4);
}

#[test]
fn packed_matmul_of_empty_shapes() {
    let mut out = vec![1.0; 6];
    matmul_packed(&PackedMatrix::from_f32(3, 0, &[]), &[], 2, &mut out);
    assert_eq!(out, vec![0.0; 6]);
    let mut none: Vec<f32> = Vec::new();
    matmul_packed(&PackedMatrix::from_f32(0, 4, &[]), &[1.0; 8], 2, &mut none);
    matmul_packed(&PackedMatrix::from_f32(3, 4, &[0.5; 12]), &[], 0, &mut none);
}

/// The VNNI kernels compute the same exact integer block sums as the AVX2
/// ones and take the same float steps per lane, so on a CPU with both they
/// must agree bit for bit, for every int8 format, batch size (full and
/// partial 8-row kernel steps), lone last tile and partial tile pair.
/// Elsewhere there is nothing to compare and the test says so.
#[cfg(target_arch = "x86_64")]
#[test]
fn vnni_and_avx2_kernels_give_the_same_bits() {
    let Isa::Avx2(t) = Isa::detect() else {
        eprintln!("no AVX2 on this CPU: nothing to compare");
        return;
    };
    if t.vnni512().is_none() {
        eprintln!("no AVX-512 VNNI on this CPU: nothing to compare");
        return;
    }
    let (vnni, avx2) = (Isa::Avx2(t), Isa::Avx2(t.without_vnni()));
    let mut rng = Rng::new(12);
    for dtype in [WeightDType::Q4_0, WeightDType::Q4_1, WeightDType::Q8_0] {
        for (k, n) in [(576, 1536), (1536, 40), (96, 8), (32, 25)] {
            let w = if dtype == WeightDType::Q8_0 && n == 25 {
                random_raw_q8_0(&mut rng, n, k)
            } else {
                random_matrix(&mut rng, dtype, n, k)
            };
            for m in [2, 7, 8, 9, 16, 21] {
                let x = rng.activations(m * k);
                let (mut a, mut b) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                matmul_with(&w, &x, m, &mut a, vnni);
                matmul_with(&w, &x, m, &mut b, avx2);
                let first = (0..m * n).find(|&e| a[e].to_bits() != b[e].to_bits());
                assert!(
                    first.is_none(),
                    "{dtype:?} k={k} n={n} m={m}: element {first:?} differs"
                );
            }
        }
    }
}
