//! How much device memory a model takes, and how many KV blocks fit beside
//! it: weights (bf16) + the step's activation buffers + library workspace,
//! the rest of the free memory (less a safety margin) becomes KV blocks.

use sluice_models::LlamaConfig;

use super::plan::PlanLimits;

/// How the KV cache stores an element (`[models.engine] kv_dtype`): the
/// kernels crate's type, so sizing and the kernels agree on bytes.
pub use sluice_kernels::cuda_twin::KvDType;

/// The shape facts sizing needs, named (no positional tuples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The LM head is the embedding (no second vocab x hidden matrix).
    pub tied_head: bool,
    /// Q/K/V biases (Qwen2).
    pub qkv_bias: bool,
}

impl ModelShape {
    pub fn of(cfg: &LlamaConfig) -> Self {
        Self {
            vocab: cfg.vocab_size,
            hidden: cfg.hidden_size,
            intermediate: cfg.intermediate_size,
            layers: cfg.num_layers,
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            tied_head: cfg.tie_word_embeddings,
            qkv_bias: cfg.attention_bias,
        }
    }

    /// Llama-3.1-8B: the shape of the device check's dummy-weight model.
    pub fn llama31_8b() -> Self {
        Self {
            vocab: 128_256,
            hidden: 4096,
            intermediate: 14_336,
            layers: 32,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            tied_head: false,
            qkv_bias: false,
        }
    }

    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    pub fn qkv_dim(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }

    /// Weight values of one layer's matrices (norms and biases excluded).
    pub fn layer_matrix_params(&self) -> usize {
        let h = self.hidden;
        h * self.qkv_dim() + self.q_dim() * h + 3 * h * self.intermediate
    }

    /// Every value the device holds as weights: matrices, norms, biases.
    pub fn params(&self) -> usize {
        let per_layer = self.layer_matrix_params()
            + 2 * self.hidden
            + if self.qkv_bias { self.qkv_dim() } else { 0 };
        let heads = if self.tied_head { 1 } else { 2 };
        self.layers * per_layer + heads * self.vocab * self.hidden + self.hidden
    }

    /// Weight values read by one decode step: every layer matrix and the LM
    /// head (the embedding is gathered, a few rows only). The numerator of
    /// the bandwidth roofline.
    pub fn params_read_per_step(&self) -> usize {
        self.layers * self.layer_matrix_params() + self.vocab * self.hidden
    }

    /// KV bytes one token takes across all layers (K and V).
    pub fn kv_bytes_per_token(&self, dtype: KvDType) -> usize {
        2 * self.layers * self.kv_dim() * dtype.bytes()
    }
}

/// One device buffer of the step plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSpec {
    pub name: &'static str,
    pub elems: usize,
    pub elem_bytes: usize,
}

impl BufferSpec {
    pub fn bytes(&self) -> usize {
        self.elems * self.elem_bytes
    }
}

/// The buffers one step needs, sized for the largest step the limits allow;
/// smaller steps (each decode bucket, each prefill chunk) use a prefix of
/// each, so a captured graph's addresses stay valid for every later step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferPlan {
    pub buffers: Vec<BufferSpec>,
}

impl BufferPlan {
    /// `act_bytes`: bytes of one activation element (2 for bf16, 4 for f32).
    pub fn for_limits(shape: &ModelShape, limits: &PlanLimits, act_bytes: usize) -> Self {
        Self::for_step(
            shape,
            limits.max_tokens,
            limits.max_seqs,
            limits.max_blocks_per_seq,
            act_bytes,
        )
    }

    /// The buffers for a step of `rows` tokens over `seqs` sequences.
    pub fn for_step(
        shape: &ModelShape,
        rows: usize,
        seqs: usize,
        blocks_per_seq: usize,
        act_bytes: usize,
    ) -> Self {
        let h = shape.hidden;
        let act = |name, elems| BufferSpec {
            name,
            elems,
            elem_bytes: act_bytes,
        };
        let ids = |name, elems| BufferSpec {
            name,
            elems,
            elem_bytes: 4,
        };
        Self {
            buffers: vec![
                // The residual stream stays f32, as the CPU model keeps it.
                BufferSpec {
                    name: "hidden",
                    elems: rows * h,
                    elem_bytes: 4,
                },
                act("normed", rows * h),
                act("qkv", rows * shape.qkv_dim()),
                act("q", rows * shape.q_dim()),
                act("attn", rows * shape.q_dim()),
                act("proj", rows * h),
                act("gate_up", rows * 2 * shape.intermediate),
                act("ffn_act", rows * shape.intermediate),
                act("head_normed", seqs * h),
                // Logits stay f32: a bf16 logit has 3 significant digits,
                // enough to flip a close argmax.
                BufferSpec {
                    name: "logits",
                    elems: seqs * shape.vocab,
                    elem_bytes: 4,
                },
                ids("tokens", rows),
                ids("positions", rows),
                ids("slot_mapping", rows),
                ids("block_tables", seqs * blocks_per_seq),
                ids("seq_lens", seqs),
                ids("query_start", seqs + 1),
                ids("logits_rows", seqs),
            ],
        }
    }

