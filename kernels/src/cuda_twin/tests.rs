//! The twins against the crate's reference kernels and plain f32
//! definitions, on random inputs: GQA ratios, head sizes, block boundaries,
//! partial last blocks, prefill chunk boundaries, padding rows.

use half::bf16;

use super::*;
use crate::attention::{paged_attention_reference, PagedKv};
use crate::rope::Rope;
use crate::test_util::Rng;

/// bf16 output against an f32 reference: one bf16 rounding is 2^-9 relative.
const BF16_TOLERANCE: f32 = 1e-2;

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

#[test]
fn launch_constants_match_the_cuda_header() {
    let header = include_str!("../../cuda/launch.cuh");
    let define = |name: &str| -> usize {
        header
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#define SLUICE_{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("SLUICE_{name} missing from launch.cuh"))
    };
    assert_eq!(define("WARP"), WARP);
    assert_eq!(define("ELEMENTWISE_THREADS"), ELEMENTWISE_THREADS);
    assert_eq!(define("NORM_THREADS"), NORM_THREADS);
    assert_eq!(define("ROPE_THREADS"), ROPE_THREADS);
    assert_eq!(define("ATTN_WARPS"), ATTN_WARPS);
    assert_eq!(define("ATTN_MAX_HEAD_DIM"), ATTN_MAX_HEAD_DIM);
    assert_eq!(define("SAMPLE_THREADS"), SAMPLE_THREADS);
    assert_eq!(define("SAMPLE_MAX_CANDIDATES"), SAMPLE_MAX_CANDIDATES);
    assert_eq!(define("GEMV_WARPS"), GEMV_WARPS);
    assert_eq!(define("GEMV_MAX_BATCH"), GEMV_MAX_BATCH);
}

#[test]
fn embedding_gather_copies_rows_and_zeroes_bad_ids() {
    let mut rng = Rng::new(1);
    let shape = EmbeddingShape {
        tokens: 4,
        vocab: 10,
        hidden: 12,
    };
    let table = bf16s(&mut rng, 10 * 12, 1.0);
    let ids = [3, 0, 9, 10];
    let mut out = vec![f32::NAN; 4 * 12];
    embedding_gather(&shape, &ids, &table, &mut out).unwrap();
    for (t, &id) in ids.iter().enumerate().take(3) {
        let want = to_f32(&table[id as usize * 12..(id as usize + 1) * 12]);
        assert_eq!(&out[t * 12..(t + 1) * 12], &want[..]);
    }
    assert!(
        out[36..].iter().all(|&v| v == 0.0),
        "id 10 is outside a vocabulary of 10"
    );
}

#[test]
fn rms_norm_matches_the_cpu_kernel_including_gathered_rows() {
    let mut rng = Rng::new(2);
    for dim in [64, 100, 576, 4096] {
        let rows = 3;
        let x = rng.activations(rows * dim);
        let weight = bf16s(&mut rng, dim, 1.5);
        let mut want = vec![0.0; rows * dim];
        crate::ops::rms_norm(&x, &to_f32(&weight), 1e-5, &mut want);
        let shape = NormShape {
            rows,
            dim,
            eps: 1e-5,
        };
        let mut out = vec![bf16::ZERO; rows * dim];
        rms_norm(&shape, &x, None, &weight, &mut out).unwrap();
        assert_close(
            &format!("rms_norm dim {dim}"),
            &to_f32(&out),
            &want,
            BF16_TOLERANCE,
        );

        // Rows 2 and 0, in that order: the final norm of the wanted rows.
        let gathered = NormShape { rows: 2, ..shape };
        let mut out2 = vec![bf16::ZERO; 2 * dim];
        rms_norm(&gathered, &x, Some(&[2, 0]), &weight, &mut out2).unwrap();
        assert_eq!(&out2[..dim], &out[2 * dim..]);
        assert_eq!(&out2[dim..], &out[..dim]);
    }
}

