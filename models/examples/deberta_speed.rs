//! Times `SequenceClassifier::classify` on a random classifier of
//! DeBERTa-v3-base's shape (Prompt Guard 2 86M's encoder: hidden 768, 12
//! layers, 12 heads, 256 log buckets over 512 positions; the tiny
//! vocabulary instead of its 251k tokens, which only changes the embedding
//! lookup). Random weights: this measures speed, not answers.
//!
//!     cargo run -p sluice-models --release --example deberta_speed -- [f32|q8_0]

use std::time::Instant;

use sluice_models::testing_encoder::{write_tiny_deberta, EncoderDims, TinyDeberta};
use sluice_models::{EncoderLoadOptions, SequenceClassifier, WeightDType};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let shape = TinyDeberta {
        dims: EncoderDims::BASE,
        position_buckets: 256,
        ..TinyDeberta::v3_like(vec!["BENIGN".into(), "MALICIOUS".into()])
    };
    let started = Instant::now();
    drop(write_tiny_deberta(dir.path(), &shape, 1)?);
    let quantize = match std::env::args().nth(1).as_deref() {
        Some("q8_0") => Some(WeightDType::Q8_0),
        _ => None,
    };
    let clf = SequenceClassifier::load_with(dir.path(), EncoderLoadOptions { quantize })?;
    println!(
        "wrote and loaded in {:.1} s; weights {}; threads: {}",
        started.elapsed().as_secs_f64(),
        quantize.map_or("f32".to_string(), |q| format!("{q:?}")),
        rayon::current_num_threads()
    );
    println!("batch  tokens/input  ms/call  input tokens/s");
    for (batch, len) in [(1, 16), (1, 64), (1, 512), (8, 64)] {
        let inputs: Vec<Vec<u32>> = (0..batch)
            .map(|b| (0..len).map(|i| ((i * 7 + b * 3) % 16) as u32).collect())
            .collect();
        let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        clf.classify(&refs)?;
        let (mut calls, started) = (0u32, Instant::now());
        while calls < 3 || started.elapsed().as_secs_f64() < 2.0 {
            clf.classify(&refs)?;
            calls += 1;
        }
        let per_call = started.elapsed().as_secs_f64() / f64::from(calls);
        println!(
            "{batch:>5}  {len:>12}  {:>7.1}  {:>14.0}",
            per_call * 1e3,
            (batch * len) as f64 / per_call
        );
    }
    Ok(())
}
