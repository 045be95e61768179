//! [`DeviceExecutor`]: the [`Executor`] that runs a step through any
//! [`DeviceOps`]. It owns the model's weights on the device, the KV cache and
//! the step buffers, all allocated once; a step packs the engine's batch into
//! the index arrays ([`StepPlan`]), writes them, runs the layers and brings
//! back only the logits rows the engine asked for.

use sluice_kernels::cuda_twin::RowSampling;
use sluice_models::{Llama, LlamaConfig, ModelError, SeqBatch};

use super::ops::{
    AttentionShape, DeviceOps, LayerKv, NormArgs, RopeTable, StepCtx, StepIds, StepShape,
};
use super::plan::{PlanLimits, StepPlan};
use crate::executor::{Executor, RowOut, RowWant};
use crate::rng::SeqRng;

/// One layer's weights on the device.
pub struct DeviceLayer<O: DeviceOps> {
    pub attn_norm: O::Buf,
    pub wqkv: O::Mat,
    pub bqkv: Option<O::Buf>,
    pub wo: O::Mat,
    pub ffn_norm: O::Buf,
    pub w_gate_up: O::Mat,
    pub w_down: O::Mat,
}

/// A model's weights on the device.
pub struct DeviceModel<O: DeviceOps> {
    pub cfg: LlamaConfig,
    pub embed: O::Mat,
    pub layers: Vec<DeviceLayer<O>>,
    pub norm: O::Buf,
    /// `None`: tied to the embedding.
    pub lm_head: Option<O::Mat>,
    pub rope: RopeTable<O::Floats>,
}

impl<O: DeviceOps> DeviceModel<O> {
    /// Uploads a loaded model's weights, dequantising one row at a time.
    pub fn upload(ops: &mut O, model: &Llama) -> Result<Self, ModelError> {
        let mat = |ops: &mut O, m: &sluice_kernels::Matrix| {
            ops.upload_matrix(m.rows(), m.cols(), &mut |r, out| m.dequantize_row(r, out))
        };
        let mut layers = Vec::with_capacity(model.config().num_layers);
        for l in model.layer_weights() {
            layers.push(DeviceLayer {
                attn_norm: ops.upload(l.attn_norm)?,
                wqkv: mat(ops, l.wqkv)?,
                bqkv: l.bqkv.map(|b| ops.upload(b)).transpose()?,
                wo: mat(ops, l.wo)?,
                ffn_norm: ops.upload(l.ffn_norm)?,
                w_gate_up: mat(ops, l.w_gate_up)?,
                w_down: mat(ops, l.w_down)?,
            });
        }
        let lm_head = if model.head_is_tied() {
            None
        } else {
            Some(mat(ops, model.lm_head())?)
        };
        let rope = model.rope();
        Ok(Self {
            cfg: model.config().clone(),
            embed: mat(ops, model.embedding())?,
            layers,
            norm: ops.upload(model.output_norm())?,
            lm_head,
            rope: RopeTable {
                inv_freq: ops.upload_f32(rope.inv_freq())?,
                style: rope.style(),
            },
        })
    }