#[test]
fn add_rms_norm_equals_residual_add_then_norm() {
    let mut rng = Rng::new(3);
    let (rows, dim) = (5, 384);
    let x = rng.activations(rows * dim);
    let delta = bf16s(&mut rng, rows * dim, 2.0);
    let weight = bf16s(&mut rng, dim, 1.0);
    let shape = NormShape {
        rows,
        dim,
        eps: 1e-6,
    };
    let mut fused_res = x.clone();
    let mut fused = vec![bf16::ZERO; rows * dim];
    add_rms_norm(&shape, &mut fused_res, &delta, &weight, &mut fused).unwrap();

    let mut want_res = x.clone();
    for (r, d) in want_res.iter_mut().zip(&delta) {
        *r += d.to_f32();
    }
    assert_eq!(fused_res, want_res, "the residual is updated in place");
    let mut want = vec![0.0; rows * dim];
    crate::ops::rms_norm(&want_res, &to_f32(&weight), 1e-6, &mut want);
    assert_close("add_rms_norm", &to_f32(&fused), &want, BF16_TOLERANCE);
}

#[test]
fn silu_mul_matches_the_cpu_kernel() {
    let mut rng = Rng::new(4);
    let (rows, ff) = (3, 200);
    let gate_up: Vec<bf16> = rng
        .activations(rows * 2 * ff)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let mut want = Vec::new();
    for row in gate_up.chunks_exact(2 * ff) {
        let mut g = to_f32(&row[..ff]);
        crate::ops::silu_mul(&mut g, &to_f32(&row[ff..]));
        want.extend(g);
    }
    let mut out = vec![bf16::ZERO; rows * ff];
    silu_mul(&SiluMulShape { rows, ff }, &gate_up, &mut out).unwrap();
    assert_close("silu_mul", &to_f32(&out), &want, BF16_TOLERANCE);
}

#[test]
fn residual_add_adds_and_checks_lengths() {
    let mut x = vec![1.0f32, 2.0];
    residual_add(&mut x, &[bf16::from_f32(0.5), bf16::from_f32(-2.0)]).unwrap();
    assert_eq!(x, [1.5, 0.0]);
    let err = residual_add(&mut x, &[bf16::ONE]).unwrap_err();
    assert!(
        err.to_string().contains("expected 2 elements, got 1"),
        "{err}"
    );
}

/// RoPE + KV write against `Rope::apply` for both styles, with a bias, GQA,
/// a padding token (slot -1) and slots on both sides of a block boundary.
#[test]
fn rope_kv_write_rotates_like_the_cpu_rope_and_fills_the_slots() {
    let mut rng = Rng::new(5);
    for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
        let (n_heads, n_kv, hd, bs) = (6, 2, 64, 4);
        let kv = KvLayout {
            num_blocks: 5,
            block_size: bs,
            n_kv_heads: n_kv,
            head_dim: hd,
        };
        let tokens = 4;
        let shape = RopeKvShape {
            tokens,
            n_heads,
            kv,
            style,
        };
        let width = shape.qkv_width();
        let qkv = bf16s(&mut rng, tokens * width, 1.0);
        let bias = bf16s(&mut rng, width, 0.5);
        let positions = [3, 4, 1000, 7];
        // Token 1 is padding; tokens 0 and 3 sit at block 2's last slot and block 4's first.
        let slots = [2 * bs as i32 + 3, -1, 1, 4 * bs as i32];
        let rope = Rope::new(hd, 10_000.0, style, None);
        let mut q_out = vec![bf16::ZERO; tokens * n_heads * hd];
        let mut k_cache = vec![bf16::from_f32(7.0); kv.layer_len()];
        let mut v_cache = vec![bf16::from_f32(7.0); kv.layer_len()];
        rope_kv_write(
            &shape,
            RopeKvBuffers {
                qkv: &qkv,
                bias: Some(&bias),
                positions: &positions,
                slots: &slots,
                inv_freq: rope.inv_freq(),
                q_out: &mut q_out,
                k_cache: &mut k_cache,
                v_cache: &mut v_cache,
                kv_scales: KvScales::ONE,
            },
        )
        .unwrap();

        let qd = n_heads * hd;
        let kvd = n_kv * hd;
        for t in 0..tokens {
            let mut row: Vec<f32> = qkv[t * width..(t + 1) * width]
                .iter()
                .zip(&bias)
                .map(|(x, b)| x.to_f32() + b.to_f32())
                .collect();
            let (q, rest) = row.split_at_mut(qd);
            let (k, v) = rest.split_at_mut(kvd);
            rope.apply(q, positions[t] as usize);
            rope.apply(k, positions[t] as usize);
            assert_close(
                &format!("{style:?} q of token {t}"),
                &to_f32(&q_out[t * qd..(t + 1) * qd]),
                q,
                BF16_TOLERANCE,
            );
            let Ok(slot) = usize::try_from(slots[t]) else {
                continue;
            };
            for h in 0..n_kv {
                let at = kv.slot_offset(slot, h);
                let kh = &k[h * hd..(h + 1) * hd];
                let vh = &v[h * hd..(h + 1) * hd];
                assert_close(
                    &format!("{style:?} k of token {t} head {h}"),
                    &to_f32(&k_cache[at..at + hd]),
                    kh,
                    BF16_TOLERANCE,
                );
                assert_close(
                    &format!("{style:?} v of token {t} head {h}"),
                    &to_f32(&v_cache[at..at + hd]),
                    vh,
                    BF16_TOLERANCE,
                );
            }
        }
        // Three tokens wrote one K vector per KV head; the padding token none.
        let untouched = k_cache.iter().filter(|v| v.to_f32() == 7.0).count();
        assert_eq!(
            untouched,
            kv.layer_len() - 3 * n_kv * hd,
            "the padding token wrote nothing"
        );
    }
}

