//! Tiny random-weight models written to disk in real formats, so that tests
//! (here and in the runtime) exercise the real loaders. They test mechanics
//! (batching, paging, preemption), not language.

use std::path::Path;

use sluice_kernels::quant::quantize_row;
use sluice_kernels::WeightDType;

use crate::gguf::{GgmlType, GgufValue, GgufWriter};
use crate::ModelError;

/// Shape of the tiny model: 2 layers, hidden 64, GQA 4:2, a byte-level vocab.
#[derive(Debug, Clone, Copy)]
pub struct TinySpec {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub layers: usize,
    pub seed: u64,
    /// Qwen2 flavour: q/k/v biases, half-split RoPE in GGUF too.
    pub qwen2: bool,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            ffn: 128,
            layers: 2,
            seed: 7,
            qwen2: false,
        }
    }
}

/// 256 byte tokens (GPT-2's byte-to-unicode alphabet) plus ChatML specials.
pub const TINY_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
pub const TINY_VOCAB: usize = 256 + TINY_SPECIALS.len();

fn byte_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = ('!' as u32..='~' as u32).collect();
    printable.extend('¡' as u32..='¬' as u32);
    printable.extend('®' as u32..='ÿ' as u32);
    let mut map = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map[b as usize] = char::from_u32(c).unwrap_or('?');
    }
    map
}

