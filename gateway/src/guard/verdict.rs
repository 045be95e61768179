//! The serving guard: turns a text (and, when the caller already has it,
//! the text's embedding) into a [`GuardVerdict`] with one score per
//! category.
//!
//! Design decision: [`Guard::verdict`] takes the embedding as an optional
//! `Arc<[f32]>` so the chat pipeline can run the shared encoder once and
//! hand the same buffer to the semantic cache and to the guard. Encoders are
//! reached through [`GuardEncoders`], a two-method seam the gateway's
//! encoder registry implements, so the guard needs no knowledge of how
//! encoders are loaded and can be tested with a fake.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_models::guard::{GuardHead, PROMPT_INJECTION};
use sluice_models::Tokenizer;
use sluice_runtime::EncoderHandle;

use super::{segments, windows};
use crate::config::{GuardConfig, GuardMode};
use crate::error::ApiError;

/// How long a client should wait when an encoder queue is full.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// An encoder as the guard uses it: its tokenizer and its pool.
#[derive(Clone)]
pub struct GuardEncoder {
    pub id: String,
    pub tokenizer: Arc<Tokenizer>,
    pub handle: EncoderHandle,
}

/// Where the guard finds its encoders: the gateway's encoder registry.
/// Errors are the client-facing ones (503 while loading, 404 unknown).
pub trait GuardEncoders: Send + Sync {
    /// The embedding encoder `id`, or the default one when `None`.
    fn embedding_encoder(&self, id: Option<&str>) -> Result<GuardEncoder, ApiError>;
    /// The classifier `id` and its labels in output order.
    fn classifier_encoder(&self, id: &str) -> Result<(GuardEncoder, Arc<[String]>), ApiError>;
}

/// One category's score and decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CategoryVerdict {
    /// 0..1; the highest score any source and any window gave.
    pub score: f64,
    pub flagged: bool,
    /// Not flagged, but some piece scored in the head's band
    /// `[t_low, t_high)`: for a second opinion (the L3 moderation stage).
    pub uncertain: bool,
}

/// What the guard decided about one text.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardVerdict {
    pub flagged: bool,
    /// Not flagged, and some piece fell in the uncertain band.
    pub uncertain: bool,
    /// Category name (`prompt_injection`) → verdict.
    pub categories: BTreeMap<&'static str, CategoryVerdict>,
}

/// A loaded head with its thresholds and the id of the encoder it reads.
#[derive(Debug, Clone)]
pub struct LoadedHead {
    pub head: Arc<GuardHead>,
    /// `t_high`: flagged from here up.
    pub threshold: f32,
    /// Allowed below here; `[t_low, threshold)` is the uncertain band.
    /// Equal to `threshold`, there is no band.
    pub t_low: f32,
    /// The embedding encoder to run; `None`: the registry's default.
    pub encoder: Option<String>,
}

/// The guard as configured: the head (unless replaced) and classifiers.
#[derive(Debug, Clone)]
pub struct Guard {
    pub id: String,
    head: Option<LoadedHead>,
    classifiers: Vec<crate::config::ClassifierGuardConfig>,
    pub max_inputs: usize,
    /// The longest one call may take (`[guard] timeout_ms`).
    pub timeout: Duration,
}

/// One text to score, and its embedding when the caller already has it.
struct Subject {
    text: String,
    embedding: Option<Arc<[f32]>>,
    /// Hand back the head encoder's vector of the whole text (when it fits
    /// one window), for the semantic cache.
    keep_embedding: bool,
}

/// A model the guard runs, resolved for one call.
enum Scorer<'a> {
    Head(&'a LoadedHead),
    Classifier {
        config: &'a crate::config::ClassifierGuardConfig,
        /// Output positions of the labels that count as injection.
        injection: Vec<usize>,
    },
}

impl Guard {
    /// A guard from its resolved config and a loaded head (`None` when the
    /// mode is "replace" and the head is not used).
    pub fn new(config: &GuardConfig, head: Option<LoadedHead>) -> Self {
        let head = match config.mode {
            GuardMode::Replace => None,
            GuardMode::Any => head,
        };
        Self {
            id: config.id.clone(),
            head,
            classifiers: config.classifiers.clone(),
            max_inputs: config.max_inputs,
            timeout: config.timeout,
        }
    }

    /// The same guard (id, classifiers, limits) scoring with `head`
    /// instead of its own; a guard whose head is replaced by its
    /// classifiers (`mode = "replace"`) stays as it is.
    pub fn with_head(&self, head: LoadedHead) -> Self {
        Self {
            head: self.head.as_ref().map(|_| head),
            ..self.clone()
        }
    }

