//! The DeBERTa-v2/v3 encoder stack (`DebertaV2Model` in Hugging Face
//! transformers): embeddings without absolute positions, post-norm layers
//! whose attention adds *disentangled* relative-position terms
//! (content→position "c2p" and position→content "p2c") over log-bucketed
//! relative distances. It backs the DeBERTa flavour of
//! [`super::SequenceClassifier`] (Llama Prompt Guard 2 and the like).
//!
//! Design decision: everything positional that does not depend on the input
//! is computed once at load. The relative-position embeddings (after their
//! LayerNorm) are weights, so each layer's projections of them (`pos_key`,
//! `pos_query`) are fixed matrices, and the bucketed index of every relative
//! distance up to `max_len` is a fixed table. A forward pass then only does
//! three dot products per (query, key, head) — content·content,
//! content·pos_key, key·pos_query — with no gathers or bucket arithmetic.
//! Batches run packed, exactly as in [`super::bert`], so an input's result
//! does not depend on what else is in the batch.

use rayon::prelude::*;
use sluice_kernels::{Matrix, WeightDType};

use super::bert::{gelu, softmax_exact, LayerNorm, Linear};
use super::PoolerActivation;
use crate::hf::SafetensorsFiles;
use crate::ModelError;

/// `config.json` of a `deberta-v2` model, resolved (HF defaults filled in).
#[derive(Debug, Clone)]
pub struct DebertaConfig {
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// Longest input in tokens.
    pub max_position_embeddings: usize,
    /// 0: no token-type embedding (DeBERTa-v3).
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    /// Whether absolute position embeddings are added to the input (false in v3).
    pub position_biased_input: bool,
    /// Whether attention has the relative-position (c2p/p2c) terms at all.
    pub relative_attention: bool,
    /// `pos_att_type` contains "c2p".
    pub c2p: bool,
    /// `pos_att_type` contains "p2c".
    pub p2c: bool,
    /// Log buckets of relative distance; 0 means plain clamped distances.
    pub position_buckets: usize,
    /// `max_relative_positions`, with HF's `< 1 → max_position_embeddings`.
    pub max_relative_positions: usize,
    /// Positions are projected with the content `query_proj`/`key_proj`
    /// (true in v3); otherwise with `pos_query_proj`/`pos_key_proj`.
    pub share_att_key: bool,
    /// `norm_rel_ebd` contains "layer_norm": the encoder's LayerNorm is
    /// applied to the relative embeddings.
    pub norm_rel_embeddings: bool,
    /// `pooler_hidden_act` of the classification head's `ContextPooler`.
    pub pooler_activation: PoolerActivation,
}

impl DebertaConfig {
    pub fn from_json(v: &serde_json::Value) -> Result<Self, ModelError> {
        let get = |key: &str| -> Result<usize, ModelError> {
            v.get(key)
                .and_then(serde_json::Value::as_u64)
                .map(|n| n as usize)
                .ok_or_else(|| ModelError::Config(format!("config.json has no integer `{key}`")))
        };
        let int_or = |key: &str, default: i64| -> i64 {
            v.get(key)
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(default)
        };
        let bool_or = |key: &str, default: bool| -> bool {
            v.get(key)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(default)
        };
        let str_or = |key: &str, default: &'static str| -> String {
            v.get(key)
                .and_then(serde_json::Value::as_str)
                .unwrap_or(default)
                .to_string()
        };

