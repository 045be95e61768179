//! Sampling where the logits are: the engine driving the device step on CPU
//! operations (whose `sample` is the CUDA kernel's twin) must produce, token
//! for token, what the CPU engine produces when it samples every row on the
//! host, for greedy and for seeded top-p / top-k / min-p requests, and while
//! the device hands rows back to the host.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sluice_kernels::WeightDType;
use sluice_models::testing::{write_tiny_gguf, TinySpec};
use sluice_models::{load_llm, LoadKnobs, LoadedLlm, ModelError, SeqBatch};

use super::plan::PlanLimits;
use super::{CpuOps, DeviceExecutor, DeviceExecutorConfig, DeviceModel};
use crate::executor::{Executor, RowOut, RowWant};
use crate::{
    Engine, EngineConfig, EngineEvent, EngineHandle, EventStream, GenerateRequest, SamplingParams,
};

/// Counts what an executor answered, and optionally hands every other
/// token row back as logits (as the device does for a nucleus it cannot
/// hold), so the engine's host fallback is exercised too.
struct Watched {
    inner: Box<dyn Executor>,
    hand_back_every_other: bool,
    tokens: Arc<AtomicUsize>,
    logits: Arc<AtomicUsize>,
}

impl Executor for Watched {
    fn execute(&mut self, seqs: &[SeqBatch<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.inner.execute(seqs)
    }
    fn execute_rows(
        &mut self,
        seqs: &[SeqBatch<'_>],
        wants: &[RowWant],
    ) -> Result<Vec<RowOut>, ModelError> {
        let wants: Vec<RowWant> = wants
            .iter()
            .enumerate()
            .map(|(i, w)| match w {
                RowWant::Token(_) if self.hand_back_every_other && i % 2 == 1 => RowWant::Logits,
                other => *other,
            })
            .collect();
        let rows = self.inner.execute_rows(seqs, &wants)?;
        for r in &rows {
            let counter = match r {
                RowOut::Token(_) => &self.tokens,
                RowOut::Logits(_) => &self.logits,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(rows)
    }
    fn reset(&mut self) -> Result<(), ModelError> {
        self.inner.reset()
    }
    fn num_kv_blocks(&self) -> usize {
        self.inner.num_kv_blocks()
    }
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
}

fn load_tiny(dir: &tempfile::TempDir) -> LoadedLlm {
    let path = dir.path().join("tiny.gguf");
    if !path.exists() {
        write_tiny_gguf(&path, &TinySpec::default(), WeightDType::F32).unwrap();
    }
    let knobs = LoadKnobs {
        activations: sluice_models::ActivationPrecision::F32,
        ..LoadKnobs::default()
    };
    load_llm(&path, knobs, &mut |_, _| {}).unwrap()
}

const NUM_BLOCKS: usize = 64;

fn engine_config() -> EngineConfig {
    EngineConfig {
        block_size: 4,
        num_kv_blocks: Some(NUM_BLOCKS),
        max_num_seqs: 8,
        max_num_batched_tokens: 64,
        threads: Some(1),
        ..EngineConfig::default()
    }
}

struct DeviceEngine {
    handle: EngineHandle,
    tokens: Arc<AtomicUsize>,
    logits: Arc<AtomicUsize>,
}

/// The engine over `DeviceExecutor<CpuOps>` (graphs on, so decode steps
/// are padded to buckets as on a GPU).
fn device_engine(dir: &tempfile::TempDir, hand_back_every_other: bool) -> DeviceEngine {
    let cfg = engine_config();
    let mut ops = CpuOps::default();
    let model = load_tiny(dir).model;
    let weights = DeviceModel::upload(&mut ops, &model).unwrap();
    let max_model_len = NUM_BLOCKS * cfg.block_size;
    let limits = PlanLimits::for_engine(
        cfg.max_num_batched_tokens,
        cfg.max_num_seqs,
        max_model_len,
        cfg.block_size,
        NUM_BLOCKS,
    );
    let device = DeviceExecutor::new(
        ops,
        weights,
        DeviceExecutorConfig {
            limits,
            graphs: true,
        },
    )
    .unwrap();
    let tokens = Arc::new(AtomicUsize::new(0));
    let logits = Arc::new(AtomicUsize::new(0));
    let watched = Watched {
        inner: Box::new(device),
        hand_back_every_other,
        tokens: tokens.clone(),
        logits: logits.clone(),
    };
    let handle = Engine::start_with_executor(load_tiny(dir), cfg, Box::new(watched)).unwrap();
    DeviceEngine {
        handle,
        tokens,
        logits,
    }
}

fn prompt(i: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|j| ((i * 31 + j * 7 + j * j) % 256) as u32)
        .collect()
}

fn sampled(temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        max_tokens: 12,
        temperature,
        seed: Some(seed),
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

/// Greedy; seeded top-p; seeded top-k with min-p; seeded plain temperature;
/// one with logprobs (host only); one with a repetition penalty (host only).
fn requests() -> Vec<(Vec<u32>, SamplingParams)> {
    let greedy = SamplingParams {
        temperature: 0.0,
        seed: None,
        ..sampled(0.0, 0)
    };
    // The tiny model's random weights make its logits far apart: only
    // high temperatures leave the argmax.
    let top_p = SamplingParams {
        top_p: 0.9,
        ..sampled(20.0, 7)
    };
    let top_k = SamplingParams {
        top_k: 20,
        min_p: 0.05,
        ..sampled(40.0, 11)
    };
    let logprobs = SamplingParams {
        top_p: 0.8,
        logprobs: Some(2),
        ..sampled(1.0, 3)
    };
    let penalised = SamplingParams {
        repetition_penalty: 1.2,
        ..sampled(1.0, 5)
    };
    vec![
        (prompt(0, 9), greedy),
        (prompt(1, 5), top_p),
        (prompt(2, 13), top_k),
        (prompt(3, 7), sampled(80.0, 42)),
        (prompt(4, 6), logprobs),
        (prompt(5, 8), penalised),
    ]
}

fn submit(engine: &EngineHandle, prompt_tokens: Vec<u32>, params: SamplingParams) -> EventStream {
    engine
        .submit(GenerateRequest {
            prompt_tokens,
            params,
            constraint: None,
            session: None,
        })
        .unwrap()
}

fn collect(mut stream: EventStream) -> Vec<u32> {
    let mut ids = Vec::new();
    while let Some(ev) = stream.blocking_recv() {
        match ev {
            EngineEvent::Token { id, .. } => ids.push(id),
            EngineEvent::Finished { .. } => return ids,
            EngineEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("stream ended without Finished");
}

/// All requests submitted at once, so they share steps.
fn run_all(engine: &EngineHandle) -> Vec<Vec<u32>> {
    let streams: Vec<EventStream> = requests()
        .into_iter()
        .map(|(p, params)| submit(engine, p, params))
        .collect();
    streams.into_iter().map(collect).collect()
}

#[test]
fn ids_sampled_where_the_logits_are_equal_host_sampling_greedy_and_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let host = Engine::start(load_tiny(&dir), engine_config()).unwrap();
    let want = run_all(&host);
    // The seeded requests really sample: at least one leaves the greedy path.
    let left_greedy = (1..=3).any(|i| {
        let (p, mut params) = requests().swap_remove(i);
        params.temperature = 0.0;
        collect(submit(&host, p, params)) != want[i]
    });
    assert!(left_greedy, "no seeded request left the greedy path");

    let device = device_engine(&dir, false);
    let got = run_all(&device.handle);
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w, g, "request {i}: {:?}", requests()[i].1);
    }
    // Four requests x 12 tokens came back as ids; the logprobs and the
    // penalised requests as logits rows.
    assert_eq!(device.tokens.load(Ordering::Relaxed), 4 * 12);
    assert_eq!(device.logits.load(Ordering::Relaxed), 2 * 12);
}

#[test]
fn a_row_handed_back_by_the_device_is_sampled_on_the_host_with_the_same_draw() {
    let dir = tempfile::tempdir().unwrap();
    let host = Engine::start(load_tiny(&dir), engine_config()).unwrap();
    let want = run_all(&host);
    let device = device_engine(&dir, true);
    let got = run_all(&device.handle);
    assert_eq!(want, got);
    assert!(device.tokens.load(Ordering::Relaxed) > 0);
    // More logits rows than the two host-only requests alone would give.
    assert!(device.logits.load(Ordering::Relaxed) > 2 * 12);
}