/// xorshift64* for random test weights, shared with `testing_encoder`.
pub(crate) struct Rng(u64);
impl Rng {
    /// A generator whose stream depends only on `seed`.
    pub(crate) fn seeded(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [-1, 1).
    pub(crate) fn next(&mut self) -> f32 {
        // xorshift64*: deterministic and dependency-free.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// The tiny model's tensors by GGUF name, as (rows, cols, values) in HF
/// orientation (no Q/K permutation).
pub fn tiny_tensors(spec: &TinySpec) -> Vec<(String, usize, usize, Vec<f32>)> {
    let mut rng = Rng::seeded(spec.seed);
    let hd = spec.hidden / spec.heads;
    let (h, q, kv, ff) = (spec.hidden, spec.heads * hd, spec.kv_heads * hd, spec.ffn);
    let mut t = Vec::new();
    let s = 0.5 / (h as f32).sqrt();
    t.push((
        "token_embd.weight".into(),
        TINY_VOCAB,
        h,
        rng.vec(TINY_VOCAB * h, 1.0),
    ));
    for i in 0..spec.layers {
        let mut add = |name: &str, r: usize, c: usize, sc: f32| {
            let v = rng.vec(r * c, sc);
            t.push((format!("blk.{i}.{name}"), r, c, v));
        };
        add("attn_q.weight", q, h, s);
        add("attn_k.weight", kv, h, s);
        add("attn_v.weight", kv, h, s);
        if spec.qwen2 {
            add("attn_q.bias", 1, q, 0.5);
            add("attn_k.bias", 1, kv, 0.5);
            add("attn_v.bias", 1, kv, 0.5);
        }
        add("attn_output.weight", h, q, s);
        add("ffn_gate.weight", ff, h, s);
        add("ffn_up.weight", ff, h, s);
        add("ffn_down.weight", h, ff, 0.5 / (ff as f32).sqrt());
        let norm: Vec<f32> = (0..h).map(|_| 1.0 + 0.1 * rng.next()).collect();
        t.push((format!("blk.{i}.attn_norm.weight"), 1, h, norm.clone()));
        t.push((format!("blk.{i}.ffn_norm.weight"), 1, h, norm));
    }
    t.push(("output_norm.weight".into(), 1, h, vec![1.0; h]));
    t
}

/// GGUF's llama converter permutes Q/K rows so interleaved RoPE equals HF's half-split.
fn permute_for_gguf(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for (half, dst) in [(0, 2 * i), (1, 2 * i + 1)] {
                let src_row = h * hd + half * hd / 2 + i;
                let dst_row = h * hd + dst;
                out[dst_row * cols..(dst_row + 1) * cols]
                    .copy_from_slice(&w[src_row * cols..(src_row + 1) * cols]);
            }
        }
    }
    out
}

/// Writes the tiny model as a GGUF file with a byte-level BPE tokenizer and a
/// ChatML template; matrices stored as `dtype`.
pub fn write_tiny_gguf(path: &Path, spec: &TinySpec, dtype: WeightDType) -> Result<(), ModelError> {
    let hd = spec.hidden / spec.heads;
    let mut w = GgufWriter::default();
    let u = |v: usize| GgufValue::U32(v as u32);
    let arch = if spec.qwen2 { "qwen2" } else { "llama" };
    let key = |k: &str| format!("{arch}.{k}");
    w.meta("general.architecture", GgufValue::String(arch.into()))
        .meta("general.name", GgufValue::String("tiny".into()))
        .meta(&key("block_count"), u(spec.layers))
        .meta(&key("embedding_length"), u(spec.hidden))
        .meta(&key("feed_forward_length"), u(spec.ffn))
        .meta(&key("attention.head_count"), u(spec.heads))
        .meta(&key("attention.head_count_kv"), u(spec.kv_heads))
        .meta(&key("rope.dimension_count"), u(hd))
        .meta(&key("context_length"), u(512))
        .meta(&key("rope.freq_base"), GgufValue::F32(10000.0))
        .meta(
            &key("attention.layer_norm_rms_epsilon"),
            GgufValue::F32(1e-5),
        );
    let b2u = byte_to_unicode();
    let mut tokens: Vec<GgufValue> = b2u
        .iter()
        .map(|c| GgufValue::String(c.to_string()))
        .collect();
    let mut types: Vec<GgufValue> = vec![GgufValue::I32(1); 256];
    for s in TINY_SPECIALS {
        tokens.push(GgufValue::String(s.into()));
        types.push(GgufValue::I32(3));
    }
    w.meta("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
        .meta("tokenizer.ggml.pre", GgufValue::String("default".into()))
        .meta("tokenizer.ggml.tokens", GgufValue::Array(tokens))
        .meta("tokenizer.ggml.token_type", GgufValue::Array(types))
        .meta("tokenizer.ggml.merges", GgufValue::Array(Vec::new()))
        .meta("tokenizer.ggml.bos_token_id", u(257))
        .meta("tokenizer.ggml.eos_token_id", u(258))
        .meta(
            "tokenizer.chat_template",
            GgufValue::String(
                "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}\
                 {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                    .into(),
            ),
        );
    for (name, rows, cols, mut values) in tiny_tensors(spec) {
        // Only the llama converter permutes; Qwen2 GGUFs use NEOX RoPE as is.
        if spec.qwen2 {
        } else if name.ends_with("attn_q.weight") {
            values = permute_for_gguf(&values, rows, cols, spec.heads);
        } else if name.ends_with("attn_k.weight") {
            values = permute_for_gguf(&values, rows, cols, spec.kv_heads);
        }
        let is_vector = rows == 1;
        let ty = if is_vector { WeightDType::F32 } else { dtype };
        let bytes = quantize_row(ty, &values)?;
        let dims: Vec<u64> = if is_vector {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        w.tensor(&name, &dims, GgmlType::from_weight_dtype(ty), bytes);
    }
    w.write(path)
}

/// How [`write_tiny_hf`] stores the weights.
#[derive(Debug, Clone, Copy)]
pub struct HfLayout {
    /// F32, F16 or BF16.
    pub dtype: WeightDType,
    /// More than one writes `model-0000i-of-0000n.safetensors` plus the index.
    pub shards: usize,
}

impl Default for HfLayout {
    fn default() -> Self {
        Self {
            dtype: WeightDType::F32,
            shards: 1,
        }
    }
}

/// Writes the tiny model as an HF safetensors folder with `config.json`.
/// No tokenizer files: load it with `Llama::load`, not `load_llm`.
pub fn write_tiny_hf(dir: &Path, spec: &TinySpec, layout: HfLayout) -> Result<(), ModelError> {
    use safetensors::tensor::{Dtype, TensorView};
    let hd = spec.hidden / spec.heads;
    let config = serde_json::json!({
        "model_type": if spec.qwen2 { "qwen2" } else { "llama" },
        "vocab_size": TINY_VOCAB,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.ffn,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": hd,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "tie_word_embeddings": true
    });
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, config.to_string()).map_err(|e| ModelError::io(&cfg_path, e))?;
    let st_dtype = match layout.dtype {
        WeightDType::F32 => Dtype::F32,
        WeightDType::F16 => Dtype::F16,
        WeightDType::BF16 => Dtype::BF16,
        other => return Err(ModelError::Unsupported(format!("safetensors as {other:?}"))),
    };
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = tiny_tensors(spec)
        .into_iter()
        .map(|(name, rows, cols, values)| {
            let shape = if rows == 1 {
                vec![cols]
            } else {
                vec![rows, cols]
            };
            let data = quantize_row(layout.dtype, &values)?;
            Ok((crate::hf::hf_name(&name), shape, data))
        })
        .collect::<Result<_, ModelError>>()?;
    let shards = layout.shards.max(1);
    let per_shard = tensors.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in tensors.chunks(per_shard).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", i + 1)
        };
        let views = chunk
            .iter()
            .map(|(name, shape, data)| {
                weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
                TensorView::new(st_dtype, shape.clone(), data)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| ModelError::Format(format!("{name}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let path = dir.join(&file);
        safetensors::serialize_to_file(views, None, &path)
            .map_err(|e| ModelError::Format(format!("writing {}: {e}", path.display())))?;
    }
    if shards > 1 {
        let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, index.to_string()).map_err(|e| ModelError::io(&path, e))?;
    }
    Ok(())
}