    /// The head and its thresholds; `None` when the classifiers alone decide.
    pub fn head(&self) -> Option<&LoadedHead> {
        self.head.as_ref()
    }

    /// Scores `text`. When `embedding` is given it must be the head's
    /// encoder's pooled output for the whole text (its first window when it
    /// is longer than the encoder's; what the semantic cache computes): it
    /// is used as is, and only the other pieces (further windows, sentence
    /// segments) are encoded here. Without it, every piece is encoded.
    /// Past [`Guard::timeout`] the answer is [`ApiError::Timeout`].
    pub async fn verdict(
        &self,
        encoders: &dyn GuardEncoders,
        text: &str,
        embedding: Option<Arc<[f32]>>,
    ) -> Result<GuardVerdict, ApiError> {
        let subject = Subject {
            text: text.to_owned(),
            embedding,
            keep_embedding: false,
        };
        self.bounded(encoders, vec![subject])
            .await?
            .pop()
            .map(|(verdict, _)| verdict)
            .ok_or_else(|| ApiError::Internal("the guard gave no verdict".into()))
    }

    /// Scores several texts as one call (`/v1/moderations`): their pieces
    /// share encoder batches, and the call as a whole is bounded by
    /// [`Guard::timeout`]. Verdicts come back in the order of `texts`.
    pub async fn verdicts(
        &self,
        encoders: &dyn GuardEncoders,
        texts: Vec<String>,
    ) -> Result<Vec<GuardVerdict>, ApiError> {
        let (verdicts, _) = self.verdicts_keeping(encoders, texts, None).await?;
        Ok(verdicts)
    }

    /// Scores a request's texts as one call, and hands back the head
    /// encoder's vector of `texts[keep]` as a whole (when it fits one
    /// window): the chat path's semantic cache looks it up, so the last
    /// user message is encoded once, in the same batch as every other
    /// piece. Give `keep` only when the cache embeds with the head's
    /// encoder.
    pub async fn verdicts_keeping(
        &self,
        encoders: &dyn GuardEncoders,
        texts: Vec<String>,
        keep: Option<usize>,
    ) -> Result<(Vec<GuardVerdict>, Option<Arc<[f32]>>), ApiError> {
        let subjects = texts
            .into_iter()
            .enumerate()
            .map(|(i, text)| Subject {
                text,
                embedding: None,
                keep_embedding: Some(i) == keep,
            })
            .collect();
        let scored = self.bounded(encoders, subjects).await?;
        let mut kept = None;
        let verdicts = scored
            .into_iter()
            .map(|(verdict, embedding)| {
                kept = kept.take().or(embedding);
                verdict
            })
            .collect();
        Ok((verdicts, kept))
    }

    async fn bounded(
        &self,
        encoders: &dyn GuardEncoders,
        subjects: Vec<Subject>,
    ) -> Result<Vec<Scored>, ApiError> {
        // Dropping the scoring future on timeout drops its pending encoder
        // replies, so the pool skips whatever of this call is still queued.
        tokio::time::timeout(self.timeout, self.score(encoders, subjects))
            .await
            .map_err(|_| ApiError::Timeout(self.timeout))?
    }

