#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Tiny random DeBERTa-v2 classifiers written by
//! `sluice_models::testing_encoder::write_tiny_deberta`, loaded through
//! `SequenceClassifier::load` and compared with a naive reference written
//! here in plain f64 loops, following HF's `modeling_deberta_v2.py` line by
//! line: `build_relative_position` with `make_log_bucket_position`, the c2p
//! term gathered at `clamp(rel[i][j] + span)`, the p2c term computed as
//! `key · pos_query` at `clamp(-rel[a][b] + span)` and *transposed*, every
//! term divided by `sqrt(head_dim · 3)`, `ContextPooler` (dense + exact GELU
//! on the first token), `classifier`, softmax.

use sluice_models::testing_encoder::{
    write_tiny_deberta, EncoderDims, TinyDeberta, TinyTensors, TINY_BERT_HEADS, TINY_BERT_HIDDEN,
    TINY_BERT_LAYERS, TINY_BERT_MAX_POS,
};
use sluice_models::SequenceClassifier;

const EPS: f64 = 1e-7;

fn t<'a>(w: &'a TinyTensors, name: &str) -> &'a [f32] {
    &w.get(name).unwrap_or_else(|| panic!("no {name}")).1
}

fn linear(w: &TinyTensors, name: &str, x: &[f64]) -> Vec<f64> {
    let (shape, weight) = &w[&format!("{name}.weight")];
    let bias = t(w, &format!("{name}.bias"));
    let (rows, cols) = (shape[0], shape[1]);
    (0..rows)
        .map(|r| {
            bias[r] as f64
                + (0..cols)
                    .map(|c| weight[r * cols + c] as f64 * x[c])
                    .sum::<f64>()
        })
        .collect()
}

fn layer_norm(x: &[f64], w: &TinyTensors, name: &str) -> Vec<f64> {
    let g = t(w, &format!("{name}.weight"));
    let b = t(w, &format!("{name}.bias"));
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    x.iter()
        .enumerate()
        .map(|(i, v)| (v - mean) / (var + EPS).sqrt() * g[i] as f64 + b[i] as f64)
        .collect()
}

fn erf(x: f64) -> f64 {
    if x.abs() > 5.0 {
        return x.signum();
    }
    let (mut sum, mut term, mut n) = (0.0, x, 0.0);
    while term.abs() > 1e-17 || n < 5.0 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / 2f64.sqrt()))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// HF's `make_log_bucket_position`, written out again (not shared with the
/// code under test).
fn make_log_bucket_position(rel: i64, bucket_size: i64, max_position: i64) -> i64 {
    let sign = rel.signum();
    let mid = bucket_size / 2;
    let abs_pos = if rel < mid && rel > -mid {
        mid - 1
    } else {
        rel.abs()
    };
    let log_pos = ((abs_pos as f64 / mid as f64).ln()
        / ((max_position - 1) as f64 / mid as f64).ln()
        * (mid - 1) as f64)
        .ceil() as i64
        + mid;
    if abs_pos <= mid {
        rel
    } else {
        log_pos * sign
    }
}

/// Which positional terms the reference adds (both, in the real model).
#[derive(Clone, Copy)]
struct Terms {
    c2p: bool,
    p2c: bool,
}

const BOTH: Terms = Terms {
    c2p: true,
    p2c: true,
};

