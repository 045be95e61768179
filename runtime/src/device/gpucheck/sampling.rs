//! The `sampling` section: on-device sampling on the request path. Each
//! decode step of the tiny model runs twice at the same context through
//! the CUDA executor: once bringing the logits back (the host samples them
//! with the engine's sampler), once asking for ids only (the `sample`
//! kernel picks them on the device, with the uniform the host would draw).
//! The ids must be the host's, for greedy and seeded top-p / top-k / min-p
//! rows alike. Re-running a step rewrites the same K/V, so both runs see
//! the same context.

use serde_json::{json, Value};
use sluice_models::{ModelError, SeqBatch};

use super::super::cuda::CudaOps;
use super::super::plan::PlanLimits;
use super::super::{DeviceExecutor, DeviceExecutorConfig, DeviceModel};
use super::{load_tiny, tiny_prompts};
use crate::executor::{Executor, RowOut, RowWant};
use crate::request::SamplingParams;
use crate::rng::SeqRng;
use crate::sampler::{off_host_rules, sample};

/// The settings rows cycle through: greedy, then seeded samplers.
fn settings() -> [SamplingParams; 4] {
    let base = SamplingParams::default();
    [
        base.clone(),
        SamplingParams {
            temperature: 0.8,
            top_p: 0.9,
            ..base.clone()
        },
        SamplingParams {
            temperature: 1.2,
            top_k: 40,
            min_p: 0.05,
            ..base.clone()
        },
        SamplingParams {
            temperature: 1.0,
            ..base
        },
    ]
}

pub fn device_sampling(ops: &mut CudaOps) -> Result<Value, ModelError> {
    let model = load_tiny()?;
    let (block_size, num_blocks, steps) = (16usize, 64usize, 24usize);
    let weights = DeviceModel::upload(&mut ops.clone(), &model)?;
    let limits = PlanLimits::for_engine(512, 8, num_blocks * block_size, block_size, num_blocks);
    let mut exec = DeviceExecutor::new(
        ops.clone(),
        weights,
        DeviceExecutorConfig {
            limits,
            graphs: true,
        },
    )?;
    let prompts = tiny_prompts();
    let n = prompts.len();
    let per_seq = num_blocks / n;
    let tables: Vec<Vec<u32>> = (0..n)
        .map(|i| ((i * per_seq) as u32..((i + 1) * per_seq) as u32).collect())
        .collect();
    let params: Vec<SamplingParams> = (0..n)
        .map(|i| settings()[i % settings().len()].clone())
        .collect();
    let mut rngs: Vec<SeqRng> = (0..n).map(|i| SeqRng::seeded(1000 + i as u64)).collect();
    let mut contexts = prompts.clone();
    let (mut rows, mut equal, mut handed_back) = (0usize, 0usize, 0usize);
    let mut first_difference = Value::Null;
    for step in 0..=steps {
        // Step 0 prefills each prompt whole; later steps decode one token.
        let seqs: Vec<SeqBatch<'_>> = contexts
            .iter()
            .zip(&prompts)
            .zip(&tables)
            .map(|((ctx, prompt), table)| {
                let start = if step == 0 { 0 } else { ctx.len() - 1 };
                debug_assert!(ctx.len() >= prompt.len());
                SeqBatch {
                    tokens: &ctx[start..],
                    start_pos: start,
                    block_table: table,
                    want_logits: true,
                }
            })
            .collect();
        let logits = exec.execute(&seqs)?;
        let wants: Vec<RowWant> = params
            .iter()
            .zip(&rngs)
            .map(|(p, rng)| off_host_rules(p, rng).map_or(RowWant::Logits, RowWant::Token))
            .collect();
        let outs = exec.execute_rows(&seqs, &wants)?;
        drop(seqs);
        for (i, (row, out)) in logits.into_iter().zip(outs).enumerate() {
            let mut host_rng = rngs[i].clone();
            let mut row = row;
            let host = sample(&mut row, &params[i], &[], &[], &mut host_rng).id;
            rows += 1;
            match out {
                RowOut::Token(id) if id == host => equal += 1,
                RowOut::Token(id) => {
                    if first_difference.is_null() {
                        first_difference = json!({
                            "step": step, "row": i, "device": id, "host": host,
                            "params": format!("{:?}", params[i]),
                        });
                    }
                }
                RowOut::Logits(_) => handed_back += 1,
            }
            rngs[i] = host_rng;
            contexts[i].push(host);
        }
    }
    let sampled = rows - handed_back;
    Ok(json!({
        "model": "tiny (random weights)",
        "rows": rows,
        "device_sampled": sampled,
        "equal_to_host": equal,
        "handed_back": handed_back,
        "first_difference": first_difference,
        // Every id the device picked is the host's, and the device picked
        // most of them (the tiny vocabulary never needs the host).
        "pass": equal == sampled && sampled * 10 >= rows * 9,
    }))
}
