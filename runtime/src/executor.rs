//! The device seam: what runs one step of the model. The engine talks only to
//! [`Executor`]; the CPU implementation owns the model, its KV memory and the
//! thread pool. A CUDA executor slots in behind the same trait.
//!
//! A step's sampled rows come back as [`RowOut`]s: the logits, for rows the
//! host must sample itself (penalties, `logit_bias`, a grammar, logprobs),
//! or just the token, for rows the engine marked [`RowWant::Token`] and the
//! executor could pick where the logits are (a GPU copies 4 bytes instead
//! of a 128k-entry row). An executor may always answer with logits instead;
//! the engine then samples on the host, with the same random draw.

use sluice_kernels::cuda_twin::RowSampling;
use sluice_models::{KvCache, Llama, ModelError, SeqBatch};

/// What the engine wants back for one sampled row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowWant {
    /// The logits: the host applies what only it can.
    Logits,
    /// Only the token, picked by these rules (the CPU sampler's, after
    /// penalties) with the row's uniform draw already taken from its
    /// generator, so the executor picks what the host would have picked.
    Token(RowSampling),
}

/// One sampled row of a step, in the order of the rows that want logits.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOut {
    Logits(Vec<f32>),
    Token(u32),
}

pub trait Executor: Send {
    /// Runs one step; returns the logits of each sequence that wants them, in order.
    fn execute(&mut self, seqs: &[SeqBatch<'_>]) -> Result<Vec<Vec<f32>>, ModelError>;
    /// Runs one step; `wants[i]` says what the `i`-th sequence wanting
    /// logits wants back. The default returns logits for every row (the
    /// host samples them all): right for an executor whose logits already
    /// live on the host.
    fn execute_rows(
        &mut self,
        seqs: &[SeqBatch<'_>],
        wants: &[RowWant],
    ) -> Result<Vec<RowOut>, ModelError> {
        let _ = wants;
        Ok(self
            .execute(seqs)?
            .into_iter()
            .map(RowOut::Logits)
            .collect())
    }
    /// Forgets every sequence: KV memory as after construction. The engine
    /// calls it after a step panicked, when what that step left half-written
    /// cannot be trusted.
    fn reset(&mut self) -> Result<(), ModelError>;
    fn num_kv_blocks(&self) -> usize;
    fn block_size(&self) -> usize;
    fn vocab_size(&self) -> usize;
}

/// Runs the model on the CPU with its own rayon pool, so the `threads` knob
/// bounds the engine without touching the process-wide pool.
pub struct CpuExecutor {
    model: Llama,
    kv: KvCache,
    pool: rayon::ThreadPool,
}

impl CpuExecutor {
    pub fn new(
        model: Llama,
        num_blocks: usize,
        block_size: usize,
        threads: usize,
    ) -> Result<Self, String> {
        let kv = KvCache::new(model.config(), num_blocks, block_size);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("sluice-cpu-{i}"))
            .build()
            .map_err(|e| format!("cannot start {threads} compute threads: {e}"))?;
        Ok(Self { model, kv, pool })
    }
}

impl Executor for CpuExecutor {
    fn execute(&mut self, seqs: &[SeqBatch<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let Self { model, kv, pool } = self;
        pool.install(|| model.forward(seqs, kv))
    }
    fn reset(&mut self) -> Result<(), ModelError> {
        self.kv.clear();
        Ok(())
    }
    fn num_kv_blocks(&self) -> usize {
        self.kv.num_blocks()
    }
    fn block_size(&self) -> usize {
        self.kv.block_size()
    }
    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }
}
