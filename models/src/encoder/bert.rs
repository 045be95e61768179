//! The BERT encoder stack (embeddings, post-norm transformer layers with
//! GELU) shared by [`super::SentenceEncoder`] and the BERT flavour of
//! [`super::SequenceClassifier`].
//!
//! Design decision: a batch runs *packed*, not padded. The tokens of every
//! input are laid end to end into one `[total_tokens, hidden]` matrix, the
//! linear layers run once over all of it (so the weights are read once per
//! layer per batch), and attention runs per input over its own token range.
//! That is exactly a padded batch with an attention mask, minus the wasted
//! work on padding; and because the project's matmul kernels are
//! batch-invariant, an input's result is bit-identical alone or in a batch.

use rayon::prelude::*;
use sluice_kernels::attention::{bidirectional_attention, PagedKv};
use sluice_kernels::ops::exp_approx;
use sluice_kernels::{matmul, matmul_packed, Matrix, PackedMatrix, WeightDType};

use crate::hf::SafetensorsFiles;
use crate::ModelError;

/// `config.json` of a BERT-family model, resolved.
#[derive(Debug, Clone)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
}

impl BertConfig {
    pub fn from_json(v: &serde_json::Value) -> Result<Self, ModelError> {
        let get = |key: &str| required_usize(v, key);
        let hidden_act = v
            .get("hidden_act")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("gelu");
        if hidden_act != "gelu" {
            return Err(ModelError::Unsupported(format!(
                "hidden_act = {hidden_act:?}; the BERT encoder implements \"gelu\""
            )));
        }
        if let Some(kind) = v
            .get("position_embedding_type")
            .and_then(serde_json::Value::as_str)
        {
            if kind != "absolute" {
                return Err(ModelError::Unsupported(format!(
                    "position_embedding_type = {kind:?}; the BERT encoder implements \"absolute\""
                )));
            }
        }
        let cfg = Self {
            vocab_size: get("vocab_size")?,
            hidden: get("hidden_size")?,
            layers: get("num_hidden_layers")?,
            heads: get("num_attention_heads")?,
            intermediate: get("intermediate_size")?,
            max_position_embeddings: get("max_position_embeddings")?,
            type_vocab_size: v
                .get("type_vocab_size")
                .and_then(serde_json::Value::as_u64)
                .map_or(2, |n| n as usize),
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(serde_json::Value::as_f64)
                .map_or(1e-12, |e| e as f32),
        };
        if cfg.heads == 0 || !cfg.hidden.is_multiple_of(cfg.heads) {
            return Err(ModelError::Config(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden, cfg.heads
            )));
        }
        Ok(cfg)
    }
}

/// `config.json`'s integer `key`, which the model cannot do without.
pub(crate) fn required_usize(v: &serde_json::Value, key: &str) -> Result<usize, ModelError> {
    v.get(key)
        .and_then(serde_json::Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| ModelError::Config(format!("config.json has no integer `{key}`")))
}

/// A linear layer `y = x·Wᵀ + b`.
pub(crate) struct Linear {
    weight: LinearWeight,
    bias: Vec<f32>,
}

/// Float checkpoints are packed into panels once at load for the
/// outer-product kernel (every encoder matmul has all of a batch's tokens as
/// rows, which is what that kernel is for); weights requantised on request
/// keep their block format and the int8 kernels.
enum LinearWeight {
    Packed(PackedMatrix),
    Quantized(Matrix),
}

impl Linear {
    pub(crate) fn load(
        st: &SafetensorsFiles,
        prefix: &str,
        quantize: Option<WeightDType>,
    ) -> Result<Self, ModelError> {
        let weight = st.matrix(&format!("{prefix}.weight"))?;
        let weight = match quantize {
            Some(to) => LinearWeight::Quantized(weight.requantize(to)?),
            None => LinearWeight::Packed(PackedMatrix::from_matrix(&weight)),
        };
        let layer = Self {
            weight,
            bias: st.vector(&format!("{prefix}.bias"))?,
        };
        if layer.bias.len() != layer.out_features() {
            return Err(ModelError::Format(format!(
                "{prefix}.bias has {} values for {} outputs",
                layer.bias.len(),
                layer.out_features()
            )));
        }
        Ok(layer)
    }

    pub(crate) fn out_features(&self) -> usize {
        match &self.weight {
            LinearWeight::Packed(w) => w.rows(),
            LinearWeight::Quantized(w) => w.rows(),
        }
    }

    pub(crate) fn in_features(&self) -> usize {
        match &self.weight {
            LinearWeight::Packed(w) => w.cols(),
            LinearWeight::Quantized(w) => w.cols(),
        }
    }

    /// `m` rows of `x` in, `m` rows of `out_features` out.
    pub(crate) fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * self.out_features()];
        match &self.weight {
            LinearWeight::Packed(w) => matmul_packed(w, x, m, &mut out),
            LinearWeight::Quantized(w) => matmul(w, x, m, &mut out),
        }
        sluice_kernels::ops::add_bias(&mut out, &self.bias);
        out
    }
}

