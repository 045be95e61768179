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
//!
//! A caller with many inputs ([`EncoderHandle::encode_many`]) keeps at most
//! a window of them in flight and submits the next as earlier ones come back,
//! so a request larger than the queue is served rather than refused with a
//! 429 no retry could ever get past.

use std::collections::VecDeque;
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
                window: submit_window(&config),
            }),
        })
    }
}

/// How many of one caller's inputs may be in flight (queued or in the
/// running batch) at once. Two batches' worth keeps the next batch queued
/// while one runs (no bubble between batches) and leaves the rest of the
/// queue to other callers; never more than the queue holds, or the caller
/// would crowd itself out.
fn submit_window(config: &EncoderPoolConfig) -> usize {
    config
        .max_batch_size
        .saturating_mul(2)
        .min(config.queue_capacity)
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
    /// See [`submit_window`].
    window: usize,
}

/// Why an input was not queued.
enum Refused {
    /// The queue is full; the input comes back so it can be tried again.
    Full(Vec<u32>),
    Failed(RuntimeError),
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

    fn submit(&self, tokens: Vec<u32>) -> Result<oneshot::Receiver<Reply>, Refused> {
        if tokens.is_empty() {
            return Err(Refused::Failed(EngineError::EmptyPrompt));
        }
        if tokens.len() > self.inner.max_len {
            return Err(Refused::Failed(EngineError::EncoderInputTooLong {
                tokens: tokens.len(),
                max_len: self.inner.max_len,
            }));
        }
        let (reply, rx) = oneshot::channel();
        // Count before sending so the worker's decrement never goes below 0.
        self.inner.counters.queued.fetch_add(1, Ordering::Relaxed);
        match self.inner.jobs.try_send(Job { tokens, reply }) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.inner.counters.queued.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(job) => Refused::Full(job.tokens),
                    TrySendError::Disconnected(_) => Refused::Failed(EngineError::Stopped),
                })
            }
        }
    }

    fn queue_full(&self) -> RuntimeError {
        EngineError::EncoderQueueFull {
            pending: self.inner.counters.queued.load(Ordering::Relaxed),
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
        match self.submit(tokens) {
            Ok(rx) => Self::wait(rx).await,
            Err(Refused::Full(_)) => Err(self.queue_full()),
            Err(Refused::Failed(e)) => Err(e),
        }
    }

    /// Several inputs, results in input order. Every input is checked before
    /// any is queued. At most the pool's window of them is in flight at
    /// once (they share batches with each other and with other callers);
    /// the next is submitted as the oldest comes back, so any number of
    /// inputs fits a queue of any size. Queue-full is returned only when
    /// the queue is full and none of this call's inputs is in it: the queue
    /// is then full of other callers' work, which a retry can get past.
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
        if inputs.iter().any(Vec::is_empty) {
            return Err(EngineError::EmptyPrompt);
        }
        let mut out = Vec::with_capacity(inputs.len());
        let mut pending = VecDeque::with_capacity(self.inner.window.min(inputs.len()));
        let mut unsent = inputs.into_iter();
        // An input the full queue turned away, tried again first.
        let mut held: Option<Vec<u32>> = None;
        loop {
            while pending.len() < self.inner.window {
                let Some(tokens) = held.take().or_else(|| unsent.next()) else {
                    break;
                };
                match self.submit(tokens) {
                    Ok(rx) => pending.push_back(rx),
                    // Our own inputs hold places: one frees when it is answered.
                    Err(Refused::Full(tokens)) if !pending.is_empty() => {
                        held = Some(tokens);
                        break;
                    }
                    Err(Refused::Full(_)) => return Err(self.queue_full()),
                    Err(Refused::Failed(e)) => return Err(e),
                }
            }
            let Some(oldest) = pending.pop_front() else {
                break;
            };
            out.push(Self::wait(oldest).await?);
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
