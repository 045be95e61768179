//! The decoder's mechanics on tiny random models written through the real
//! loaders, and its numbers on the real demo model against llama.cpp.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sluice_kernels::WeightDType;
use sluice_models::config::LlamaConfig;
use sluice_models::gguf::GgufFile;
use sluice_models::hf::SafetensorsFiles;
use sluice_models::testing::{write_tiny_gguf, write_tiny_hf, HfLayout, TinySpec};
use sluice_models::{ActivationPrecision, KvCache, Llama, LoadKnobs, SeqBatch};

fn tiny_gguf(dtype: WeightDType) -> (tempfile::TempDir, Llama) {
    tiny_gguf_spec(&TinySpec::default(), dtype)
}

fn tiny_gguf_spec(spec: &TinySpec, dtype: WeightDType) -> (tempfile::TempDir, Llama) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, spec, dtype).unwrap();
    let gguf = GgufFile::open(&path).unwrap();
    let cfg = LlamaConfig::from_gguf(&gguf).unwrap();
    let model = Llama::load(cfg, &gguf, LoadKnobs::default(), &mut |_, _| {}).unwrap();
    (dir, model)
}

fn run(model: &Llama, kv: &mut KvCache, tokens: &[u32], start: usize, table: &[u32]) -> Vec<f32> {
    let seq = SeqBatch {
        tokens,
        start_pos: start,
        block_table: table,
        want_logits: true,
    };
    model.forward(&[seq], kv).unwrap().remove(0)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const PROMPT: [u32; 21] = [
    5, 77, 3, 200, 12, 9, 44, 44, 101, 7, 0, 255, 31, 64, 128, 2, 19, 88, 150, 6, 42,
];

fn tiny_hf(spec: &TinySpec, layout: HfLayout) -> (tempfile::TempDir, Llama) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_hf(dir.path(), spec, layout).unwrap();
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let cfg = LlamaConfig::from_hf_json(&text).unwrap();
    let files = SafetensorsFiles::open_folder(dir.path()).unwrap();
    let model = Llama::load(cfg, &files, LoadKnobs::default(), &mut |_, _| {}).unwrap();
    (dir, model)
}

#[test]
fn gguf_and_safetensors_loaders_give_the_same_logits() {
    for qwen2 in [false, true] {
        let spec = TinySpec {
            qwen2,
            ..TinySpec::default()
        };
        let (_d1, from_gguf) = tiny_gguf_spec(&spec, WeightDType::F32);
        let (_d2, from_hf) = tiny_hf(&spec, HfLayout::default());
        let table = [0, 1];
        let mut kv1 = KvCache::new(from_gguf.config(), 2, 16);
        let mut kv2 = KvCache::new(from_hf.config(), 2, 16);
        let a = run(&from_gguf, &mut kv1, &PROMPT, 0, &table);
        let b = run(&from_hf, &mut kv2, &PROMPT, 0, &table);
        // Different RoPE pairing (llama: interleaved on permuted rows vs
        // half-split; qwen2: half-split on both) must give the same function.
        let diff = max_abs_diff(&a, &b);
        assert!(diff < 1e-4, "qwen2={qwen2}: diff {diff}");
    }
}

#[test]
fn qwen2_biases_are_applied() {
    let with = TinySpec {
        qwen2: true,
        ..TinySpec::default()
    };
    let (_d1, biased) = tiny_gguf_spec(&with, WeightDType::F32);
    assert!(biased.config().attention_bias);
    let (_d2, plain) = tiny_gguf(WeightDType::F32);
    let mut kv1 = KvCache::new(biased.config(), 2, 16);
    let mut kv2 = KvCache::new(plain.config(), 2, 16);
    let a = run(&biased, &mut kv1, &PROMPT, 0, &[0, 1]);
    let b = run(&plain, &mut kv2, &PROMPT, 0, &[0, 1]);
    assert!(max_abs_diff(&a, &b) > 1e-2, "biases changed nothing");
}

#[test]
fn sharded_half_precision_safetensors_load_like_f32() {
    let spec = TinySpec::default();
    let (_d, reference) = tiny_hf(&spec, HfLayout::default());
    let mut kv = KvCache::new(reference.config(), 2, 16);
    let want = run(&reference, &mut kv, &PROMPT, 0, &[0, 1]);
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
    for (dtype, tol) in [(WeightDType::F16, 0.01), (WeightDType::BF16, 0.05)] {
        let (_d, model) = tiny_hf(&spec, HfLayout { dtype, shards: 3 });
        let mut kv = KvCache::new(model.config(), 2, 16);
        let got = run(&model, &mut kv, &PROMPT, 0, &[0, 1]);
        let diff = max_abs_diff(&want, &got);
        assert!(
            diff < tol * scale,
            "{dtype:?}: diff {diff} vs scale {scale}"
        );
    }
}

