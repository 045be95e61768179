//! `sluice guard train --source ...`: fit the head on several named
//! sources at once ([`super::sources`]), with obfuscated copies of the
//! positives ([`super::augment`]), calibrate its scores (Platt scaling on
//! the validation parts) and choose two thresholds there: `t_low`, under
//! which a text is allowed, and `t_high`, from which it is flagged; the
//! band between is "uncertain" (for the external moderation stage).
//!
//! Design decision: a head is fitted on each text's first window (the
//! whole text as the cache embeds it), but its validation scores are
//! segments-max over every window and sentence, as serving scores; so the
//! thresholds are chosen on the same numbers the server will compare
//! against them. The same fitting code serves the leave-one-source-out
//! evaluation ([`super::evaluate`]), which passes the held-out source's
//! texts as `exclude` so no copy of them is fitted or validated on.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use sha2::{Digest, Sha256};
use sluice_models::guard::metrics::{choose_threshold, platt_scaling, roc_auc, ThresholdChoice};
use sluice_models::guard::train::{fit, Examples, TrainConfig};
use sluice_models::guard::{
    GuardHead, GuardHeadMeta, SourceRecord, ValidationFigures, HEAD_FORMAT, PROMPT_INJECTION,
};
use sluice_models::SentenceEncoder;

use super::augment::{self, Obfuscation};
use super::sources::{dedupe_key, in_validation, Source, SourceSpec};
use super::train::{data_file, embed_texts, EmbeddingCache, Pieces, WindowEmbeddings};
use super::LONG_TEXT_POLICY;

/// What fitting on sources needs besides the data.
#[derive(Debug, Clone)]
pub struct FitSettings {
    pub config: TrainConfig,
    /// Obfuscation kinds for the positives' copies; empty: none.
    pub augment: Vec<Obfuscation>,
    /// Validation false-positive bound that places `t_low`.
    pub max_fpr_low: f64,
    /// Validation false-positive bound that places `t_high`.
    pub max_fpr_high: f64,
    /// Fit benign texts on every piece serving scores, not only the first
    /// window (`--fit-pieces`).
    pub fit_pieces: bool,
}

/// `sluice guard train --source ...`.
#[derive(Debug, Clone)]
pub struct SourcesJob {
    pub sources: Vec<SourceSpec>,
    pub encoder_dir: PathBuf,
    pub embedding_model: String,
    pub out: PathBuf,
    pub settings: FitSettings,
    pub embedding_cache: Option<PathBuf>,
    pub command: String,
}

/// A source with its embeddings: every piece serving scores, and the
/// first-window embeddings of its fitting positives' obfuscated copies.
pub struct EmbeddedSource {
    pub source: Source,
    pub windows: WindowEmbeddings,
    /// Index in `windows` of each row's first window.
    pub first_row: Vec<usize>,
    /// Row-major `[n, dim]`.
    pub augmented: Vec<f32>,
    /// The normalised original of each obfuscated copy.
    pub augmented_from: Vec<String>,
    pub dim: usize,
}

impl EmbeddedSource {
    pub fn embed(
        encoder: &SentenceEncoder,
        source: Source,
        settings: &FitSettings,
        cache_dir: Option<&std::path::Path>,
        model: &str,
    ) -> Result<Self, String> {
        let texts: Vec<&str> = source.rows.iter().map(|r| r.text.as_str()).collect();
        let key = digest_of(texts.iter().copied());
        let cache = EmbeddingCache {
            dir: cache_dir,
            key: &key,
            model,
        };
        // A source of injections only has no false positive to find in its
        // sentences, and its long jailbreaks would cost dozens of sentence
        // pieces each: its windows give a lower bound of the serving score,
        // so its recall here is, if anything, understated.
        let pieces = if source.positives() == source.rows.len() {
            Pieces::Windows
        } else {
            Pieces::Segments
        };
        let windows = embed_texts(encoder, &texts, pieces, &cache, &source.name)?;
        let mut first_row = vec![usize::MAX; texts.len()];
        for (row, &owner) in windows.owner.iter().enumerate().rev() {
            first_row[owner] = row;
        }
        let positives: Vec<&str> = source
            .rows
            .iter()
            .filter(|r| r.injection && !in_validation(&r.text))
            .map(|r| r.text.as_str())
            .collect();
        let copies = augment::variants(&positives, &settings.augment, settings.config.seed);
        let augmented_from = copies
            .iter()
            .map(|(i, _)| dedupe_key(positives[*i]))
            .collect();
        let copy_refs: Vec<&str> = copies.iter().map(|(_, c)| c.as_str()).collect();
        let copy_key = digest_of(copy_refs.iter().copied());
        let augmented = embed_texts(
            encoder,
            &copy_refs,
            Pieces::First,
            &EmbeddingCache {
                dir: cache_dir,
                key: &copy_key,
                model,
            },
            &format!("{} (obfuscated copies)", source.name),
        )?
        .features;
        Ok(Self {
            source,
            windows,
            first_row,
            augmented,
            augmented_from,
            dim: encoder.dim(),
        })
    }

