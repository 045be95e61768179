//! The client side of the engine: the cloneable handle that checks and
//! submits requests, the per-request event stream, and the state the handles
//! share with the loop.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use sluice_models::{ChatTemplate, Tokenizer};
use tokio::sync::mpsc;

use crate::constraint::{ConstraintError, Grammar, GrammarSpec, Grammars};
use crate::load::{LoadCells, LoadSnapshot};
use crate::request::{EngineEvent, GenerateRequest};
use crate::scheduler::SeqId;
use crate::stats::StatsObserver;
use crate::EngineError;

/// What clients may know about the served model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub num_kv_blocks: usize,
    pub block_size: usize,
    pub weight_bytes: usize,
}

/// A request on its way from a handle to the loop.
pub(super) struct Submission {
    pub(super) id: SeqId,
    pub(super) request: GenerateRequest,
    pub(super) events: mpsc::Sender<EngineEvent>,
    /// When the handle accepted it: where its queue time and end-to-end
    /// latency start.
    pub(super) arrived: Instant,
}

/// What the handles and the loop share.
pub(super) struct Shared {
    pub(super) info: ModelInfo,
    pub(super) tokenizer: Arc<Tokenizer>,
    pub(super) chat_template: Option<Arc<ChatTemplate>>,
    pub(super) load: LoadCells,
    /// Accepted and not yet finished; bounds everything the engine holds.
    pub(super) pending: AtomicUsize,
    pub(super) max_pending: usize,
    pub(super) next_id: AtomicUsize,
    /// False from a step's panic until the engine has restarted (for good,
    /// when the restart failed): what `/ready` reports.
    pub(super) serving: AtomicBool,
    /// Restarts after a panicked step since the engine started.
    pub(super) restarts: AtomicUsize,
    /// The grammar compiler, built on the first constrained request (the
    /// vocabulary's byte trie is not free, and most models never need it).
    pub(super) grammars: OnceLock<Result<Grammars, ConstraintError>>,
    /// Who receives the engine's figures (set once, by the gateway).
    pub(super) observer: OnceLock<Arc<dyn StatsObserver>>,
}

/// A cloneable handle to a running engine. The engine stops when the last
/// handle is dropped and its in-flight requests have finished.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) shared: Arc<Shared>,
    pub(super) submit: SyncSender<Submission>,
}

/// The events of one request. Dropping it cancels the request.
pub struct EventStream {
    rx: mpsc::Receiver<EngineEvent>,
}

impl EventStream {
    /// The next event; `None` after the last one.
    pub async fn recv(&mut self) -> Option<EngineEvent> {
        self.rx.recv().await
    }

    /// Blocking variant for non-async callers (tests, benchmarks).
    pub fn blocking_recv(&mut self) -> Option<EngineEvent> {
        self.rx.blocking_recv()
    }
}

impl EngineHandle {
    /// Queues a request, or refuses it at once: a request that cannot fit the
    /// context or a full queue is an error, never an unbounded wait.
    pub fn submit(&self, request: GenerateRequest) -> Result<EventStream, EngineError> {
        let info = &self.shared.info;
        let prompt_tokens = request.prompt_tokens.len();
        if prompt_tokens == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        if let Some(&id) = request
            .prompt_tokens
            .iter()
            .find(|&&t| t as usize >= info.vocab_size)
        {
            return Err(EngineError::InvalidToken {
                id,
                vocab_size: info.vocab_size,
            });
        }
        let max_tokens = request.params.max_tokens;
        let requested = prompt_tokens.saturating_add(max_tokens);
        if requested > info.max_model_len {
            return Err(EngineError::ContextTooLong {
                max_model_len: info.max_model_len,
                requested,
                prompt_tokens,
                max_tokens,
            });
        }
        let pending = self.shared.pending.fetch_add(1, Ordering::SeqCst);
        if pending >= self.shared.max_pending {
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::QueueFull { pending });
        }
        // Room for every token plus the final event, so the engine's
        // `try_send` can only fail when the receiver is gone.
        let (tx, rx) = mpsc::channel(max_tokens + 2);
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed) as SeqId;
        let sub = Submission {
            id,
            request,
            events: tx,
            arrived: Instant::now(),
        };
        match self.submit.try_send(sub) {
            Ok(()) => Ok(EventStream { rx }),
            Err(TrySendError::Full(_)) => {
                self.shared.pending.fetch_sub(1, Ordering::SeqCst);
                Err(EngineError::QueueFull { pending })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.shared.pending.fetch_sub(1, Ordering::SeqCst);
                Err(EngineError::Stopped)
            }
        }
    }

    pub fn load(&self) -> LoadSnapshot {
        LoadSnapshot {
            in_flight: self.shared.pending.load(Ordering::SeqCst),
            ..self.shared.load.snapshot()
        }
    }
    pub fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    /// Hands the engine's figures to `observer` from now on (once per
    /// loop turn, on the engine thread). An engine has one observer: a
    /// second call is refused (false) and the first stays.
    pub fn observe(&self, observer: Arc<dyn StatsObserver>) -> bool {
        self.shared.observer.set(observer).is_ok()
    }

    /// Compiles `spec` for this model's vocabulary (cached per spec). CPU
    /// work, milliseconds for a fresh schema: call it off async workers.
    pub fn compile_grammar(&self, spec: &GrammarSpec) -> Result<Arc<Grammar>, ConstraintError> {
        let grammars = self.shared.grammars.get_or_init(|| {
            Grammars::new(self.shared.tokenizer.clone(), self.shared.info.vocab_size)
        });
        match grammars {
            Ok(g) => g.compile(spec),
            Err(e) => Err(e.clone()),
        }
    }
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.shared.tokenizer
    }
    pub fn chat_template(&self) -> Option<&Arc<ChatTemplate>> {
        self.shared.chat_template.as_ref()
    }
    /// False while the engine restarts after a step panicked, and for good
    /// when the restart failed. Requests submitted meanwhile wait for it.
    pub fn is_serving(&self) -> bool {
        self.shared.serving.load(Ordering::SeqCst)
    }
    /// How many times a panicked step made the engine restart.
    pub fn restarts(&self) -> usize {
        self.shared.restarts.load(Ordering::SeqCst)
    }
}
