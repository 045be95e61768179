//! RoPE against its defining formula.

mod common;

use common::Rng;
use sluice_kernels::rope::{Rope, RopeScaling, RopeStyle};

/// The rotation written out from the definition, in f64: pair i of each head
/// turns by `pos · base^(-2i/d)`.
fn direct(x: &[f32], head_dim: usize, base: f64, style: RopeStyle, pos: usize) -> Vec<f64> {
    let half = head_dim / 2;
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for head in out.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let theta = pos as f64 * base.powf(-2.0 * i as f64 / head_dim as f64);
            let (a, b) = match style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::HalfSplit => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * theta.cos() - x1 * theta.sin();
            head[b] = x0 * theta.sin() + x1 * theta.cos();
        }
    }
    out
}

#[test]
fn both_styles_match_the_direct_formula() {
    let mut rng = Rng::new(3);
    for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
        for (head_dim, pos) in [(64, 0), (64, 1), (64, 37), (128, 1000), (8, 4095)] {
            let rope = Rope::new(head_dim, 10_000.0, style, None);
            let x = rng.vec(3 * head_dim);
            let want = direct(&x, head_dim, 10_000.0, style, pos);
            let mut got = x.clone();
            rope.apply(&mut got, pos);
            // f32 angles: pos · inv_freq is rounded to 2^-24 relative, so the
            // error grows with the position.
            let tol = 2e-6 + pos as f64 * 2e-7;
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - w).abs() < tol,
                    "{style:?} d={head_dim} pos={pos} [{i}]: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn position_zero_is_the_identity_and_norms_are_kept() {
    let mut rng = Rng::new(4);
    let x = rng.vec(2 * 32);
    let rope = Rope::new(32, 500_000.0, RopeStyle::HalfSplit, None);
    let mut y = x.clone();
    rope.apply(&mut y, 0);
    assert_eq!(x, y);
    rope.apply(&mut y, 123);
    let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
    assert!((norm(&x) - norm(&y)).abs() < 1e-4);
}

#[test]
fn linear_scaling_divides_positions() {
    let mut rng = Rng::new(5);
    let x = rng.vec(64);
    let scaled = Rope::new(
        64,
        10_000.0,
        RopeStyle::Interleaved,
        Some(RopeScaling::Linear { factor: 4.0 }),
    );
    let plain = Rope::new(64, 10_000.0, RopeStyle::Interleaved, None);
    let (mut a, mut b) = (x.clone(), x);
    scaled.apply(&mut a, 40);
    plain.apply(&mut b, 10);
    assert_eq!(a, b);
}

#[test]
fn llama3_scaling_keeps_high_and_scales_low_frequencies() {
    let (head_dim, base) = (64, 500_000.0f32);
    let llama3 = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };
    let scaled = Rope::new(head_dim, base, RopeStyle::HalfSplit, Some(llama3));
    let plain = Rope::new(head_dim, base, RopeStyle::HalfSplit, None);
    let linear = Rope::new(
        head_dim,
        base,
        RopeStyle::HalfSplit,
        Some(RopeScaling::Linear { factor: 8.0 }),
    );
    // Unit vector in pair 0 (wavelength 2π, far below 8192/4: unchanged) and
    // in the last pair (wavelength ~2.6M, above 8192: divided by 8).
    let half = head_dim / 2;
    for (pair, same_as) in [(0, &plain), (half - 1, &linear)] {
        let mut x = vec![0.0f32; head_dim];
        x[pair] = 1.0;
        let (mut a, mut b) = (x.clone(), x);
        scaled.apply(&mut a, 3000);
        same_as.apply(&mut b, 3000);
        assert_eq!(a, b, "pair {pair}");
    }
}