    /// Random weights of `cfg`'s shape: layer 0 drawn from `seed`, the other
    /// layers copies of it made on the device (filling 15 GB from the host
    /// would take most of the device check's time). Norms are 1, so the
    /// activations stay in range through any depth.
    pub fn random(ops: &mut O, cfg: &LlamaConfig, seed: u64) -> Result<Self, ModelError> {
        let (h, qkv, ff) = (
            cfg.hidden_size,
            cfg.q_dim() + 2 * cfg.kv_dim(),
            cfg.intermediate_size,
        );
        let mut rng = SeqRng::seeded(seed);
        let ones = vec![1.0f32; h];
        // One matrix per statement: each draw borrows the generator.
        let wqkv = ops.upload_matrix(qkv, h, &mut random_rows(&mut rng, h))?;
        let wo = ops.upload_matrix(h, cfg.q_dim(), &mut random_rows(&mut rng, cfg.q_dim()))?;
        let w_gate_up = ops.upload_matrix(2 * ff, h, &mut random_rows(&mut rng, h))?;
        let w_down = ops.upload_matrix(h, ff, &mut random_rows(&mut rng, ff))?;
        let first = DeviceLayer {
            attn_norm: ops.upload(&ones)?,
            wqkv,
            bqkv: None,
            wo,
            ffn_norm: ops.upload(&ones)?,
            w_gate_up,
            w_down,
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for _ in 1..cfg.num_layers {
            layers.push(DeviceLayer {
                attn_norm: ops.upload(&ones)?,
                wqkv: ops.clone_matrix(&first.wqkv)?,
                bqkv: None,
                wo: ops.clone_matrix(&first.wo)?,
                ffn_norm: ops.upload(&ones)?,
                w_gate_up: ops.clone_matrix(&first.w_gate_up)?,
                w_down: ops.clone_matrix(&first.w_down)?,
            });
        }
        layers.insert(0, first);
        let embed = ops.upload_matrix(cfg.vocab_size, h, &mut random_rows(&mut rng, 1))?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(ops.upload_matrix(cfg.vocab_size, h, &mut random_rows(&mut rng, h))?)
        };
        let rope = sluice_kernels::rope::Rope::new(
            cfg.head_dim,
            cfg.rope_theta,
            cfg.rope_style,
            cfg.rope_scaling,
        );
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm: ops.upload(&ones)?,
            lm_head,
            rope: RopeTable {
                inv_freq: ops.upload_f32(rope.inv_freq())?,
                style: rope.style(),
            },
        })
    }
}

/// Rows of uniform values with variance `1/k`: unit-scale outputs from
/// unit-scale inputs of `k` values.
fn random_rows(rng: &mut SeqRng, k: usize) -> impl FnMut(usize, &mut [f32]) + '_ {
    let scale = (3.0 / k as f32).sqrt();
    move |_, out| {
        for v in out {
            *v = (rng.next_f32() * 2.0 - 1.0) * scale;
        }
    }
}

/// The step buffers (see `sizing::BufferPlan` for what each holds).
struct StepBuffers<O: DeviceOps> {
    /// The residual stream, f32.
    hidden: O::Floats,
    normed: O::Buf,
    qkv: O::Buf,
    /// Rotated queries.
    q: O::Buf,
    attn: O::Buf,
    proj: O::Buf,
    gate_up: O::Buf,
    ffn_act: O::Buf,
    head_normed: O::Buf,
    logits: O::Floats,
    ids: StepIds<O::Ids>,
}

impl<O: DeviceOps> StepBuffers<O> {
    fn alloc(ops: &mut O, cfg: &LlamaConfig, limits: &PlanLimits) -> Result<Self, ModelError> {
        let (rows, seqs) = (limits.max_tokens, limits.max_seqs);
        let h = cfg.hidden_size;
        let ff = cfg.intermediate_size;
        Ok(Self {
            hidden: ops.alloc_floats(rows * h)?,
            normed: ops.alloc(rows * h)?,
            qkv: ops.alloc(rows * (cfg.q_dim() + 2 * cfg.kv_dim()))?,
            q: ops.alloc(rows * cfg.q_dim())?,
            attn: ops.alloc(rows * cfg.q_dim())?,
            proj: ops.alloc(rows * h)?,
            gate_up: ops.alloc(rows * 2 * ff)?,
            ffn_act: ops.alloc(rows * ff)?,
            head_normed: ops.alloc(seqs * h)?,
            logits: ops.alloc_floats(seqs * cfg.vocab_size)?,
            ids: StepIds {
                tokens: ops.alloc_ids(rows)?,
                positions: ops.alloc_ids(rows)?,
                slot_mapping: ops.alloc_ids(rows)?,
                block_tables: ops.alloc_ids(seqs * limits.max_blocks_per_seq)?,
                seq_lens: ops.alloc_ids(seqs)?,
                query_start: ops.alloc_ids(seqs + 1)?,
                logits_rows: ops.alloc_ids(seqs)?,
            },
        })
    }
}

