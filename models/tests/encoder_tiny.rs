#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Tiny random BERT checkpoints written by `sluice_models::testing_encoder`,
//! loaded through the real loaders and compared with a naive reference
//! written here in plain loops (the textbook BERT forward: embeddings +
//! LayerNorm, post-norm layers with exact GELU, tanh pooler, softmax).

use sluice_models::testing_encoder::{
    write_tiny_bert, TinyBertHead, TinyTensors, TINY_BERT_HEADS, TINY_BERT_HIDDEN, TINY_BERT_LAYERS,
};
use sluice_models::{SentenceEncoder, SequenceClassifier};

fn t<'a>(w: &'a TinyTensors, name: &str) -> &'a [f32] {
    &w.get(name).unwrap_or_else(|| panic!("no {name}")).1
}

fn linear(w: &TinyTensors, name: &str, x: &[f32]) -> Vec<f32> {
    let (shape, weight) = &w[&format!("{name}.weight")];
    let bias = t(w, &format!("{name}.bias"));
    let (rows, cols) = (shape[0], shape[1]);
    (0..rows)
        .map(|r| bias[r] + (0..cols).map(|c| weight[r * cols + c] * x[c]).sum::<f32>())
        .collect()
}

fn layer_norm(x: &mut [f32], g: &[f32], b: &[f32]) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    for i in 0..x.len() {
        x[i] = (((x[i] as f64 - mean) / (var + 1e-12).sqrt()) as f32) * g[i] + b[i];
    }
}

fn erf(x: f64) -> f64 {
    // Series for |x| < 3, enough for a reference at these magnitudes.
    if x.abs() > 5.0 {
        return x.signum();
    }
    let mut sum = 0.0;
    let mut term = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 || n < 5.0 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// Last-layer hidden states of one input, token by token.
fn reference_states(w: &TinyTensors, p: &str, ids: &[u32]) -> Vec<Vec<f32>> {
    let h = TINY_BERT_HIDDEN;
    let hd = h / TINY_BERT_HEADS;
    let word = t(w, &format!("{p}embeddings.word_embeddings.weight"));
    let pos = t(w, &format!("{p}embeddings.position_embeddings.weight"));
    let ty = t(w, &format!("{p}embeddings.token_type_embeddings.weight"));
    let mut x: Vec<Vec<f32>> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let mut e: Vec<f32> = (0..h)
                .map(|k| word[id as usize * h + k] + pos[i * h + k] + ty[k])
                .collect();
            layer_norm(
                &mut e,
                t(w, &format!("{p}embeddings.LayerNorm.weight")),
                t(w, &format!("{p}embeddings.LayerNorm.bias")),
            );
            e
        })
        .collect();
    for l in 0..TINY_BERT_LAYERS {
        let lp = format!("{p}encoder.layer.{l}");
        let q: Vec<_> = x
            .iter()
            .map(|r| linear(w, &format!("{lp}.attention.self.query"), r))
            .collect();
        let k: Vec<_> = x
            .iter()
            .map(|r| linear(w, &format!("{lp}.attention.self.key"), r))
            .collect();
        let v: Vec<_> = x
            .iter()
            .map(|r| linear(w, &format!("{lp}.attention.self.value"), r))
            .collect();
        let mut next = Vec::new();
        for i in 0..x.len() {
            let mut ctx = vec![0.0f32; h];
            for head in 0..TINY_BERT_HEADS {
                let r = head * hd..(head + 1) * hd;
                let scores: Vec<f64> = (0..x.len())
                    .map(|j| {
                        q[i][r.clone()]
                            .iter()
                            .zip(&k[j][r.clone()])
                            .map(|(a, b)| (a * b) as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for (j, e) in exps.iter().enumerate() {
                    for d in r.clone() {
                        ctx[d] += (e / total) as f32 * v[j][d];
                    }
                }
            }
            let mut a = linear(w, &format!("{lp}.attention.output.dense"), &ctx);
            for d in 0..h {
                a[d] += x[i][d];
            }
            layer_norm(
                &mut a,
                t(w, &format!("{lp}.attention.output.LayerNorm.weight")),
                t(w, &format!("{lp}.attention.output.LayerNorm.bias")),
            );
            let inter: Vec<f32> = linear(w, &format!("{lp}.intermediate.dense"), &a)
                .iter()
                .map(|&z| (0.5 * z as f64 * (1.0 + erf(z as f64 / 2f64.sqrt()))) as f32)
                .collect();
            let mut o = linear(w, &format!("{lp}.output.dense"), &inter);
            for d in 0..h {
                o[d] += a[d];
            }
            layer_norm(
                &mut o,
                t(w, &format!("{lp}.output.LayerNorm.weight")),
                t(w, &format!("{lp}.output.LayerNorm.bias")),
            );
            next.push(o);
        }
        x = next;
    }
    x
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() < tol, "{what}[{i}]: {x} vs reference {y}");
    }
}

