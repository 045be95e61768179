//! Times `paged_attention` against its plain reference on SmolLM2-135M's
//! attention shape (9 query heads over 3 KV heads, head_dim 64, 16-slot
//! blocks in reverse order): one decode token at position 1023, a 256-token
//! prefill from 0, and a 256-token chunk after 768 cached tokens.
//!
//! ```text
//! cargo run -p sluice-kernels --release --example attention_speed
//! ```

use std::time::{Duration, Instant};

use sluice_kernels::attention::{paged_attention, paged_attention_reference, PagedKv};

type Attention = fn(&[f32], usize, usize, &PagedKv<'_>, &[u32], f32, &mut [f32]);

/// Fastest of five batches of at least 60 ms, in µs per call.
fn best_us(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let (start, mut calls) = (Instant::now(), 0u32);
        while calls < 2 || start.elapsed() < Duration::from_millis(60) {
            f();
            calls += 1;
        }
        best = best.min(start.elapsed().as_secs_f64() * 1e6 / calls as f64);
    }
    best
}

fn main() {
    let (n_heads, n_kv, hd, bs) = (9usize, 3usize, 64usize, 16usize);
    let positions = 1024;
    let blocks = positions / bs;
    let values = |salt: usize| -> Vec<f32> {
        (0..blocks * bs * n_kv * hd)
            .map(|i| ((i * 7919 + salt) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    };
    let (k, v) = (values(1), values(2));
    let table: Vec<u32> = (0..blocks as u32).rev().collect();
    let kv = PagedKv {
        k: &k,
        v: &v,
        block_size: bs,
        n_kv_heads: n_kv,
        head_dim: hd,
    };
    println!("threads: {}", rayon::current_num_threads());
    println!(
        "{:<22} {:>12} {:>12} {:>8}",
        "case", "fast us", "ref us", "speedup"
    );
    for (first, n_q, name) in [
        (1023, 1, "decode @1023"),
        (0, 256, "prefill 256"),
        (768, 256, "prefill 256 @768"),
    ] {
        let q: Vec<f32> = (0..n_q * n_heads * hd)
            .map(|i| (i % 100) as f32 / 100.0)
            .collect();
        let mut out = vec![0.0f32; q.len()];
        let mut time =
            |f: Attention| best_us(|| f(&q, first, n_heads, &kv, &table, 0.125, &mut out));
        let fast = time(paged_attention);
        let reference = time(paged_attention_reference);
        println!(
            "{name:<22} {fast:>12.1} {reference:>12.1} {:>7.1}x",
            reference / fast
        );
    }
}