    /// Segments-max of `head`'s score for each row.
    pub fn scores(&self, head: &GuardHead) -> Result<Vec<f32>, String> {
        let mut scores = vec![f32::NEG_INFINITY; self.source.rows.len()];
        for (x, &owner) in self
            .windows
            .features
            .chunks_exact(self.dim)
            .zip(&self.windows.owner)
        {
            let s = head.score(x).map_err(|e| e.to_string())?;
            scores[owner] = scores[owner].max(s);
        }
        Ok(scores)
    }

    fn raw_max_logits(&self, head: &GuardHead) -> Result<Vec<f32>, String> {
        let mut logits = vec![f32::NEG_INFINITY; self.source.rows.len()];
        for (x, &owner) in self
            .windows
            .features
            .chunks_exact(self.dim)
            .zip(&self.windows.owner)
        {
            let z = head.raw_logit(x).map_err(|e| e.to_string())?;
            logits[owner] = logits[owner].max(z);
        }
        Ok(logits)
    }
}

/// A short hex digest naming a list of texts (the embedding cache's key).
fn digest_of<'a>(texts: impl Iterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for t in texts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A calibrated head and its two thresholds, chosen on validation.
pub struct Fitted {
    pub head: GuardHead,
    pub calibration: (f32, f32),
    pub low: ThresholdChoice,
    pub high: ThresholdChoice,
    pub auc: f64,
    /// Per source (in input order): rows fitted on, rows validated on.
    pub used: Vec<(usize, usize)>,
}

/// Fits on the fitting parts of `sources` (all but `skip`), less every
/// text whose normalised form is in `exclude`; calibrates and places the
/// thresholds on their validation parts.
pub fn fit_on_sources(
    sources: &[EmbeddedSource],
    skip: Option<usize>,
    exclude: &HashSet<String>,
    settings: &FitSettings,
) -> Result<Fitted, String> {
    let dim = sources.first().map_or(0, |s| s.dim);
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    let mut used = vec![(0, 0); sources.len()];
    for (k, s) in sources.iter().enumerate() {
        if Some(k) == skip {
            continue;
        }
        for (i, row) in s.source.rows.iter().enumerate() {
            if in_validation(&row.text) || exclude.contains(&dedupe_key(&row.text)) {
                continue;
            }
            // A text's pieces are contiguous rows, from its first one to the
            // next text's. An injection's sentences may each be harmless, so
            // only benign texts give every piece.
            let first = s.first_row[i];
            let end = if settings.fit_pieces && !row.injection {
                s.first_row
                    .get(i + 1)
                    .copied()
                    .unwrap_or(s.windows.owner.len())
            } else {
                first + 1
            };
            for r in first..end {
                features.extend_from_slice(&s.windows.features[r * dim..(r + 1) * dim]);
                labels.push(row.injection);
            }
            used[k].0 += 1;
        }
        // Copies of held-out texts are left out with them: a copy is the
        // same attack, and fitting on it would flatter the held-out recall.
        for (x, from) in s.augmented.chunks_exact(dim).zip(&s.augmented_from) {
            if !exclude.contains(from) {
                features.extend_from_slice(x);
                labels.push(true);
            }
        }
    }
    let head = fit(
        Examples {
            features: &features,
            dim,
            positive: &labels,
        },
        &settings.config,
    )
    .map_err(|e| format!("fitting the head: {e}"))?;

    let (mut logits, mut positive) = (Vec::new(), Vec::new());
    for (k, s) in sources.iter().enumerate() {
        if Some(k) == skip {
            continue;
        }
        let raw = s.raw_max_logits(&head)?;
        for (row, z) in s.source.rows.iter().zip(raw) {
            if in_validation(&row.text) && !exclude.contains(&dedupe_key(&row.text)) {
                logits.push(z);
                positive.push(row.injection);
                used[k].1 += 1;
            }
        }
    }
    let (scale, shift) = platt_scaling(&logits, &positive)
        .ok_or("validation needs both classes, ranked the right way round, to calibrate")?;
    let head = head.calibrated(scale, shift).map_err(|e| e.to_string())?;
    let scores: Vec<f32> = logits
        .iter()
        .map(|&z| 1.0 / (1.0 + (-(scale * z + shift)).exp()))
        .collect();
    let auc = roc_auc(&scores, &positive).ok_or("validation needs both classes")?;
    let low = choose_threshold(&scores, &positive, settings.max_fpr_low)
        .ok_or("validation needs both classes")?;
    let high = choose_threshold(&scores, &positive, settings.max_fpr_high)
        .ok_or("validation needs both classes")?;
    Ok(Fitted {
        head,
        calibration: (scale, shift),
        low,
        high,
        auc,
        used,
    })
}

