//! The engine loop: one thread that owns the executor and the scheduler and
//! runs steps while there is work; the cloneable handle that submits to it
//! is in `handle.rs`.
//!
//! Requests reach the loop through a bounded channel and join the running
//! batch between steps; each request's events leave through its own channel,
//! whose closing (the receiver dropped) is how a client cancels: the loop
//! notices before the next step and frees the sequence's blocks.
//!
//! A step that panics does not take the process's model down with it: the
//! loop catches the panic, fails every request it holds with an error event,
//! reports itself not serving, zeroes the executor's KV memory, starts a new
//! scheduler and serves again (see `Worker::recover`). Requests still in the
//! intake channel are served after the restart.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_models::{IncrementalDecoder, LoadedLlm, SeqBatch};
use tokio::sync::mpsc;

use crate::block_manager::BlockManagerConfig;
use crate::clock::Clock;
use crate::constraint::SeqConstraint;
use crate::device::sizing::KvDType;
use crate::device::Device;
use crate::executor::{CpuExecutor, Executor, RowOut, RowWant};
use crate::load::{LoadCells, LoadSnapshot, RateEwma};
use crate::request::{EngineEvent, FinishReason, GenerateRequest, TokenLogprob, Usage};
use crate::rng::SeqRng;
use crate::sampler::{is_greedy, off_host_rules, sample};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerOutput, SeqId};
use crate::stats::{FinishedReason, RequestTimes, StatsCollector};
use crate::stop::StopMatcher;
use crate::warm_sessions::WarmConfig;
use crate::EngineError;

mod fault;
mod handle;

pub use fault::StepFault;
pub use handle::{EngineHandle, EventStream, ModelInfo};
use handle::{Shared, Submission};

/// Knobs for ML engineers; every field has a sensible default.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV memory budget in bytes (used when `num_kv_blocks` is `None`).
    pub kv_cache_bytes: usize,
    /// Exact number of KV blocks; overrides the byte budget.
    pub num_kv_blocks: Option<usize>,
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Tokens (decode + prefill chunks) computed per step.
    pub max_num_batched_tokens: usize,
    /// Requests accepted beyond the running ones before new ones get "queue full".
    pub max_waiting: usize,
    /// Compute threads; `None` means one per core.
    pub threads: Option<usize>,
    /// Share KV blocks of identical prompt prefixes.
    pub enable_prefix_caching: bool,
    /// Context cap; `None` means the model's own (bounded by the KV capacity).
    pub max_model_len: Option<usize>,
    /// Where steps run. On a GPU the KV cache is sized from the free device
    /// memory unless `num_kv_blocks` is set (`kv_cache_bytes` is the CPU's).
    pub device: Device,
    /// How a GPU's KV cache stores K and V: bf16 (the default), f16, or
    /// fp8 e4m3 (half the memory, so twice the blocks). The CPU engine keeps
    /// its cache in f32 and refuses anything but the default.
    pub kv_dtype: KvDType,
    /// How long a finished turn of a session keeps its KV blocks warm
    /// (evicted after every other free block); zero turns it off. Needs
    /// prefix caching.
    pub session_keep_warm: Duration,
    /// Blocks held warm over all sessions at most; `None` means half the
    /// pool, so the prefix cache of other traffic keeps the other half.
    pub session_warm_max_blocks: Option<usize>,
    /// Where the engine reads the time (warm sessions expire by it).
    pub clock: Clock,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            kv_cache_bytes: 512 << 20,
            num_kv_blocks: None,
            max_num_seqs: 32,
            max_num_batched_tokens: 512,
            max_waiting: 256,
            threads: None,
            enable_prefix_caching: true,
            max_model_len: None,
            device: Device::Cpu,
            kv_dtype: KvDType::Bf16,
            session_keep_warm: Duration::from_secs(300),
            session_warm_max_blocks: None,
            clock: Clock::system(),
        }
    }
}

/// Starts engines.
pub struct Engine;

