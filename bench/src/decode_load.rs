//! Background LLM decoding for the latency benchmarks that measure an
//! encoder beside it (`embed`, `guard`): the demo chat model in this
//! process, several greedy streams that never stop on their own, and a
//! token counter for the decode rate reached meanwhile.
//!
//! Design decision: the streams are read on plain threads, not on the
//! benchmark's async runtime, so the measured task never waits behind a
//! token collector; dropping a stream cancels its sequence.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sluice_models::{load_llm, LoadKnobs};
use sluice_runtime::{
    Engine, EngineConfig, EngineEvent, EngineHandle, GenerateRequest, SamplingParams,
};

/// Streams decoding in the background until [`DecodeLoad::stop`].
pub struct DecodeLoad {
    // Held so the engine outlives its streams.
    _engine: EngineHandle,
    stop: Arc<AtomicBool>,
    tokens: Arc<AtomicUsize>,
    collectors: Vec<JoinHandle<()>>,
}

impl DecodeLoad {
    /// Loads `model`, submits `streams` sequences and returns once every
    /// one has decoded a few tokens (past its prefill).
    pub fn start(model: &Path, threads: usize, streams: usize) -> Result<Self> {
        let loaded = load_llm(model, LoadKnobs::default(), &mut |_, _| {})
            .with_context(|| format!("loading {}", model.display()))?;
        let engine = Engine::start(
            loaded,
            EngineConfig {
                threads: Some(threads),
                ..EngineConfig::default()
            },
        )?;
        let prompt = engine
            .tokenizer()
            .encode("Tell me a long story about the sea.", true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let tokens = Arc::new(AtomicUsize::new(0));
        let mut collectors = Vec::new();
        for _ in 0..streams {
            let mut stream = engine.submit(GenerateRequest {
                prompt_tokens: prompt.clone(),
                params: SamplingParams {
                    max_tokens: 4096,
                    temperature: 0.0,
                    ignore_eos: true,
                    ..SamplingParams::default()
                },
                constraint: None,
                session: None,
            })?;
            let (stop, tokens) = (stop.clone(), tokens.clone());
            collectors.push(std::thread::spawn(move || {
                // Returning drops the stream, which cancels the sequence.
                while !stop.load(Ordering::Relaxed) {
                    match stream.blocking_recv() {
                        Some(EngineEvent::Token { .. }) => {
                            tokens.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => return,
                    }
                }
            }));
        }
        let load = Self {
            _engine: engine,
            stop,
            tokens,
            collectors,
        };
        while load.tokens() < streams * 4 {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(load)
    }

    /// Tokens decoded so far, all streams together.
    pub fn tokens(&self) -> usize {
        self.tokens.load(Ordering::Relaxed)
    }

    /// Runs `measure` and returns its result with the decode rate (tokens/s,
    /// all streams) reached while it ran.
    pub fn beside<T>(&self, measure: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
        let (t0, tokens0) = (Instant::now(), self.tokens());
        let out = measure()?;
        let rate = (self.tokens() - tokens0) as f64 / t0.elapsed().as_secs_f64();
        Ok((out, rate))
    }

    /// Ends the streams and waits for their readers.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.collectors {
            let _ = c.join();
        }
    }
}
