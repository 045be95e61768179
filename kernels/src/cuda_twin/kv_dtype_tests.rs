//! The f16 and fp8 e4m3 variants of RoPE + KV write and paged attention
//! (the twins of `sluice_rope_kv_write_{f16,fp8_e4m3}` and
//! `sluice_paged_attention_{f16,fp8_e4m3}`), against the f32 reference
//! kernels. Tolerances, relative to the output's largest magnitude:
//! - reading a cache of any type: the reference run on exactly the values
//!   the cache holds, so only the bf16 output rounding remains: 1e-2;
//! - writing: each element is its type's rounding of the rotated f32 value:
//!   f16 2^-11 (plus the bf16 input's), fp8 2^-4 relative per element (3
//!   mantissa bits), with a 2^-10 absolute floor for fp8 subnormals;
//! - attention over an fp8 cache against attention over the exact K/V:
//!   what the format costs end to end, measured here under 5e-2 (f16: 1e-2).

use half::{bf16, f16};

use super::*;
use crate::attention::{paged_attention_reference, PagedKv};
use crate::rope::Rope;
use crate::test_util::Rng;

fn bf16s(rng: &mut Rng, n: usize, scale: f32) -> Vec<bf16> {
    (0..n)
        .map(|_| bf16::from_f32(rng.uniform() * scale))
        .collect()
}