        let hidden_act = str_or("hidden_act", "gelu");
        if hidden_act != "gelu" {
            return Err(ModelError::Unsupported(format!(
                "hidden_act = {hidden_act:?}; the DeBERTa encoder implements \"gelu\""
            )));
        }
        let pooler_act = str_or("pooler_hidden_act", "gelu");
        let pooler_activation = match pooler_act.as_str() {
            "gelu" => PoolerActivation::Gelu,
            "tanh" => PoolerActivation::Tanh,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "pooler_hidden_act = {other:?}; the DeBERTa classifier implements \"gelu\" and \"tanh\""
                )))
            }
        };
        let conv_kernel_size = int_or("conv_kernel_size", 0);
        if conv_kernel_size > 0 {
            return Err(ModelError::Unsupported(format!(
                "conv_kernel_size = {conv_kernel_size} (DeBERTa-v2's ConvLayer after the first layer); \
                 Sluice reads DeBERTa checkpoints without it (conv_kernel_size = 0, as in DeBERTa-v3)"
            )));
        }
        let hidden = get("hidden_size")?;
        let heads = get("num_attention_heads")?;
        if heads == 0 || hidden % heads != 0 {
            return Err(ModelError::Config(format!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            )));
        }
        // The attention output projection is hidden→hidden in HF, so a head
        // size that does not tile hidden_size cannot come from a real checkpoint.
        if let Some(head_size) = v
            .get("attention_head_size")
            .and_then(serde_json::Value::as_u64)
        {
            if head_size as usize * heads != hidden {
                return Err(ModelError::Unsupported(format!(
                    "attention_head_size {head_size} × {heads} heads differs from hidden_size {hidden}"
                )));
            }
        }
        if let Some(embedding_size) = v.get("embedding_size").and_then(serde_json::Value::as_u64) {
            if embedding_size as usize != hidden {
                return Err(ModelError::Unsupported(format!(
                    "embedding_size {embedding_size} differs from hidden_size {hidden} \
                     (an `embed_proj` layer); Sluice reads equal sizes"
                )));
            }
        }
        if let Some(pooler) = v
            .get("pooler_hidden_size")
            .and_then(serde_json::Value::as_u64)
        {
            if pooler as usize != hidden {
                return Err(ModelError::Unsupported(format!(
                    "pooler_hidden_size {pooler} differs from hidden_size {hidden}"
                )));
            }
        }

        // `pos_att_type` is a list in current configs and "p2c|c2p" in old ones.
        let att_types: Vec<String> = match v.get("pos_att_type") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => s
                .split('|')
                .map(|t| t.trim().to_lowercase())
                .filter(|t| !t.is_empty())
                .collect(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .map(|t| {
                    t.as_str().map(str::to_lowercase).ok_or_else(|| {
                        ModelError::Config(format!("pos_att_type entry {t} is not a string"))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(ModelError::Config(format!(
                    "pos_att_type = {other}; expected a list such as [\"p2c\", \"c2p\"]"
                )))
            }
        };
        if let Some(bad) = att_types.iter().find(|t| *t != "c2p" && *t != "p2c") {
            return Err(ModelError::Unsupported(format!(
                "pos_att_type {bad:?}; DeBERTa-v2 attention implements \"c2p\" and \"p2c\""
            )));
        }

        let max_position_embeddings = get("max_position_embeddings")?;
        let max_relative_positions = match int_or("max_relative_positions", -1) {
            n if n < 1 => max_position_embeddings,
            n => n as usize,
        };
        let position_buckets = int_or("position_buckets", -1).max(0) as usize;
        // The log-bucket formula divides by ln((max_relative_positions - 1) / mid).
        if position_buckets > 0
            && (position_buckets < 2 || max_relative_positions <= position_buckets / 2 + 1)
        {
            return Err(ModelError::Config(format!(
                "position_buckets = {position_buckets} needs at least 2 buckets and \
                 max_relative_positions ({max_relative_positions}) above half of them plus one"
            )));
        }
        let norm_rel_embeddings = str_or("norm_rel_ebd", "none")
            .to_lowercase()
            .split('|')
            .any(|t| t.trim() == "layer_norm");
        Ok(Self {
            vocab_size: get("vocab_size")?,
            hidden,
            layers: get("num_hidden_layers")?,
            heads,
            intermediate: get("intermediate_size")?,
            max_position_embeddings,
            type_vocab_size: int_or("type_vocab_size", 0).max(0) as usize,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(serde_json::Value::as_f64)
                .map_or(1e-7, |e| e as f32),
            position_biased_input: bool_or("position_biased_input", true),
            relative_attention: bool_or("relative_attention", false),
            c2p: att_types.iter().any(|t| t == "c2p"),
            p2c: att_types.iter().any(|t| t == "p2c"),
            position_buckets,
            max_relative_positions,
            share_att_key: bool_or("share_att_key", false),
            norm_rel_embeddings,
            pooler_activation,
        })
    }

    /// How many relative-embedding rows each side of zero attention reads
    /// (HF's `pos_ebd_size`, `att_span`).
    pub fn attention_span(&self) -> usize {
        if self.position_buckets > 0 {
            self.position_buckets
        } else {
            self.max_relative_positions
        }
    }

    /// HF's `scale_factor`: the content score and each positional term are
    /// all divided by `sqrt(head_dim * (1 + number of position terms))`.
    fn score_scale(&self) -> f32 {
        let terms = 1 + usize::from(self.c2p) + usize::from(self.p2c);
        let head_dim = self.hidden / self.heads;
        1.0 / ((head_dim * terms) as f32).sqrt()
    }
}

/// HF's `make_log_bucket_position`: relative distances inside
/// `±bucket_size / 2` stay as they are; longer ones are squeezed
/// logarithmically so that `±(max_position - 1)` lands on
/// `±(bucket_size - 1)`. Computed in f32 like the PyTorch original, whose
/// ratio is exactly 1 at `max_position - 1` (f64 would agree there too, but
/// f32 keeps the other roundings the same as well).
pub fn log_bucket_position(relative: i64, bucket_size: i64, max_position: i64) -> i64 {
    let mid = bucket_size / 2;
    let abs = if relative < mid && relative > -mid {
        mid - 1
    } else {
        relative.abs()
    };
    if abs <= mid {
        return relative;
    }
    let span = (((max_position - 1) as f64 / mid as f64) as f32).ln();
    let ratio = (abs as f32 / mid as f32).ln() / span;
    let log_pos = (ratio * (mid - 1) as f32).ceil() as i64 + mid;
    log_pos * relative.signum()
}

/// One layer's weights plus its input-independent positional projections.
struct DebertaLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
    /// `[2 * span, hidden]`: the relative embeddings through the key
    /// projection, read by the c2p term (empty when c2p is off).
    pos_key: Vec<f32>,
    /// `[2 * span, hidden]`: the relative embeddings through the query
    /// projection, read by the p2c term (empty when p2c is off).
    pos_query: Vec<f32>,
}