pub(crate) struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    pub(crate) fn load(st: &SafetensorsFiles, prefix: &str, eps: f32) -> Result<Self, ModelError> {
        // Checkpoints converted from TF-era BERT name them gamma/beta.
        let pick = |new: &str, old: &str| -> Result<Vec<f32>, ModelError> {
            st.vector(&format!("{prefix}.{new}"))
                .or_else(|_| st.vector(&format!("{prefix}.{old}")))
        };
        let (weight, bias) = (pick("weight", "gamma")?, pick("bias", "beta")?);
        if weight.len() != bias.len() {
            return Err(ModelError::Format(format!(
                "{prefix} has {} weights and {} biases",
                weight.len(),
                bias.len()
            )));
        }
        Ok(Self { weight, bias, eps })
    }

    /// How many values each normalised row has.
    pub(crate) fn width(&self) -> usize {
        self.weight.len()
    }

    pub(crate) fn forward(&self, x: &mut [f32]) {
        layer_norm(x, &self.weight, &self.bias, self.eps);
    }
}

/// LayerNorm of every `weight.len()`-wide row of `x`, in place.
pub(crate) fn layer_norm(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let dim = weight.len();
    for row in x.chunks_exact_mut(dim) {
        let mean = row.iter().sum::<f32>() / dim as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// Checks every input of a batch before any work: non-empty, at most
/// `max_len` tokens, ids inside a vocabulary of `vocab` tokens.
pub(crate) fn check_token_batch(
    batch: &[&[u32]],
    max_len: usize,
    vocab: usize,
) -> Result<(), ModelError> {
    for (i, ids) in batch.iter().enumerate() {
        if ids.is_empty() {
            return Err(ModelError::Unsupported(format!("input {i} has no tokens")));
        }
        if ids.len() > max_len {
            return Err(ModelError::Unsupported(format!(
                "input {i} has {} tokens; this encoder takes at most {max_len}",
                ids.len()
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::Tokenizer(format!(
                "input {i}: token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
    }
    Ok(())
}

/// Where each input's rows start in a packed batch, plus the total at the end.
pub(crate) fn packed_offsets(batch: &[&[u32]]) -> Vec<usize> {
    let mut offsets = Vec::with_capacity(batch.len() + 1);
    offsets.push(0);
    for ids in batch {
        offsets.push(offsets[offsets.len() - 1] + ids.len());
    }
    offsets
}

/// The exact (erf) GELU that BERT's `"gelu"` means, over a layer's whole
/// intermediate activation: split across the pool's threads like the
/// matmuls around it (it was a sixth of an encode on one thread).
pub(crate) fn gelu(x: &mut [f32]) {
    const CHUNK: usize = 8192;
    x.par_chunks_mut(CHUNK)
        .for_each(sluice_kernels::ops::gelu_erf);
}

struct BertLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    tail: LayerTail,
}

/// What follows attention in a post-norm layer, the same in BERT and
/// DeBERTa-v2: output projection, residual and LayerNorm, then the GELU
/// feed-forward, residual and LayerNorm.
pub(crate) struct LayerTail {
    pub(crate) attn_out: Linear,
    pub(crate) attn_norm: LayerNorm,
    pub(crate) intermediate: Linear,
    pub(crate) output: Linear,
    pub(crate) out_norm: LayerNorm,
}

impl LayerTail {
    /// `ctx` is the attention's output for the rows of `x`; the layer's
    /// output replaces `x`.
    pub(crate) fn forward(&self, ctx: &[f32], x: &mut [f32]) {
        let m = x.len() / self.attn_norm.width();
        let mut attn = self.attn_out.forward(ctx, m);
        sluice_kernels::ops::add_assign(&mut attn, x);
        self.attn_norm.forward(&mut attn);
        let mut inter = self.intermediate.forward(&attn, m);
        gelu(&mut inter);
        let mut out = self.output.forward(&inter, m);
        sluice_kernels::ops::add_assign(&mut out, &attn);
        self.out_norm.forward(&mut out);
        x.copy_from_slice(&out);
    }
}

/// Embeddings and encoder layers of a BERT model.
pub struct Bert {
    cfg: BertConfig,
    word: Matrix,
    position: Matrix,
    token_type: Vec<f32>,
    emb_norm: LayerNorm,
    layers: Vec<BertLayer>,
}

impl Bert {
    /// Loads from `st` with tensor names under `prefix` (`""` or `"bert."`).
    /// `quantize` re-packs the linear layers' weights at load.
    pub fn load(
        st: &SafetensorsFiles,
        cfg: BertConfig,
        prefix: &str,
        quantize: Option<WeightDType>,
    ) -> Result<Self, ModelError> {
        let eps = cfg.layer_norm_eps;
        let word = st.matrix(&format!("{prefix}embeddings.word_embeddings.weight"))?;
        let position = st.matrix(&format!("{prefix}embeddings.position_embeddings.weight"))?;
        let token_type = st.vector(&format!("{prefix}embeddings.token_type_embeddings.weight"))?;
        if word.cols() != cfg.hidden || position.cols() != cfg.hidden {
            return Err(ModelError::Format(format!(
                "embedding width {} / {} differs from hidden_size {}",
                word.cols(),
                position.cols(),
                cfg.hidden
            )));
        }
        if token_type.len() < cfg.hidden {
            return Err(ModelError::Format(
                "token_type_embeddings is smaller than one row".into(),
            ));
        }
        let emb_norm = LayerNorm::load(st, &format!("{prefix}embeddings.LayerNorm"), eps)?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("{prefix}encoder.layer.{i}");
            let layer = BertLayer {
                query: Linear::load(st, &format!("{p}.attention.self.query"), quantize)?,
                key: Linear::load(st, &format!("{p}.attention.self.key"), quantize)?,
                value: Linear::load(st, &format!("{p}.attention.self.value"), quantize)?,
                tail: LayerTail {
                    attn_out: Linear::load(st, &format!("{p}.attention.output.dense"), quantize)?,
                    attn_norm: LayerNorm::load(
                        st,
                        &format!("{p}.attention.output.LayerNorm"),
                        eps,
                    )?,
                    intermediate: Linear::load(st, &format!("{p}.intermediate.dense"), quantize)?,
                    output: Linear::load(st, &format!("{p}.output.dense"), quantize)?,
                    out_norm: LayerNorm::load(st, &format!("{p}.output.LayerNorm"), eps)?,
                },
            };
            if layer.tail.intermediate.out_features() != cfg.intermediate
                || layer.query.out_features() != cfg.hidden
            {
                return Err(ModelError::Format(format!(
                    "layer {i} shapes differ from config.json"
                )));
            }
            layers.push(layer);
        }
        // The smaller of the table and the config bounds the usable length.
        let cfg = BertConfig {
            max_position_embeddings: cfg.max_position_embeddings.min(position.rows()),
            ..cfg
        };
        Ok(Self {
            cfg,
            word,
            position,
            token_type,
            emb_norm,
            layers,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// Checks every input before any work: non-empty, within the position
    /// table, ids inside the vocabulary.
    pub fn check_batch(&self, batch: &[&[u32]]) -> Result<(), ModelError> {
        check_token_batch(batch, self.cfg.max_position_embeddings, self.word.rows())
    }

    /// The last layer's hidden states of every input, packed: input `i`'s
    /// tokens are rows `offsets[i]..offsets[i + 1]` of the returned matrix.
    pub fn forward(&self, batch: &[&[u32]]) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        self.check_batch(batch)?;
        let h = self.cfg.hidden;
        let offsets = packed_offsets(batch);
        let total = offsets[batch.len()];
        let mut x = vec![0.0f32; total * h];
        let mut pos_row = vec![0.0f32; h];
        let mut row = 0;
        for ids in batch {
            for (pos, &id) in ids.iter().enumerate() {
                let out = &mut x[row * h..(row + 1) * h];
                self.word.dequantize_row(id as usize, out);
                self.position.dequantize_row(pos, &mut pos_row);
                // Single-segment inputs: token type 0 throughout.
                for ((o, p), t) in out.iter_mut().zip(&pos_row).zip(&self.token_type[..h]) {
                    *o += p + t;
                }
                row += 1;
            }
        }
        self.emb_norm.forward(&mut x);
        for layer in &self.layers {
            self.layer_forward(layer, &mut x, &offsets);
        }
        Ok((x, offsets))
    }

    fn layer_forward(&self, layer: &BertLayer, x: &mut [f32], offsets: &[usize]) {
        let h = self.cfg.hidden;
        let m = x.len() / h;
        let q = layer.query.forward(x, m);
        let k = layer.key.forward(x, m);
        let v = layer.value.forward(x, m);
        let ctx = attention(&q, &k, &v, offsets, self.cfg.heads, h);
        layer.tail.forward(&ctx, x);
    }
}

/// Bidirectional multi-head attention within each input's token range
/// (the packed form of a padding mask). `q`, `k`, `v` are `[tokens, hidden]`.
fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    offsets: &[usize],
    heads: usize,
    hidden: usize,
) -> Vec<f32> {
    let hd = hidden / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut ctx = vec![0.0f32; offsets[offsets.len() - 1] * hidden];
    for span in offsets.windows(2) {
        let rows = span[0] * hidden..span[1] * hidden;
        // One input's keys and values as a single block of the kernels'
        // paged layout ([slot][head][head_dim] is exactly [token][hidden]).
        let kv = PagedKv {
            k: &k[rows.clone()],
            v: &v[rows.clone()],
            block_size: span[1] - span[0],
            n_kv_heads: heads,
            head_dim: hd,
        };
        let (q, out) = (&q[rows.clone()], &mut ctx[rows]);
        bidirectional_attention(q, span[1] - span[0], heads, &kv, &[0], scale, out);
    }
    ctx
}

/// Softmax with the kernels' `exp` (within 2 ulp of libm's, branch-free).
pub(crate) fn softmax_exact(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = exp_approx(*v - max);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_gives_zero_mean_unit_variance() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        layer_norm(&mut x, &[1.0; 4], &[0.0; 4], 1e-12);
        let mean: f32 = x.iter().sum::<f32>() / 4.0;
        let var: f32 = x.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    }
}