    async fn score(
        &self,
        encoders: &dyn GuardEncoders,
        subjects: Vec<Subject>,
    ) -> Result<Vec<Scored>, ApiError> {
        let mut scorers: Vec<(Scorer<'_>, GuardEncoder)> = Vec::new();
        if let Some(head) = &self.head {
            let encoder = encoders.embedding_encoder(head.encoder.as_deref())?;
            scorers.push((Scorer::Head(head), encoder));
        }
        for config in &self.classifiers {
            let (encoder, labels) = encoders.classifier_encoder(&config.encoder)?;
            let injection = labels
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    config
                        .injection_labels
                        .iter()
                        .any(|want| want.eq_ignore_ascii_case(l))
                })
                .map(|(i, _)| i)
                .collect();
            scorers.push((Scorer::Classifier { config, injection }, encoder));
        }
        // Which subjects' first window the head need not encode.
        let given: Vec<Option<Arc<[f32]>>> = subjects.iter().map(|s| s.embedding.clone()).collect();
        let keep: Vec<bool> = subjects.iter().map(|s| s.keep_embedding).collect();
        let mut kept: Vec<Option<Arc<[f32]>>> = vec![None; given.len()];
        let tokenizers: Vec<GuardEncoder> = scorers.iter().map(|(_, e)| e.clone()).collect();
        let texts: Vec<String> = subjects.into_iter().map(|s| s.text).collect();
        // Tokenising is CPU work proportional to the text: it runs off the
        // async workers, once per call whatever the number of texts.
        let pieces = tokio::task::spawn_blocking(move || {
            tokenizers
                .iter()
                .map(|encoder| {
                    texts
                        .iter()
                        .map(|text| tokenize_windows(encoder, text))
                        .collect::<Result<Vec<_>, _>>()
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| ApiError::Internal(format!("guard tokenizer task: {e}")))??;

        // Per text: highest score, flagged, in the uncertain band.
        let mut scores = vec![(0.0f64, false, false); given.len()];
        for ((scorer, encoder), per_text) in scorers.iter().zip(pieces) {
            let is_head = matches!(scorer, Scorer::Head(_));
            // Each text's windows, less the first where the caller gave it.
            let mut counts = Vec::with_capacity(per_text.len());
            let mut whole_fits = Vec::with_capacity(per_text.len());
            let mut inputs = Vec::new();
            for ((windows, fits), embedding) in per_text.into_iter().zip(&given) {
                whole_fits.push(fits);
                let skip = usize::from(is_head && embedding.is_some());
                counts.push(windows.len().saturating_sub(skip));
                inputs.extend(windows.into_iter().skip(skip));
            }
            let mut outputs = encode(encoder, inputs).await?.into_iter();
            for (i, ((count, embedding), (score, flagged, banded))) in counts
                .into_iter()
                .zip(&given)
                .zip(scores.iter_mut())
                .enumerate()
            {
                let first = embedding.clone().filter(|_| is_head);
                for (n, output) in first
                    .into_iter()
                    .chain(outputs.by_ref().take(count))
                    .enumerate()
                {
                    // The first output is the whole text's first window:
                    // the text's own vector when it fits one window.
                    if is_head && n == 0 && keep[i] && whole_fits[i] {
                        kept[i] = Some(output.clone());
                    }
                    // Classifiers have one threshold: no band of their own.
                    let (s, t_low, threshold) = match scorer {
                        Scorer::Head(head) => (
                            head.head
                                .score(&output)
                                .map_err(|err| ApiError::Internal(format!("guard head: {err}")))?,
                            head.t_low,
                            head.threshold,
                        ),
                        Scorer::Classifier { config, injection } => {
                            let s = injection.iter().filter_map(|&i| output.get(i)).sum();
                            (s, config.threshold, config.threshold)
                        }
                    };
                    *score = score.max(f64::from(s));
                    *flagged |= s >= threshold;
                    *banded |= s >= t_low;
                }
            }
        }
        Ok(scores
            .into_iter()
            .zip(kept)
            .map(|((score, flagged, banded), kept)| {
                let uncertain = banded && !flagged;
                let mut categories = BTreeMap::new();
                categories.insert(
                    PROMPT_INJECTION,
                    CategoryVerdict {
                        score,
                        flagged,
                        uncertain,
                    },
                );
                let verdict = GuardVerdict {
                    flagged,
                    uncertain,
                    categories,
                };
                (verdict, kept)
            })
            .collect())
    }
}

/// A text's verdict and, when asked for, its whole-text vector.
type Scored = (GuardVerdict, Option<Arc<[f32]>>);

/// The encoder inputs for `text`: the whole text's windows first, then
/// each sentence segment's (see [`super::segments`]); and whether the whole
/// text fits one window (then the first input is exactly what the semantic
/// cache's embedder encodes for it).
fn tokenize_windows(encoder: &GuardEncoder, text: &str) -> Result<(Vec<Vec<u32>>, bool), ApiError> {
    let mut out = Vec::new();
    let mut whole_fits = false;
    for (i, segment) in segments(text).into_iter().enumerate() {
        let tokens = encoder
            .tokenizer
            .encode_with_special_tokens(segment)
            .map_err(|e| ApiError::Internal(format!("guard tokenizer `{}`: {e}", encoder.id)))?;
        let pieces = windows(&tokens, encoder.handle.max_len());
        if i == 0 {
            whole_fits = pieces.len() == 1;
        }
        out.extend(pieces);
    }
    Ok((out, whole_fits))
}

async fn encode(
    encoder: &GuardEncoder,
    windows: Vec<Vec<u32>>,
) -> Result<Vec<Arc<[f32]>>, ApiError> {
    if windows.is_empty() {
        return Ok(Vec::new());
    }
    encoder
        .handle
        .encode_many(windows)
        .await
        .map_err(|e| ApiError::from_engine(e, RETRY_AFTER))
}

#[cfg(test)]
mod tests;