/// Reads and embeds every source; progress goes to stderr.
pub fn embed_sources(
    specs: &[SourceSpec],
    encoder: &SentenceEncoder,
    settings: &FitSettings,
    cache_dir: Option<&std::path::Path>,
    model: &str,
) -> Result<Vec<EmbeddedSource>, String> {
    specs
        .iter()
        .map(|spec| {
            let source = Source::read(spec)?;
            eprintln!(
                "guard: source {}: {} rows ({} injections) from {} file(s)",
                source.name,
                source.rows.len(),
                source.positives(),
                source.files.len()
            );
            EmbeddedSource::embed(encoder, source, settings, cache_dir, model)
        })
        .collect()
}

/// Runs the job: writes `<out>.safetensors` and `<out>.json`.
pub fn run(job: &SourcesJob) -> Result<GuardHeadMeta, String> {
    let started = Instant::now();
    let encoder = SentenceEncoder::load(&job.encoder_dir)
        .map_err(|e| format!("cannot load the encoder {}: {e}", job.encoder_dir.display()))?;
    let sources = embed_sources(
        &job.sources,
        &encoder,
        &job.settings,
        job.embedding_cache.as_deref(),
        &job.embedding_model,
    )?;
    let fitted = fit_on_sources(&sources, None, &HashSet::new(), &job.settings)?;
    eprintln!(
        "guard train: validation AUC {:.4}; t_low {:.4} (recall {:.4}, FPR {:.4}), t_high {:.4} (recall {:.4}, FPR {:.4})",
        fitted.auc,
        fitted.low.threshold,
        fitted.low.recall,
        fitted.low.false_positive_rate,
        fitted.high.threshold,
        fitted.high.recall,
        fitted.high.false_positive_rate
    );
    let head_path = job.out.with_extension("safetensors");
    if let Some(parent) = head_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    fitted.head.save(&head_path).map_err(|e| e.to_string())?;
    let records = sources
        .iter()
        .zip(&fitted.used)
        .map(|(s, &(fit_rows, validation_rows))| SourceRecord {
            name: s.source.name.clone(),
            files: s
                .source
                .files
                .iter()
                .map(|(path, data)| data_file(path, data))
                .collect(),
            fit_rows,
            validation_rows,
        })
        .collect();
    let kinds: Vec<&str> = job.settings.augment.iter().map(|k| k.name()).collect();
    let meta = GuardHeadMeta {
        format: HEAD_FORMAT.into(),
        labels: vec![PROMPT_INJECTION.into()],
        threshold: fitted.high.threshold,
        t_low: Some(fitted.low.threshold),
        embedding_model: job.embedding_model.clone(),
        embedding_dim: encoder.dim(),
        long_text: LONG_TEXT_POLICY.into(),
        train: None,
        validation: None,
        sources: records,
        augmentation: (!kinds.is_empty()).then(|| kinds.join(",")),
        calibration: Some([fitted.calibration.0, fitted.calibration.1]),
        trainer: job.settings.config,
        command: job.command.clone(),
        figures: ValidationFigures {
            recall: fitted.high.recall,
            false_positive_rate: fitted.high.false_positive_rate,
            auc: fitted.auc,
            max_false_positive_rate: job.settings.max_fpr_high,
        },
        train_seconds: started.elapsed().as_secs_f64(),
    };
    let meta_path = GuardHeadMeta::path_for(&head_path);
    meta.save(&meta_path).map_err(|e| e.to_string())?;
    eprintln!(
        "guard train: wrote {} and {} in {:.1} s",
        head_path.display(),
        meta_path.display(),
        meta.train_seconds
    );
    Ok(meta)
}
