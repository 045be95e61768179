//! The in-process encoders this process serves (`[[encoders]]`), and their
//! loading.
//!
//! Like [`crate::registry`] for chat models: each configured encoder has an
//! [`EncoderSlot`] from the start, so `/v1/models` lists it and `/ready`
//! waits for it, while its weights load on a blocking thread; requests get
//! 503 until its pool is set. A slot is set once and never replaced, so
//! readers take no lock. Design decision: the slot keeps the tokenizer next
//! to the pool handle, because callers (embeddings, the semantic cache, the
//! guard) tokenise on a blocking thread of their own and hand the pool only
//! token ids; the pool's threads then do nothing but forward passes.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::Serialize;
use sluice_models::{SentenceEncoder, SequenceClassifier, Tokenizer};
use sluice_runtime::{BatchEncoder, EncoderHandle, EncoderPool};

use crate::config::{EncoderConfig, EncoderKind};
use crate::error::ApiError;
use crate::util::unix_now;

/// What a loaded encoder offers.
#[derive(Clone)]
pub struct LoadedEncoder {
    pub tokenizer: Arc<Tokenizer>,
    pub handle: EncoderHandle,
    /// Output width: the embedding dimension, or the number of labels.
    pub dim: usize,
    pub max_len: usize,
    /// Embeddings come out L2-normalised (embedding encoders).
    pub normalized: bool,
    /// Label names in output order (classifiers; empty for embeddings).
    pub labels: Arc<[String]>,
}

/// One configured encoder.
pub struct EncoderSlot {
    pub config: EncoderConfig,
    /// When the slot was made (`created` in `/v1/models`).
    pub created: u64,
    loaded: OnceLock<LoadedEncoder>,
}

/// An encoder that is ready to serve.
#[derive(Clone)]
pub struct ReadyEncoder {
    pub id: String,
    pub kind: EncoderKind,
    pub tokenizer: Arc<Tokenizer>,
    pub handle: EncoderHandle,
    pub dim: usize,
    pub max_len: usize,
    pub normalized: bool,
    pub labels: Arc<[String]>,
}

impl std::fmt::Debug for ReadyEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyEncoder")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

/// One encoder's line in `/ready`.
#[derive(Debug, Serialize)]
pub struct EncoderStatus {
    pub id: String,
    pub kind: &'static str,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batches: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_batch_size: Option<f64>,
}

/// Every configured encoder, in config order.
pub struct EncoderRegistry {
    slots: Vec<Arc<EncoderSlot>>,
}

impl std::fmt::Debug for EncoderRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.slots.iter().map(|s| &s.config.id))
            .finish()
    }
}

impl EncoderRegistry {
    pub fn new(encoders: &[EncoderConfig]) -> Self {
        let created = unix_now();
        Self {
            slots: encoders
                .iter()
                .map(|config| {
                    Arc::new(EncoderSlot {
                        config: config.clone(),
                        created,
                        loaded: OnceLock::new(),
                    })
                })
                .collect(),
        }
    }

    pub fn slots(&self) -> &[Arc<EncoderSlot>] {
        &self.slots
    }

    /// The slot for `id`, if one is configured.
    pub fn get(&self, id: &str) -> Option<&Arc<EncoderSlot>> {
        self.slots.iter().find(|s| s.config.id == id)
    }

    /// The encoder `id`; 404 when unknown, 503 while it loads.
    pub fn ready(&self, id: &str) -> Result<ReadyEncoder, ApiError> {
        let slot = self
            .get(id)
            .ok_or_else(|| ApiError::ModelNotFound(id.to_string()))?;
        slot.ready()
            .ok_or_else(|| ApiError::ModelLoading(id.to_string()))
    }

    /// The first embedding encoder, once loaded: the one that feeds
    /// `/v1/embeddings` by default, the semantic cache and the guard head.
    pub fn default_embedding(&self) -> Option<ReadyEncoder> {
        self.slots
            .iter()
            .find(|s| s.config.kind == EncoderKind::Embedding)
            .and_then(|s| s.ready())
    }