impl Engine {
    /// Starts the engine thread for a loaded model on the CPU.
    pub fn start(loaded: LoadedLlm, cfg: EngineConfig) -> Result<EngineHandle, EngineError> {
        Self::start_wrapped(loaded, cfg, |executor| executor)
    }

    /// `start`, with the loop driving `executor` instead of the one
    /// `cfg.device` names (tests of executors the engine cannot pick by
    /// config, such as the device step on CPU operations).
    #[cfg(test)]
    pub(crate) fn start_with_executor(
        loaded: LoadedLlm,
        cfg: EngineConfig,
        executor: Box<dyn Executor>,
    ) -> Result<EngineHandle, EngineError> {
        Self::start_wrapped(loaded, cfg, |_configured| executor)
    }

    /// `start`, with the loop driving what `wrap` makes of the executor.
    fn start_wrapped(
        loaded: LoadedLlm,
        cfg: EngineConfig,
        wrap: impl FnOnce(Box<dyn Executor>) -> Box<dyn Executor>,
    ) -> Result<EngineHandle, EngineError> {
        let model_cfg = loaded.model.config().clone();
        let weight_bytes = loaded.model.weight_bytes();
        if cfg.block_size == 0 || cfg.max_num_seqs == 0 || cfg.max_num_batched_tokens == 0 {
            return Err(EngineError::Config(
                "block_size, max_num_seqs and max_num_batched_tokens must be positive".into(),
            ));
        }
        crate::device::check_supported(cfg.device).map_err(EngineError::Config)?;
        let executor = build_executor(loaded.model, &cfg)?;
        let num_blocks = executor.num_kv_blocks();
        let max_model_len = cfg
            .max_model_len
            .unwrap_or(model_cfg.max_position_embeddings)
            .min(model_cfg.max_position_embeddings)
            .min(num_blocks * cfg.block_size);
        let tokenizer = Arc::new(loaded.tokenizer);
        let info = ModelInfo {
            max_model_len,
            vocab_size: model_cfg.vocab_size,
            num_kv_blocks: num_blocks,
            block_size: cfg.block_size,
            weight_bytes,
        };
        let shared = Arc::new(Shared {
            info,
            tokenizer: tokenizer.clone(),
            chat_template: loaded.chat_template.map(Arc::new),
            load: LoadCells::default(),
            pending: AtomicUsize::new(0),
            max_pending: cfg.max_num_seqs + cfg.max_waiting,
            next_id: AtomicUsize::new(0),
            serving: AtomicBool::new(true),
            restarts: AtomicUsize::new(0),
            grammars: std::sync::OnceLock::new(),
            observer: std::sync::OnceLock::new(),
        });
        // The channel only carries requests between steps; `pending` is the real bound.
        let (submit, intake) = sync_channel(cfg.max_num_seqs + cfg.max_waiting);
        let scheduler_config = SchedulerConfig {
            max_num_seqs: cfg.max_num_seqs,
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            max_model_len,
            block: BlockManagerConfig {
                num_blocks,
                block_size: cfg.block_size,
                enable_prefix_caching: cfg.enable_prefix_caching,
            },
            warm: WarmConfig {
                keep_warm: cfg.session_keep_warm,
                max_blocks: cfg
                    .session_warm_max_blocks
                    .unwrap_or(num_blocks / 2)
                    .min(num_blocks),
            },
        };
        let mut worker = Worker {
            executor: wrap(executor),
            scheduler: Scheduler::new(scheduler_config),
            scheduler_config,
            intake,
            active: HashMap::new(),
            shared: shared.clone(),
            tps: RateEwma::default(),
            decode_tps: RateEwma::default(),
            clock: cfg.clock.clone(),
            stats: StatsCollector::default(),
        };
        std::thread::Builder::new()
            .name("sluice-engine".into())
            .spawn(move || worker.run())
            .map_err(|e| EngineError::Config(format!("cannot start the engine thread: {e}")))?;
        Ok(EngineHandle { shared, submit })
    }
}

