//! The models this process serves, and their loading.
//!
//! Each configured model has a [`ModelSlot`] from the start, so `/v1/models`
//! lists it and `/ready` reports its progress while its weights load on a
//! blocking thread; requests for it get 503 until its engine is set. A slot's
//! engine is set once and never replaced, so readers need no lock: an engine
//! whose step panicked restarts itself, and reports `restarting` (not ready)
//! meanwhile.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::Serialize;
use sluice_models::LoadKnobs;
use sluice_runtime::{Engine, EngineHandle};

use crate::config::ModelConfig;
use crate::error::ApiError;
use crate::util::unix_now;

/// One served model.
pub struct ModelSlot {
    pub config: ModelConfig,
    /// When the slot was made (`created` in `/v1/models`).
    pub created: u64,
    engine: OnceLock<EngineHandle>,
    layers_done: AtomicUsize,
    layers_total: AtomicUsize,
}

/// A model that is ready to serve.
#[derive(Clone)]
pub struct ReadyModel {
    pub slot: Arc<ModelSlot>,
    pub engine: EngineHandle,
}

/// Every configured model, in config order.
#[derive(Debug)]
pub struct Registry {
    slots: Vec<Arc<ModelSlot>>,
}

/// One model's line in `/ready`.
#[derive(Debug, Serialize)]
pub struct ModelStatus {
    pub id: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers_loaded: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers_total: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
    /// Sequences being generated and waiting: 0 and 0 when idle, which is
    /// how a client can see that a cancelled request left nothing behind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_blocks_used: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_blocks_total: Option<usize>,
    /// Free KV blocks (cached ones nobody references included): back to
    /// its idle value once a stopped or cancelled sequence is freed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_blocks_free: Option<usize>,
    /// Model steps the engine has run (to count "within one step").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_steps: Option<u64>,
    /// Restarts after a panicked engine step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_restarts: Option<usize>,
}

impl Registry {
    pub fn new(models: &[ModelConfig]) -> Self {
        let created = unix_now();
        Self {
            slots: models
                .iter()
                .map(|config| {
                    Arc::new(ModelSlot {
                        config: config.clone(),
                        created,
                        engine: OnceLock::new(),
                        layers_done: AtomicUsize::new(0),
                        layers_total: AtomicUsize::new(0),
                    })
                })
                .collect(),
        }
    }

    pub fn slots(&self) -> &[Arc<ModelSlot>] {
        &self.slots
    }

    /// The slot for `id`, loaded or not; 404 when no such model is configured.
    pub fn get(&self, id: &str) -> Result<&Arc<ModelSlot>, ApiError> {
        self.slots
            .iter()
            .find(|s| s.config.id == id)
            .ok_or_else(|| ApiError::ModelNotFound(id.to_string()))
    }

    /// The engine for `id`; 404 when unknown, 503 while it loads.
    pub fn ready(&self, id: &str) -> Result<ReadyModel, ApiError> {
        let slot = self.get(id)?;
        let engine = slot
            .engine()
            .ok_or_else(|| ApiError::ModelLoading(id.to_string()))?;
        Ok(ReadyModel {
            slot: slot.clone(),
            engine: engine.clone(),
        })
    }

    /// Every model loaded and its engine serving (not restarting).
    pub fn all_ready(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.engine().is_some_and(EngineHandle::is_serving))
    }

    pub fn status(&self) -> Vec<ModelStatus> {
        self.slots.iter().map(|s| s.status()).collect()
    }
}

impl std::fmt::Debug for ModelSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSlot")
            .field("id", &self.config.id)
            .field("ready", &self.engine.get().is_some())
            .finish_non_exhaustive()
    }
}

impl ModelSlot {
    pub fn engine(&self) -> Option<&EngineHandle> {
        self.engine.get()
    }

    fn status(&self) -> ModelStatus {
        match self.engine() {
            Some(engine) => {
                let load = engine.load();
                ModelStatus {
                    id: self.config.id.clone(),
                    state: if engine.is_serving() {
                        "ready"
                    } else {
                        "restarting"
                    },
                    layers_loaded: None,
                    layers_total: None,
                    max_model_len: Some(engine.info().max_model_len),
                    running: Some(load.running),
                    waiting: Some(load.waiting),
                    kv_blocks_used: Some(load.kv_blocks_used),
                    kv_blocks_total: Some(load.kv_blocks_total),
                    kv_blocks_free: Some(load.kv_blocks_free),
                    engine_steps: Some(load.steps),
                    engine_restarts: Some(engine.restarts()),
                }
            }
            None => ModelStatus {
                id: self.config.id.clone(),
                state: "loading",
                layers_loaded: Some(self.layers_done.load(Ordering::Relaxed)),
                layers_total: Some(self.layers_total.load(Ordering::Relaxed)),
                max_model_len: None,
                running: None,
                waiting: None,
                kv_blocks_used: None,
                kv_blocks_total: None,
                kv_blocks_free: None,
                engine_steps: None,
                engine_restarts: None,
            },
        }
    }

