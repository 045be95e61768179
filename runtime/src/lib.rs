//! Sluice's inference engine: it owns a model and its KV cache and turns a
//! stream of tokenised requests into streams of tokens.
//!
//! The pieces, from the top: [`engine`] runs one loop on its own thread, taking
//! requests from [`EngineHandle::submit`] between steps; [`scheduler`] decides
//! each step which sequences run and how many of their tokens (continuous
//! batching with chunked prefill and preemption, within a token budget);
//! [`block_manager`] hands out fixed-size KV blocks and shares full blocks of
//! identical prefixes; [`executor`] is the seam that runs a step on the
//! model, on the CPU or on a GPU through [`device`]; [`sampler`] and [`stop`] turn logits into
//! tokens and decide when a sequence ends; [`constraint`] masks the tokens a
//! grammar forbids (structured output); [`load`] publishes the signals the
//! router reads; [`stats`] the figures a metrics observer records (vLLM's,
//! the gateway names them); [`gpu_telemetry`] reads the GPUs for whoever
//! exports their metrics; [`encoder_pool`] batches embedding and classification
//! inputs on threads of its own. [`warm_sessions`] keeps a conversation's
//! blocks evicted last between its turns, by the time of [`Clock`].
//!
//! Design choice: the scheduler and block manager are synchronous state
//! machines with no clock, tensors or async inside, so they are tested exactly
//! without a model. This crate knows no HTTP: the gateway validates requests
//! and builds [`GenerateRequest`]s; the runtime trusts them.

pub mod block_manager;
pub mod clock;
pub mod constraint;
pub mod device;
pub mod encoder_pool;
pub mod engine;
pub mod executor;
pub mod gpu_telemetry;
pub mod load;
pub mod request;
pub mod rng;
pub mod sampler;
pub mod scheduler;
pub mod stats;
pub mod stop;
pub mod warm_sessions;

pub use clock::{Clock, ManualClock};
pub use constraint::{with_layout as json_layout, ConstraintError, Grammar, GrammarSpec};
pub use device::Device;
pub use encoder_pool::{
    BatchEncoder, EncoderHandle, EncoderLoad, EncoderPool, EncoderPoolConfig, RuntimeError,
};
pub use engine::{Engine, EngineConfig, EngineHandle, EventStream, ModelInfo, StepFault};
pub use load::LoadSnapshot;
pub use request::{
    EngineEvent, FinishReason, GenerateRequest, SamplingParams, SessionKey, StageTimes,
    TokenLogprob, Usage,
};
pub use stats::{FinishedReason, FinishedRequest, IterationStats, StatsObserver};

/// Why the engine refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the engine queue is full ({pending} requests pending); retry later")]
    QueueFull { pending: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "this model's context is {max_model_len} tokens, but the request needs {requested} \
         ({prompt_tokens} prompt + {max_tokens} max_tokens); shorten the prompt or lower max_tokens"
    )]
    ContextTooLong {
        max_model_len: usize,
        requested: usize,
        prompt_tokens: usize,
        max_tokens: usize,
    },
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    InvalidToken { id: u32, vocab_size: usize },
    #[error("the engine has stopped")]
    Stopped,
    #[error("the encoder queue is full ({pending} inputs pending); retry later")]
    EncoderQueueFull { pending: usize },
    #[error("the input has {tokens} tokens; this encoder takes at most {max_len}")]
    EncoderInputTooLong { tokens: usize, max_len: usize },
    #[error("encoder failure: {0}")]
    EncoderFailed(String),
    #[error("engine configuration: {0}")]
    Config(String),
    #[error("model failure: {0}")]
    Model(#[from] sluice_models::ModelError),
}
