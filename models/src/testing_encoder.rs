//! Tiny random-weight BERT and DeBERTa-v2 checkpoints (safetensors +
//! config.json + tokenizer.json) written to disk, so encoder tests load them
//! through the real loaders. They test mechanics (packing, pooling, labels,
//! relative positions), not language.

use std::collections::BTreeMap;
use std::path::Path;

use crate::testing::Rng;
use crate::ModelError;

/// The tiny vocabulary: specials first, then a few lowercase words.
pub const TINY_BERT_VOCAB: [&str; 16] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran",
    "ignore", "all", "rules", "##s",
];
pub const TINY_BERT_HIDDEN: usize = 32;
pub const TINY_BERT_HEADS: usize = 4;
pub const TINY_BERT_FFN: usize = 64;
pub const TINY_BERT_LAYERS: usize = 2;
pub const TINY_BERT_MAX_POS: usize = 16;

/// What to write besides the encoder.
#[derive(Debug, Clone)]
pub enum TinyBertHead {
    /// A sentence-transformers folder; `cls` picks CLS pooling, `normalize` adds Normalize.
    Sentence { cls: bool, normalize: bool },
    /// `BertForSequenceClassification` with these labels (id order).
    Classifier { labels: Vec<String> },
}

/// Every tensor written, by name: (shape, values).
pub type TinyTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Writes the checkpoint into `dir` and returns its tensors (for reference
/// implementations in tests).
pub fn write_tiny_bert(
    dir: &Path,
    head: &TinyBertHead,
    seed: u64,
) -> Result<TinyTensors, ModelError> {
    let (h, f, v) = (TINY_BERT_HIDDEN, TINY_BERT_FFN, TINY_BERT_VOCAB.len());
    let mut rng = Rng::seeded(seed);
    let mut tensors = TinyTensors::new();
    let prefix = match head {
        TinyBertHead::Sentence { .. } => "",
        TinyBertHead::Classifier { .. } => "bert.",
    };
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let values = (0..n).map(|_| offset + rng.next() * scale).collect();
        tensors.insert(name, (shape, values));
    };
    add(
        format!("{prefix}embeddings.word_embeddings.weight"),
        vec![v, h],
        0.5,
        0.0,
    );
    add(
        format!("{prefix}embeddings.position_embeddings.weight"),
        vec![TINY_BERT_MAX_POS, h],
        0.5,
        0.0,
    );
    add(
        format!("{prefix}embeddings.token_type_embeddings.weight"),
        vec![2, h],
        0.5,
        0.0,
    );
    add(
        format!("{prefix}embeddings.LayerNorm.weight"),
        vec![h],
        0.1,
        1.0,
    );
    add(
        format!("{prefix}embeddings.LayerNorm.bias"),
        vec![h],
        0.1,
        0.0,
    );
    for i in 0..TINY_BERT_LAYERS {
        let p = format!("{prefix}encoder.layer.{i}");
        for (leaf, rows, cols) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", f, h),
            ("output.dense", h, f),
        ] {
            add(format!("{p}.{leaf}.weight"), vec![rows, cols], 0.3, 0.0);
            add(format!("{p}.{leaf}.bias"), vec![rows], 0.1, 0.0);
        }
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            add(format!("{p}.{ln}.weight"), vec![h], 0.1, 1.0);
            add(format!("{p}.{ln}.bias"), vec![h], 0.1, 0.0);
        }
    }
    let mut config = serde_json::json!({
        "model_type": "bert",
        "vocab_size": v,
        "hidden_size": h,
        "num_hidden_layers": TINY_BERT_LAYERS,
        "num_attention_heads": TINY_BERT_HEADS,
        "intermediate_size": f,
        "max_position_embeddings": TINY_BERT_MAX_POS,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
    });
    match head {
        TinyBertHead::Sentence { cls, normalize } => {
            config["architectures"] = serde_json::json!(["BertModel"]);
            let pooling = serde_json::json!({
                "word_embedding_dimension": h,
                "pooling_mode_cls_token": cls,
                "pooling_mode_mean_tokens": !cls,
            });
            write_json(&dir.join("1_Pooling/config.json"), &pooling)?;
            let mut modules = vec![
                serde_json::json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
            ];
            if *normalize {
                modules.push(serde_json::json!({"idx": 1, "name": "1", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
            }
            write_json(
                &dir.join("modules.json"),
                &serde_json::Value::Array(modules),
            )?;
        }
        TinyBertHead::Classifier { labels } => {
            add("bert.pooler.dense.weight".into(), vec![h, h], 0.3, 0.0);
            add("bert.pooler.dense.bias".into(), vec![h], 0.1, 0.0);
            add("classifier.weight".into(), vec![labels.len(), h], 0.5, 0.0);
            add("classifier.bias".into(), vec![labels.len()], 0.1, 0.0);
            config["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
            // Written highest id first: the loader must order by id, not by key order.
            let id2label: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .enumerate()
                .rev()
                .map(|(i, l)| (i.to_string(), serde_json::Value::String(l.clone())))
                .collect();
            config["id2label"] = serde_json::Value::Object(id2label);
        }
    }
    write_json(&dir.join("config.json"), &config)?;
    write_json(&dir.join("tokenizer.json"), &tiny_bert_tokenizer())?;
    write_safetensors(&dir.join("model.safetensors"), &tensors)?;
    Ok(tensors)
}

/// Sizes of a written DeBERTa checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderDims {
    pub hidden: usize,
    pub heads: usize,
    pub layers: usize,
    pub intermediate: usize,
    pub max_position_embeddings: usize,
}

impl EncoderDims {
    /// The `TINY_BERT_*` sizes the reference tests use.
    pub const TINY: Self = Self {
        hidden: TINY_BERT_HIDDEN,
        heads: TINY_BERT_HEADS,
        layers: TINY_BERT_LAYERS,
        intermediate: TINY_BERT_FFN,
        max_position_embeddings: TINY_BERT_MAX_POS,
    };
    /// DeBERTa-v3-base / Prompt Guard 2 86M (its 251k-token vocabulary aside).
    pub const BASE: Self = Self {
        hidden: 768,
        heads: 12,
        layers: 12,
        intermediate: 3072,
        max_position_embeddings: 512,
    };
}

/// The shape of a random `DebertaV2ForSequenceClassification` checkpoint;
/// the vocabulary is always [`TINY_BERT_VOCAB`].
#[derive(Debug, Clone)]
pub struct TinyDeberta {
    /// Sizes ([`EncoderDims::TINY`] for the reference tests).
    pub dims: EncoderDims,
    /// `id2label`, in id order.
    pub labels: Vec<String>,
    /// `position_buckets`; 0 writes -1 (plain clamped distances).
    pub position_buckets: usize,
    /// `max_relative_positions` as written (-1 means `max_position_embeddings`).
    pub max_relative_positions: i64,
    /// `share_att_key`; false also writes `pos_key_proj`/`pos_query_proj`.
    pub share_att_key: bool,
    /// `position_biased_input`; true also writes absolute position embeddings.
    pub position_biased_input: bool,
    /// `type_vocab_size`; above 0 also writes token-type embeddings.
    pub type_vocab_size: usize,
}

impl TinyDeberta {
    /// Prompt Guard 2's shape (DeBERTa-v3) scaled down: log buckets that
    /// the tiny inputs reach past (8 buckets, 16 positions), shared
    /// attention keys, no absolute positions, no token types.
    pub fn v3_like(labels: Vec<String>) -> Self {
        Self {
            dims: EncoderDims::TINY,
            labels,
            position_buckets: 8,
            max_relative_positions: -1,
            share_att_key: true,
            position_biased_input: false,
            type_vocab_size: 0,
        }
    }

    /// Rows of `rel_embeddings` either side of zero (HF's `pos_ebd_size`).
    pub fn attention_span(&self) -> usize {
        if self.position_buckets > 0 {
            self.position_buckets
        } else if self.max_relative_positions < 1 {
            self.dims.max_position_embeddings
        } else {
            self.max_relative_positions as usize
        }
    }
}

/// Writes a tiny DeBERTa-v2 sequence classifier into `dir` (tensor names
/// as in HF: `deberta.…`, `pooler.dense`, `classifier`; the tiny WordPiece
/// tokenizer) and returns its tensors.
pub fn write_tiny_deberta(
    dir: &Path,
    shape: &TinyDeberta,
    seed: u64,
) -> Result<TinyTensors, ModelError> {
    let dims = shape.dims;
    let (h, f, v) = (dims.hidden, dims.intermediate, TINY_BERT_VOCAB.len());
    let max_pos = dims.max_position_embeddings;
    let mut rng = Rng::seeded(seed);
    let mut tensors = TinyTensors::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let values = (0..n).map(|_| offset + rng.next() * scale).collect();
        tensors.insert(name, (shape, values));
    };
    let e = "deberta.embeddings";
    add(format!("{e}.word_embeddings.weight"), vec![v, h], 0.5, 0.0);
    if shape.position_biased_input {
        add(
            format!("{e}.position_embeddings.weight"),
            vec![max_pos, h],
            0.5,
            0.0,
        );
    }
    if shape.type_vocab_size > 0 {
        add(
            format!("{e}.token_type_embeddings.weight"),
            vec![shape.type_vocab_size, h],
            0.5,
            0.0,
        );
    }
    add(format!("{e}.LayerNorm.weight"), vec![h], 0.1, 1.0);
    add(format!("{e}.LayerNorm.bias"), vec![h], 0.1, 0.0);
    // Larger than the content weights so the positional terms visibly move
    // the scores: a wrong bucket or a swapped c2p/p2c index fails the test.
    add(
        "deberta.encoder.rel_embeddings.weight".into(),
        vec![2 * shape.attention_span(), h],
        1.0,
        0.0,
    );
    add("deberta.encoder.LayerNorm.weight".into(), vec![h], 0.1, 1.0);
    add("deberta.encoder.LayerNorm.bias".into(), vec![h], 0.1, 0.0);
    for i in 0..dims.layers {
        let p = format!("deberta.encoder.layer.{i}");
        let mut linears = vec![
            ("attention.self.query_proj", h, h),
            ("attention.self.key_proj", h, h),
            ("attention.self.value_proj", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", f, h),
            ("output.dense", h, f),
        ];
        if !shape.share_att_key {
            linears.push(("attention.self.pos_key_proj", h, h));
            linears.push(("attention.self.pos_query_proj", h, h));
        }
        for (leaf, rows, cols) in linears {
            add(format!("{p}.{leaf}.weight"), vec![rows, cols], 0.3, 0.0);
            add(format!("{p}.{leaf}.bias"), vec![rows], 0.1, 0.0);
        }
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            add(format!("{p}.{ln}.weight"), vec![h], 0.1, 1.0);
            add(format!("{p}.{ln}.bias"), vec![h], 0.1, 0.0);
        }
    }
    add("pooler.dense.weight".into(), vec![h, h], 0.3, 0.0);
    add("pooler.dense.bias".into(), vec![h], 0.1, 0.0);
    let n = shape.labels.len();
    add("classifier.weight".into(), vec![n, h], 0.5, 0.0);
    add("classifier.bias".into(), vec![n], 0.1, 0.0);
    // Written highest id first: the loader must order by id, not by key order.
    let id2label: serde_json::Map<String, serde_json::Value> = shape
        .labels
        .iter()
        .enumerate()
        .rev()
        .map(|(i, l)| (i.to_string(), serde_json::Value::String(l.clone())))
        .collect();
    let config = serde_json::json!({
        "architectures": ["DebertaV2ForSequenceClassification"],
        "model_type": "deberta-v2",
        "vocab_size": v,
        "hidden_size": h,
        "num_hidden_layers": dims.layers,
        "num_attention_heads": dims.heads,
        "intermediate_size": f,
        "max_position_embeddings": max_pos,
        "type_vocab_size": shape.type_vocab_size,
        "layer_norm_eps": 1e-7,
        "hidden_act": "gelu",
        "pooler_hidden_act": "gelu",
        "pooler_hidden_size": h,
        "relative_attention": true,
        "pos_att_type": ["p2c", "c2p"],
        "position_buckets": if shape.position_buckets > 0 { shape.position_buckets as i64 } else { -1 },
        "max_relative_positions": shape.max_relative_positions,
        "share_att_key": shape.share_att_key,
        "position_biased_input": shape.position_biased_input,
        "norm_rel_ebd": "layer_norm",
        "id2label": serde_json::Value::Object(id2label),
    });
    write_json(&dir.join("config.json"), &config)?;
    write_json(&dir.join("tokenizer.json"), &tiny_bert_tokenizer())?;
    write_safetensors(&dir.join("model.safetensors"), &tensors)?;
    Ok(tensors)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ModelError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    }
    std::fs::write(path, value.to_string()).map_err(|e| ModelError::io(path, e))
}

fn write_safetensors(path: &Path, tensors: &TinyTensors) -> Result<(), ModelError> {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let data = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            (name.clone(), shape.clone(), data)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::Format(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| ModelError::Format(format!("writing {}: {e}", path.display())))
}

/// A WordPiece `tokenizer.json` like bert-base-uncased's, over the tiny vocabulary.
fn tiny_bert_tokenizer() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = TINY_BERT_VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), serde_json::json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = TINY_BERT_VOCAB[..4]
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab}
    })
}
