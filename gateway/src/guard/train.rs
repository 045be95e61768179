//! `sluice guard train`: embed the S-Labs train and validation splits with
//! the shared sentence encoder, fit a head on train, choose its threshold on
//! validation, and write the head with its metadata. Test splits are never
//! read.
//!
//! Design decision: training runs the encoder directly
//! (`SentenceEncoder::embed` in batches of texts sorted by length), not
//! through the serving pool: it is a batch job with no latency to protect,
//! and sorted batches waste no work on mixed lengths. Embeddings can be
//! cached on disk keyed by the CSV's sha256, so trying another head shape
//! costs seconds, not another encoder pass over 13k texts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sluice_models::guard::metrics::{choose_threshold, roc_auc};
use sluice_models::guard::train::{fit, Examples, TrainConfig};
use sluice_models::guard::{
    DataFile, GuardHead, GuardHeadMeta, ValidationFigures, HEAD_FORMAT, PROMPT_INJECTION,
};
use sluice_models::SentenceEncoder;

use super::dataset::{read_labelled_csv, Dataset};
use super::{segments, windows, LONG_TEXT_POLICY};

/// Texts per encoder call while training.
const EMBED_BATCH: usize = 32;

/// What `sluice guard train` was asked to do.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub train_csv: PathBuf,
    pub validation_csv: PathBuf,
    /// A sentence-transformers folder (all-MiniLM-L6-v2 by default).
    pub encoder_dir: PathBuf,
    /// The id written to the metadata; the serving encoder must match it.
    pub embedding_model: String,
    /// `<out>.safetensors`; the metadata goes to `<out>.json`.
    pub out: PathBuf,
    pub config: TrainConfig,
    pub max_false_positive_rate: f64,
    /// Where embeddings are cached between runs; `None` recomputes them.
    pub embedding_cache: Option<PathBuf>,
    /// The command line, recorded in the metadata.
    pub command: String,
}