/// Everything a step reads and writes on the device, apart from the ops.
struct DeviceState<O: DeviceOps> {
    model: DeviceModel<O>,
    kv: Vec<LayerKv<O::Kv>>,
    bufs: StepBuffers<O>,
    attn: AttentionShape,
    /// The shape of the step being run (set before each step).
    shape: StepShape,
}

/// How a [`DeviceExecutor`] is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceExecutorConfig {
    pub limits: PlanLimits,
    /// Pad pure-decode steps to a bucket and run them as graphs where the
    /// device has graphs.
    pub graphs: bool,
}

/// An [`Executor`] over any [`DeviceOps`].
pub struct DeviceExecutor<O: DeviceOps> {
    ops: O,
    state: DeviceState<O>,
    cfg: DeviceExecutorConfig,
}

impl<O: DeviceOps> DeviceExecutor<O> {
    /// Allocates the KV cache and step buffers beside `model`'s weights.
    pub fn new(
        mut ops: O,
        model: DeviceModel<O>,
        cfg: DeviceExecutorConfig,
    ) -> Result<Self, ModelError> {
        let mc = &model.cfg;
        let limits = cfg.limits;
        let kv_len = limits.num_blocks * limits.block_size * mc.kv_dim();
        let mut kv = Vec::with_capacity(mc.num_layers);
        for _ in 0..mc.num_layers {
            kv.push(LayerKv {
                k: ops.alloc_kv(kv_len)?,
                v: ops.alloc_kv(kv_len)?,
            });
        }
        let bufs = StepBuffers::alloc(&mut ops, mc, &limits)?;
        let attn = AttentionShape {
            heads: mc.num_heads,
            kv_heads: mc.num_kv_heads,
            head_dim: mc.head_dim,
            block_size: limits.block_size,
            scale: 1.0 / (mc.head_dim as f32).sqrt(),
        };
        let shape = StepShape {
            rows: 0,
            seqs: 0,
            logits_rows: 0,
            max_blocks_per_seq: limits.max_blocks_per_seq,
            max_query_len: 0,
            max_seq_len: 0,
        };
        Ok(Self {
            ops,
            state: DeviceState {
                model,
                kv,
                bufs,
                attn,
                shape,
            },
            cfg,
        })
    }

    pub fn ops(&self) -> &O {
        &self.ops
    }

    /// Turns graph padding (and graph replay, where the device has graphs)
    /// on or off for later steps.
    pub fn set_graphs(&mut self, on: bool) {
        self.cfg.graphs = on;
    }

    pub fn limits(&self) -> &PlanLimits {
        &self.cfg.limits
    }

