//! In-process encoders: sentence embeddings ([`SentenceEncoder`]) over a
//! BERT-family encoder ([`bert`]), and sequence classification
//! ([`SequenceClassifier`]) over BERT or DeBERTa-v2/v3 ([`deberta`], chosen
//! by `architectures` in config.json), loaded from a Hugging Face /
//! sentence-transformers folder.
//!
//! Both take token ids, not text: the caller tokenises with
//! [`SentenceEncoder::tokenizer`] (`Tokenizer::encode_with_special_tokens`,
//! which adds `[CLS]`/`[SEP]` and never pads or truncates), so a batching
//! pool in the runtime can mix inputs of any length. Design decision: the
//! pooling and normalisation that sentence-transformers keeps in side files
//! (`1_Pooling/config.json`, `modules.json`) are read here and applied inside
//! `embed`, so every caller gets the model's real embedding and nobody can
//! forget the normalisation or average over padding.

pub mod bert;
pub mod deberta;

use std::path::Path;
use std::sync::Arc;

use sluice_kernels::WeightDType;

use crate::hf::SafetensorsFiles;
use crate::{ModelError, Tokenizer};
use bert::{Bert, BertConfig, Linear};
use deberta::{Deberta, DebertaConfig};

/// How token states become one vector (sentence-transformers `Pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Average over the input's tokens (padding never counts).
    Mean,
    /// The first token's (`[CLS]`) state.
    Cls,
}

/// Knobs of loading an encoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncoderLoadOptions {
    /// Re-pack the linear layers' weights at load; `None` keeps the
    /// checkpoint's format. Measured on all-MiniLM-L6-v2: `Q8_0` (int8
    /// activations) moves components by up to ~3e-3, outside the 1e-3
    /// golden tolerance, so the served default stays f32.
    pub quantize: Option<WeightDType>,
}

fn read_json(path: &Path) -> Result<serde_json::Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))
}

fn load_tokenizer(dir: &Path) -> Result<Arc<Tokenizer>, ModelError> {
    let config = dir.join("tokenizer_config.json");
    let config = config.is_file().then_some(config);
    Ok(Arc::new(Tokenizer::from_hf_files(
        &dir.join("tokenizer.json"),
        config.as_deref(),
    )?))
}

/// `""` when tensors sit at the top level (sentence-transformers exports),
/// `"bert."` when under a task model (`BertForSequenceClassification`).
fn bert_prefix(st: &SafetensorsFiles) -> &'static str {
    if st
        .names()
        .any(|n| n == "bert.embeddings.word_embeddings.weight")
    {
        "bert."
    } else {
        ""
    }
}

/// A BERT-family encoder with sentence-transformers pooling: text in,
/// one embedding out.
pub struct SentenceEncoder {
    bert: Bert,
    tokenizer: Arc<Tokenizer>,
    pooling: Pooling,
    normalize: bool,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("dim", &self.dim())
            .field("max_len", &self.max_len())
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .finish_non_exhaustive()
    }
}

