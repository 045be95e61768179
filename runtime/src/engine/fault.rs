//! Fault injection for tests of the engine's panic recovery: an executor
//! that panics on the first step that runs enough sequences. Only `Engine::start_with_injected_fault`
//! builds one; no configuration can reach it.

use std::sync::mpsc::Receiver;

use sluice_models::{LoadedLlm, ModelError, SeqBatch};

use super::{Engine, EngineConfig, EngineHandle};
use crate::executor::{Executor, RowOut, RowWant};
use crate::EngineError;

/// Where the injected executor fails.
#[derive(Debug)]
pub struct StepFault {
    /// The first step that runs at least this many sequences panics; later
    /// steps run normally.
    pub panic_at_batch_size: usize,
    /// When set, the engine's first step waits for a message (or the
    /// sender's drop) here before it runs, so that a test can queue
    /// requests behind it and know that they join the following steps.
    pub hold_first_step: Option<Receiver<()>>,
    /// When set, the restart that follows the panic waits for a message (or
    /// the sender's drop) here, so that a test can watch the engine while
    /// it is not serving.
    pub hold_restart: Option<Receiver<()>>,
}

struct FaultyExecutor {
    inner: Box<dyn Executor>,
    fault: StepFault,
    steps: usize,
    fired: bool,
}

impl Engine {
    /// `start` with an executor that panics as `fault` says: for tests of
    /// what a panicking step does to requests, readiness and later service.
    pub fn start_with_injected_fault(
        loaded: LoadedLlm,
        cfg: EngineConfig,
        fault: StepFault,
    ) -> Result<EngineHandle, EngineError> {
        Self::start_wrapped(loaded, cfg, |inner| {
            Box::new(FaultyExecutor {
                inner,
                fault,
                steps: 0,
                fired: false,
            })
        })
    }
}

impl FaultyExecutor {
    /// Holds the first step when asked, and panics on the step the fault names.
    #[allow(clippy::panic, reason = "the injected fault is a panic")]
    fn before_step(&mut self, seqs: &[SeqBatch<'_>]) {
        let step = self.steps;
        self.steps += 1;
        if step == 0 {
            if let Some(gate) = &self.fault.hold_first_step {
                // Err means the test dropped the sender: go on as well.
                let _ = gate.recv();
            }
        }
        if !self.fired && seqs.len() >= self.fault.panic_at_batch_size {
            self.fired = true;
            panic!("injected fault at step {step} ({} sequences)", seqs.len());
        }
    }
}

impl Executor for FaultyExecutor {
    fn execute(&mut self, seqs: &[SeqBatch<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.before_step(seqs);
        self.inner.execute(seqs)
    }

    fn execute_rows(
        &mut self,
        seqs: &[SeqBatch<'_>],
        wants: &[RowWant],
    ) -> Result<Vec<RowOut>, ModelError> {
        self.before_step(seqs);
        self.inner.execute_rows(seqs, wants)
    }

    fn reset(&mut self) -> Result<(), ModelError> {
        if let Some(gate) = &self.fault.hold_restart {
            // Err means the test dropped the sender: go on as well.
            let _ = gate.recv();
        }
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