    pub fn all_ready(&self) -> bool {
        self.slots.iter().all(|s| s.loaded.get().is_some())
    }

    pub fn status(&self) -> Vec<EncoderStatus> {
        self.slots.iter().map(|s| s.status()).collect()
    }
}

impl EncoderSlot {
    pub fn ready(&self) -> Option<ReadyEncoder> {
        let l = self.loaded.get()?;
        Some(ReadyEncoder {
            id: self.config.id.clone(),
            kind: self.config.kind,
            tokenizer: l.tokenizer.clone(),
            handle: l.handle.clone(),
            dim: l.dim,
            max_len: l.max_len,
            normalized: l.normalized,
            labels: l.labels.clone(),
        })
    }

    fn status(&self) -> EncoderStatus {
        let kind = self.config.kind.as_str();
        match self.loaded.get() {
            Some(l) => {
                let load = l.handle.load();
                EncoderStatus {
                    id: self.config.id.clone(),
                    kind,
                    state: "ready",
                    queued: Some(load.queued),
                    batches: Some(load.batches),
                    mean_batch_size: Some(load.mean_batch_size),
                }
            }
            None => EncoderStatus {
                id: self.config.id.clone(),
                kind,
                state: "loading",
                queued: None,
                batches: None,
                mean_batch_size: None,
            },
        }
    }

    /// Loads the weights and starts the pool. Blocking CPU work: call it on
    /// a blocking thread.
    pub fn load_blocking(&self) -> Result<(), String> {
        let cfg = &self.config;
        let started = Instant::now();
        tracing::info!(encoder = %cfg.id, kind = cfg.kind.as_str(), path = %cfg.path.display(), "loading encoder");
        let fail = |e: sluice_models::ModelError| {
            format!("encoder `{}` ({}): {e}", cfg.id, cfg.path.display())
        };
        let (model, tokenizer, dim, max_len, normalized, labels): (
            Arc<dyn BatchEncoder>,
            _,
            _,
            _,
            _,
            Arc<[String]>,
        ) = match cfg.kind {
            EncoderKind::Embedding => {
                let m = SentenceEncoder::load(&cfg.path).map_err(fail)?;
                let (t, d, l, n) = (m.tokenizer().clone(), m.dim(), m.max_len(), m.normalizes());
                (Arc::new(m), t, d, l, n, Arc::from(Vec::new()))
            }
            EncoderKind::Classifier => {
                let m = SequenceClassifier::load(&cfg.path).map_err(fail)?;
                let labels: Arc<[String]> = m.labels().into();
                let (t, d, l) = (m.tokenizer().clone(), labels.len(), m.max_len());
                (Arc::new(m), t, d, l, false, labels)
            }
        };
        let handle = EncoderPool::start(model, cfg.pool.clone())
            .map_err(|e| format!("encoder `{}`: {e}", cfg.id))?;
        tracing::info!(
            encoder = %cfg.id,
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            dim,
            max_len,
            "encoder ready"
        );
        let loaded = LoadedEncoder {
            tokenizer,
            handle,
            dim,
            max_len,
            normalized,
            labels,
        };
        if self.loaded.set(loaded).is_err() {
            tracing::warn!(encoder = %cfg.id, "encoder was loaded twice; keeping the first");
        }
        Ok(())
    }
}

/// The semantic cache's embedding model: the first embedding encoder, whose
/// pool batches the cache's lookups with every other encode.
///
/// Design choice: a message longer than the encoder's window is refused
/// (the cache then uses its exact tier only) rather than truncated: two long
/// messages that share their first 512 tokens would otherwise look
/// identical and serve each other's answers.
pub struct EncoderEmbedder {
    registry: Arc<EncoderRegistry>,
    id: String,
    /// `<id>@<weights fingerprint>`, see [`weights_fingerprint`].
    embedder_id: String,
}

