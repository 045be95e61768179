//! The decoder's hyper-parameters, resolved from GGUF metadata or an HF
//! `config.json` into one struct with no `Option`s left to interpret.

use serde::Deserialize;
use sluice_kernels::rope::{RopeScaling, RopeStyle};

use crate::gguf::{GgufFile, GgufValue};
use crate::ModelError;

/// Which variant of the Llama family; decides biases and naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, Mistral, SmolLM: no attention biases.
    Llama,
    /// Qwen2: biases on the q/k/v projections.
    Qwen2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub rope_scaling: Option<RopeScaling>,
    /// The context length the model was trained for.
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
}

impl LlamaConfig {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Checks the relations the forward pass relies on.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_layers == 0 {
            return bad("num_heads, num_kv_heads and num_layers must be positive".into());
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_heads ({}) must be a multiple of num_kv_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        Ok(())
    }

    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, ModelError> {
        let arch_name = gguf
            .get("general.architecture")
            .and_then(GgufValue::as_str)
            .ok_or_else(|| ModelError::Config("GGUF has no general.architecture".into()))?
            .to_string();
        let (architecture, rope_style) = match arch_name.as_str() {
            // The llama GGUF converter permutes Q/K rows so that GGML's normal
            // (interleaved) rotation reproduces HF's half-split one.
            "llama" | "mistral" => (Architecture::Llama, RopeStyle::Interleaved),
            "qwen2" => (Architecture::Qwen2, RopeStyle::HalfSplit),
            other => {
                return Err(ModelError::Unsupported(format!(
                    "GGUF architecture {other:?}; Sluice runs llama, mistral and qwen2"
                )))
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let req_u = |k: &str| -> Result<usize, ModelError> {
            gguf.get(&key(k))
                .and_then(GgufValue::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Config(format!("GGUF metadata {} is missing", key(k))))
        };
        let opt_f = |k: &str| {
            gguf.get(&key(k))
                .and_then(GgufValue::as_f64)
                .map(|v| v as f32)
        };
        let hidden_size = req_u("embedding_length")?;
        let num_heads = req_u("attention.head_count")?;
        let num_kv_heads = req_u("attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = req_u("attention.key_length")
            .or_else(|_| req_u("rope.dimension_count"))
            .unwrap_or(hidden_size / num_heads.max(1));
        let (embd, _) = gguf.tensor("token_embd.weight")?;
        let vocab_size = embd.dims.get(1).copied().unwrap_or(0) as usize;
        let rope_scaling = match gguf
            .get(&key("rope.scaling.type"))
            .and_then(GgufValue::as_str)
        {
            Some("linear") => {
                opt_f("rope.scaling.factor").map(|factor| RopeScaling::Linear { factor })
            }
            _ => None,
        };
        let cfg = Self {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: req_u("feed_forward_length")?,
            num_layers: req_u("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: opt_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: opt_f("rope.freq_base").unwrap_or(10_000.0),
            rope_style,
            rope_scaling,
            max_position_embeddings: req_u("context_length").unwrap_or(4096),
            tie_word_embeddings: !gguf.tensors.contains_key("output.weight"),
            attention_bias: gguf.tensors.contains_key("blk.0.attn_q.bias"),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_hf_json(text: &str) -> Result<Self, ModelError> {
        let raw: HfConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let model_type = raw.model_type.as_deref().unwrap_or("llama");
        let architecture = match model_type {
            "llama" | "mistral" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "config.json model_type {other:?}; Sluice runs llama, mistral and qwen2"
                )))
            }
        };
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let head_dim = raw
            .head_dim
            .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1));
        let rope_scaling = match &raw.rope_scaling {
            None => None,
            Some(s) => {
                let kind = s
                    .rope_type
                    .as_deref()
                    .or(s.kind.as_deref())
                    .unwrap_or("default");
                match kind {
                    "linear" => Some(RopeScaling::Linear {
                        factor: s.factor.unwrap_or(1.0),
                    }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: s.factor.unwrap_or(8.0),
                        low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                        high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                        original_max_position_embeddings: s
                            .original_max_position_embeddings
                            .unwrap_or(8192)
                            as f32,
                    }),
                    "default" => None,
                    other => {
                        return Err(ModelError::Unsupported(format!(
                            "config.json rope_scaling type {other:?}; supported: linear, llama3"
                        )))
                    }
                }
            }
        };
        let cfg = Self {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: raw.rope_theta.unwrap_or(10_000.0),
            rope_style: RopeStyle::HalfSplit,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            attention_bias: raw
                .attention_bias
                .unwrap_or(architecture == Architecture::Qwen2),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `config.json` as Hugging Face writes it (only the fields we use).
#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    rope_scaling: Option<HfRopeScaling>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
}

#[derive(Deserialize)]
struct HfRopeScaling {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<usize>,
}