/// Runs the job; progress goes to stderr.
pub fn run(job: &TrainJob) -> Result<GuardHeadMeta, String> {
    let started = Instant::now();
    let train = read_labelled_csv(&job.train_csv)?;
    let validation = read_labelled_csv(&job.validation_csv)?;
    eprintln!(
        "guard train: {} train rows ({} injections), {} validation rows ({} injections)",
        train.rows.len(),
        train.positives(),
        validation.rows.len(),
        validation.positives()
    );
    let encoder = SentenceEncoder::load(&job.encoder_dir)
        .map_err(|e| format!("cannot load the encoder {}: {e}", job.encoder_dir.display()))?;
    let dim = encoder.dim();

    // Training sees each text's first window; validation scores every
    // piece (windows, sentence segments) and takes the max, as serving does.
    let train_embeddings = embed_dataset(&encoder, &train, false, job, "train")?;
    let validation_embeddings = embed_dataset(&encoder, &validation, true, job, "validation")?;

    let labels: Vec<bool> = train.rows.iter().map(|r| r.injection).collect();
    let fit_started = Instant::now();
    let head = fit(
        Examples {
            features: &train_embeddings.features,
            dim,
            positive: &labels,
        },
        &job.config,
    )
    .map_err(|e| format!("fitting the head: {e}"))?;
    eprintln!(
        "guard train: fitted in {:.1} s",
        fit_started.elapsed().as_secs_f64()
    );

    let scores = validation_scores(&head, &validation_embeddings, dim)?;
    let positive: Vec<bool> = validation.rows.iter().map(|r| r.injection).collect();
    let auc = roc_auc(&scores, &positive).ok_or("validation needs both classes")?;
    let choice = choose_threshold(&scores, &positive, job.max_false_positive_rate)
        .ok_or("validation needs both classes")?;
    let train_scores: Vec<f32> = train_embeddings
        .features
        .chunks_exact(dim)
        .map(|x| head.score(x).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let train_auc = roc_auc(&train_scores, &labels).unwrap_or(f64::NAN);
    eprintln!(
        "guard train: train AUC {train_auc:.4}; validation AUC {auc:.4}, threshold {:.4}: recall {:.4} at FPR {:.4} (bound {})",
        choice.threshold, choice.recall, choice.false_positive_rate, job.max_false_positive_rate
    );

    let head_path = job.out.with_extension("safetensors");
    if let Some(parent) = head_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    head.save(&head_path).map_err(|e| e.to_string())?;
    let meta = GuardHeadMeta {
        format: HEAD_FORMAT.into(),
        labels: vec![PROMPT_INJECTION.into()],
        threshold: choice.threshold,
        embedding_model: job.embedding_model.clone(),
        embedding_dim: dim,
        long_text: LONG_TEXT_POLICY.into(),
        t_low: None,
        train: Some(data_file(&job.train_csv, &train)),
        validation: Some(data_file(&job.validation_csv, &validation)),
        sources: Vec::new(),
        augmentation: None,
        calibration: None,
        trainer: job.config,
        command: job.command.clone(),
        figures: ValidationFigures {
            recall: choice.recall,
            false_positive_rate: choice.false_positive_rate,
            auc,
            max_false_positive_rate: job.max_false_positive_rate,
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

/// A path as recorded in metadata: relative to the models directory when
/// it lies inside it (`$SLUICE_MODELS_DIR/...`), else to the repository
/// when it lies there (the committed hand-written sets), so the record
/// does not carry one machine's home.
pub(super) fn data_file(path: &Path, data: &Dataset) -> DataFile {
    let models = sluice_models::models_dir();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let shown = if let Ok(rel) = path.strip_prefix(&models) {
        format!("$SLUICE_MODELS_DIR/{}", rel.display())
    } else if let Ok(rel) = canonical(path).strip_prefix(canonical(&repo)) {
        rel.display().to_string()
    } else {
        path.display().to_string()
    };
    DataFile {
        path: shown,
        sha256: data.sha256.clone(),
        rows: data.rows.len(),
        positives: data.positives(),
    }
}

/// Where a path recorded by [`data_file`] lies on this machine.
pub fn recorded_path(shown: &str) -> std::path::PathBuf {
    match shown.strip_prefix("$SLUICE_MODELS_DIR/") {
        Some(rel) => sluice_models::models_dir().join(rel),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(shown),
    }
}

/// Embeddings of a dataset: one row per window, `owner[i]` the text each
/// window came from.
pub struct WindowEmbeddings {
    pub features: Vec<f32>,
    pub owner: Vec<usize>,
}

fn validation_scores(
    head: &GuardHead,
    embedded: &WindowEmbeddings,
    dim: usize,
) -> Result<Vec<f32>, String> {
    let texts = embedded.owner.last().map_or(0, |&last| last + 1);
    let mut scores = vec![f32::NEG_INFINITY; texts];
    for (x, &owner) in embedded.features.chunks_exact(dim).zip(&embedded.owner) {
        let s = head.score(x).map_err(|e| e.to_string())?;
        scores[owner] = scores[owner].max(s);
    }
    Ok(scores)
}

fn embed_dataset(
    encoder: &SentenceEncoder,
    data: &Dataset,
    all_windows: bool,
    job: &TrainJob,
    name: &str,
) -> Result<WindowEmbeddings, String> {
    let texts: Vec<&str> = data.rows.iter().map(|r| r.text.as_str()).collect();
    let cache = EmbeddingCache {
        dir: job.embedding_cache.as_deref(),
        key: &data.sha256[..16],
        model: &job.embedding_model,
    };
    let pieces = if all_windows {
        Pieces::Segments
    } else {
        Pieces::First
    };
    embed_texts(encoder, &texts, pieces, &cache, name)
}

/// Where embeddings of one text list are kept between runs.
pub(super) struct EmbeddingCache<'a> {
    pub dir: Option<&'a Path>,
    /// Names the texts (a prefix of their file's or list's sha256).
    pub key: &'a str,
    pub model: &'a str,
}

/// Which pieces of a text are embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pieces {
    /// The whole text's first window (what training fits on).
    First,
    /// Every window of the whole text, no sentence segments: a lower bound
    /// of the segments-max score at a fraction of the encoder work.
    Windows,
    /// Every piece serving scores: the whole text's windows, then each
    /// sentence segment's.
    Segments,
}

/// Embeddings of `texts`, the `pieces` of each. Rows of one text are
/// contiguous and its first row is always the whole text's first window.
pub(super) fn embed_texts(
    encoder: &SentenceEncoder,
    texts: &[&str],
    pieces: Pieces,
    cache: &EmbeddingCache<'_>,
    name: &str,
) -> Result<WindowEmbeddings, String> {
    let dim = encoder.dim();
    let cache_file = cache.dir.map(|dir| {
        dir.join(format!(
            "{}-{}-{}.f32",
            cache.key,
            cache.model.replace('/', "_"),
            match pieces {
                Pieces::First => "first",
                Pieces::Windows => "windows",
                Pieces::Segments => "segments",
            }
        ))
    });
    let mut inputs: Vec<(usize, Vec<u32>)> = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let parts = if pieces == Pieces::Segments {
            segments(text)
        } else {
            vec![*text]
        };
        for piece in parts {
            let tokens = encoder
                .tokenizer()
                .encode_with_special_tokens(piece)
                .map_err(|e| format!("{name} row {}: {e}", i + 1))?;
            let mut ws = windows(&tokens, encoder.max_len());
            if pieces == Pieces::First {
                ws.truncate(1);
            }
            inputs.extend(ws.into_iter().map(|w| (i, w)));
        }
    }
    let owner: Vec<usize> = inputs.iter().map(|(i, _)| *i).collect();
    if let Some(path) = &cache_file {
        if let Ok(bytes) = std::fs::read(path) {
            if bytes.len() == inputs.len() * dim * 4 {
                eprintln!("guard train: {name}: embeddings from {}", path.display());
                let features = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                return Ok(WindowEmbeddings { features, owner });
            }
        }
    }

    // Sorted by length, a batch holds texts of similar length.
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&k| inputs[k].1.len());
    let mut features = vec![0.0f32; inputs.len() * dim];
    let started = Instant::now();
    let mut done = 0usize;
    let mut next_report = 1;
    for batch in order.chunks(EMBED_BATCH) {
        let tokens: Vec<&[u32]> = batch.iter().map(|&k| inputs[k].1.as_slice()).collect();
        let out = encoder
            .embed(&tokens)
            .map_err(|e| format!("embedding {name}: {e}"))?;
        for (&k, v) in batch.iter().zip(out) {
            features[k * dim..(k + 1) * dim].copy_from_slice(&v);
        }
        done += batch.len();
        while next_report <= 10 && done * 10 >= next_report * inputs.len() {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "guard train: {name}: embedded {done}/{} windows ({}%) in {secs:.1} s, {:.0}/s",
                inputs.len(),
                next_report * 10,
                done as f64 / secs.max(1e-9)
            );
            next_report += 1;
        }
    }
    if let Some(path) = &cache_file {
        let bytes: Vec<u8> = features.iter().flat_map(|x| x.to_le_bytes()).collect();
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, bytes));
        if let Err(e) = written {
            eprintln!(
                "guard train: cannot cache embeddings in {}: {e}",
                path.display()
            );
        }
    }
    Ok(WindowEmbeddings { features, owner })
}
