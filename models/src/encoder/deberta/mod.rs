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
use sluice_kernels::ops::dot;
use sluice_kernels::{Matrix, WeightDType};

mod config;

pub use config::{log_bucket_position, DebertaConfig};

use super::bert::{check_token_batch, packed_offsets, softmax_exact, LayerNorm, LayerTail, Linear};
use crate::hf::SafetensorsFiles;
use crate::ModelError;
use config::relative_rows;

/// One layer's weights plus its input-independent positional projections.
struct DebertaLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    tail: LayerTail,
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
        let norm = |name: String| -> Result<LayerNorm, ModelError> {
            let layer = LayerNorm::load(st, &name, eps)?;
            if layer.width() != h {
                return Err(ModelError::Format(format!(
                    "{name} normalises {} values; hidden_size is {h}",
                    layer.width()
                )));
            }
            Ok(layer)
        };
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
        let emb_norm = norm(format!("{prefix}embeddings.LayerNorm"))?;

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
                norm(format!("{prefix}encoder.LayerNorm"))?.forward(&mut rows);
            }
            rows
        } else {
            Vec::new()
        };

        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("{prefix}encoder.layer.{i}");
            // Every shape is checked here so that a malformed checkpoint fails
            // at load, never inside a request's matmul.
            let linear = |leaf: &str, out: usize, inp: usize| -> Result<Linear, ModelError> {
                let layer = Linear::load(st, &format!("{p}.{leaf}"), quantize)?;
                if (layer.out_features(), layer.in_features()) != (out, inp) {
                    return Err(ModelError::Format(format!(
                        "{p}.{leaf}.weight is [{}, {}]; config.json implies [{out}, {inp}]",
                        layer.out_features(),
                        layer.in_features()
                    )));
                }
                Ok(layer)
            };
            let ffn = cfg.intermediate;
            let query = linear("attention.self.query_proj", h, h)?;
            let key = linear("attention.self.key_proj", h, h)?;
            let intermediate = linear("intermediate.dense", ffn, h)?;
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
                        project(&linear("attention.self.pos_key_proj", h, h)?)
                    } else {
                        Vec::new()
                    },
                    if cfg.p2c {
                        project(&linear("attention.self.pos_query_proj", h, h)?)
                    } else {
                        Vec::new()
                    },
                )
            };
            layers.push(DebertaLayer {
                query,
                key,
                value: linear("attention.self.value_proj", h, h)?,
                tail: LayerTail {
                    attn_out: linear("attention.output.dense", h, h)?,
                    attn_norm: norm(format!("{p}.attention.output.LayerNorm"))?,
                    intermediate,
                    output: linear("output.dense", h, ffn)?,
                    out_norm: norm(format!("{p}.output.LayerNorm"))?,
                },
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
        layer.tail.forward(&ctx, x);
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
