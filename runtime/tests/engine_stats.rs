//! The figures a real engine (a tiny random model through the real GGUF
//! loader) hands its stats observer add up to what it served: tokens,
//! first tokens and gaps, finished reasons, preemptions and phases, under
//! preemption and chunked prefill, and for a client that goes away.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_kernels::WeightDType;
use sluice_models::testing::{write_tiny_gguf, TinySpec};
use sluice_models::{load_llm, LoadKnobs};
use sluice_runtime::{
    Engine, EngineConfig, EngineEvent, EngineHandle, FinishedReason, FinishedRequest,
    GenerateRequest, IterationStats, LoadSnapshot, SamplingParams, StatsObserver,
};

/// Everything the engine reported, summed.
#[derive(Default)]
struct Seen {
    iteration_tokens: Vec<usize>,
    prompt_tokens: u64,
    generation_tokens: u64,
    preemptions: u64,
    prefix_queries: u64,
    ttft: Vec<f64>,
    itl: Vec<f64>,
    finished: Vec<FinishedRequest>,
    last_load: LoadSnapshot,
}

#[derive(Default)]
struct Recorder(Mutex<Seen>);

impl StatsObserver for Recorder {
    fn record(&self, load: &LoadSnapshot, s: &IterationStats) {
        let mut seen = self.0.lock().unwrap();
        seen.iteration_tokens.extend(&s.iteration_tokens);
        seen.prompt_tokens += s.prompt_tokens;
        seen.generation_tokens += s.generation_tokens;
        seen.preemptions += s.preemptions;
        seen.prefix_queries += s.prefix_cache_queries;
        seen.ttft.extend(&s.time_to_first_token);
        seen.itl.extend(&s.inter_token_latency);
        seen.finished.extend(s.finished.iter().cloned());
        seen.last_load = *load;
    }
}

impl Recorder {
    /// Waits (the figures follow the answers by one loop turn) until `n`
    /// requests have finished and the engine reported itself idle.
    fn wait_finished(&self, n: usize) {
        let started = Instant::now();
        loop {
            {
                let seen = self.0.lock().unwrap();
                if seen.finished.len() >= n
                    && seen.last_load.running == 0
                    && seen.last_load.waiting == 0
                {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the observer never saw {n} finished requests"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn tiny_engine(cfg: EngineConfig) -> (tempfile::TempDir, EngineHandle, Arc<Recorder>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &TinySpec::default(), WeightDType::Q8_0).unwrap();
    let loaded = load_llm(&path, LoadKnobs::default(), &mut |_, _| {}).unwrap();
    let engine = Engine::start(loaded, cfg).unwrap();
    let recorder = Arc::new(Recorder::default());
    assert!(engine.observe(recorder.clone()));
    assert!(
        !engine.observe(Arc::new(Recorder::default())),
        "an engine has one observer"
    );
    (dir, engine, recorder)
}

fn request(i: usize, len: usize, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_tokens: (0..len)
            .map(|j| ((i * 31 + j * 7 + j * j) % 256) as u32)
            .collect(),
        params: SamplingParams {
            max_tokens,
            ignore_eos: true,
            ..SamplingParams::default()
        },
        constraint: None,
        session: None,
    }
}

#[test]
fn the_figures_add_up_to_what_was_served_under_preemption() {
    // A KV budget too small for all eight at once (preemption) and a small
    // step budget (chunked prefill).
    let (_d, engine, recorder) = tiny_engine(EngineConfig {
        num_kv_blocks: Some(12),
        max_num_batched_tokens: 16,
        enable_prefix_caching: false,
        ..EngineConfig::default()
    });
    let max_tokens = 24;
    let requests: Vec<GenerateRequest> =
        (0..8).map(|i| request(i, 5 + i * 9, max_tokens)).collect();
    let prompt_total: usize = requests.iter().map(|r| r.prompt_tokens.len()).sum();
    let streams: Vec<_> = requests
        .into_iter()
        .map(|r| engine.submit(r).unwrap())
        .collect();
    for mut stream in streams {
        while let Some(event) = stream.blocking_recv() {
            if let EngineEvent::Error(e) = event {
                panic!("engine error: {e}");
            }
        }
    }
    recorder.wait_finished(8);
    let seen = recorder.0.lock().unwrap();
    let preemptions = engine.load().preemptions;
    assert!(preemptions > 0, "the tiny KV budget should have preempted");
    assert_eq!(seen.preemptions, preemptions);
    assert_eq!(seen.generation_tokens, 8 * max_tokens as u64);
    assert_eq!(seen.prompt_tokens, prompt_total as u64, "each prompt once");
    assert_eq!(seen.ttft.len(), 8);
    assert_eq!(seen.itl.len(), 8 * (max_tokens - 1));
    assert_eq!(seen.prefix_queries, 0, "prefix caching is off");
    assert_eq!(seen.iteration_tokens.len() as u64, engine.load().steps);
    assert!(seen.iteration_tokens.iter().all(|&t| (1..=16).contains(&t)));
    // Preempted work is computed again: at least every prompt token and
    // every fed-back generated token.
    let computed: usize = seen.iteration_tokens.iter().sum();
    assert!(
        computed >= prompt_total + 8 * (max_tokens - 1),
        "{computed}"
    );
    assert_eq!(seen.finished.len(), 8);
    for f in &seen.finished {
        assert_eq!(f.reason, FinishedReason::Length);
        assert_eq!(
            (f.generation_tokens, f.max_tokens),
            (max_tokens, max_tokens)
        );
        let (queue, prefill, decode, inference) = (
            f.queue_seconds.unwrap(),
            f.prefill_seconds.unwrap(),
            f.decode_seconds.unwrap(),
            f.inference_seconds.unwrap(),
        );
        assert!(((prefill + decode) - inference).abs() < 1e-9, "{f:?}");
        assert!(queue + inference <= f.e2e_seconds + 1e-9, "{f:?}");
        assert!(f.time_per_output_token_seconds.unwrap() <= decode);
    }
}

#[test]
fn a_client_that_goes_away_is_an_abort() {
    let (_d, engine, recorder) = tiny_engine(EngineConfig::default());
    let mut stream = engine.submit(request(1, 8, 400)).unwrap();
    assert!(matches!(
        stream.blocking_recv(),
        Some(EngineEvent::Token { .. })
    ));
    drop(stream);
    recorder.wait_finished(1);
    let seen = recorder.0.lock().unwrap();
    let f = &seen.finished[0];
    assert_eq!(f.reason, FinishedReason::Abort);
    assert!(f.generation_tokens >= 1 && f.generation_tokens < 400);
    assert!(f.queue_seconds.is_some() && f.prefill_seconds.is_some());
    assert_eq!(seen.ttft.len(), 1);
}