#[test]
fn rope_kv_write_refuses_a_slot_outside_the_cache() {
    let kv = KvLayout {
        num_blocks: 1,
        block_size: 4,
        n_kv_heads: 1,
        head_dim: 32,
    };
    let shape = RopeKvShape {
        tokens: 1,
        n_heads: 1,
        kv,
        style: RopeStyle::HalfSplit,
    };
    let qkv = vec![bf16::ZERO; shape.qkv_width()];
    let (mut q, mut k, mut v) = (
        vec![bf16::ZERO; 32],
        vec![bf16::ZERO; 128],
        vec![bf16::ZERO; 128],
    );
    let err = rope_kv_write(
        &shape,
        RopeKvBuffers {
            qkv: &qkv,
            bias: None,
            positions: &[0],
            slots: &[4],
            inv_freq: &[1.0; 16],
            q_out: &mut q,
            k_cache: &mut k,
            v_cache: &mut v,
            kv_scales: KvScales::ONE,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("slot 4"), "{err}");
}

/// A paged cache filled twice from the same random K/V: in the GPU layout
/// for the twin and in the CPU layout for `paged_attention_reference`.
struct TwoCaches {
    kv: KvLayout,
    k: Vec<bf16>,
    v: Vec<bf16>,
    cpu_k: Vec<f32>,
    cpu_v: Vec<f32>,
}

impl TwoCaches {
    fn random(rng: &mut Rng, kv: KvLayout) -> Self {
        let (k, v) = (
            bf16s(rng, kv.layer_len(), 1.0),
            bf16s(rng, kv.layer_len(), 1.0),
        );
        let (mut cpu_k, mut cpu_v) = (vec![0.0; kv.layer_len()], vec![0.0; kv.layer_len()]);
        for slot in 0..kv.num_blocks * kv.block_size {
            for h in 0..kv.n_kv_heads {
                let gpu = kv.slot_offset(slot, h);
                let cpu = (slot * kv.n_kv_heads + h) * kv.head_dim;
                for d in 0..kv.head_dim {
                    cpu_k[cpu + d] = k[gpu + d].to_f32();
                    cpu_v[cpu + d] = v[gpu + d].to_f32();
                }
            }
        }
        Self {
            kv,
            k,
            v,
            cpu_k,
            cpu_v,
        }
    }

    fn cpu_view(&self) -> PagedKv<'_> {
        PagedKv {
            k: &self.cpu_k,
            v: &self.cpu_v,
            block_size: self.kv.block_size,
            n_kv_heads: self.kv.n_kv_heads,
            head_dim: self.kv.head_dim,
        }
    }
}

