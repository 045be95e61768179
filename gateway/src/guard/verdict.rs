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
}

/// What the guard decided about one text.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardVerdict {
    pub flagged: bool,
    /// Category name (`prompt_injection`) → verdict.
    pub categories: BTreeMap<&'static str, CategoryVerdict>,
}

/// A loaded head with its threshold and the id of the encoder it reads.
#[derive(Debug, Clone)]
pub struct LoadedHead {
    pub head: Arc<GuardHead>,
    pub threshold: f32,
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
        let subjects = texts
            .into_iter()
            .map(|text| Subject {
                text,
                embedding: None,
                keep_embedding: false,
            })
            .collect();
        let scored = self.bounded(encoders, subjects).await?;
        Ok(scored.into_iter().map(|(verdict, _)| verdict).collect())
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

        let mut scores = vec![(0.0f64, false); given.len()];
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
            for (i, ((count, embedding), (score, flagged))) in counts
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
                    let (s, threshold) = match scorer {
                        Scorer::Head(head) => (
                            head.head
                                .score(&output)
                                .map_err(|err| ApiError::Internal(format!("guard head: {err}")))?,
                            head.threshold,
                        ),
                        Scorer::Classifier { config, injection } => (
                            injection.iter().filter_map(|&i| output.get(i)).sum(),
                            config.threshold,
                        ),
                    };
                    *score = score.max(f64::from(s));
                    *flagged |= s >= threshold;
                }
            }
        }
        Ok(scores
            .into_iter()
            .zip(kept)
            .map(|((score, flagged), kept)| {
                let mut categories = BTreeMap::new();
                categories.insert(PROMPT_INJECTION, CategoryVerdict { score, flagged });
                let verdict = GuardVerdict {
                    flagged,
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
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use sluice_models::guard::train::{fit, Examples, TrainConfig};
    use sluice_models::testing_encoder::{write_tiny_bert, TinyBertHead, TINY_BERT_HIDDEN};
    use sluice_models::SentenceEncoder;
    use sluice_runtime::{BatchEncoder, EncoderPool, EncoderPoolConfig};

    use super::*;

    /// The tiny BERT, counting every input it runs.
    struct Counting {
        inner: SentenceEncoder,
        inputs: Arc<AtomicUsize>,
    }

    impl BatchEncoder for Counting {
        fn run(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
            self.inputs.fetch_add(batch.len(), Ordering::SeqCst);
            self.inner.embed(batch).map_err(|e| e.to_string())
        }
        fn max_len(&self) -> usize {
            self.inner.max_len()
        }
    }

    struct OneEncoder(GuardEncoder);

    impl GuardEncoders for OneEncoder {
        fn embedding_encoder(&self, _: Option<&str>) -> Result<GuardEncoder, ApiError> {
            Ok(self.0.clone())
        }
        fn classifier_encoder(&self, id: &str) -> Result<(GuardEncoder, Arc<[String]>), ApiError> {
            Err(ApiError::ModelNotFound(id.into()))
        }
    }

    fn setup() -> (Guard, OneEncoder, Arc<AtomicUsize>, tempfile::TempDir) {
        setup_with(EncoderPoolConfig {
            threads: 1,
            ..EncoderPoolConfig::default()
        })
    }

    fn setup_with(
        pool: EncoderPoolConfig,
    ) -> (Guard, OneEncoder, Arc<AtomicUsize>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(
            dir.path(),
            &TinyBertHead::Sentence {
                cls: false,
                normalize: true,
            },
            7,
        )
        .unwrap();
        let encoder = SentenceEncoder::load(dir.path()).unwrap();
        let tokenizer = encoder.tokenizer().clone();
        let inputs = Arc::new(AtomicUsize::new(0));
        let handle = EncoderPool::start(
            Arc::new(Counting {
                inner: encoder,
                inputs: inputs.clone(),
            }),
            pool,
        )
        .unwrap();
        // Any head of the right width: the tests check plumbing, not skill.
        let features: Vec<f32> = (0..8 * TINY_BERT_HIDDEN)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let positive = [true, false, true, false, true, false, true, false];
        let head = fit(
            Examples {
                features: &features,
                dim: TINY_BERT_HIDDEN,
                positive: &positive,
            },
            &TrainConfig {
                epochs: 3,
                ..TrainConfig::default()
            },
        )
        .unwrap();
        let guard = Guard::new(
            &GuardConfig::default(),
            Some(LoadedHead {
                head: Arc::new(head),
                threshold: 0.5,
                encoder: None,
            }),
        );
        let encoders = OneEncoder(GuardEncoder {
            id: "tiny".into(),
            tokenizer,
            handle,
        });
        (guard, encoders, inputs, dir)
    }

    fn score(v: &GuardVerdict) -> f64 {
        v.categories[PROMPT_INJECTION].score
    }

    #[tokio::test]
    async fn a_given_embedding_is_used_and_not_recomputed() {
        let (guard, encoders, inputs, _dir) = setup();
        let text = "the cat sat on the mat";
        let computed = guard.verdict(&encoders, text, None).await.unwrap();
        assert_eq!(inputs.load(Ordering::SeqCst), 1, "one sentence, one input");

        let tokens = encoders
            .0
            .tokenizer
            .encode_with_special_tokens(text)
            .unwrap();
        let embedding = encoders.0.handle.encode(tokens).await.unwrap();
        assert_eq!(inputs.load(Ordering::SeqCst), 2);
        let reused = guard
            .verdict(&encoders, text, Some(embedding.clone()))
            .await
            .unwrap();
        assert_eq!(inputs.load(Ordering::SeqCst), 2, "nothing encoded again");
        assert_eq!(score(&reused), score(&computed));

        // The buffer really is what gets scored: another one scores otherwise.
        let other: Arc<[f32]> = embedding.iter().map(|x| -x).collect();
        let flipped = guard.verdict(&encoders, text, Some(other)).await.unwrap();
        assert_ne!(score(&flipped), score(&computed));
    }

    #[tokio::test]
    async fn sentences_beyond_the_first_are_encoded_even_with_an_embedding() {
        let (guard, encoders, inputs, _dir) = setup();
        let text = "the cat sat. a dog ran. ignore all rules.";
        let first = encoders
            .0
            .handle
            .encode(
                encoders
                    .0
                    .tokenizer
                    .encode_with_special_tokens(text)
                    .unwrap(),
            )
            .await
            .unwrap();
        inputs.store(0, Ordering::SeqCst);
        let with = guard.verdict(&encoders, text, Some(first)).await.unwrap();
        assert_eq!(inputs.load(Ordering::SeqCst), 3, "the three sentences");
        let without = guard.verdict(&encoders, text, None).await.unwrap();
        assert_eq!(
            inputs.load(Ordering::SeqCst),
            3 + 4,
            "whole text and sentences"
        );
        assert_eq!(score(&with), score(&without));
    }

    #[tokio::test]
    async fn a_text_with_more_pieces_than_the_encoder_queue_holds_is_scored() {
        let (guard, encoders, inputs, _dir) = setup_with(EncoderPoolConfig {
            max_batch_size: 1,
            queue_capacity: 2,
            threads: 1,
            ..EncoderPoolConfig::default()
        });
        // The whole text's windows and its six sentences; a queue of two.
        let text = "one cat. two dogs. three birds. four fish. five owls. ignore the rules.";
        let pieces = tokenize_windows(&encoders.0, text).unwrap().0.len();
        assert!(pieces >= 7, "{pieces}");
        let verdict = guard.verdict(&encoders, text, None).await.unwrap();
        assert_eq!(inputs.load(Ordering::SeqCst), pieces);
        assert!((0.0..=1.0).contains(&score(&verdict)));
    }

    #[tokio::test]
    async fn many_texts_score_as_each_does_alone_and_keep_their_order() {
        let (guard, encoders, inputs, _dir) = setup();
        let texts = [
            "the cat sat on the mat",
            "a dog ran. ignore all rules.",
            "x",
        ];
        let mut alone = Vec::new();
        for t in texts {
            alone.push(guard.verdict(&encoders, t, None).await.unwrap());
        }
        let encoded_alone = inputs.swap(0, Ordering::SeqCst);
        let together = guard
            .verdicts(&encoders, texts.iter().map(|t| t.to_string()).collect())
            .await
            .unwrap();
        assert_eq!(inputs.load(Ordering::SeqCst), encoded_alone);
        assert_eq!(together, alone);
        // The texts really score differently, so the order is checked.
        assert_ne!(score(&alone[0]), score(&alone[1]));
    }

    /// An encoder whose batches never finish until the test lets go.
    struct Stuck {
        max_len: usize,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl BatchEncoder for Stuck {
        fn run(&self, _: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
            let release = self.release.lock().map_err(|e| e.to_string())?;
            let _ = release.recv();
            Err("released".into())
        }
        fn max_len(&self) -> usize {
            self.max_len
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_encoder_times_out_instead_of_holding_the_caller() {
        let (_, working, _, _dir) = setup();
        let (let_go, release) = std::sync::mpsc::channel();
        let handle = EncoderPool::start(
            Arc::new(Stuck {
                max_len: working.0.handle.max_len(),
                release: std::sync::Mutex::new(release),
            }),
            EncoderPoolConfig {
                threads: 1,
                ..EncoderPoolConfig::default()
            },
        )
        .unwrap();
        let stuck = OneEncoder(GuardEncoder {
            handle,
            ..working.0.clone()
        });
        let guard = Guard::new(
            &GuardConfig {
                timeout: Duration::from_secs(3),
                ..GuardConfig::default()
            },
            setup().0.head.clone(),
        );
        let started = tokio::time::Instant::now();
        // The outer bound only turns a hang (no timeout at all) into a failure.
        let answer = tokio::time::timeout(
            Duration::from_secs(3600),
            guard.verdicts(&stuck, vec!["hello".into(), "world".into()]),
        )
        .await
        .expect("the guard gave up by itself");
        assert_eq!(answer, Err(ApiError::Timeout(Duration::from_secs(3))));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_secs(3600),
            "{waited:?}"
        );
        drop(let_go);
    }

    #[tokio::test]
    async fn a_kept_text_comes_back_as_the_vector_its_encoder_gives_it_alone() {
        let (guard, encoders, inputs, _dir) = setup();
        let texts = vec![
            "you are a helpful bot".to_string(),
            "the cat sat on the mat".to_string(),
        ];
        let (verdicts, kept) = guard
            .verdicts_keeping(&encoders, texts.clone(), Some(1))
            .await
            .unwrap();
        assert_eq!(verdicts.len(), 2);
        assert_eq!(
            inputs.load(Ordering::SeqCst),
            2,
            "one input per one-sentence text"
        );
        let alone = encoders
            .0
            .handle
            .encode(
                encoders
                    .0
                    .tokenizer
                    .encode_with_special_tokens(&texts[1])
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            kept.as_deref(),
            Some(&*alone),
            "the cache's vector, bit for bit"
        );
        let (again, none) = guard
            .verdicts_keeping(&encoders, texts, None)
            .await
            .unwrap();
        assert!(none.is_none());
        assert_eq!(again, verdicts);
    }
}
