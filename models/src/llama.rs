//! The Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM) over a paged
//! KV cache, running several sequences of different lengths in one pass.
//!
//! All tokens of a step (decode tokens and prefill chunks alike) go through the
//! projections as one matrix, so each weight is read once per step; only
//! attention is per sequence, through that sequence's block table.

use rayon::prelude::*;
use sluice_kernels::attention::paged_attention;
use sluice_kernels::ops::{add_assign, add_bias, rms_norm, silu_mul};
use sluice_kernels::rope::Rope;
use sluice_kernels::{matmul_with_precision, ActivationPrecision, Matrix, WeightDType};

use crate::config::LlamaConfig;
use crate::kv_cache::KvCache;
use crate::ModelError;

/// Where the loader finds tensors, by their GGUF names (`blk.3.attn_q.weight`).
pub trait WeightSource {
    fn contains(&self, name: &str) -> bool;
    /// A 2-D weight as `rows` (output features) x `cols` (input features).
    fn matrix(&self, name: &str) -> Result<Matrix, ModelError>;
    /// A 1-D tensor as f32 (norm weights, biases).
    fn vector(&self, name: &str) -> Result<Vec<f32>, ModelError>;
}

/// How to load: knobs for ML engineers.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadKnobs {
    /// Requantise every quantised matrix to this type at load (e.g. Q8_0 for
    /// speed on CPUs where its dot product is faster, Q4_0 for memory).
    pub requantize: Option<WeightDType>,
    /// How activations meet Q4_0/Q4_1/Q8_0 weights: int8 (fast, llama.cpp's
    /// rounding) or f32 (exact activations, slower).
    pub activations: ActivationPrecision,
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked by rows, so one matmul serves all three.
    wqkv: Matrix,
    bqkv: Option<Vec<f32>>,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked by rows.
    w_gate_up: Matrix,
    w_down: Matrix,
}

pub struct Llama {
    cfg: LlamaConfig,
    embed: Matrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// `None`: tied to the embedding.
    lm_head: Option<Matrix>,
    rope: Rope,
    activations: ActivationPrecision,
}

/// One layer's weights as [`Llama::layer_weights`] lends them: Q/K/V
/// stacked by rows (`q_dim + 2 kv_dim` x `hidden`), gate/up stacked by rows.
pub struct LayerWeights<'a> {
    pub attn_norm: &'a [f32],
    pub wqkv: &'a Matrix,
    pub bqkv: Option<&'a [f32]>,
    pub wo: &'a Matrix,
    pub ffn_norm: &'a [f32],
    pub w_gate_up: &'a Matrix,
    pub w_down: &'a Matrix,
}

/// One sequence's share of a step.
pub struct SeqBatch<'a> {
    /// Tokens to run, at positions `start_pos..start_pos + tokens.len()`.
    pub tokens: &'a [u32],
    pub start_pos: usize,
    /// Blocks covering at least `start_pos + tokens.len()` positions.
    pub block_table: &'a [u32],
    /// Return logits for the last token of this chunk.
    pub want_logits: bool,
}

fn stack_rows(parts: &[Matrix]) -> Result<Matrix, ModelError> {
    let first = &parts[0];
    if parts
        .iter()
        .any(|m| m.dtype() != first.dtype() || m.cols() != first.cols())
    {
        // Mixed types (some GGUF mixes keep V at higher precision): bring all
        // to f16 so that they still stack; rare, and correct.
        let converted = parts
            .iter()
            .map(|m| m.requantize(WeightDType::F16))
            .collect::<Result<Vec<_>, _>>()?;
        return stack_rows(&converted);
    }
    let rows = parts.iter().map(Matrix::rows).sum();
    let bytes = parts
        .iter()
        .flat_map(|m| m.bytes().iter().copied())
        .collect();
    Ok(Matrix::from_raw(first.dtype(), rows, first.cols(), bytes)?)
}

fn check_shape(m: &Matrix, name: &str, rows: usize, cols: usize) -> Result<(), ModelError> {
    if m.rows() != rows || m.cols() != cols {
        return Err(ModelError::Format(format!(
            "{name} is {}x{}, expected {rows}x{cols}",
            m.rows(),
            m.cols()
        )));
    }
    Ok(())
}