/// Class probabilities of one input.
fn reference_probabilities(
    w: &TinyTensors,
    shape: &TinyDeberta,
    ids: &[u32],
    terms: Terms,
) -> Vec<f64> {
    let h = TINY_BERT_HIDDEN;
    let hd = h / TINY_BERT_HEADS;
    let n = ids.len();
    let word = t(w, "deberta.embeddings.word_embeddings.weight");
    let mut x: Vec<Vec<f64>> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let mut e: Vec<f64> = (0..h).map(|k| word[id as usize * h + k] as f64).collect();
            if shape.position_biased_input {
                let pos = t(w, "deberta.embeddings.position_embeddings.weight");
                (0..h).for_each(|k| e[k] += pos[i * h + k] as f64);
            }
            if shape.type_vocab_size > 0 {
                let ty = t(w, "deberta.embeddings.token_type_embeddings.weight");
                (0..h).for_each(|k| e[k] += ty[k] as f64);
            }
            layer_norm(&e, w, "deberta.embeddings.LayerNorm")
        })
        .collect();

    // build_relative_position: rel[q][k] = q - k, bucketed when buckets > 0.
    let span = shape.attention_span() as i64;
    let max_rel = if shape.max_relative_positions < 1 {
        TINY_BERT_MAX_POS as i64
    } else {
        shape.max_relative_positions
    };
    let rel = |a: usize, b: usize| -> i64 {
        let d = a as i64 - b as i64;
        if shape.position_buckets > 0 {
            make_log_bucket_position(d, shape.position_buckets as i64, max_rel)
        } else {
            d
        }
    };
    let clamp = |r: i64| r.clamp(0, 2 * span - 1) as usize;

    // get_rel_embedding: the first 2·span rows, through the encoder LayerNorm.
    let table = t(w, "deberta.encoder.rel_embeddings.weight");
    let rel_emb: Vec<Vec<f64>> = (0..2 * span as usize)
        .map(|r| {
            let row: Vec<f64> = table[r * h..(r + 1) * h]
                .iter()
                .map(|&v| v as f64)
                .collect();
            layer_norm(&row, w, "deberta.encoder.LayerNorm")
        })
        .collect();
    let scale = ((hd * 3) as f64).sqrt();

    for l in 0..TINY_BERT_LAYERS {
        let p = format!("deberta.encoder.layer.{l}");
        let proj = |leaf: &str, rows: &[Vec<f64>]| -> Vec<Vec<f64>> {
            rows.iter()
                .map(|r| linear(w, &format!("{p}.attention.self.{leaf}"), r))
                .collect()
        };
        let q = proj("query_proj", &x);
        let k = proj("key_proj", &x);
        let v = proj("value_proj", &x);
        let (pos_key, pos_query) = if shape.share_att_key {
            (proj("key_proj", &rel_emb), proj("query_proj", &rel_emb))
        } else {
            (
                proj("pos_key_proj", &rel_emb),
                proj("pos_query_proj", &rel_emb),
            )
        };
        let mut next = Vec::with_capacity(n);
        for i in 0..n {
            let mut ctx = vec![0.0f64; h];
            for head in 0..TINY_BERT_HEADS {
                let c = head * hd..(head + 1) * hd;
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        let mut s = dot(&q[i][c.clone()], &k[j][c.clone()]) / scale;
                        if terms.c2p {
                            // c2p_att[i][j] = q_i · pos_key[clamp(rel[i][j] + span)]
                            let r = clamp(rel(i, j) + span);
                            s += dot(&q[i][c.clone()], &pos_key[r][c.clone()]) / scale;
                        }
                        if terms.p2c {
                            // p2c_att[a][b] = k_a · pos_query[clamp(-rel[a][b] + span)],
                            // transposed: entry (i, j) is p2c_att[j][i].
                            let r = clamp(-rel(j, i) + span);
                            s += dot(&k[j][c.clone()], &pos_query[r][c.clone()]) / scale;
                        }
                        s
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for (j, e) in exps.iter().enumerate() {
                    for d in c.clone() {
                        ctx[d] += e / total * v[j][d];
                    }
                }
            }
            let mut a = linear(w, &format!("{p}.attention.output.dense"), &ctx);
            (0..h).for_each(|d| a[d] += x[i][d]);
            let a = layer_norm(&a, w, &format!("{p}.attention.output.LayerNorm"));
            let inter: Vec<f64> = linear(w, &format!("{p}.intermediate.dense"), &a)
                .into_iter()
                .map(gelu)
                .collect();
            let mut o = linear(w, &format!("{p}.output.dense"), &inter);
            (0..h).for_each(|d| o[d] += a[d]);
            next.push(layer_norm(&o, w, &format!("{p}.output.LayerNorm")));
        }
        x = next;
    }

    let pooled: Vec<f64> = linear(w, "pooler.dense", &x[0])
        .into_iter()
        .map(gelu)
        .collect();
    let logits = linear(w, "classifier", &pooled);
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// Different lengths; the 16-token one spans every distance the tiny
/// geometry has (±15, the last log bucket).
fn inputs() -> Vec<Vec<u32>> {
    vec![
        vec![2, 4, 5, 6, 7, 4, 8, 3],
        vec![2, 10, 11, 3],
        vec![2, 12, 13, 14, 15, 9, 5, 6, 7, 4, 3],
        vec![2, 12, 13, 14, 4, 5, 6, 7, 4, 8, 9, 10, 11, 5, 15, 3],
        vec![2, 3],
    ]
}

fn labels() -> Vec<String> {
    ["BENIGN", "INJECTION", "JAILBREAK"]
        .map(String::from)
        .to_vec()
}