/// A fingerprint of the model folder's weights and config, the same on
/// every machine and after every restart, different for another model or
/// fine-tune even of the same width and encoder id.
///
/// Design choice: a sample, not a hash of every byte. It covers each file's
/// name and length, `config.json` whole, and of each `*.safetensors` its
/// first 64 KiB (the tensor table), last 4 KiB and 64 evenly spaced 4 KiB
/// blocks: a fine-tune changes nearly every weight, so any block tells
/// models apart, and start-up reads ~0.5 MiB instead of the whole file.
/// An unreadable folder gets "unreadable" (its encoder never loads, so its
/// id never meets a vector).
pub fn weights_fingerprint(dir: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    const HEAD: u64 = 64 << 10;
    const BLOCK: u64 = 4 << 10;
    const SAMPLES: u64 = 64;
    let sample = |path: &std::path::Path, h: &mut Sha256| -> std::io::Result<()> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        h.update(len.to_le_bytes());
        let mut read_at = |offset: u64, n: u64, h: &mut Sha256| -> std::io::Result<()> {
            let mut buf = Vec::new();
            f.seek(SeekFrom::Start(offset))?;
            (&mut f).take(n).read_to_end(&mut buf)?;
            h.update(&buf);
            Ok(())
        };
        read_at(0, HEAD, h)?;
        for i in 0..SAMPLES {
            read_at(len / SAMPLES * i, BLOCK, h)?;
        }
        read_at(len.saturating_sub(BLOCK), BLOCK, h)
    };
    let fingerprint = || -> std::io::Result<String> {
        let mut weights: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        weights.sort();
        let mut h = Sha256::new();
        if let Ok(config) = std::fs::read(dir.join("config.json")) {
            h.update(&config);
        }
        for path in &weights {
            h.update(path.file_name().map_or(&[][..], |n| n.as_encoded_bytes()));
            sample(path, &mut h)?;
        }
        Ok(h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    };
    match fingerprint() {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "encoder weights unreadable for the cache's fingerprint");
            "unreadable".into()
        }
    }
}

/// Bytes per token at most for any text the encoder can take whole; a
/// longer text is refused before it is tokenised (which costs CPU on the
/// request's own task).
const MAX_BYTES_PER_TOKEN: usize = 32;

impl EncoderEmbedder {
    /// The embedder over the first configured embedding encoder, loaded or
    /// not yet (until it is, lookups fail and the cache uses its exact tier).
    pub fn for_default(registry: &Arc<EncoderRegistry>) -> Option<Self> {
        let slot = registry
            .slots()
            .iter()
            .find(|s| s.config.kind == EncoderKind::Embedding)?;
        Some(Self {
            registry: registry.clone(),
            id: slot.config.id.clone(),
            embedder_id: format!(
                "{}@{}",
                slot.config.id,
                weights_fingerprint(&slot.config.path)
            ),
        })
    }
}

impl crate::cache::Embedder for EncoderEmbedder {
    fn embed<'a>(
        &'a self,
        text: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Arc<[f32]>, String>> {
        Box::pin(async move {
            let encoder = self.registry.ready(&self.id).map_err(|e| e.to_string())?;
            if text.len() > encoder.max_len * MAX_BYTES_PER_TOKEN {
                return Err(format!("{} bytes is past the encoder's window", text.len()));
            }
            // Off the async workers: tokenising a long message is CPU work.
            let (tokenizer, owned) = (encoder.tokenizer.clone(), text.to_owned());
            let ids =
                tokio::task::spawn_blocking(move || tokenizer.encode_with_special_tokens(&owned))
                    .await
                    .map_err(|e| format!("tokenizer task: {e}"))?
                    .map_err(|e| e.to_string())?;
            if ids.len() > encoder.max_len {
                return Err(format!(
                    "{} tokens is past the encoder's window of {}",
                    ids.len(),
                    encoder.max_len
                ));
            }
            encoder.handle.encode(ids).await.map_err(|e| e.to_string())
        })
    }

    fn model_id(&self) -> &str {
        &self.id
    }

    fn embedder_id(&self) -> &str {
        &self.embedder_id
    }
}