    /// Packs `seqs`, runs the step, returns the wanted logits rows.
    fn step(&mut self, seqs: &[SeqBatch<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let wanted = self.run(seqs)?;
        if wanted == 0 {
            return Ok(Vec::new());
        }
        let vocab = self.state.model.cfg.vocab_size;
        let logits = self
            .ops
            .read_logits(&self.state.bufs.logits, 0..wanted * vocab)?;
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// [`Self::step`], with the rows that want only a token sampled on the
    /// device: only their ids come back, and the logits of the rest (rows
    /// needing the host, rows the device hands back).
    fn step_rows(
        &mut self,
        seqs: &[SeqBatch<'_>],
        wants: &[RowWant],
    ) -> Result<Vec<RowOut>, ModelError> {
        if wants.iter().all(|w| *w == RowWant::Logits) {
            return Ok(self.step(seqs)?.into_iter().map(RowOut::Logits).collect());
        }
        let wanted = self.run(seqs)?;
        if wanted != wants.len() {
            return Err(ModelError::Format(format!(
                "{} rows asked for, {wanted} sequences want logits",
                wants.len()
            )));
        }
        let vocab = self.state.model.cfg.vocab_size;
        // Rows wanting logits are sampled greedily too (an argmax, cheap
        // beside the LM head) so that one launch covers the step.
        let params: Vec<RowSampling> = wants
            .iter()
            .map(|w| match w {
                RowWant::Token(rules) => *rules,
                RowWant::Logits => RowSampling {
                    top_p: 1.0,
                    ..RowSampling::default()
                },
            })
            .collect();
        let Self { ops, state, .. } = self;
        let logits = &state.bufs.logits;
        let ids = ops.sample(logits, vocab, &params)?;
        wants
            .iter()
            .zip(ids)
            .enumerate()
            .map(|(r, (want, id))| match (want, u32::try_from(id)) {
                (RowWant::Token(_), Ok(id)) => Ok(RowOut::Token(id)),
                // HOST_SAMPLES (or a row that needs the host anyway).
                _ => ops
                    .read_logits(logits, r * vocab..(r + 1) * vocab)
                    .map(RowOut::Logits),
            })
            .collect()
    }

    /// Packs `seqs` and runs the step; returns how many logits rows it
    /// computed (the wanted ones, first in the logits buffer).
    fn run(&mut self, seqs: &[SeqBatch<'_>]) -> Result<usize, ModelError> {
        let vocab = self.state.model.cfg.vocab_size;
        for s in seqs {
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(ModelError::Format(format!(
                    "token id {bad} is outside the vocabulary of {vocab}"
                )));
            }
        }
        let plan = StepPlan::pack(seqs, &self.cfg.limits, self.cfg.graphs)
            .map_err(|e| ModelError::Format(e.to_string()))?;
        if plan.real_tokens == 0 {
            return Ok(0);
        }
        let wanted = plan.logits_rows.len();
        // A graph computes a fixed number of logits rows: the bucket's, the
        // extra ones repeating row 0 and never read.
        let mut logits_rows = plan.logits_rows.clone();
        if let Some(bucket) = plan.graph_bucket {
            logits_rows.resize(bucket, 0);
        }
        let Self { ops, state, .. } = self;
        let ids = &mut state.bufs.ids;
        ops.write_ids(&mut ids.tokens, &plan.tokens)?;
        ops.write_ids(&mut ids.positions, &plan.positions)?;
        ops.write_ids(&mut ids.slot_mapping, &plan.slot_mapping)?;
        ops.write_ids(&mut ids.block_tables, &plan.block_tables)?;
        ops.write_ids(&mut ids.seq_lens, &plan.seq_lens)?;
        ops.write_ids(&mut ids.query_start, &plan.query_start)?;
        ops.write_ids(&mut ids.logits_rows, &logits_rows)?;
        state.shape = StepShape {
            rows: plan.rows(),
            seqs: plan.seqs(),
            logits_rows: logits_rows.len(),
            max_blocks_per_seq: self.cfg.limits.max_blocks_per_seq,
            max_query_len: plan.max_query_len,
            max_seq_len: plan.max_seq_len,
        };
        match plan.graph_bucket {
            Some(bucket) => ops.run_as_graph(bucket, state, &mut run_step::<O>)?,
            None => run_step(ops, state)?,
        }
        Ok(wanted)
    }
}

/// The device work of one step, from token ids to logits, for the shape in
/// `state.shape`. Launches only: nothing here waits for the device, so a
/// graph can capture it whole.
fn run_step<O: DeviceOps>(ops: &mut O, state: &mut DeviceState<O>) -> Result<(), ModelError> {
    let DeviceState {
        model,
        kv,
        bufs,
        attn,
        shape,
    } = state;
    let cfg = &model.cfg;
    let (rows, h, ff) = (shape.rows, cfg.hidden_size, cfg.intermediate_size);
    let norm = NormArgs {
        eps: cfg.rms_norm_eps,
        rows,
        dim: h,
    };
    let step = StepCtx {
        ids: &bufs.ids,
        shape,
        attn,
    };
    ops.embedding(&model.embed, &bufs.ids.tokens, rows, &mut bufs.hidden)?;
    let Some(first) = model.layers.first() else {
        return Err(ModelError::Config("the model has no layers".into()));
    };
    ops.rms_norm(&bufs.hidden, None, &first.attn_norm, norm, &mut bufs.normed)?;
    let n_layers = model.layers.len();
    for (i, (layer, layer_kv)) in model.layers.iter().zip(kv.iter_mut()).enumerate() {
        ops.gemm(&bufs.normed, &layer.wqkv, rows, &mut bufs.qkv)?;
        let bias = layer.bqkv.as_ref();
        ops.rope_kv_write(&bufs.qkv, bias, &model.rope, layer_kv, step, &mut bufs.q)?;
        ops.attention(&bufs.q, layer_kv, step, &mut bufs.attn)?;
        ops.gemm(&bufs.attn, &layer.wo, rows, &mut bufs.proj)?;
        // The residual add after attention fused with the norm before the MLP.
        ops.add_rms_norm(
            &mut bufs.hidden,
            &bufs.proj,
            &layer.ffn_norm,
            norm,
            &mut bufs.normed,
        )?;
        ops.gemm(&bufs.normed, &layer.w_gate_up, rows, &mut bufs.gate_up)?;
        ops.silu_mul(&bufs.gate_up, rows, ff, &mut bufs.ffn_act)?;
        ops.gemm(&bufs.ffn_act, &layer.w_down, rows, &mut bufs.proj)?;
        match model.layers.get(i + 1) {
            // ... and after the MLP with the next layer's first norm.
            Some(next) => ops.add_rms_norm(
                &mut bufs.hidden,
                &bufs.proj,
                &next.attn_norm,
                norm,
                &mut bufs.normed,
            )?,
            None => {
                debug_assert_eq!(i + 1, n_layers);
                ops.add(&mut bufs.hidden, &bufs.proj, rows * h)?
            }
        }
    }
    // The final norm and LM head only for the rows whose logits are wanted.
    let n = shape.logits_rows;
    if n == 0 {
        return Ok(());
    }
    let head_norm = NormArgs { rows: n, ..norm };
    let wanted = Some(&bufs.ids.logits_rows);
    ops.rms_norm(
        &bufs.hidden,
        wanted,
        &model.norm,
        head_norm,
        &mut bufs.head_normed,
    )?;
    let head = model.lm_head.as_ref().unwrap_or(&model.embed);
    ops.gemm_logits(&bufs.head_normed, head, n, &mut bufs.logits)
}

impl<O> Executor for DeviceExecutor<O>
where
    O: DeviceOps + Send,
    O::Buf: Send,
    O::Mat: Send,
    O::Ids: Send,
    O::Floats: Send,
    O::Kv: Send,
{
    fn execute(&mut self, seqs: &[SeqBatch<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.step(seqs)
    }

    fn execute_rows(
        &mut self,
        seqs: &[SeqBatch<'_>],
        wants: &[RowWant],
    ) -> Result<Vec<RowOut>, ModelError> {
        self.step_rows(seqs, wants)
    }

    fn reset(&mut self) -> Result<(), ModelError> {
        let Self { ops, state, .. } = self;
        for layer in &mut state.kv {
            ops.zero(&mut layer.k)?;
            ops.zero(&mut layer.v)?;
        }
        Ok(())
    }

    fn num_kv_blocks(&self) -> usize {
        self.cfg.limits.num_blocks
    }

    fn block_size(&self) -> usize {
        self.cfg.limits.block_size
    }

    fn vocab_size(&self) -> usize {
        self.state.model.cfg.vocab_size
    }
}

#[cfg(test)]
impl DeviceExecutor<super::CpuOps> {
    /// Whether every K and V value is zero (the state after `reset`).
    pub(crate) fn state_is_zero_for_tests(&self) -> bool {
        self.state
            .kv
            .iter()
            .all(|l| l.k.iter().chain(&l.v).all(|&v| v == 0.0))
    }
}
