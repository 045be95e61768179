//! The device seam: what runs one step of the model. The engine talks only to
//! [`Executor`]; the CPU implementation owns the model, its KV memory and the
//! thread pool. A CUDA executor slots in behind the same trait.

use sluice_models::{KvCache, Llama, ModelError, SeqBatch};

pub trait Executor: Send {
    /// Runs one step; returns the logits of each sequence that wants them, in order.
    fn execute(&mut self, seqs: &[SeqBatch<'_>]) -> Result<Vec<Vec<f32>>, ModelError>;
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