fn to_f32(x: &[bf16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tolerance: f32) {
    let err = max_relative_error(got, want);
    assert!(
        err < tolerance,
        "{what}: max relative error {err} (tolerance {tolerance})"
    );
}

/// Writes four tokens (one a padding row) through the `K` variant and
/// checks every written element against the f32 rotation: within
/// `rel * |x| + abs` of it, read back with `scales`.
fn rope_kv_write_stores_within<K: KvElem>(scales: KvScales, rel: f32, abs: f32) {
    let mut rng = Rng::new(15);
    let (n_heads, n_kv, hd, bs) = (4, 2, 64, 4);
    let kv = KvLayout {
        num_blocks: 4,
        block_size: bs,
        n_kv_heads: n_kv,
        head_dim: hd,
    };
    let tokens = 4;
    let style = RopeStyle::HalfSplit;
    let shape = RopeKvShape {
        tokens,
        n_heads,
        kv,
        style,
    };
    let width = shape.qkv_width();
    // Large enough that a scale of 4 matters to fp8's range.
    let qkv = bf16s(&mut rng, tokens * width, 30.0);
    let positions = [0, 9, 5, 300];
    let slots = [3, -1, 4, 15];
    let rope = Rope::new(hd, 10_000.0, style, None);
    let mut q_out = vec![bf16::ZERO; tokens * n_heads * hd];
    // Far outside what the rotation writes (|x| < 50), even in fp8.
    let sentinel = K::store(-400.0 * scales.k, scales.k);
    let mut k_cache = vec![sentinel; kv.layer_len()];
    let mut v_cache = vec![sentinel; kv.layer_len()];
    rope_kv_write(
        &shape,
        RopeKvBuffers {
            qkv: &qkv,
            bias: None,
            positions: &positions,
            slots: &slots,
            inv_freq: rope.inv_freq(),
            q_out: &mut q_out,
            k_cache: &mut k_cache,
            v_cache: &mut v_cache,
            kv_scales: scales,
        },
    )
    .unwrap();
    let (qd, kvd) = (n_heads * hd, n_kv * hd);
    let mut written = 0;
    for t in 0..tokens {
        let mut row = to_f32(&qkv[t * width..(t + 1) * width]);
        let (q, rest) = row.split_at_mut(qd);
        let (k, v) = rest.split_at_mut(kvd);
        rope.apply(q, positions[t] as usize);
        rope.apply(k, positions[t] as usize);
        // q is bf16 whatever the cache holds.
        assert_close("q", &to_f32(&q_out[t * qd..(t + 1) * qd]), q, 1e-2);
        let Ok(slot) = usize::try_from(slots[t]) else {
            continue;
        };
        for h in 0..n_kv {
            let at = kv.slot_offset(slot, h);
            for d in 0..hd {
                for (cache, want, scale) in [
                    (&k_cache, k[h * hd + d], scales.k),
                    (&v_cache, v[h * hd + d], scales.v),
                ] {
                    let got = cache[at + d].load(scale);
                    // The bf16 input rounding is part of both sides' inputs;
                    // the rotation's own f32 error is far below these bounds.
                    let bound = rel * want.abs() + abs * scale + 1e-3 * want.abs();
                    assert!(
                        (got - want).abs() <= bound,
                        "{:?} token {t} head {h} dim {d}: {got} vs {want}",
                        K::DTYPE
                    );
                    written += 1;
                }
            }
        }
    }
    assert_eq!(written, 3 * 2 * kvd);
    let untouched = k_cache.iter().filter(|&&x| x == sentinel).count();
    assert_eq!(untouched, kv.layer_len() - 3 * kvd, "padding wrote nothing");
}

#[test]
fn rope_kv_write_stores_f16_to_its_rounding() {
    rope_kv_write_stores_within::<f16>(KvScales::ONE, 1.0 / 2048.0, 0.0);
}

#[test]
fn rope_kv_write_stores_fp8_to_its_rounding_with_and_without_a_scale() {
    rope_kv_write_stores_within::<Fp8E4m3>(KvScales::ONE, 1.0 / 16.0, 1.0 / 1024.0);
    rope_kv_write_stores_within::<Fp8E4m3>(KvScales { k: 4.0, v: 0.5 }, 1.0 / 16.0, 1.0 / 1024.0);
}

/// A cache of `K` holding `values` (GPU layout), and the same values, as
/// `K` holds them, in the CPU layout for the reference.
struct Cache<K> {
    k: Vec<K>,
    v: Vec<K>,
    cpu_k: Vec<f32>,
    cpu_v: Vec<f32>,
}

fn cache_of<K: KvElem>(kv: &KvLayout, k: &[f32], v: &[f32], scales: KvScales) -> Cache<K> {
    let k: Vec<K> = k.iter().map(|&x| K::store(x, scales.k)).collect();
    let v: Vec<K> = v.iter().map(|&x| K::store(x, scales.v)).collect();
    let (mut cpu_k, mut cpu_v) = (vec![0.0; kv.layer_len()], vec![0.0; kv.layer_len()]);
    for slot in 0..kv.num_blocks * kv.block_size {
        for h in 0..kv.n_kv_heads {
            let gpu = kv.slot_offset(slot, h);
            let cpu = (slot * kv.n_kv_heads + h) * kv.head_dim;
            for d in 0..kv.head_dim {
                cpu_k[cpu + d] = k[gpu + d].load(scales.k);
                cpu_v[cpu + d] = v[gpu + d].load(scales.v);
            }
        }
    }
    Cache { k, v, cpu_k, cpu_v }
}

/// Decode (lengths mid-block, one key, a padding row) and a prefill chunk
/// after cached tokens, GQA 4:1, through the `K` variant. Returns the worst
/// error against the reference on exact f32 K/V (what the format costs).
fn attention_reads<K: KvElem>(scales: KvScales) -> f32 {
    let mut rng = Rng::new(16);
    let (n_heads, n_kv, hd) = (8, 2, 128);
    let kv = KvLayout {
        num_blocks: 24,
        block_size: 16,
        n_kv_heads: n_kv,
        head_dim: hd,
    };
    // Keys with an outlier channel, as real keys have.
    let k_exact: Vec<f32> = (0..kv.layer_len())
        .map(|i| rng.uniform() * if i % hd == 3 { 12.0 } else { 1.5 })
        .collect();
    let v_exact: Vec<f32> = (0..kv.layer_len()).map(|_| rng.uniform()).collect();
    let cache = cache_of::<K>(&kv, &k_exact, &v_exact, scales);
    let exact = cache_of::<f32x>(&kv, &k_exact, &v_exact, KvScales::ONE);
    let width = n_heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut worst_format = 0.0f32;
    // (cached before, queries): three decodes, a padding row, a prefill chunk.
    let cases: [(&[usize], bool); 2] = [(&[37, 1, 0, 64], false), (&[21], true)];
    for (lens, prefill) in cases {
        let max_blocks = 8;
        let chunk = if prefill { 19 } else { 1 };
        let total: Vec<usize> = lens
            .iter()
            .map(|&l| if prefill { l + chunk } else { l })
            .collect();
        let mut packed = vec![0i32; lens.len() * max_blocks];
        let mut tables = Vec::new();
        let mut next = 0u32;
        for (s, &len) in total.iter().enumerate() {
            let mut t = Vec::new();
            for b in 0..len.div_ceil(kv.block_size) {
                // Blocks out of order, as the block manager hands them out.
                let id = (next * 7 + 3) % kv.num_blocks as u32;
                next += 1;
                packed[s * max_blocks + b] = id as i32;
                t.push(id);
            }
            tables.push(t);
        }
        let n_tokens = if prefill { chunk } else { lens.len() };
        let q = bf16s(&mut rng, n_tokens * width, 1.0);
        let shape = AttentionShape {
            n_seqs: lens.len(),
            n_tokens,
            n_heads,
            kv,
            max_blocks_per_seq: max_blocks,
            scale,
        };
        let ctx: Vec<i32> = total.iter().map(|&l| l as i32).collect();
        let starts = [0, chunk as i32];
        let mut out = vec![bf16::from_f32(9.0); q.len()];
        paged_attention(
            &shape,
            AttentionBuffers {
                q: &q,
                k_cache: &cache.k,
                v_cache: &cache.v,
                kv_scales: scales,
                block_tables: &packed,
                context_lens: &ctx,
                query_starts: prefill.then_some(&starts[..]),
                out: &mut out,
            },
        )
        .unwrap();
        for (s, &len) in total.iter().enumerate() {
            let (rows, first_pos) = if prefill {
                (0..chunk * width, lens[s])
            } else {
                (s * width..(s + 1) * width, len.saturating_sub(1))
            };
            let got = to_f32(&out[rows.clone()]);
            if len == 0 {
                assert!(got.iter().all(|&x| x == 0.0), "padding row writes zeros");
                continue;
            }
            let qs = to_f32(&q[rows]);
            let reference = |k: &[f32], v: &[f32]| {
                let mut want = vec![0.0; got.len()];
                let view = PagedKv {
                    k,
                    v,
                    block_size: kv.block_size,
                    n_kv_heads: n_kv,
                    head_dim: hd,
                };
                paged_attention_reference(
                    &qs, first_pos, n_heads, &view, &tables[s], scale, &mut want,
                );
                want
            };
            // The twin reads exactly what the cache holds.
            let what = format!("{:?} seq {s} len {len}", K::DTYPE);
            assert_close(&what, &got, &reference(&cache.cpu_k, &cache.cpu_v), 1e-2);
            let format_error = max_relative_error(&got, &reference(&exact.cpu_k, &exact.cpu_v));
            worst_format = worst_format.max(format_error);
        }
    }
    worst_format
}

/// f32 as a cache element, for the exact reference cache only (no kernel
/// has this variant; its `DTYPE` is never read).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[allow(non_camel_case_types)]
struct f32x(f32);

impl KvElem for f32x {
    const DTYPE: KvDType = KvDType::Bf16;
    fn store(v: f32, _scale: f32) -> Self {
        Self(v)
    }
    fn load(self, _scale: f32) -> f32 {
        self.0
    }
}

#[test]
fn attention_reads_an_f16_cache_and_loses_little() {
    let format_error = attention_reads::<f16>(KvScales::ONE);
    assert!(format_error < 1e-2, "f16 KV costs {format_error}");
}

#[test]
fn attention_reads_an_fp8_cache_with_its_scales_within_the_stated_error() {
    for scales in [KvScales::ONE, KvScales { k: 0.25, v: 2.0 }] {
        let format_error = attention_reads::<Fp8E4m3>(scales);
        assert!(
            format_error < 5e-2,
            "fp8 KV {scales:?} costs {format_error}"
        );
    }
}

#[test]
fn the_bf16_variant_is_the_kernel_it_was() {
    // bf16 ignores scales: any scale gives the same bits.
    let kv = KvLayout {
        num_blocks: 2,
        block_size: 4,
        n_kv_heads: 1,
        head_dim: 32,
    };
    let mut rng = Rng::new(3);
    let k: Vec<f32> = (0..kv.layer_len()).map(|_| rng.uniform()).collect();
    let a = cache_of::<bf16>(&kv, &k, &k, KvScales::ONE);
    let b = cache_of::<bf16>(&kv, &k, &k, KvScales { k: 3.0, v: 5.0 });
    assert_eq!(a.k, b.k);
    assert_eq!(a.cpu_v, b.cpu_v);
}
