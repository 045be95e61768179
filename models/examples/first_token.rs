//! Prints the demo model's first-token log-probabilities for the first
//! reference prompt, with weights as shipped or requantised:
//! `cargo run -p sluice-models --release --example first_token -- [f32|q8_0|q4_0]`
use sluice_kernels::WeightDType;
use sluice_models::config::LlamaConfig;
use sluice_models::gguf::GgufFile;
use sluice_models::{demo_chat_model_path, KvCache, Llama, LoadKnobs, ModelError, SeqBatch};

fn main() -> Result<(), ModelError> {
    let requantize = match std::env::args().nth(1).as_deref() {
        Some("f32") => Some(WeightDType::F32),
        Some("q8_0") => Some(WeightDType::Q8_0),
        Some("q4_0") => Some(WeightDType::Q4_0),
        _ => None,
    };
    let gguf = GgufFile::open(&demo_chat_model_path())?;
    let cfg = LlamaConfig::from_gguf(&gguf)?;
    let model = Llama::load(
        cfg,
        &gguf,
        LoadKnobs {
            requantize,
            ..LoadKnobs::default()
        },
        &mut |_, _| {},
    )?;
    let ids: [u32; 37] = [
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
        407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1,
        520, 9531, 198,
    ];
    let mut kv = KvCache::new(model.config(), 3, 16);
    let seq = SeqBatch {
        tokens: &ids,
        start_pos: 0,
        block_table: &[0, 1, 2],
        want_logits: true,
    };
    let logits = model.forward(&[seq], &mut kv)?.remove(0);
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z = logits.iter().map(|v| (v - m).exp()).sum::<f32>().ln() + m;
    for id in [60usize, 504, 15319, 2219, 7026] {
        println!("{id}: {:.4}", logits[id] - z);
    }
    Ok(())
}
