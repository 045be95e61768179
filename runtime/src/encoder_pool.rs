//! The batched encoder pool: embedding and classification requests from
//! many async callers, run in dynamic batches on the pool's own threads.
//!
//! Each input is one job on a bounded queue. A worker thread takes the first
//! job, then gathers more until it has `max_batch_size` or `max_wait` has
//! passed since the first arrived, and runs them as one batch (the model
//! packs mixed lengths; see `sluice_models::encoder::bert`). Design decision:
//! the model's compute runs inside a rayon pool owned by this pool, never
//! the global one or the LLM engine's, so an embedding burst competes with
//! decoding only for cores, not for a shared task queue where it would wait
//! behind (or stall) a decode step. A full queue refuses at once
//! ([`EngineError::EncoderQueueFull`], a 429 at the gateway) instead of
//! letting latency grow without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_models::{SentenceEncoder, SequenceClassifier};
use tokio::sync::oneshot;

use crate::EngineError;

/// The runtime's error type under the name the encoder API uses.
pub type RuntimeError = EngineError;

/// A model the pool can run: token ids in, one vector per input out.
pub trait BatchEncoder: Send + Sync + 'static {
    fn run(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, String>;
    /// Longest input in tokens.
    fn max_len(&self) -> usize;
}

impl BatchEncoder for SentenceEncoder {
    fn run(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        self.embed(batch).map_err(|e| e.to_string())
    }
    fn max_len(&self) -> usize {
        SentenceEncoder::max_len(self)
    }
}

impl BatchEncoder for SequenceClassifier {
    fn run(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        self.classify(batch).map_err(|e| e.to_string())
    }
    fn max_len(&self) -> usize {
        SequenceClassifier::max_len(self)
    }
}

/// Knobs of an [`EncoderPool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderPoolConfig {
    /// Inputs per batch at most.
    pub max_batch_size: usize,
    /// How long the first input of a batch waits for company.
    pub max_wait: Duration,
    /// Inputs queued (not yet in a batch) before new ones are refused.
    pub queue_capacity: usize,
    /// Compute threads of the pool's own rayon pool.
    pub threads: usize,
}

impl Default for EncoderPoolConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_wait: Duration::from_millis(2),
            queue_capacity: 1024,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// What the pool has done, for `/ready`, metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EncoderLoad {
    /// Inputs waiting for a batch.
    pub queued: usize,
    /// Batches run so far.
    pub batches: usize,
    /// Inputs encoded so far.
    pub inputs: usize,
    /// `inputs / batches` (0 before the first batch).
    pub mean_batch_size: f64,
}

/// One input's answer, or the model's failure message.
type Reply = Result<Arc<[f32]>, String>;

struct Job {
    tokens: Vec<u32>,
    reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct Counters {
    queued: AtomicUsize,
    batches: AtomicUsize,
    inputs: AtomicUsize,
}

/// Starts pools; the pool lives as long as one [`EncoderHandle`] does.
pub struct EncoderPool;

impl EncoderPool {
    /// Starts one batching thread over `model`. When the last handle is
    /// dropped the queue's sender goes with it and the thread ends after
    /// the jobs already queued.
    pub fn start(
        model: Arc<dyn BatchEncoder>,
        config: EncoderPoolConfig,
    ) -> Result<EncoderHandle, RuntimeError> {
        if config.max_batch_size == 0 || config.queue_capacity == 0 || config.threads == 0 {
            return Err(EngineError::Config(format!(
                "encoder pool: max_batch_size ({}), queue_capacity ({}) and threads ({}) must \
                 be at least 1",
                config.max_batch_size, config.queue_capacity, config.threads
            )));
        }
        let compute = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .thread_name(|i| format!("sluice-encoder-{i}"))
            .build()
            .map_err(|e| EngineError::Config(format!("encoder pool threads: {e}")))?;
        let (tx, rx) = sync_channel::<Job>(config.queue_capacity);
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            model: model.clone(),
            jobs: rx,
            counters: counters.clone(),
            max_batch_size: config.max_batch_size,
            max_wait: config.max_wait,
        };
        std::thread::Builder::new()
            .name("sluice-encoder-batcher".into())
            .spawn(move || compute.install(move || worker.run()))
            .map_err(|e| EngineError::Config(format!("cannot start the encoder thread: {e}")))?;
        Ok(EncoderHandle {
            inner: Arc::new(HandleInner {
                jobs: tx,
                counters,
                max_len: model.max_len(),
            }),
        })
    }
}

struct Worker {
    model: Arc<dyn BatchEncoder>,
    jobs: Receiver<Job>,
    counters: Arc<Counters>,
    max_batch_size: usize,
    max_wait: Duration,
}