/// Random distinct block ids per sequence, packed `[seqs][max_blocks]` (0-filled).
fn block_tables(
    rng: &mut Rng,
    kv: &KvLayout,
    lens: &[usize],
    max_blocks: usize,
) -> (Vec<i32>, Vec<Vec<u32>>) {
    let mut free: Vec<u32> = (0..kv.num_blocks as u32).collect();
    let mut packed = vec![0i32; lens.len() * max_blocks];
    let mut tables = Vec::new();
    for (s, &len) in lens.iter().enumerate() {
        let mut t = Vec::new();
        for b in 0..len.div_ceil(kv.block_size) {
            let id = free.swap_remove(rng.below(free.len()));
            packed[s * max_blocks + b] = id as i32;
            t.push(id);
        }
        tables.push(t);
    }
    (packed, tables)
}

/// Decode: one query per sequence, lengths ending mid-block, on a block
/// boundary, at one key; a padding row (length 0) gives zeros.
#[test]
fn decode_attention_matches_the_reference_over_gqa_ratios() {
    let mut rng = Rng::new(6);
    for (n_heads, n_kv, hd) in [
        (4, 4, 32),
        (9, 3, 64),
        (8, 2, 128),
        (32, 8, 128),
        (8, 1, 256),
    ] {
        let kv = KvLayout {
            num_blocks: 40,
            block_size: 16,
            n_kv_heads: n_kv,
            head_dim: hd,
        };
        let caches = TwoCaches::random(&mut rng, kv);
        let lens = [37usize, 16, 1, 0, 130];
        let max_blocks = 10;
        let (packed, tables) = block_tables(&mut rng, &kv, &lens, max_blocks);
        let width = n_heads * hd;
        let q = bf16s(&mut rng, lens.len() * width, 1.0);
        let scale = 1.0 / (hd as f32).sqrt();
        let shape = AttentionShape {
            n_seqs: lens.len(),
            n_tokens: lens.len(),
            n_heads,
            kv,
            max_blocks_per_seq: max_blocks,
            scale,
        };
        let ctx: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        let mut out = vec![bf16::from_f32(9.0); q.len()];
        paged_attention(
            &shape,
            AttentionBuffers {
                q: &q,
                k_cache: &caches.k,
                v_cache: &caches.v,
                kv_scales: KvScales::ONE,
                block_tables: &packed,
                context_lens: &ctx,
                query_starts: None,
                out: &mut out,
            },
        )
        .unwrap();
        for (s, &len) in lens.iter().enumerate() {
            let got = to_f32(&out[s * width..(s + 1) * width]);
            if len == 0 {
                assert!(got.iter().all(|&v| v == 0.0), "padding row writes zeros");
                continue;
            }
            let mut want = vec![0.0; width];
            let qs = to_f32(&q[s * width..(s + 1) * width]);
            paged_attention_reference(
                &qs,
                len - 1,
                n_heads,
                &caches.cpu_view(),
                &tables[s],
                scale,
                &mut want,
            );
            assert_close(
                &format!("{n_heads}/{n_kv}x{hd} seq {s} len {len}"),
                &got,
                &want,
                BF16_TOLERANCE,
            );
        }
    }
}

/// Chunked prefill: a first chunk from position 0, a chunk after cached
/// tokens that crosses block boundaries, and a one-token chunk (decode
/// inside a prefill call), each query seeing only keys up to its position.
#[test]
fn prefill_attention_matches_the_reference_across_chunk_boundaries() {
    let mut rng = Rng::new(7);
    for (n_heads, n_kv, hd) in [(9, 3, 64), (8, 2, 128)] {
        let kv = KvLayout {
            num_blocks: 30,
            block_size: 8,
            n_kv_heads: n_kv,
            head_dim: hd,
        };
        let caches = TwoCaches::random(&mut rng, kv);
        // (cached before the chunk, chunk length)
        let seqs = [(0usize, 11usize), (21, 19), (44, 1)];
        let lens: Vec<usize> = seqs.iter().map(|&(c, n)| c + n).collect();
        let max_blocks = 8;
        let (packed, tables) = block_tables(&mut rng, &kv, &lens, max_blocks);
        let mut starts = vec![0i32];
        for &(_, n) in &seqs {
            starts.push(starts.last().copied().unwrap_or(0) + n as i32);
        }
        let n_tokens = starts[seqs.len()] as usize;
        let width = n_heads * hd;
        let q = bf16s(&mut rng, n_tokens * width, 1.0);
        let scale = 0.11;
        let shape = AttentionShape {
            n_seqs: seqs.len(),
            n_tokens,
            n_heads,
            kv,
            max_blocks_per_seq: max_blocks,
            scale,
        };
        let ctx: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        let mut out = vec![bf16::ZERO; q.len()];
        paged_attention(
            &shape,
            AttentionBuffers {
                q: &q,
                k_cache: &caches.k,
                v_cache: &caches.v,
                kv_scales: KvScales::ONE,
                block_tables: &packed,
                context_lens: &ctx,
                query_starts: Some(&starts),
                out: &mut out,
            },
        )
        .unwrap();
        for (s, &(cached, n)) in seqs.iter().enumerate() {
            let rows = starts[s] as usize * width..starts[s + 1] as usize * width;
            let mut want = vec![0.0; n * width];
            paged_attention_reference(
                &to_f32(&q[rows.clone()]),
                cached,
                n_heads,
                &caches.cpu_view(),
                &tables[s],
                scale,
                &mut want,
            );
            assert_close(
                &format!("{n_heads}/{n_kv} seq {s}"),
                &to_f32(&out[rows]),
                &want,
                BF16_TOLERANCE,
            );
        }
    }
}