/// Embeddings and encoder layers of a DeBERTa-v2 model.
pub struct Deberta {
    cfg: DebertaConfig,
    word: Matrix,
    /// Present when `position_biased_input`.
    position: Option<Matrix>,
    /// Row 0 of `token_type_embeddings` when `type_vocab_size > 0`:
    /// single-segment inputs add it to every token.
    token_type: Option<Vec<f32>>,
    emb_norm: LayerNorm,
    layers: Vec<DebertaLayer>,
    /// Row of `pos_key`/`pos_query` for relative distance `i - j`, stored at
    /// `i - j + max_len - 1`.
    rel_rows: Vec<usize>,
}

impl Deberta {
    /// Loads from `st` with tensor names under `prefix` (`"deberta."` for a
    /// task model). `quantize` re-packs the linear layers' weights at load.
    pub fn load(
        st: &SafetensorsFiles,
        cfg: DebertaConfig,
        prefix: &str,
        quantize: Option<WeightDType>,
    ) -> Result<Self, ModelError> {
        let eps = cfg.layer_norm_eps;
        let h = cfg.hidden;
        let word = st.matrix(&format!("{prefix}embeddings.word_embeddings.weight"))?;
        if word.cols() != h {
            return Err(ModelError::Format(format!(
                "word_embeddings width {} differs from hidden_size {h}",
                word.cols()
            )));
        }
        let mut max_len = cfg.max_position_embeddings;
        let position = if cfg.position_biased_input {
            let table = st.matrix(&format!("{prefix}embeddings.position_embeddings.weight"))?;
            if table.cols() != h {
                return Err(ModelError::Format(format!(
                    "position_embeddings width {} differs from hidden_size {h}",
                    table.cols()
                )));
            }
            max_len = max_len.min(table.rows());
            Some(table)
        } else {
            None
        };
        let token_type = if cfg.type_vocab_size > 0 {
            let table = st.vector(&format!("{prefix}embeddings.token_type_embeddings.weight"))?;
            if table.len() < h {
                return Err(ModelError::Format(
                    "token_type_embeddings is smaller than one row".into(),
                ));
            }
            Some(table[..h].to_vec())
        } else {
            None
        };
        let emb_norm = LayerNorm::load(st, &format!("{prefix}embeddings.LayerNorm"), eps)?;

        let span = cfg.attention_span();
        let positional = cfg.relative_attention && (cfg.c2p || cfg.p2c);
        let rel_embeddings = if positional {
            let name = format!("{prefix}encoder.rel_embeddings.weight");
            let table = st.matrix(&name)?;
            if table.cols() != h || table.rows() < 2 * span {
                return Err(ModelError::Format(format!(
                    "{name} is [{}, {}]; attention needs at least [{}, {h}] \
                     (2 × position_buckets, or 2 × max_relative_positions without buckets)",
                    table.rows(),
                    table.cols(),
                    2 * span
                )));
            }
            let mut rows = vec![0.0f32; 2 * span * h];
            for (r, out) in rows.chunks_exact_mut(h).enumerate() {
                table.dequantize_row(r, out);
            }
            if cfg.norm_rel_embeddings {
                LayerNorm::load(st, &format!("{prefix}encoder.LayerNorm"), eps)?.forward(&mut rows);
            }
            rows
        } else {
            Vec::new()
        };

        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("{prefix}encoder.layer.{i}");
            let linear = |leaf: &str| Linear::load(st, &format!("{p}.{leaf}"), quantize);
            let query = linear("attention.self.query_proj")?;
            let key = linear("attention.self.key_proj")?;
            let intermediate = linear("intermediate.dense")?;
            if query.out_features() != h
                || key.out_features() != h
                || intermediate.out_features() != cfg.intermediate
            {
                return Err(ModelError::Format(format!(
                    "layer {i} shapes differ from config.json"
                )));
            }
            let rows = 2 * span;
            let project = |proj: &Linear| proj.forward(&rel_embeddings, rows);
            let (pos_key, pos_query) = if !positional {
                (Vec::new(), Vec::new())
            } else if cfg.share_att_key {
                (
                    if cfg.c2p { project(&key) } else { Vec::new() },
                    if cfg.p2c { project(&query) } else { Vec::new() },
                )
            } else {
                (
                    if cfg.c2p {
                        project(&linear("attention.self.pos_key_proj")?)
                    } else {
                        Vec::new()
                    },
                    if cfg.p2c {
                        project(&linear("attention.self.pos_query_proj")?)
                    } else {
                        Vec::new()
                    },
                )
            };
            layers.push(DebertaLayer {
                query,
                key,
                value: linear("attention.self.value_proj")?,
                attn_out: linear("attention.output.dense")?,
                attn_norm: LayerNorm::load(st, &format!("{p}.attention.output.LayerNorm"), eps)?,
                intermediate,
                output: linear("output.dense")?,
                out_norm: LayerNorm::load(st, &format!("{p}.output.LayerNorm"), eps)?,
                pos_key,
                pos_query,
            });
        }