impl SentenceEncoder {
    /// A sentence-transformers / HF folder: config.json, model.safetensors, tokenizer.json,
    /// 1_Pooling/config.json (mean or CLS; absent → mean), modules.json (Normalize present → L2-normalise).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        Self::load_with(dir, EncoderLoadOptions::default())
    }

    /// [`Self::load`] with load-time knobs.
    pub fn load_with(dir: &Path, options: EncoderLoadOptions) -> Result<Self, ModelError> {
        let config = read_json(&dir.join("config.json"))?;
        let cfg = BertConfig::from_json(&config)?;
        let st = SafetensorsFiles::open_folder(dir)?;
        let bert = Bert::load(&st, cfg, bert_prefix(&st), options.quantize)?;
        let tokenizer = load_tokenizer(dir)?;
        let pooling_path = dir.join("1_Pooling/config.json");
        let pooling = if pooling_path.is_file() {
            let p = read_json(&pooling_path)?;
            let flag = |k: &str| p.get(k).and_then(serde_json::Value::as_bool) == Some(true);
            if flag("pooling_mode_cls_token") {
                Pooling::Cls
            } else if flag("pooling_mode_mean_tokens") {
                Pooling::Mean
            } else {
                return Err(ModelError::Unsupported(format!(
                    "{}: only mean and CLS pooling are implemented",
                    pooling_path.display()
                )));
            }
        } else {
            Pooling::Mean
        };
        let modules_path = dir.join("modules.json");
        let normalize = if modules_path.is_file() {
            let modules = read_json(&modules_path)?;
            modules.as_array().is_some_and(|list| {
                list.iter().any(|m| {
                    m.get("type")
                        .and_then(serde_json::Value::as_str)
                        .is_some_and(|t| t.ends_with(".Normalize"))
                })
            })
        } else {
            false
        };
        Ok(Self {
            bert,
            tokenizer,
            pooling,
            normalize,
        })
    }

    /// The model's tokenizer; padding and truncation are off.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.bert.config().hidden
    }

    /// Longest input in tokens (`max_position_embeddings`).
    pub fn max_len(&self) -> usize {
        self.bert.config().max_position_embeddings
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether embeddings come out L2-normalised (sentence-transformers `Normalize`).
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// One pooled embedding per input; inputs of different lengths run as one padded batch with an attention mask.
    ///
    /// (Packed rather than padded: see [`bert`]. The result is the same.)
    pub fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let (states, offsets) = self.bert.forward(batch)?;
        let h = self.dim();
        let mut out = Vec::with_capacity(batch.len());
        for w in offsets.windows(2) {
            let (start, end) = (w[0], w[1]);
            let mut pooled = match self.pooling {
                Pooling::Cls => states[start * h..(start + 1) * h].to_vec(),
                Pooling::Mean => {
                    let mut acc = vec![0.0f32; h];
                    for row in states[start * h..end * h].chunks_exact(h) {
                        sluice_kernels::ops::add_assign(&mut acc, row);
                    }
                    let n = (end - start) as f32;
                    acc.iter_mut().for_each(|v| *v /= n);
                    acc
                }
            };
            if self.normalize {
                l2_normalize(&mut pooled);
            }
            out.push(pooled);
        }
        Ok(out)
    }
}

/// Scales `v` to unit length (sentence-transformers clamps the norm at 1e-12).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// The activation after a classifier's pooler dense layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolerActivation {
    /// BERT's pooler.
    Tanh,
    /// DeBERTa's `ContextPooler` default (`pooler_hidden_act = "gelu"`, exact erf form).
    Gelu,
}

/// The encoders [`SequenceClassifier`] reads, by `architectures[0]`.
enum ClassifierBody {
    /// `BertForSequenceClassification`.
    Bert(Bert),
    /// `DebertaV2ForSequenceClassification` (DeBERTa-v2/v3, Prompt Guard 2).
    DebertaV2(Deberta),
}

impl ClassifierBody {
    /// The first (`[CLS]`) token's last hidden state of every input, packed `[batch, hidden]`.
    fn first_token_states(&self, batch: &[&[u32]]) -> Result<Vec<f32>, ModelError> {
        let ((states, offsets), h) = match self {
            Self::Bert(bert) => (bert.forward(batch)?, bert.config().hidden),
            Self::DebertaV2(deberta) => (deberta.forward(batch)?, deberta.config().hidden),
        };
        Ok(offsets[..batch.len()]
            .iter()
            .flat_map(|&start| states[start * h..(start + 1) * h].iter().copied())
            .collect())
    }
}

/// Both architectures' head: `classifier(activation(pooler(cls)))`.
struct ClassifierHead {
    pooler: Linear,
    activation: PoolerActivation,
    classifier: Linear,
}

impl ClassifierHead {
    fn load(
        st: &SafetensorsFiles,
        pooler: &str,
        activation: PoolerActivation,
        hidden: usize,
        quantize: Option<WeightDType>,
    ) -> Result<Self, ModelError> {
        let pooler_dense = Linear::load(st, pooler, quantize)?;
        // The head is tiny and decides the verdict: it stays in the checkpoint's format.
        let classifier = Linear::load(st, "classifier", None)?;
        if (pooler_dense.out_features(), pooler_dense.in_features()) != (hidden, hidden)
            || classifier.in_features() != hidden
        {
            return Err(ModelError::Format(format!(
                "{pooler}.weight is [{}, {}] and classifier.weight has {} inputs; \
                 hidden_size is {hidden}",
                pooler_dense.out_features(),
                pooler_dense.in_features(),
                classifier.in_features()
            )));
        }
        Ok(Self {
            pooler: pooler_dense,
            activation,
            classifier,
        })
    }