fn inputs() -> Vec<Vec<u32>> {
    vec![
        vec![2, 4, 5, 6, 7, 4, 8, 3],
        vec![2, 10, 11, 3],
        vec![2, 12, 13, 14, 15, 9, 5, 6, 7, 4, 3],
    ]
}

#[test]
fn tiny_classifier_matches_the_naive_reference_and_reads_labels_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let labels: Vec<String> = ["BENIGN", "INJECTION", "JAILBREAK"]
        .map(String::from)
        .to_vec();
    let w = write_tiny_bert(
        dir.path(),
        &TinyBertHead::Classifier {
            labels: labels.clone(),
        },
        11,
    )
    .unwrap();
    let clf = SequenceClassifier::load(dir.path()).unwrap();
    assert_eq!(clf.labels(), &labels[..]);
    assert_eq!(clf.max_len(), 16);
    let ids = inputs();
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let got = clf.classify(&refs).unwrap();
    for (n, input) in ids.iter().enumerate() {
        let states = reference_states(&w, "bert.", input);
        let pooled: Vec<f32> = linear(&w, "bert.pooler.dense", &states[0])
            .iter()
            .map(|v| v.tanh())
            .collect();
        let logits = linear(&w, "classifier", &pooled);
        let max = logits.iter().cloned().fold(f32::MIN, f32::max);
        let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f32 = exps.iter().sum();
        let want: Vec<f32> = exps.iter().map(|e| e / total).collect();
        close(&got[n], &want, 1e-4, &format!("input {n} probabilities"));
        assert!((got[n].iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn tiny_sentence_encoder_pools_like_the_reference_alone_or_batched() {
    for (cls, normalize) in [(false, true), (true, false)] {
        let dir = tempfile::tempdir().unwrap();
        let w = write_tiny_bert(dir.path(), &TinyBertHead::Sentence { cls, normalize }, 5).unwrap();
        let enc = SentenceEncoder::load(dir.path()).unwrap();
        assert_eq!(enc.normalizes(), normalize);
        assert_eq!(enc.dim(), TINY_BERT_HIDDEN);
        let ids = inputs();
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let batch = enc.embed(&refs).unwrap();
        for (n, input) in ids.iter().enumerate() {
            let states = reference_states(&w, "", input);
            let mut want: Vec<f32> = if cls {
                states[0].clone()
            } else {
                (0..TINY_BERT_HIDDEN)
                    .map(|d| states.iter().map(|s| s[d]).sum::<f32>() / states.len() as f32)
                    .collect()
            };
            if normalize {
                let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
                want.iter_mut().for_each(|v| *v /= norm);
            }
            close(&batch[n], &want, 1e-4, &format!("cls={cls} input {n}"));
            let alone = enc.embed(&[input]).unwrap().remove(0);
            close(
                &alone,
                &batch[n],
                1e-5,
                &format!("cls={cls} input {n} alone vs batched"),
            );
        }
        // The tokenizer adds [CLS]/[SEP] and never pads.
        assert_eq!(
            enc.tokenizer()
                .encode_with_special_tokens("The cat sat")
                .unwrap(),
            vec![2, 4, 5, 6, 3]
        );
    }
}

#[test]
fn bad_batches_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(
        dir.path(),
        &TinyBertHead::Sentence {
            cls: false,
            normalize: true,
        },
        1,
    )
    .unwrap();
    let enc = SentenceEncoder::load(dir.path()).unwrap();
    assert!(enc.embed(&[&[]]).is_err());
    assert!(enc.embed(&[&[2; 17]]).is_err());
    assert!(enc.embed(&[&[2, 999, 3]]).is_err());
}

#[test]
fn unsupported_classifier_architectures_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(
        dir.path(),
        &TinyBertHead::Classifier {
            labels: vec!["A".into(), "B".into()],
        },
        2,
    )
    .unwrap();
    let cfg_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap().replace(
        "BertForSequenceClassification",
        "RobertaForSequenceClassification",
    );
    std::fs::write(&cfg_path, text).unwrap();
    let err = SequenceClassifier::load(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("RobertaForSequenceClassification"), "{err}");
}