        let rel_rows = relative_rows(&cfg, max_len);
        let cfg = DebertaConfig {
            max_position_embeddings: max_len,
            ..cfg
        };
        Ok(Self {
            cfg,
            word,
            position,
            token_type,
            emb_norm,
            layers,
            rel_rows,
        })
    }

    pub fn config(&self) -> &DebertaConfig {
        &self.cfg
    }

    /// Checks every input before any work: non-empty, at most `max_len`
    /// tokens, ids inside the vocabulary.
    pub fn check_batch(&self, batch: &[&[u32]]) -> Result<(), ModelError> {
        for (i, ids) in batch.iter().enumerate() {
            if ids.is_empty() {
                return Err(ModelError::Unsupported(format!("input {i} has no tokens")));
            }
            if ids.len() > self.cfg.max_position_embeddings {
                return Err(ModelError::Unsupported(format!(
                    "input {i} has {} tokens; this encoder takes at most {}",
                    ids.len(),
                    self.cfg.max_position_embeddings
                )));
            }
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.word.rows()) {
                return Err(ModelError::Tokenizer(format!(
                    "input {i}: token id {bad} is outside the vocabulary of {}",
                    self.word.rows()
                )));
            }
        }
        Ok(())
    }

    /// The last layer's hidden states of every input, packed: input `i`'s
    /// tokens are rows `offsets[i]..offsets[i + 1]` of the returned matrix.
    pub fn forward(&self, batch: &[&[u32]]) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        self.check_batch(batch)?;
        let h = self.cfg.hidden;
        let mut offsets = Vec::with_capacity(batch.len() + 1);
        offsets.push(0);
        for ids in batch {
            offsets.push(offsets[offsets.len() - 1] + ids.len());
        }
        let total = offsets[batch.len()];
        let mut x = vec![0.0f32; total * h];
        let mut pos_row = vec![0.0f32; h];
        let mut rows = x.chunks_exact_mut(h);
        for ids in batch {
            for (pos, (&id, out)) in ids.iter().zip(rows.by_ref()).enumerate() {
                self.word.dequantize_row(id as usize, out);
                if let Some(table) = &self.position {
                    table.dequantize_row(pos, &mut pos_row);
                    sluice_kernels::ops::add_assign(out, &pos_row);
                }
                if let Some(token_type) = &self.token_type {
                    sluice_kernels::ops::add_assign(out, token_type);
                }
            }
        }
        self.emb_norm.forward(&mut x);
        for layer in &self.layers {
            self.layer_forward(layer, &mut x, &offsets);
        }
        Ok((x, offsets))
    }

    fn layer_forward(&self, layer: &DebertaLayer, x: &mut [f32], offsets: &[usize]) {
        let h = self.cfg.hidden;
        let m = x.len() / h;
        let q = layer.query.forward(x, m);
        let k = layer.key.forward(x, m);
        let v = layer.value.forward(x, m);
        let ctx = self.attention(
            layer,
            &Qkv {
                q: &q,
                k: &k,
                v: &v,
            },
            offsets,
        );
        let mut attn = layer.attn_out.forward(&ctx, m);
        sluice_kernels::ops::add_assign(&mut attn, x);
        layer.attn_norm.forward(&mut attn);
        let mut inter = layer.intermediate.forward(&attn, m);
        gelu(&mut inter);
        let mut out = layer.output.forward(&inter, m);
        sluice_kernels::ops::add_assign(&mut out, &attn);
        layer.out_norm.forward(&mut out);
        x.copy_from_slice(&out);
    }

    /// Disentangled attention within each input's token range (the packed
    /// form of a padding mask): score(i, j) = (q_i·k_j + q_i·pos_key[r] +
    /// k_j·pos_query[r]) / sqrt(head_dim · terms), r the row of distance i - j.
    fn attention(&self, layer: &DebertaLayer, qkv: &Qkv<'_>, offsets: &[usize]) -> Vec<f32> {
        let Qkv { q, k, v } = *qkv;
        let (hidden, heads) = (self.cfg.hidden, self.cfg.heads);
        let hd = hidden / heads;
        let scale = self.cfg.score_scale();
        let c2p = !layer.pos_key.is_empty();
        let p2c = !layer.pos_query.is_empty();
        let origin = self.cfg.max_position_embeddings.saturating_sub(1);
        let total = offsets[offsets.len() - 1];
        let mut ctx = vec![0.0f32; total * hidden];
        let seq_of: Vec<usize> = (0..offsets.len() - 1)
            .flat_map(|s| std::iter::repeat_n(s, offsets[s + 1] - offsets[s]))
            .collect();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        // One task per token row: it reads its input's keys and values and
        // writes only its own row, so tasks never share output.
        ctx.par_chunks_mut(hidden).enumerate().for_each(|(t, out)| {
            let s = seq_of[t];
            let (start, end) = (offsets[s], offsets[s + 1]);
            let i = t - start;
            let mut scores = vec![0.0f32; end - start];
            for head in 0..heads {
                let cols = head * hd..(head + 1) * hd;
                let qi = &q[t * hidden..][cols.clone()];
                for (j, score) in scores.iter_mut().enumerate() {
                    let kj = &k[(start + j) * hidden..][cols.clone()];
                    let r = self.rel_rows[origin + i - j];
                    let mut sum = dot(qi, kj);
                    if c2p {
                        sum += dot(qi, &layer.pos_key[r * hidden..][cols.clone()]);
                    }
                    if p2c {
                        sum += dot(kj, &layer.pos_query[r * hidden..][cols.clone()]);
                    }
                    *score = sum * scale;
                }
                softmax_exact(&mut scores);
                let oh = &mut out[cols.clone()];
                for (j, p) in scores.iter().enumerate() {
                    let vr = &v[(start + j) * hidden..][cols.clone()];
                    for (o, val) in oh.iter_mut().zip(vr) {
                        *o += p * val;
                    }
                }
            }
        });
        ctx
    }
}

