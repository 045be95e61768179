#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! all-MiniLM-L6-v2 against the reference values in MODELS.md (float32
//! forward of sentence-transformers, padding off). Skipped with a message
//! when the model is not fetched (`scripts/fetch-models.sh embed`).

use sluice_models::{EncoderLoadOptions, SentenceEncoder};

const SENTENCES: [&str; 3] = [
    "How do I reset my password?",
    "What is the procedure to change my password?",
    "What is the capital of France?",
];
const FIRST_FIVE: [[f32; 5]; 3] = [
    [0.0069, -0.06302, -0.07204, -0.0325, -0.04271],
    [0.0351, 0.00131, -0.09872, -0.07996, -0.05806],
    [0.08205, 0.03606, -0.00389, -0.00488, 0.02565],
];
/// Cosines first↔second, first↔third, second↔third.
const COSINES: [f32; 3] = [0.8048, 0.0747, 0.0223];

fn load(options: EncoderLoadOptions) -> Option<SentenceEncoder> {
    let dir = sluice_models::demo_embedding_model_dir();
    if !dir.join("model.safetensors").is_file() {
        eprintln!(
            "SKIPPED: all-MiniLM-L6-v2 is not at {}; run scripts/fetch-models.sh embed",
            dir.display()
        );
        return None;
    }
    Some(SentenceEncoder::load_with(&dir, options).unwrap())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn embed_all(enc: &SentenceEncoder) -> Vec<Vec<f32>> {
    let ids: Vec<Vec<u32>> = SENTENCES
        .iter()
        .map(|s| enc.tokenizer().encode_with_special_tokens(s).unwrap())
        .collect();
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    enc.embed(&refs).unwrap()
}

fn check_golden(embeddings: &[Vec<f32>], tolerance: f32) {
    for (i, (e, want)) in embeddings.iter().zip(FIRST_FIVE).enumerate() {
        for (j, (got, want)) in e.iter().zip(want).enumerate() {
            assert!(
                (got - want).abs() < tolerance,
                "sentence {i} component {j}: got {got}, reference {want}"
            );
        }
    }
    let pairs = [(0, 1), (0, 2), (1, 2)];
    for ((a, b), want) in pairs.into_iter().zip(COSINES) {
        let got = cosine(&embeddings[a], &embeddings[b]);
        assert!(
            (got - want).abs() < tolerance,
            "cosine {a}↔{b}: got {got}, reference {want}"
        );
    }
}

#[test]
fn minilm_matches_reference_embeddings() {
    let Some(enc) = load(EncoderLoadOptions::default()) else {
        return;
    };
    assert_eq!(enc.dim(), 384);
    assert_eq!(enc.max_len(), 512);
    assert!(enc.normalizes());
    let embeddings = embed_all(&enc);
    for e in &embeddings {
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    check_golden(&embeddings, 1e-3);
}

#[test]
fn minilm_ranks_paraphrases_above_unrelated_sentences() {
    let Some(enc) = load(EncoderLoadOptions::default()) else {
        return;
    };
    let groups = [
        ["The cat sits on the mat.", "A cat is sitting on a rug."],
        [
            "The stock market fell sharply today.",
            "Share prices dropped steeply this afternoon.",
        ],
        [
            "How do I bake sourdough bread?",
            "What is a good recipe for sourdough?",
        ],
    ];
    let ids: Vec<Vec<u32>> = groups
        .iter()
        .flatten()
        .map(|s| enc.tokenizer().encode_with_special_tokens(s).unwrap())
        .collect();
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let e = enc.embed(&refs).unwrap();
    for g in 0..groups.len() {
        let (a, b) = (2 * g, 2 * g + 1);
        let paraphrase = cosine(&e[a], &e[b]);
        for other in (0..e.len()).filter(|&o| o / 2 != g) {
            let unrelated = cosine(&e[a], &e[other]);
            assert!(
                paraphrase > unrelated + 0.2,
                "group {g}: paraphrase cosine {paraphrase} vs unrelated {unrelated}"
            );
        }
    }
}

#[test]
fn minilm_embedding_is_the_same_alone_and_in_a_mixed_batch() {
    let Some(enc) = load(EncoderLoadOptions::default()) else {
        return;
    };
    let batch = embed_all(&enc);
    for (i, s) in SENTENCES.iter().enumerate() {
        let ids = enc.tokenizer().encode_with_special_tokens(s).unwrap();
        let alone = enc.embed(&[&ids]).unwrap().remove(0);
        for (a, b) in alone.iter().zip(&batch[i]) {
            assert!((a - b).abs() < 1e-5, "sentence {i}: {a} vs {b}");
        }
    }
}