#[test]
fn attention_refuses_block_ids_outside_the_cache() {
    let kv = KvLayout {
        num_blocks: 2,
        block_size: 4,
        n_kv_heads: 1,
        head_dim: 32,
    };
    let shape = AttentionShape {
        n_seqs: 1,
        n_tokens: 1,
        n_heads: 1,
        kv,
        max_blocks_per_seq: 2,
        scale: 1.0,
    };
    let cache = vec![bf16::ZERO; kv.layer_len()];
    let mut out = vec![bf16::ZERO; 32];
    let err = paged_attention(
        &shape,
        AttentionBuffers {
            q: &[bf16::ZERO; 32],
            k_cache: &cache,
            v_cache: &cache,
            kv_scales: KvScales::ONE,
            block_tables: &[0, 2],
            context_lens: &[6],
            query_starts: None,
            out: &mut out,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("names block 2 of 2"), "{err}");
}

#[test]
fn shapes_name_the_buffer_whose_length_is_wrong() {
    let shape = EmbeddingShape {
        tokens: 2,
        vocab: 3,
        hidden: 4,
    };
    let err = embedding_gather(&shape, &[0, 1], &[bf16::ZERO; 12], &mut [0.0; 7]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "embedding output: expected 8 elements, got 7"
    );
    let kv = KvLayout {
        num_blocks: 1,
        block_size: 4,
        n_kv_heads: 1,
        head_dim: 48,
    };
    let err = kv.validate().unwrap_err();
    assert!(err.to_string().contains("head_dim 48"), "{err}");
}

/// Logits like a model's: a few strong tokens over a long flat tail, some
/// exact ties, the odd NaN and infinity.
fn logits_row(rng: &mut Rng, vocab: usize) -> Vec<f32> {
    (0..vocab)
        .map(|i| match rng.below(1000) {
            0 => f32::NAN,
            1 => f32::NEG_INFINITY,
            2..=4 => 3.0,
            _ if i % 97 == 0 => 6.0 + rng.uniform() * 3.0,
            _ => rng.uniform() * 4.0,
        })
        .collect()
}

#[test]
fn sampling_twin_picks_what_the_cpu_rules_pick() {
    let mut rng = Rng::new(8);
    let settings = [
        RowSampling {
            temperature: 0.0,
            top_p: 1.0,
            ..Default::default()
        },
        RowSampling {
            temperature: 0.8,
            top_p: 1.0,
            ..Default::default()
        },
        RowSampling {
            temperature: 1.0,
            top_p: 1.0,
            min_p: 0.05,
            ..Default::default()
        },
        RowSampling {
            temperature: 0.7,
            top_p: 1.0,
            top_k: 40,
            ..Default::default()
        },
        RowSampling {
            temperature: 1.3,
            top_p: 0.9,
            ..Default::default()
        },
        RowSampling {
            temperature: 0.6,
            top_p: 0.5,
            top_k: 200,
            min_p: 0.02,
            ..Default::default()
        },
        RowSampling {
            temperature: 2.0,
            top_p: 0.95,
            top_k: 1,
            ..Default::default()
        },
        RowSampling {
            temperature: f32::NAN,
            top_p: 0.5,
            ..Default::default()
        },
    ];
    let mut host = 0;
    for vocab in [50, 1000, 5000, 70_001] {
        for setting in settings {
            let rows = 6;
            let logits: Vec<f32> = (0..rows)
                .flat_map(|_| logits_row(&mut rng, vocab))
                .collect();
            let params: Vec<RowSampling> = (0..rows)
                .map(|_| RowSampling {
                    uniform: (rng.uniform() + 1.0) / 2.0,
                    ..setting
                })
                .collect();
            let mut ids = vec![0; rows];
            sample(&SampleShape { rows, vocab }, &logits, &params, &mut ids).unwrap();
            for (r, (&id, p)) in ids.iter().zip(&params).enumerate() {
                let want = sample_reference(&logits[r * vocab..(r + 1) * vocab], p);
                match want {
                    Some(w) => assert_eq!(id, w as i32, "vocab {vocab} row {r} {p:?}"),
                    None => {
                        assert_eq!(id, HOST_SAMPLES, "vocab {vocab} row {r} {p:?}");
                        host += 1;
                    }
                }
            }
        }
    }
    // Top-p 0.9 / 0.95 over a flat 70k tail needs more than 1024 candidates.
    assert!(host > 0, "the host fallback was exercised");
}

#[test]
fn greedy_sampling_takes_the_lowest_id_among_equal_best() {
    let logits = [1.0, f32::NAN, 5.0, 5.0, f32::INFINITY, 2.0];
    let greedy = RowSampling {
        temperature: 0.0,
        top_p: 1.0,
        ..Default::default()
    };
    let mut ids = [0];
    sample(
        &SampleShape { rows: 1, vocab: 6 },
        &logits,
        &[greedy],
        &mut ids,
    )
    .unwrap();
    assert_eq!(ids, [4], "+inf counts as the largest finite logit");
    let logits = [1.0, 5.0, 5.0];
    sample(
        &SampleShape { rows: 1, vocab: 3 },
        &logits,
        &[greedy],
        &mut ids,
    )
    .unwrap();
    assert_eq!(ids, [1]);
}

#[test]
fn top_k_above_the_device_limit_is_left_to_the_host() {
    let mut rng = Rng::new(9);
    let vocab = 4000;
    let logits = logits_row(&mut rng, vocab);
    let p = RowSampling {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 2000,
        uniform: 0.3,
        ..Default::default()
    };
    let mut ids = [0];
    sample(&SampleShape { rows: 1, vocab }, &logits, &[p], &mut ids).unwrap();
    assert_eq!(ids, [HOST_SAMPLES]);
    let p = RowSampling { top_k: 1024, ..p };
    sample(&SampleShape { rows: 1, vocab }, &logits, &[p], &mut ids).unwrap();
    assert_eq!(Some(ids[0] as usize), sample_reference(&logits, &p));
}

/// Q8_0 GEMV against the CPU reference matmul on the same quantised
/// matrix, for one row and a full batch, with more blocks than lanes.
#[test]
fn q8_0_gemv_matches_the_reference_matmul() {
    use crate::{Matrix, WeightDType};
    let mut rng = Rng::new(10);
    for (rows, cols, batch) in [(37, 64, 1), (50, 32 * 70, 8), (8, 4096, 3)] {
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.uniform() * 0.1).collect();
        let w = Matrix::quantize(WeightDType::Q8_0, rows, cols, &values).unwrap();
        let x = bf16s(&mut rng, batch * cols, 2.0);
        let mut want = vec![0.0; batch * rows];
        crate::matmul::matmul_reference(&w, &to_f32(&x), batch, &mut want);
        let mut out = vec![bf16::ZERO; batch * rows];
        gemv_q8_0(&GemvShape { rows, cols, batch }, w.bytes(), &x, &mut out).unwrap();
        assert_close(
            &format!("gemv {rows}x{cols} batch {batch}"),
            &to_f32(&out),
            &want,
            BF16_TOLERANCE,
        );
    }
    let err = gemv_q8_0(
        &GemvShape {
            rows: 1,
            cols: 32,
            batch: 9,
        },
        &[0; 34],
        &[bf16::ZERO; 288],
        &mut [bf16::ZERO; 9],
    )
    .unwrap_err();
    assert!(err.to_string().contains("at most 8 rows"), "{err}");
}