#[test]
fn prefill_then_decode_equals_one_longer_prefill() {
    let (_d, model) = tiny_gguf(WeightDType::F32);
    let table = [3, 1];
    let mut kv = KvCache::new(model.config(), 4, 16);
    let full = run(&model, &mut kv, &PROMPT, 0, &table);

    let mut kv = KvCache::new(model.config(), 4, 16);
    let n = PROMPT.len();
    run(&model, &mut kv, &PROMPT[..n - 1], 0, &table);
    let stepped = run(&model, &mut kv, &PROMPT[n - 1..], n - 1, &table);
    assert!(max_abs_diff(&full, &stepped) < 1e-4);

    // Chunked prefill in uneven pieces gives the same too.
    let mut kv = KvCache::new(model.config(), 4, 16);
    run(&model, &mut kv, &PROMPT[..7], 0, &table);
    run(&model, &mut kv, &PROMPT[7..17], 7, &table);
    let chunked = run(&model, &mut kv, &PROMPT[17..], 17, &table);
    assert!(max_abs_diff(&full, &chunked) < 1e-4);
}

#[test]
fn a_batch_of_sequences_matches_each_run_alone() {
    let (_d, model) = tiny_gguf(WeightDType::Q8_0);
    let prompts: [&[u32]; 3] = [&PROMPT[..5], &PROMPT[3..20], &PROMPT[..1]];
    let tables: [&[u32]; 3] = [&[4], &[0, 2], &[5]];
    let alone: Vec<Vec<f32>> = prompts
        .iter()
        .zip(tables)
        .map(|(p, t)| {
            let mut kv = KvCache::new(model.config(), 6, 16);
            run(&model, &mut kv, p, 0, t)
        })
        .collect();
    let mut kv = KvCache::new(model.config(), 6, 16);
    let batch: Vec<SeqBatch> = prompts
        .iter()
        .zip(tables)
        .map(|(p, t)| SeqBatch {
            tokens: p,
            start_pos: 0,
            block_table: t,
            want_logits: true,
        })
        .collect();
    let together = model.forward(&batch, &mut kv).unwrap();
    for (a, b) in alone.iter().zip(&together) {
        assert!(max_abs_diff(a, b) < 1e-4, "diff {}", max_abs_diff(a, b));
    }
}

#[test]
fn quantized_weights_stay_close_to_f32() {
    let (_d, f32_model) = tiny_gguf(WeightDType::F32);
    let table = [0, 1];
    let mut kv = KvCache::new(f32_model.config(), 2, 16);
    let reference = run(&f32_model, &mut kv, &PROMPT, 0, &table);
    for dtype in [WeightDType::Q8_0, WeightDType::Q4_0, WeightDType::Q4_1] {
        let (_d, q) = tiny_gguf(dtype);
        let mut kv = KvCache::new(q.config(), 2, 16);
        let got = run(&q, &mut kv, &PROMPT, 0, &table);
        let scale = reference.iter().map(|v| v.abs()).fold(0.0, f32::max);
        let tol = if dtype == WeightDType::Q8_0 {
            0.05
        } else {
            0.35
        };
        assert!(
            max_abs_diff(&reference, &got) < tol * scale,
            "{dtype:?}: diff {} vs scale {scale}",
            max_abs_diff(&reference, &got)
        );
    }
}

#[test]
fn out_of_vocabulary_token_is_an_error_not_a_panic() {
    let (_d, model) = tiny_gguf(WeightDType::F32);
    let mut kv = KvCache::new(model.config(), 1, 16);
    let seq = SeqBatch {
        tokens: &[1, 99_999],
        start_pos: 0,
        block_table: &[0],
        want_logits: true,
    };
    assert!(model.forward(&[seq], &mut kv).is_err());
}

#[test]
fn f32_activations_match_dequantised_weights_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &TinySpec::default(), WeightDType::Q4_1).unwrap();
    let gguf = GgufFile::open(&path).unwrap();
    let load = |knobs: LoadKnobs| {
        let cfg = LlamaConfig::from_gguf(&gguf).unwrap();
        let model = Llama::load(cfg, &gguf, knobs, &mut |_, _| {}).unwrap();
        let mut kv = KvCache::new(model.config(), 2, 16);
        run(&model, &mut kv, &PROMPT, 0, &[0, 1])
    };
    let dequantised = load(LoadKnobs {
        requantize: Some(WeightDType::F32),
        ..LoadKnobs::default()
    });
    let f32_acts = load(LoadKnobs {
        activations: ActivationPrecision::F32,
        ..LoadKnobs::default()
    });
    let int8_acts = load(LoadKnobs::default());
    let exact = max_abs_diff(&dequantised, &f32_acts);
    let rounded = max_abs_diff(&dequantised, &int8_acts);
    // Same dequantised weights, f32 activations on both sides: only the
    // summation order differs.
    assert!(exact < 1e-3, "f32 activations differ by {exact}");
    assert!(
        rounded > exact,
        "int8 activations should add rounding ({rounded} vs {exact})"
    );
}