    fn logits(&self, cls: &[f32], m: usize) -> Vec<f32> {
        let mut pooled = self.pooler.forward(cls, m);
        match self.activation {
            PoolerActivation::Tanh => pooled.iter_mut().for_each(|v| *v = v.tanh()),
            PoolerActivation::Gelu => bert::gelu(&mut pooled),
        }
        self.classifier.forward(&pooled, m)
    }
}

/// A Hugging Face sequence classifier: token ids in, label probabilities out.
pub struct SequenceClassifier {
    body: ClassifierBody,
    head: ClassifierHead,
    tokenizer: Arc<Tokenizer>,
    labels: Vec<String>,
    max_len: usize,
}

impl std::fmt::Debug for SequenceClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let architecture = match self.body {
            ClassifierBody::Bert(_) => "BertForSequenceClassification",
            ClassifierBody::DebertaV2(_) => "DebertaV2ForSequenceClassification",
        };
        f.debug_struct("SequenceClassifier")
            .field("architecture", &architecture)
            .field("labels", &self.labels)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

/// `id2label` in id order; `LABEL_i` for ids it does not name.
fn labels_from_config(config: &serde_json::Value, n: usize) -> Result<Vec<String>, ModelError> {
    let mut labels: Vec<String> = (0..n).map(|i| format!("LABEL_{i}")).collect();
    if let Some(map) = config
        .get("id2label")
        .and_then(serde_json::Value::as_object)
    {
        for (id, label) in map {
            let i: usize = id.parse().map_err(|_| {
                ModelError::Config(format!("id2label key {id:?} is not an integer"))
            })?;
            let slot = labels.get_mut(i).ok_or_else(|| {
                ModelError::Config(format!(
                    "id2label names id {i}, but the head has {n} outputs"
                ))
            })?;
            *slot = label.as_str().unwrap_or_default().to_string();
        }
    }
    Ok(labels)
}

impl SequenceClassifier {
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        Self::load_with(dir, EncoderLoadOptions::default())
    }

    /// [`Self::load`] with load-time knobs.
    pub fn load_with(dir: &Path, options: EncoderLoadOptions) -> Result<Self, ModelError> {
        let config = read_json(&dir.join("config.json"))?;
        let architecture = config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string();
        let st = SafetensorsFiles::open_folder(dir)?;
        let quantize = options.quantize;
        let (body, head, max_len) = match architecture.as_str() {
            "BertForSequenceClassification" => {
                let bert = Bert::load(&st, BertConfig::from_json(&config)?, "bert.", quantize)?;
                let (hidden, max_len) =
                    (bert.config().hidden, bert.config().max_position_embeddings);
                let head = ClassifierHead::load(
                    &st,
                    "bert.pooler.dense",
                    PoolerActivation::Tanh,
                    hidden,
                    quantize,
                )?;
                (ClassifierBody::Bert(bert), head, max_len)
            }
            "DebertaV2ForSequenceClassification" => {
                let cfg = DebertaConfig::from_json(&config)?;
                let activation = cfg.pooler_activation;
                let deberta = Deberta::load(&st, cfg, "deberta.", quantize)?;
                let (hidden, max_len) = (
                    deberta.config().hidden,
                    deberta.config().max_position_embeddings,
                );
                let head = ClassifierHead::load(&st, "pooler.dense", activation, hidden, quantize)?;
                (ClassifierBody::DebertaV2(deberta), head, max_len)
            }
            other => {
                return Err(ModelError::Unsupported(format!(
                    "sequence classifier architecture {other:?}; Sluice reads \
                     BertForSequenceClassification and DebertaV2ForSequenceClassification"
                )))
            }
        };
        let outputs = head.classifier.out_features();
        if outputs == 0 {
            return Err(ModelError::Format(
                "classifier.weight has no rows: the head names no labels".into(),
            ));
        }
        let labels = labels_from_config(&config, outputs)?;
        Ok(Self {
            body,
            head,
            tokenizer: load_tokenizer(dir)?,
            labels,
            max_len,
        })
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// From config.json `id2label`, in id order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Softmax probabilities per input, in label order.
    pub fn classify(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let cls = self.body.first_token_states(batch)?;
        let logits = self.head.logits(&cls, batch.len());
        Ok(logits
            .chunks_exact(self.labels.len())
            .map(|row| {
                let mut p = row.to_vec();
                bert::softmax_exact(&mut p);
                p
            })
            .collect())
    }
}