    pub fn bytes(&self) -> usize {
        self.buffers.iter().map(BufferSpec::bytes).sum()
    }
}

/// What the sizing sees and keeps back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryBudget {
    /// Free device memory before anything of this model is allocated.
    pub free_bytes: usize,
    pub total_bytes: usize,
    /// The share of the card's total memory this engine may use, counting
    /// what others already hold as used (vLLM's `gpu_memory_utilization`).
    pub utilization: f64,
    /// cuBLAS workspace, graph memory and allocator slack.
    pub workspace_bytes: usize,
}

impl MemoryBudget {
    /// Defaults for a card with `free` of `total` bytes free: use 90% of it
    /// and keep 512 MiB for cuBLAS, graphs and the driver's own needs.
    pub fn for_card(free_bytes: usize, total_bytes: usize) -> Self {
        Self {
            free_bytes,
            total_bytes,
            utilization: 0.90,
            workspace_bytes: 512 << 20,
        }
    }
}

/// Where the memory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    pub weight_bytes: usize,
    pub activation_bytes: usize,
    pub workspace_bytes: usize,
    pub kv_block_bytes: usize,
    pub num_blocks: usize,
}

impl MemoryPlan {
    pub fn kv_bytes(&self) -> usize {
        self.num_blocks * self.kv_block_bytes
    }
}

/// Why a model does not fit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SizingError {
    #[error(
        "the model needs {need_gib:.2} GiB on the device (weights {weights_gib:.2} GiB, step \
         buffers {activations_gib:.2} GiB, workspace {workspace_gib:.2} GiB) plus at least one KV \
         block, but only {usable_gib:.2} GiB may be used ({free_gib:.2} GiB free, \
         {utilization:.0}% of the card allowed); use a smaller model, fewer \
         max_num_batched_tokens, or a card with more memory"
    )]
    DoesNotFit {
        need_gib: f64,
        weights_gib: f64,
        activations_gib: f64,
        workspace_gib: f64,
        usable_gib: f64,
        free_gib: f64,
        utilization: f64,
    },
}

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes of one KV block (K and V of every layer).
pub fn kv_block_bytes(shape: &ModelShape, block_size: usize, dtype: KvDType) -> usize {
    block_size * shape.kv_bytes_per_token(dtype)
}

/// Sizes the KV cache from free memory: what is left after weights (bf16),
/// step buffers and workspace, within the utilisation cap, in whole blocks.
pub fn plan_memory(
    shape: &ModelShape,
    limits: &PlanLimits,
    kv_dtype: KvDType,
    budget: &MemoryBudget,
) -> Result<MemoryPlan, SizingError> {
    let weight_bytes = 2 * shape.params();
    let activation_bytes = BufferPlan::for_limits(shape, limits, 2).bytes();
    let block = kv_block_bytes(shape, limits.block_size, kv_dtype);
    // Memory others hold counts against the cap: with 90% allowed and 30%
    // already taken, 60% of the card is ours at most.
    let held_by_others = budget.total_bytes.saturating_sub(budget.free_bytes);
    let cap = (budget.total_bytes as f64 * budget.utilization) as usize;
    let usable = cap.saturating_sub(held_by_others).min(budget.free_bytes);
    let fixed = weight_bytes + activation_bytes + budget.workspace_bytes;
    let num_blocks = usable.saturating_sub(fixed) / block.max(1);
    if num_blocks == 0 {
        return Err(SizingError::DoesNotFit {
            need_gib: fixed as f64 / GIB,
            weights_gib: weight_bytes as f64 / GIB,
            activations_gib: activation_bytes as f64 / GIB,
            workspace_gib: budget.workspace_bytes as f64 / GIB,
            usable_gib: usable as f64 / GIB,
            free_gib: budget.free_bytes as f64 / GIB,
            utilization: budget.utilization * 100.0,
        });
    }
    Ok(MemoryPlan {
        weight_bytes,
        activation_bytes,
        workspace_bytes: budget.workspace_bytes,
        kv_block_bytes: block,
        num_blocks,
    })
}