/// A layer's projected queries, keys and values, `[tokens, hidden]` each.
struct Qkv<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

/// The positional row for every relative distance `d = i - j` with
/// `|d| < max_len`, at index `d + max_len - 1`: HF's
/// `clamp(bucket(d) + span, 0, 2 * span - 1)`. c2p and p2c read the same
/// row because the bucketing is odd (`bucket(-d) = -bucket(d)`): HF's p2c
/// index `-bucket(j - i) + span` is `bucket(i - j) + span`.
fn relative_rows(cfg: &DebertaConfig, max_len: usize) -> Vec<usize> {
    let span = cfg.attention_span() as i64;
    let reach = max_len as i64 - 1;
    (-reach..=reach)
        .map(|d| {
            let bucket = if cfg.position_buckets > 0 {
                log_bucket_position(
                    d,
                    cfg.position_buckets as i64,
                    cfg.max_relative_positions as i64,
                )
            } else {
                d
            };
            (bucket + span).clamp(0, 2 * span - 1) as usize
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worked by hand from HF's formula: mid = bucket_size / 2,
    /// log_pos = ceil(ln(|d| / mid) / ln((max - 1) / mid) · (mid - 1)) + mid.
    #[test]
    fn log_bucket_position_matches_hand_worked_values() {
        for (d, buckets, max, want) in [
            // Prompt Guard 2 / DeBERTa-v3: 256 buckets, 512 positions.
            (0, 256, 512, 0),
            (127, 256, 512, 127),
            (128, 256, 512, 128),
            (-128, 256, 512, -128),
            // ln(129/128)/ln(511/128)·127 = 0.714 → 1 → 129
            (129, 256, 512, 129),
            // ln(200/128)/ln(511/128)·127 = 40.94 → 41 → 169
            (200, 256, 512, 169),
            // ln(300/128)/ln(511/128)·127 = 78.14 → 79 → -207
            (-300, 256, 512, -207),
            // the ratio is exactly 1 at max - 1: 127 → 255
            (511, 256, 512, 255),
            (-511, 256, 512, -255),
            // beyond max_position the bucket leaves the table (attention clamps)
            (1000, 256, 512, 317),
            // The tiny tests' geometry: 8 buckets, 16 positions (mid 4).
            (4, 8, 16, 4),
            // ln(5/4)/ln(15/4)·3 = 0.507 → 1 → 5
            (5, 8, 16, 5),
            // ln(6/4)/ln(15/4)·3 = 0.920 → 1 → 5
            (-6, 8, 16, -5),
            // ln(7/4)/ln(15/4)·3 = 1.270 → 2 → 6
            (7, 8, 16, 6),
            // ln(10/4)/ln(15/4)·3 = 2.080 → 3 → 7
            (10, 8, 16, 7),
            (-15, 8, 16, -7),
        ] {
            assert_eq!(
                log_bucket_position(d, buckets, max),
                want,
                "bucket of {d} with {buckets} buckets, max {max}"
            );
        }
    }

    #[test]
    fn bucketing_is_odd_so_c2p_and_p2c_share_rows() {
        for d in 0..600 {
            assert_eq!(
                log_bucket_position(-d, 256, 512),
                -log_bucket_position(d, 256, 512)
            );
        }
    }

    #[test]
    fn config_defaults_follow_hf_and_bad_geometry_is_refused() {
        let base = serde_json::json!({
            "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16,
            "max_position_embeddings": 32,
        });
        let cfg = DebertaConfig::from_json(&base).unwrap();
        assert!(cfg.position_biased_input && !cfg.relative_attention);
        assert_eq!(cfg.max_relative_positions, 32);
        assert_eq!(cfg.attention_span(), 32);

        let mut v3 = base.clone();
        v3["pos_att_type"] = serde_json::json!("p2c|c2p");
        v3["position_buckets"] = serde_json::json!(8);
        let cfg = DebertaConfig::from_json(&v3).unwrap();
        assert!(cfg.c2p && cfg.p2c);
        assert_eq!(cfg.attention_span(), 8);

        let mut conv = base.clone();
        conv["conv_kernel_size"] = serde_json::json!(3);
        let err = DebertaConfig::from_json(&conv).unwrap_err().to_string();
        assert!(err.contains("conv_kernel_size"), "{err}");

        let mut p2p = base.clone();
        p2p["pos_att_type"] = serde_json::json!(["p2p"]);
        assert!(DebertaConfig::from_json(&p2p).is_err());

        let mut tight = base;
        tight["position_buckets"] = serde_json::json!(64);
        assert!(DebertaConfig::from_json(&tight).is_err());
    }
}