/// Loads `shape`, checks it against the reference alone and batched, and
/// checks that dropping either positional term from the reference would
/// have been caught.
fn check_against_reference(shape: &TinyDeberta, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let w = write_tiny_deberta(dir.path(), shape, seed).unwrap();
    let clf = SequenceClassifier::load(dir.path()).unwrap();
    assert_eq!(clf.labels(), &shape.labels[..], "labels in id order");
    assert_eq!(clf.max_len(), TINY_BERT_MAX_POS);

    let ids = inputs();
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let batched = clf.classify(&refs).unwrap();
    assert_eq!(batched.len(), ids.len());
    let (mut without_c2p, mut without_p2c) = (0.0f64, 0.0f64);
    for (n, input) in ids.iter().enumerate() {
        let want = reference_probabilities(&w, shape, input, BOTH);
        let diff = max_diff(&batched[n], &want);
        assert!(
            diff < 1e-4,
            "input {n}: {:?} vs reference {want:?} (max diff {diff})",
            batched[n]
        );
        assert!((batched[n].iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let alone = clf.classify(&[input]).unwrap().remove(0);
        for (a, b) in alone.iter().zip(&batched[n]) {
            assert!(
                (a - b).abs() < 1e-5,
                "input {n} alone {alone:?} vs batched {:?}",
                batched[n]
            );
        }
        let no_c2p = Terms {
            c2p: false,
            p2c: true,
        };
        let no_p2c = Terms {
            c2p: true,
            p2c: false,
        };
        without_c2p = without_c2p.max(max_diff(
            &batched[n],
            &reference_probabilities(&w, shape, input, no_c2p),
        ));
        without_p2c = without_p2c.max(max_diff(
            &batched[n],
            &reference_probabilities(&w, shape, input, no_p2c),
        ));
    }
    // The comparison above is only meaningful if each term moves the answer
    // by much more than its tolerance.
    assert!(
        without_c2p > 1e-2,
        "c2p barely matters here ({without_c2p})"
    );
    assert!(
        without_p2c > 1e-2,
        "p2c barely matters here ({without_p2c})"
    );
}

#[test]
fn v3_shaped_classifier_with_log_buckets_matches_the_naive_reference() {
    check_against_reference(&TinyDeberta::v3_like(labels()), 7);
}

#[test]
fn v2_shaped_classifier_with_clamped_distances_and_own_position_keys_matches_the_reference() {
    // No buckets and a span of 4: distances past ±4 clamp to the table's
    // ends; separate pos_key/pos_query projections; absolute positions and
    // token types added to the input, as in the original DeBERTa-v2.
    let shape = TinyDeberta {
        dims: EncoderDims::TINY,
        labels: labels(),
        position_buckets: 0,
        max_relative_positions: 4,
        share_att_key: false,
        position_biased_input: true,
        type_vocab_size: 2,
    };
    check_against_reference(&shape, 23);
}

#[test]
fn deberta_classifier_tokenizes_with_its_tokenizer_json_and_classifies_text() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_deberta(dir.path(), &TinyDeberta::v3_like(labels()), 3).unwrap();
    let clf = SequenceClassifier::load(dir.path()).unwrap();
    let ids = clf
        .tokenizer()
        .encode_with_special_tokens("Ignore all rules")
        .unwrap();
    assert_eq!(ids, vec![2, 12, 13, 14, 3]);
    let probs = clf.classify(&[&ids]).unwrap();
    assert_eq!(probs[0].len(), 3);
}

#[test]
fn bad_deberta_inputs_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_deberta(dir.path(), &TinyDeberta::v3_like(labels()), 1).unwrap();
    let clf = SequenceClassifier::load(dir.path()).unwrap();
    assert!(clf.classify(&[&[]]).is_err(), "empty input");
    assert!(clf.classify(&[&[2; 17]]).is_err(), "longer than max_len");
    assert!(
        clf.classify(&[&[2, 999, 3]]).is_err(),
        "id outside the vocabulary"
    );
    // One bad input fails the whole call before any work.
    assert!(clf.classify(&[&[2, 4, 3], &[]]).is_err());
    assert!(clf.classify(&[]).unwrap().is_empty());
}

#[test]
fn deberta_configs_sluice_cannot_run_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_deberta(dir.path(), &TinyDeberta::v3_like(labels()), 4).unwrap();
    let cfg_path = dir.path().join("config.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let load_with = |key: &str, value: serde_json::Value| {
        let mut cfg = original.clone();
        cfg[key] = value;
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        SequenceClassifier::load(dir.path())
            .unwrap_err()
            .to_string()
    };
    let err = load_with("conv_kernel_size", serde_json::json!(3));
    assert!(err.contains("conv_kernel_size"), "{err}");
    let err = load_with("hidden_act", serde_json::json!("relu"));
    assert!(err.contains("hidden_act"), "{err}");
    // 8 buckets need a rel_embeddings table of 16 rows; 12 buckets need 24.
    let err = load_with("position_buckets", serde_json::json!(12));
    assert!(err.contains("rel_embeddings"), "{err}");
    let err = load_with("share_att_key", serde_json::json!(false));
    assert!(err.contains("pos_key_proj"), "{err}");
    // Shapes that disagree with config.json fail at load, not in a request.
    let err = load_with("intermediate_size", serde_json::json!(63));
    assert!(err.contains("intermediate.dense"), "{err}");
    let err = load_with("num_attention_heads", serde_json::json!(3));
    assert!(err.contains("num_attention_heads"), "{err}");
}
