//! The gateway's encoder registry as the guard's [`GuardEncoders`]: ids are
//! resolved per call, so the guard answers 503 while an encoder loads and
//! never holds a stale handle.
//!
//! Design decision: a kind mismatch (`guard.encoder` naming a classifier, a
//! classifier entry naming an embedding model) is a server fault, not the
//! client's: it answers 500 with the reason in the log, and
//! [`check_encoders`] refuses such a config at start so it is never served.

use std::sync::Arc;

use super::verdict::{GuardEncoder, GuardEncoders};
use crate::config::{EncoderConfig, EncoderKind, GuardConfig, GuardMode};
use crate::encoders::{EncoderRegistry, ReadyEncoder};
use crate::error::ApiError;

fn guard_encoder(ready: ReadyEncoder) -> GuardEncoder {
    GuardEncoder {
        id: ready.id,
        tokenizer: ready.tokenizer,
        handle: ready.handle,
    }
}

impl GuardEncoders for EncoderRegistry {
    fn embedding_encoder(&self, id: Option<&str>) -> Result<GuardEncoder, ApiError> {
        let ready = match id {
            Some(id) => self.ready(id)?,
            None => {
                let first = self
                    .slots()
                    .iter()
                    .find(|s| s.config.kind == EncoderKind::Embedding)
                    .ok_or_else(|| {
                        ApiError::Internal("the guard head needs an embedding encoder".into())
                    })?;
                self.ready(&first.config.id)?
            }
        };
        if ready.kind != EncoderKind::Embedding {
            return Err(ApiError::Internal(format!(
                "guard.encoder `{}` is not an embedding encoder",
                ready.id
            )));
        }
        Ok(guard_encoder(ready))
    }

    fn classifier_encoder(&self, id: &str) -> Result<(GuardEncoder, Arc<[String]>), ApiError> {
        let ready = self.ready(id)?;
        if ready.kind != EncoderKind::Classifier {
            return Err(ApiError::Internal(format!(
                "guard classifier `{id}` is not a classifier encoder"
            )));
        }
        let labels = ready.labels.clone();
        Ok((guard_encoder(ready), labels))
    }
}

/// The guard to serve: `None` when disabled, or when the head has no
/// embedding encoder to read and nothing else would score (the demo
/// encoder's weights are not fetched): serving chat must not need them, so
/// that case is a warning, and `/v1/moderations` answers 404.
pub fn serving_guard(
    guard: &GuardConfig,
    encoders: &[EncoderConfig],
) -> Result<Option<Arc<super::Guard>>, String> {
    if !guard.enabled {
        return Ok(None);
    }
    check_encoders(guard, encoders)?;
    let no_embedding = !encoders.iter().any(|e| e.kind == EncoderKind::Embedding);
    if guard.mode == GuardMode::Any && no_embedding {
        if guard.classifiers.is_empty() {
            tracing::warn!(
                "the guard is off: no embedding encoder is configured for its head \
                 (fetch all-MiniLM-L6-v2 with `sluice fetch-models embed`)"
            );
            return Ok(None);
        }
        return Err(
            "guard: the head needs an embedding encoder; add one to [[encoders]] \
                    or use mode = \"replace\""
                .into(),
        );
    }
    Ok(super::from_config(guard)?.map(Arc::new))
}

/// Checks at start that the guard's encoders exist with the right kinds.
pub fn check_encoders(guard: &GuardConfig, encoders: &[EncoderConfig]) -> Result<(), String> {
    if !guard.enabled {
        return Ok(());
    }
    let kind_of = |id: &str| encoders.iter().find(|e| e.id == id).map(|e| e.kind);
    if let (GuardMode::Any, Some(id)) = (guard.mode, &guard.encoder) {
        // No embedding encoder at all is handled by `serving_guard`.
        match kind_of(id) {
            Some(EncoderKind::Embedding) => {}
            Some(EncoderKind::Classifier) => {
                return Err(format!(
                    "guard.encoder: `{id}` is a classifier; the head reads an embedding encoder"
                ))
            }
            None => return Err(format!("guard.encoder: no encoder has the id `{id}`")),
        }
    }
    for (i, c) in guard.classifiers.iter().enumerate() {
        match kind_of(&c.encoder) {
            Some(EncoderKind::Classifier) => {}
            Some(EncoderKind::Embedding) => {
                return Err(format!(
                    "guard.classifiers[{i}]: `{}` is an embedding encoder, not a classifier",
                    c.encoder
                ))
            }
            None => {
                return Err(format!(
                    "guard.classifiers[{i}]: no encoder has the id `{}`",
                    c.encoder
                ))
            }
        }
    }
    Ok(())
}
