//! Hugging Face model folders: `config.json`, `tokenizer.json`,
//! `tokenizer_config.json` and `*.safetensors` (single file or sharded with
//! `model.safetensors.index.json`), f32/f16/bf16.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use sluice_kernels::quant::dequantize_row;
use sluice_kernels::{Matrix, WeightDType};

use crate::llama::WeightSource;
use crate::ModelError;

/// Memory-mapped safetensors shards of one model, with tensors found by name.
pub struct SafetensorsFiles {
    shards: Vec<Mmap>,
    /// Every tensor's place, read from the headers once at open.
    index: HashMap<String, TensorEntry>,
}

struct TensorEntry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range inside the shard's mapping.
    bytes: std::ops::Range<usize>,
}

impl SafetensorsFiles {
    /// Opens `model.safetensors`, or every shard that `model.safetensors.index.json` names,
    /// or, failing both, every `*.safetensors` file in the folder.
    pub fn open_folder(dir: &Path) -> Result<Self, ModelError> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::Format(format!("{}: {e}", index_path.display())))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    ModelError::Format(format!("{} has no weight_map", index_path.display()))
                })?;
            let mut names: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| ModelError::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            found
        };
        if files.is_empty() {
            return Err(ModelError::Format(format!(
                "no *.safetensors files in {}",
                dir.display()
            )));
        }
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
            // SAFETY: read-only mapping of a file we do not modify.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
            for (name, view) in st.tensors() {
                let data = view.data();
                let start = data.as_ptr() as usize - mmap.as_ptr() as usize;
                let entry = TensorEntry {
                    shard: i,
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    bytes: start..start + data.len(),
                };
                index.insert(name, entry);
            }
            shards.push(mmap);
        }
        Ok(Self { shards, index })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The tensor's dtype, shape and bytes.
    pub fn raw(&self, name: &str) -> Result<(WeightDType, Vec<usize>, &[u8]), ModelError> {
        let entry = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let dtype = match entry.dtype {
            Dtype::F32 => WeightDType::F32,
            Dtype::F16 => WeightDType::F16,
            Dtype::BF16 => WeightDType::BF16,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "tensor {name} is {other:?}; Sluice reads f32, f16 and bf16 safetensors"
                )))
            }
        };
        let bytes = &self.shards[entry.shard][entry.bytes.clone()];
        Ok((dtype, entry.shape.clone(), bytes))
    }

    pub fn matrix(&self, name: &str) -> Result<Matrix, ModelError> {
        let (dtype, shape, bytes) = self.raw(name)?;
        let [rows, cols] = shape[..] else {
            return Err(ModelError::Format(format!(
                "{name} has shape {shape:?}, expected 2-D"
            )));
        };
        Ok(Matrix::from_raw(dtype, rows, cols, bytes.to_vec())?)
    }

    pub fn vector(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let (dtype, shape, bytes) = self.raw(name)?;
        let n: usize = shape.iter().product();
        let mut out = vec![0.0; n];
        dequantize_row(dtype, bytes, &mut out);
        Ok(out)
    }
}

/// Maps the GGUF tensor names the model asks for to HF Llama names.
pub fn hf_name(gguf_name: &str) -> String {
    let simple = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return s.to_string();
    }
    let Some(rest) = gguf_name.strip_prefix("blk.") else {
        return gguf_name.to_string();
    };
    let Some((layer, leaf)) = rest.split_once('.') else {
        return gguf_name.to_string();
    };
    let hf_leaf = match leaf {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        other => other,
    };
    format!("model.layers.{layer}.{hf_leaf}")
}

impl WeightSource for SafetensorsFiles {
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(&hf_name(name))
    }
    fn matrix(&self, name: &str) -> Result<Matrix, ModelError> {
        SafetensorsFiles::matrix(self, &hf_name(name))
    }
    fn vector(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        SafetensorsFiles::vector(self, &hf_name(name))
    }
}