    /// Loads the weights and starts the engine. Blocking CPU work: call it
    /// on a blocking thread. Logs progress every tenth of the layers.
    pub fn load_blocking(&self) -> Result<(), String> {
        let cfg = &self.config;
        let started = Instant::now();
        tracing::info!(model = %cfg.id, path = %cfg.path.display(), "loading model");
        let mut last_tenth = usize::MAX;
        let mut progress = |done: usize, total: usize| {
            self.layers_done.store(done, Ordering::Relaxed);
            self.layers_total.store(total, Ordering::Relaxed);
            let tenth = (done * 10).checked_div(total).unwrap_or(10);
            if tenth != last_tenth {
                last_tenth = tenth;
                tracing::info!(model = %cfg.id, "loading: {done}/{total} layers");
            }
        };
        let loaded = sluice_models::load_llm(
            &cfg.path,
            LoadKnobs {
                requantize: cfg.requantize,
                activations: cfg.activations,
            },
            &mut progress,
        )
        .map_err(|e| format!("model `{}` ({}): {e}", cfg.id, cfg.path.display()))?;
        let engine = Engine::start(loaded, cfg.engine.clone())
            .map_err(|e| format!("model `{}`: {e}", cfg.id))?;
        // Before any request can reach it, so every figure is counted.
        engine.observe(Arc::new(crate::metrics::engine::EngineMetrics::new(
            &cfg.id,
        )));
        let info = engine.info();
        tracing::info!(
            model = %cfg.id,
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            max_model_len = info.max_model_len,
            kv_blocks = info.num_kv_blocks,
            chat_template = engine.chat_template().is_some(),
            "model ready"
        );
        // Set once: a second load of the same slot is a bug upstream, and
        // the first engine keeps serving.
        if self.engine.set(engine).is_err() {
            tracing::warn!(model = %cfg.id, "model was loaded twice; keeping the first");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use sluice_models::testing::{write_tiny_gguf, TinySpec};
    use sluice_models::{load_llm, WeightDType};
    use sluice_runtime::{EngineConfig, EngineEvent, GenerateRequest, SamplingParams, StepFault};

    use super::*;

    #[test]
    fn a_panicked_engine_is_not_ready_until_it_has_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_tiny_gguf(&path, &TinySpec::default(), WeightDType::Q8_0).unwrap();
        let config = ModelConfig {
            id: "tiny".into(),
            path: path.clone(),
            default_max_tokens: 8,
            tool_parser: None,
            requantize: None,
            activations: Default::default(),
            defaults: Default::default(),
            engine: EngineConfig {
                num_kv_blocks: Some(32),
                threads: Some(1),
                ..EngineConfig::default()
            },
        };
        let registry = Registry::new(std::slice::from_ref(&config));
        let loaded = load_llm(&path, LoadKnobs::default(), &mut |_, _| {}).unwrap();
        let (release_restart, hold_restart) = mpsc::channel();
        let engine = Engine::start_with_injected_fault(
            loaded,
            config.engine.clone(),
            StepFault {
                panic_at_batch_size: 1,
                hold_first_step: None,
                hold_restart: Some(hold_restart),
            },
        )
        .unwrap();
        assert!(registry.slots()[0].engine.set(engine).is_ok());
        assert!(registry.all_ready());
        assert_eq!(registry.status()[0].state, "ready");
        assert_eq!(registry.status()[0].engine_restarts, Some(0));

        let request = || GenerateRequest {
            prompt_tokens: vec![1, 2, 3],
            params: SamplingParams {
                max_tokens: 4,
                ignore_eos: true,
                ..SamplingParams::default()
            },
            constraint: None,
            session: None,
        };
        let model = registry.ready("tiny").unwrap();
        let mut events = model.engine.submit(request()).unwrap();
        assert!(matches!(
            events.blocking_recv(),
            Some(EngineEvent::Error(_))
        ));
        assert!(!registry.all_ready(), "/ready must answer 503 meanwhile");
        assert_eq!(registry.status()[0].state, "restarting");
        assert_eq!(registry.status()[0].engine_restarts, Some(1));

        release_restart.send(()).unwrap();
        let mut events = model.engine.submit(request()).unwrap();
        let mut finished = false;
        while let Some(event) = events.blocking_recv() {
            finished = matches!(event, EngineEvent::Finished { .. });
        }
        assert!(finished, "the restarted engine serves again");
        for _ in 0..500 {
            if registry.all_ready() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(registry.all_ready());
        assert_eq!(registry.status()[0].state, "ready");
    }
}