/// `sort_key` of sample.cu: larger = better (logit in total order, then lower id).
fn sort_key(l: f32, i: usize) -> u64 {
    let bits = l.to_bits();
    let ord = if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    (u64::from(ord) << 32) | u64::from(0xFFFF_FFFFu32 - i as u32)
}

/// sample.cu's candidate search replayed step by step (the twin sorts
/// instead): the 8-pass radix select of the `want`-th largest key, the
/// gather of every key at or above it, and the bitonic sort over
/// SAMPLE_MAX_CANDIDATES slots with its compare-swap rule. Checks the
/// kernel's algorithm, not its bits, on ties, -0/+0 and infinities.
#[test]
fn the_kernels_radix_select_and_bitonic_sort_find_the_best_candidates_in_order() {
    let mut rng = Rng::new(11);
    for (vocab, want) in [
        (5000, 1024),
        (70_001, 40),
        (300, 300),
        (2000, 1),
        (1500, 777),
    ] {
        let logits: Vec<f32> = (0..vocab)
            .map(|_| match rng.below(50) {
                0 => 0.0,
                1 => -0.0,
                2 => f32::NEG_INFINITY,
                3 => 2.5,
                _ => rng.uniform() * 10.0,
            })
            .collect();
        let keys: Vec<u64> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| sort_key(l, i))
            .collect();

        let (mut prefix, mut remaining) = (0u64, want);
        for pass in 0..8 {
            let shift = 56 - 8 * pass;
            let mut hist = [0usize; 256];
            for &key in &keys {
                if pass == 0 || (key ^ prefix) >> (shift + 8) == 0 {
                    hist[((key >> shift) & 255) as usize] += 1;
                }
            }
            for b in (0..256).rev() {
                if hist[b] >= remaining {
                    prefix |= (b as u64) << shift;
                    break;
                }
                remaining -= hist[b];
            }
        }
        let mut slots = vec![0u64; SAMPLE_MAX_CANDIDATES];
        let gathered: Vec<u64> = keys.iter().copied().filter(|&k| k >= prefix).collect();
        assert_eq!(
            gathered.len(),
            want,
            "vocab {vocab}: exactly `want` keys at or above the k-th"
        );
        slots[..want].copy_from_slice(&gathered);
        let n = SAMPLE_MAX_CANDIDATES;
        let mut size = 2;
        while size <= n {
            let mut stride = size / 2;
            while stride > 0 {
                for j in 0..n {
                    let partner = j ^ stride;
                    if partner > j {
                        let descending = j & size == 0;
                        if (slots[j] < slots[partner]) == descending {
                            slots.swap(j, partner);
                        }
                    }
                }
                stride /= 2;
            }
            size *= 2;
        }

        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let ids: Vec<usize> = slots[..want]
            .iter()
            .map(|&k| (0xFFFF_FFFFu32 - k as u32) as usize)
            .collect();
        assert_eq!(ids, order[..want], "vocab {vocab} want {want}");
    }
}

/// attention.cu's search for a query token's sequence, replayed: the last
/// sequence whose first query is at or before the token, so that empty
/// chunks (sequences with no query this step) are skipped.
#[test]
fn the_attention_kernels_sequence_search_skips_empty_chunks() {
    let mut rng = Rng::new(12);
    for _ in 0..200 {
        let n_seqs = 1 + rng.below(9);
        let lens: Vec<usize> = (0..n_seqs)
            .map(|_| {
                if rng.below(3) == 0 {
                    0
                } else {
                    1 + rng.below(5)
                }
            })
            .collect();
        let mut starts = vec![0usize];
        for l in &lens {
            starts.push(starts[starts.len() - 1] + l);
        }
        for token in 0..starts[n_seqs] {
            let (mut lo, mut hi) = (0usize, n_seqs - 1);
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                if starts[mid] <= token {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            assert!(
                starts[lo] <= token && token < starts[lo + 1],
                "token {token} in {starts:?} went to {lo}"
            );
        }
    }
}