/// The executor for `cfg.device`, with its KV cache allocated.
fn build_executor(
    model: sluice_models::Llama,
    cfg: &EngineConfig,
) -> Result<Box<dyn Executor>, EngineError> {
    match cfg.device {
        Device::Cpu if cfg.kv_dtype != KvDType::default() => Err(EngineError::Config(
            crate::device::check_kv_dtype(cfg.device, cfg.kv_dtype)
                .err()
                .unwrap_or_default(),
        )),
        Device::Cpu => {
            let per_block = sluice_models::KvCache::bytes_per_block(model.config(), cfg.block_size);
            let num_blocks = cfg
                .num_kv_blocks
                .unwrap_or(cfg.kv_cache_bytes / per_block.max(1));
            if num_blocks == 0 {
                return Err(EngineError::Config(format!(
                    "kv_cache_bytes {} holds no block of {per_block} bytes; raise it",
                    cfg.kv_cache_bytes
                )));
            }
            let threads = cfg
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let executor = CpuExecutor::new(model, num_blocks, cfg.block_size, threads)
                .map_err(EngineError::Config)?;
            Ok(Box::new(executor))
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(ordinal) => crate::device::cuda::open_executor(&model, cfg, ordinal)
            .map(|e| Box::new(e) as Box<dyn Executor>)
            .map_err(|e| {
                let why = match e {
                    sluice_models::ModelError::Device(m) => m,
                    other => other.to_string(),
                };
                EngineError::Config(format!("device = \"cuda:{ordinal}\": {why}"))
            }),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(EngineError::Config(
            crate::device::check_supported(cfg.device)
                .err()
                .unwrap_or_default(),
        )),
    }
}

/// A request the loop is working on.
struct Active {
    events: mpsc::Sender<EngineEvent>,
    request: GenerateRequest,
    output: Vec<u32>,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    rng: SeqRng,
    stop_ids: HashSet<u32>,
    /// Log-probabilities of the token just sampled, until `on_token` sends it.
    last_logprob: Option<TokenLogprob>,
    /// A stop string ended it: nothing held back may be emitted.
    stopped_by_string: bool,
    /// Its grammar, when the output is constrained.
    constraint: Option<SeqConstraint>,
    /// Its phases' timestamps, for the stats observer.
    times: RequestTimes,
}

impl Active {
    /// (prompt, generated, `max_tokens`): what the stats record of it.
    fn token_counts(&self) -> (usize, usize, usize) {
        (
            self.request.prompt_tokens.len(),
            self.output.len(),
            self.request.params.max_tokens,
        )
    }
}

impl Active {
    /// What this sequence's next step wants back: only a token when the
    /// executor may pick it (no grammar, nothing host-only in its params).
    fn row_want(&self) -> RowWant {
        if self.constraint.is_some() {
            return RowWant::Logits;
        }
        off_host_rules(&self.request.params, &self.rng).map_or(RowWant::Logits, RowWant::Token)
    }
}

/// What sampling one step produced.
struct Sampled {
    tokens: Vec<(SeqId, u32)>,
    /// Sequences whose grammar failed; they get an error, not a token.
    failed: Vec<(SeqId, String)>,
}

struct Worker {
    executor: Box<dyn Executor>,
    scheduler: Scheduler,
    /// What a restart builds the next scheduler from.
    scheduler_config: SchedulerConfig,
    intake: Receiver<Submission>,
    active: HashMap<SeqId, Active>,
    shared: Arc<Shared>,
    tps: RateEwma,
    decode_tps: RateEwma,
    clock: Clock,
    /// Figures for the stats observer, handed over in `publish_load`.
    stats: StatsCollector,
}

enum Outcome {
    Continue,
    Finished(FinishReason),
    /// The request cannot go on (its grammar failed).
    Failed(String),
}

impl Worker {
    fn run(&mut self) {
        tracing::info!("engine started");
        // The block counts are right from the start (not only after the
        // first request): an idle engine's free count is its baseline.
        self.publish_load(None);
        loop {
            if !self.take_new_requests() {
                tracing::info!("engine stopped: every handle is gone and no work is left");
                return;
            }
            self.drop_cancelled();
            self.scheduler.expire_warm(self.clock.now());
            if !self.scheduler.has_work() {
                // Cancellations may have freed everything: say so.
                self.publish_load(None);
                continue;
            }
            // The worker's state is thrown away or rebuilt on a panic
            // (`recover`), so nothing half-updated is observed afterwards.
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.step())) {
                if !self.recover(panic.as_ref()) {
                    return;
                }
            }
        }
    }

    /// Schedules, runs and samples one step, and hands out its tokens.
    fn step(&mut self) {
        let started = Instant::now();
        let output = self.scheduler.schedule();
        for id in self.scheduler.take_unservable() {
            self.fail(
                id,
                "the request needs more KV blocks than the engine has".into(),
            );
        }
        if output.seqs.is_empty() {
            self.publish_load(None);
            return;
        }
        for seq in &output.seqs {
            if let Some(a) = self.active.get_mut(&seq.id) {
                self.stats.scheduled(&mut a.times, started);
            }
        }
        let Sampled {
            tokens: sampled,
            failed,
        } = match self.run_step(&output) {
            Ok(s) => s,
            Err(e) => {
                // A model failure fails the step's requests, not the engine.
                let ids: Vec<SeqId> = output.seqs.iter().map(|s| s.id).collect();
                tracing::error!(error = %e, "step failed");
                for id in ids {
                    self.fail(id, format!("model failure: {e}"));
                }
                return;
            }
        };
        for (id, message) in failed {
            self.fail(id, message);
        }
        self.scheduler.update(&output, &sampled);
        self.stats.step(output.num_batched_tokens);
        // One time for the whole step: its tokens reach the clients together.
        let now = Instant::now();
        for &(id, token) in &sampled {
            if let Some(a) = self.active.get_mut(&id) {
                self.stats
                    .token(&mut a.times, a.request.prompt_tokens.len(), now);
            }
            match self.on_token(id, token) {
                Outcome::Continue => {}
                Outcome::Finished(reason) => self.finish(id, reason),
                Outcome::Failed(message) => self.fail(id, message),
            }
        }
        self.publish_load(Some((output.num_batched_tokens, sampled.len(), started)));
    }

    /// After a step panicked: fails every request held (the running batch
    /// and the scheduler's waiting ones: the scheduler that knew them is
    /// dropped unread, since the panic may have left it inconsistent), then
    /// zeroes the KV memory and starts a new scheduler. Not serving in
    /// between. Returns false when the executor cannot be reset: the engine
    /// then stops and stays not serving.
    fn recover(&mut self, panic: &(dyn Any + Send)) -> bool {
        self.shared.serving.store(false, Ordering::SeqCst);
        let restarts = self.shared.restarts.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::error!(
            panic = panic_message(panic),
            requests_failed = self.active.len(),
            restarts,
            "engine step panicked; failing its requests and restarting the engine"
        );
        self.scheduler = Scheduler::new(self.scheduler_config);
        let now = Instant::now();
        for (_, a) in self.active.drain() {
            self.stats
                .finished(&a.times, FinishedReason::Error, a.token_counts(), now);
            let _ = a.events.try_send(EngineEvent::Error(
                "the engine failed while running this request and was restarted".into(),
            ));
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
        }
        let reset = catch_unwind(AssertUnwindSafe(|| self.executor.reset()));
        match reset {
            Ok(Ok(())) => {
                self.publish_load(None);
                self.shared.serving.store(true, Ordering::SeqCst);
                tracing::info!(restarts, "engine restarted");
                true
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot reset the executor; the engine stops");
                false
            }
            Err(again) => {
                tracing::error!(
                    panic = panic_message(again.as_ref()),
                    "resetting the executor panicked; the engine stops"
                );
                false
            }
        }
    }

    /// Moves submitted requests into the scheduler. Blocks while idle.
    /// Returns false when every handle is gone and nothing is left to do.
    fn take_new_requests(&mut self) -> bool {
        if !self.scheduler.has_work() {
            // Idle: wait for work, waking now and then to notice cancellations.
            match self.intake.recv_timeout(Duration::from_millis(200)) {
                Ok(sub) => self.admit(sub),
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        while let Ok(sub) = self.intake.try_recv() {
            self.admit(sub);
        }
        true
    }

    fn admit(&mut self, sub: Submission) {
        let Submission {
            id,
            request,
            events,
            arrived,
        } = sub;
        let mut stop_ids: HashSet<u32> = request.params.stop_token_ids.iter().copied().collect();
        if !request.params.ignore_eos {
            stop_ids.extend(self.shared.tokenizer.eos_ids().iter().copied());
        }
        let rng = match request.params.seed {
            Some(seed) => SeqRng::seeded(seed),
            None => SeqRng::from_entropy(),
        };
        self.scheduler
            .add(id, request.prompt_tokens.clone(), request.params.max_tokens);
        self.active.insert(
            id,
            Active {
                events,
                stop: StopMatcher::new(&request.params.stop_strings),
                decoder: IncrementalDecoder::new(),
                output: Vec::new(),
                rng,
                stop_ids,
                last_logprob: None,
                stopped_by_string: false,
                constraint: request.constraint.as_ref().map(|g| g.start()),
                times: RequestTimes::arrived_at(arrived),
                request,
            },
        );
    }

    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            tracing::debug!(id, "client went away; freeing its blocks");
            self.scheduler.abort(id);
            self.release(id, FinishedReason::Abort);
        }
    }

    fn run_step(&mut self, output: &SchedulerOutput) -> Result<Sampled, EngineError> {
        let batch: Vec<SeqBatch<'_>> = output
            .seqs
            .iter()
            .map(|s| SeqBatch {
                tokens: &s.tokens,
                start_pos: s.start_pos,
                block_table: &s.block_table,
                want_logits: s.sample,
            })
            .collect();
        // Rows that need only a token may be sampled by the executor where
        // the logits are (on a GPU, only the ids leave the device).
        let wants: Vec<RowWant> = output
            .seqs
            .iter()
            .filter(|s| s.sample)
            .map(|s| {
                self.active
                    .get(&s.id)
                    .map_or(RowWant::Logits, Active::row_want)
            })
            .collect();
        // The grammar masks of this step's constrained sequences are computed
        // on a second thread while the forward pass runs, so they cost the
        // step nothing unless they take longer than the model; unconstrained
        // sequences never wait for them.
        let sampling: HashSet<SeqId> = output
            .seqs
            .iter()
            .filter(|s| s.sample)
            .map(|s| s.id)
            .collect();
        let mut constrained: Vec<&mut SeqConstraint> = self
            .active
            .iter_mut()
            .filter(|(id, _)| sampling.contains(id))
            .filter_map(|(_, a)| a.constraint.as_mut())
            .collect();
        let executor = &mut self.executor;
        let rows = if constrained.is_empty() {
            executor.execute_rows(&batch, &wants)?
        } else {
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    for c in constrained.iter_mut() {
                        // A failure is reported when the mask is applied.
                        let _ = c.compute_mask();
                    }
                });
                executor.execute_rows(&batch, &wants)
            })?
        };
        let mut sampled = Sampled {
            tokens: Vec::with_capacity(rows.len()),
            failed: Vec::new(),
        };
        let sampled_seqs = output.seqs.iter().filter(|s| s.sample).zip(&wants);
        for ((seq, want), row) in sampled_seqs.zip(rows) {
            let Some(active) = self.active.get_mut(&seq.id) else {
                continue;
            };
            let mut row = match (row, want) {
                (RowOut::Logits(row), _) => row,
                (RowOut::Token(id), RowWant::Token(_)) => {
                    // The executor used the uniform that `row_want` peeked:
                    // take it from the stream, as `sample` would have.
                    if !is_greedy(&active.request.params) {
                        active.rng.next_f32();
                    }
                    sampled.tokens.push((seq.id, id));
                    continue;
                }
                (RowOut::Token(_), RowWant::Logits) => {
                    sampled.failed.push((
                        seq.id,
                        "the executor returned a token for a row that needs its logits".into(),
                    ));
                    continue;
                }
            };
            if let Some(c) = active.constraint.as_mut() {
                if let Err(e) = c.apply(&mut row) {
                    sampled.failed.push((seq.id, e.to_string()));
                    continue;
                }
            }
            let picked = sample(
                &mut row,
                &active.request.params,
                &active.request.prompt_tokens,
                &active.output,
                &mut active.rng,
            );
            if active.request.params.logprobs.is_some() {
                active.last_logprob = Some(TokenLogprob {
                    token: picked.id,
                    logprob: picked.logprob,
                    top: picked.top,
                });
            }
            sampled.tokens.push((seq.id, picked.id));
        }
        Ok(sampled)
    }

    /// Handles one generated token: stop ids, text, stop strings, length.
    fn on_token(&mut self, id: SeqId, token: u32) -> Outcome {
        let max_model_len = self.shared.info.max_model_len;
        let tokenizer = self.shared.tokenizer.clone();
        let Some(a) = self.active.get_mut(&id) else {
            return Outcome::Continue;
        };
        a.output.push(token);
        let logprob = a.last_logprob.take();
        if a.stop_ids.contains(&token) {
            return Outcome::Finished(FinishReason::Stop);
        }
        // A grammar that is complete ends the sequence after this token.
        let mut grammar_done = false;
        if let Some(c) = a.constraint.as_mut() {
            if let Err(e) = c.consume(token) {
                return Outcome::Failed(e.to_string());
            }
            grammar_done = c.is_finished();
        }
        let text = match a.decoder.push(&tokenizer, token) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, token, "cannot detokenise");
                String::new()
            }
        };
        let (emit, matched) = a.stop.push(&text);
        if a.events
            .try_send(EngineEvent::Token {
                id: token,
                text: emit,
                logprob,
            })
            .is_err()
        {
            // Receiver gone: drop_cancelled frees it before the next step.
            return Outcome::Continue;
        }
        if matched {
            a.stopped_by_string = true;
            return Outcome::Finished(FinishReason::Stop);
        }
        if grammar_done {
            return Outcome::Finished(FinishReason::Stop);
        }
        let total = a.request.prompt_tokens.len() + a.output.len();
        if a.output.len() >= a.request.params.max_tokens || total >= max_model_len {
            return Outcome::Finished(FinishReason::Length);
        }
        Outcome::Continue
    }

    fn finish(&mut self, id: SeqId, reason: FinishReason) {
        let cached = self.scheduler.cached_prompt_tokens(id);
        match self.active.get(&id).and_then(|a| a.request.session.clone()) {
            Some(session) => self
                .scheduler
                .finish_keeping_warm(id, session, self.clock.now()),
            None => self.scheduler.finish(id),
        }
        let tokenizer = self.shared.tokenizer.clone();
        if let Some(mut a) = self.active.remove(&id) {
            let mut text = String::new();
            let mut reason = reason;
            if !a.stopped_by_string {
                // Text held back for a partial character or a possible stop
                // string is real output once nothing can follow it.
                let tail = a.decoder.finish(&tokenizer).unwrap_or_default();
                let (mut emit, matched) = a.stop.push(&tail);
                if matched {
                    // The tail completed a stop string: that, not the
                    // length or EOS, is what ended the text the client gets.
                    reason = FinishReason::Stop;
                } else {
                    emit.push_str(&a.stop.flush());
                }
                text = emit;
            }
            let stop_sequence = a.stop.matched_string().map(str::to_owned);
            let usage = Usage {
                prompt_tokens: a.request.prompt_tokens.len(),
                completion_tokens: a.output.len(),
                cached_prompt_tokens: cached,
            };
            let finished = match reason {
                FinishReason::Length => FinishedReason::Length,
                // The engine makes only `Stop` and `Length`.
                FinishReason::Stop | FinishReason::ContentFilter | FinishReason::ToolCalls => {
                    FinishedReason::Stop
                }
            };
            let now = Instant::now();
            self.stats
                .finished(&a.times, finished, a.token_counts(), now);
            let times = a.times.stage_times(now);
            let _ = a.events.try_send(EngineEvent::Finished {
                reason,
                text,
                usage,
                stop_sequence,
                times,
            });
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn fail(&mut self, id: SeqId, message: String) {
        self.scheduler.abort(id);
        if let Some(a) = self.active.get(&id) {
            let _ = a.events.try_send(EngineEvent::Error(message));
        }
        self.release(id, FinishedReason::Error);
    }

    /// Forgets a request that did not finish normally.
    fn release(&mut self, id: SeqId, why: FinishedReason) {
        if let Some(a) = self.active.remove(&id) {
            self.stats
                .finished(&a.times, why, a.token_counts(), Instant::now());
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Publishes the load; `step` is (tokens computed, tokens generated,
    /// start time) of the step just run, folded into the rates.
    fn publish_load(&mut self, step: Option<(usize, usize, Instant)>) {
        let (tps, dtps) = match step {
            Some((computed, generated, started)) => {
                let secs = started.elapsed().as_secs_f64();
                (
                    self.tps.observe(computed, secs),
                    self.decode_tps.observe(generated, secs),
                )
            }
            None => (self.tps.current(), self.decode_tps.current()),
        };
        let bm = self.scheduler.block_manager();
        let load = &self.shared.load;
        use std::sync::atomic::Ordering::Relaxed;
        if step.is_some() {
            load.steps.fetch_add(1, Relaxed);
        }
        load.waiting.store(self.scheduler.num_waiting(), Relaxed);
        load.running.store(self.scheduler.num_running(), Relaxed);
        load.kv_used.store(bm.num_used_blocks(), Relaxed);
        load.kv_free.store(bm.num_free_blocks(), Relaxed);
        load.kv_total.store(bm.num_total_blocks(), Relaxed);
        load.kv_warm.store(bm.num_warm_blocks(), Relaxed);
        load.warm_sessions
            .store(self.scheduler.num_warm_sessions(), Relaxed);
        load.tps_bits.store(tps.to_bits(), Relaxed);
        load.decode_tps_bits.store(dtps.to_bits(), Relaxed);
        load.preemptions
            .store(self.scheduler.num_preemptions(), Relaxed);
        load.prefix_hits
            .store(bm.prefix_cache_hit_tokens(), Relaxed);
        // A newcomer starts at once unless requests are already waiting; then
        // it waits, at worst, for all the work held (remaining prompt and
        // generation budget of every request) at the recent compute rate.
        let queued: usize = self
            .active
            .values()
            .map(|a| {
                a.request.prompt_tokens.len()
                    + a.request.params.max_tokens.saturating_sub(a.output.len())
            })
            .sum();
        let wait_ms = if tps > 0.0 && self.scheduler.num_waiting() > 0 {
            1000.0 * queued as f64 / tps
        } else {
            0.0
        };
        load.wait_ms_bits.store(wait_ms.to_bits(), Relaxed);
        self.stats.totals(
            self.scheduler.num_preemptions(),
            bm.prefix_cache_query_tokens(),
            bm.prefix_cache_hit_tokens(),
        );
        let snapshot = LoadSnapshot {
            in_flight: self.shared.pending.load(Ordering::SeqCst),
            ..load.snapshot()
        };
        self.stats
            .flush(self.shared.observer.get().map(|o| o.as_ref()), &snapshot);
    }
}

/// The text a panic was raised with, when it was a string.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}