impl Worker {
    fn run(&self) {
        let jobs = &self.jobs;
        while let Ok(first) = jobs.recv() {
            let deadline = Instant::now() + self.max_wait;
            let mut batch = vec![first];
            while batch.len() < self.max_batch_size {
                let left = deadline.saturating_duration_since(Instant::now());
                match jobs.recv_timeout(left) {
                    Ok(job) => batch.push(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            self.counters
                .queued
                .fetch_sub(batch.len(), Ordering::Relaxed);
            self.run_batch(batch);
        }
    }

    fn run_batch(&self, batch: Vec<Job>) {
        // Callers that gave up (dropped their future) cost nothing.
        let live: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if live.is_empty() {
            return;
        }
        let inputs: Vec<&[u32]> = live.iter().map(|j| j.tokens.as_slice()).collect();
        let result = self.model.run(&inputs);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .inputs
            .fetch_add(live.len(), Ordering::Relaxed);
        match result {
            Ok(outputs) if outputs.len() == live.len() => {
                for (job, out) in live.into_iter().zip(outputs) {
                    let _ = job.reply.send(Ok(out.into()));
                }
            }
            Ok(outputs) => {
                let msg = format!(
                    "encoder returned {} outputs for {} inputs",
                    outputs.len(),
                    live.len()
                );
                for job in live {
                    let _ = job.reply.send(Err(msg.clone()));
                }
            }
            Err(msg) => {
                tracing::error!(error = %msg, "encoder batch failed");
                for job in live {
                    let _ = job.reply.send(Err(msg.clone()));
                }
            }
        }
    }
}

struct HandleInner {
    jobs: SyncSender<Job>,
    counters: Arc<Counters>,
    max_len: usize,
}

/// Submits inputs to a running [`EncoderPool`]. Cheap to clone.
#[derive(Clone)]
pub struct EncoderHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for EncoderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderHandle")
            .field("max_len", &self.inner.max_len)
            .finish_non_exhaustive()
    }
}

impl EncoderHandle {
    /// Longest input in tokens.
    pub fn max_len(&self) -> usize {
        self.inner.max_len
    }

    fn submit(&self, tokens: Vec<u32>) -> Result<oneshot::Receiver<Reply>, RuntimeError> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if tokens.len() > self.inner.max_len {
            return Err(EngineError::EncoderInputTooLong {
                tokens: tokens.len(),
                max_len: self.inner.max_len,
            });
        }
        let (reply, rx) = oneshot::channel();
        // Count before sending so the worker's decrement never goes below 0.
        self.inner.counters.queued.fetch_add(1, Ordering::Relaxed);
        match self.inner.jobs.try_send(Job { tokens, reply }) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.inner.counters.queued.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => EngineError::EncoderQueueFull {
                        pending: self.inner.counters.queued.load(Ordering::Relaxed),
                    },
                    TrySendError::Disconnected(_) => EngineError::Stopped,
                })
            }
        }
    }

    async fn wait(rx: oneshot::Receiver<Reply>) -> Result<Arc<[f32]>, RuntimeError> {
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(msg)) => Err(EngineError::EncoderFailed(msg)),
            Err(_) => Err(EngineError::Stopped),
        }
    }

    /// One input, batched with whatever else is queued. Full queue → an error the gateway maps to 429.
    pub async fn encode(&self, tokens: Vec<u32>) -> Result<Arc<[f32]>, RuntimeError> {
        Self::wait(self.submit(tokens)?).await
    }

    /// Several inputs, queued together so they share batches; results in
    /// input order. All are checked and queued before any is awaited; if
    /// the queue fills halfway, the whole call fails with queue-full.
    pub async fn encode_many(
        &self,
        inputs: Vec<Vec<u32>>,
    ) -> Result<Vec<Arc<[f32]>>, RuntimeError> {
        if let Some(too_long) = inputs.iter().find(|t| t.len() > self.inner.max_len) {
            return Err(EngineError::EncoderInputTooLong {
                tokens: too_long.len(),
                max_len: self.inner.max_len,
            });
        }
        let mut pending = Vec::with_capacity(inputs.len());
        for tokens in inputs {
            pending.push(self.submit(tokens)?);
        }
        let mut out = Vec::with_capacity(pending.len());
        for rx in pending {
            out.push(Self::wait(rx).await?);
        }
        Ok(out)
    }

    pub fn load(&self) -> EncoderLoad {
        let c = &self.inner.counters;
        let batches = c.batches.load(Ordering::Relaxed);
        let inputs = c.inputs.load(Ordering::Relaxed);
        EncoderLoad {
            queued: c.queued.load(Ordering::Relaxed),
            batches,
            inputs,
            mean_batch_size: if batches == 0 {
                0.0
            } else {
                inputs as f64 / batches as f64
            },
        }
    }
}

#[cfg(test)]
mod tests;