impl Llama {
    /// Loads every tensor; `progress(done, total)` is called after each layer.
    pub fn load(
        cfg: LlamaConfig,
        src: &dyn WeightSource,
        knobs: LoadKnobs,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let requant = |m: Matrix| -> Result<Matrix, ModelError> {
            match knobs.requantize {
                Some(to) if m.dtype().is_quantized() && m.dtype() != to => Ok(m.requantize(to)?),
                _ => Ok(m),
            }
        };
        let (h, q, kv, ff) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
        );
        let embed = src.matrix("token_embd.weight")?;
        check_shape(&embed, "token_embd.weight", cfg.vocab_size, h)?;
        // Requantised too: when tied, the embedding is also the LM head.
        let embed = requant(embed)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let name = |t: &str| format!("blk.{i}.{t}");
            let get = |t: &str, rows: usize, cols: usize| -> Result<Matrix, ModelError> {
                let m = src.matrix(&name(t))?;
                check_shape(&m, &name(t), rows, cols)?;
                requant(m)
            };
            let bqkv = if cfg.attention_bias && src.contains(&name("attn_q.bias")) {
                let mut b = src.vector(&name("attn_q.bias"))?;
                b.extend(src.vector(&name("attn_k.bias"))?);
                b.extend(src.vector(&name("attn_v.bias"))?);
                Some(b)
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: src.vector(&name("attn_norm.weight"))?,
                wqkv: stack_rows(&[
                    get("attn_q.weight", q, h)?,
                    get("attn_k.weight", kv, h)?,
                    get("attn_v.weight", kv, h)?,
                ])?,
                bqkv,
                wo: get("attn_output.weight", h, q)?,
                ffn_norm: src.vector(&name("ffn_norm.weight"))?,
                w_gate_up: stack_rows(&[
                    get("ffn_gate.weight", ff, h)?,
                    get("ffn_up.weight", ff, h)?,
                ])?,
                w_down: get("ffn_down.weight", h, ff)?,
            });
            progress(i + 1, cfg.num_layers);
        }
        let lm_head = if !cfg.tie_word_embeddings && src.contains("output.weight") {
            let m = src.matrix("output.weight")?;
            check_shape(&m, "output.weight", cfg.vocab_size, h)?;
            Some(requant(m)?)
        } else {
            None
        };
        let mut rope = Rope::new(
            cfg.head_dim,
            cfg.rope_theta,
            cfg.rope_style,
            cfg.rope_scaling,
        );
        if src.contains("rope_freqs.weight") {
            let factors = src.vector("rope_freqs.weight")?;
            if factors.len() != cfg.head_dim / 2 {
                return Err(ModelError::Format(format!(
                    "rope_freqs.weight has {} factors, expected head_dim / 2 = {}",
                    factors.len(),
                    cfg.head_dim / 2
                )));
            }
            rope = rope.with_freq_factors(&factors);
        }
        Ok(Self {
            activations: knobs.activations,
            norm: src.vector("output_norm.weight")?,
            embed,
            layers,
            lm_head,
            rope,
            cfg,
        })
    }

    fn matmul(&self, w: &Matrix, x: &[f32], m: usize, out: &mut [f32]) {
        matmul_with_precision(w, x, m, out, self.activations);
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Read-only views of each layer's weights, in order, for executors that
    /// keep their own copy of the weights (a GPU uploads them once).
    pub fn layer_weights(&self) -> impl ExactSizeIterator<Item = LayerWeights<'_>> {
        self.layers.iter().map(|l| LayerWeights {
            attn_norm: &l.attn_norm,
            wqkv: &l.wqkv,
            bqkv: l.bqkv.as_deref(),
            wo: &l.wo,
            ffn_norm: &l.ffn_norm,
            w_gate_up: &l.w_gate_up,
            w_down: &l.w_down,
        })
    }

    /// The token embedding (`vocab x hidden`).
    pub fn embedding(&self) -> &Matrix {
        &self.embed
    }

    /// The final norm's weight.
    pub fn output_norm(&self) -> &[f32] {
        &self.norm
    }

    /// The LM head (`vocab x hidden`): the embedding when tied.
    pub fn lm_head(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Whether the LM head is the embedding matrix itself.
    pub fn head_is_tied(&self) -> bool {
        self.lm_head.is_none()
    }

    /// The rotary embedding, with scaling and frequency factors applied.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        let mats = self.layers.iter().map(|l| {
            l.wqkv.bytes().len()
                + l.wo.bytes().len()
                + l.w_gate_up.bytes().len()
                + l.w_down.bytes().len()
        });
        mats.sum::<usize>()
            + self.embed.bytes().len()
            + self.lm_head.as_ref().map_or(0, |m| m.bytes().len())
    }

    /// Runs one step for several sequences and returns the logits of the last
    /// token of every sequence with `want_logits`, in order.
    pub fn forward(
        &self,
        seqs: &[SeqBatch<'_>],
        kv: &mut KvCache,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let cfg = &self.cfg;
        let (h, qd, kvd) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim());
        let total: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        if total == 0 {
            return Ok(Vec::new());
        }
        for s in seqs {
            let end = s.start_pos + s.tokens.len();
            if end > s.block_table.len() * kv.block_size() {
                return Err(ModelError::Format(format!(
                    "block table of {} blocks cannot hold position {}",
                    s.block_table.len(),
                    end - 1
                )));
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(ModelError::Format(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    cfg.vocab_size
                )));
            }
        }

        let mut x = vec![0.0f32; total * h];
        for (row, &tok) in x
            .chunks_exact_mut(h)
            .zip(seqs.iter().flat_map(|s| s.tokens.iter()))
        {
            self.embed.dequantize_row(tok as usize, row);
        }
        // Scratch buffers reused across layers.
        let mut normed = vec![0.0f32; total * h];
        let mut qkv = vec![0.0f32; total * (qd + 2 * kvd)];
        let mut attn = vec![0.0f32; total * qd];
        let mut proj = vec![0.0f32; total * h];
        let mut gate_up = vec![0.0f32; total * 2 * cfg.intermediate_size];
        let mut act = vec![0.0f32; total * cfg.intermediate_size];
        let scale = 1.0 / (cfg.head_dim as f32).sqrt();

        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, cfg.rms_norm_eps, &mut normed);
            self.matmul(&layer.wqkv, &normed, total, &mut qkv);
            if let Some(b) = &layer.bqkv {
                add_bias(&mut qkv, b);
            }
            // RoPE on q and k, then K/V into the cache.
            let mut t = 0;
            for s in seqs {
                for i in 0..s.tokens.len() {
                    let pos = s.start_pos + i;
                    let row = &mut qkv[t * (qd + 2 * kvd)..(t + 1) * (qd + 2 * kvd)];
                    let (q, rest) = row.split_at_mut(qd);
                    let (k, v) = rest.split_at_mut(kvd);
                    self.rope.apply(q, pos);
                    self.rope.apply(k, pos);
                    kv.write(li, s.block_table, pos, k, v);
                    t += 1;
                }
            }
            // Attention: sequences in parallel (a decode step is many short
            // sequences, too little work each to split by heads alone).
            let row = qd + 2 * kvd;
            let view = kv.view(li);
            let mut jobs = Vec::with_capacity(seqs.len());
            let mut rest: &mut [f32] = &mut attn;
            let mut t = 0;
            for s in seqs {
                let n = s.tokens.len();
                let (out, tail) = rest.split_at_mut(n * qd);
                rest = tail;
                jobs.push((s, t, out));
                t += n;
            }
            jobs.into_par_iter().for_each(|(s, t, out)| {
                let n = s.tokens.len();
                let q: Vec<f32> = (t..t + n)
                    .flat_map(|r| qkv[r * row..r * row + qd].iter().copied())
                    .collect();
                paged_attention(
                    &q,
                    s.start_pos,
                    cfg.num_heads,
                    &view,
                    s.block_table,
                    scale,
                    out,
                );
            });
            self.matmul(&layer.wo, &attn, total, &mut proj);
            add_assign(&mut x, &proj);

            rms_norm(&x, &layer.ffn_norm, cfg.rms_norm_eps, &mut normed);
            self.matmul(&layer.w_gate_up, &normed, total, &mut gate_up);
            let ff = cfg.intermediate_size;
            act.par_chunks_exact_mut(ff)
                .zip(gate_up.par_chunks_exact(2 * ff))
                .for_each(|(a, gu)| {
                    a.copy_from_slice(&gu[..ff]);
                    silu_mul(a, &gu[ff..]);
                });
            self.matmul(&layer.w_down, &act, total, &mut proj);
            add_assign(&mut x, &proj);
        }

        // Final norm and LM head only for the rows whose logits are wanted.
        let mut last_rows = Vec::new();
        let mut t = 0;
        for s in seqs {
            t += s.tokens.len();
            if s.want_logits {
                last_rows.extend_from_slice(&x[(t - 1) * h..t * h]);
            }
        }
        let m = last_rows.len() / h;
        if m == 0 {
            return Ok(Vec::new());
        }
        let mut last_normed = vec![0.0f32; m * h];
        rms_norm(&last_rows, &self.norm, cfg.rms_norm_eps, &mut last_normed);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0.0f32; m * cfg.vocab_size];
        self.matmul(head, &last_normed, m, &mut logits);
        Ok(logits
            .chunks_exact(cfg.vocab_size)
            .map(<[f32]>::to_vec)
            .collect())
    }
}
