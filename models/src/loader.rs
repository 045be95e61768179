//! One entry point from a path on disk to a runnable chat model: a GGUF file
//! or a Hugging Face folder becomes weights, tokenizer and chat template.

use std::path::Path;

use sluice_kernels::quant::dequantize_row;
use sluice_kernels::Matrix;

use crate::chat_template::ChatTemplate;
use crate::config::LlamaConfig;
use crate::gguf::GgufFile;
use crate::hf::SafetensorsFiles;
use crate::llama::{Llama, LoadKnobs, WeightSource};
use crate::tokenizer::Tokenizer;
use crate::ModelError;

/// A loaded chat model and everything needed to talk to it.
pub struct LoadedLlm {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    /// `None` when the model ships no template (plain completion models).
    pub chat_template: Option<ChatTemplate>,
    /// A name for logs and `/v1/models` when the config gives none.
    pub default_name: String,
}

impl WeightSource for GgufFile {
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn matrix(&self, name: &str) -> Result<Matrix, ModelError> {
        let (info, bytes) = self.tensor(name)?;
        let dtype = info.ggml_type.weight_dtype().ok_or_else(|| {
            ModelError::Unsupported(format!("tensor {name}: GGML type {}", info.ggml_type.0))
        })?;
        let [cols, rows] = info.dims[..] else {
            return Err(ModelError::Format(format!(
                "{name} has dims {:?}, expected 2-D",
                info.dims
            )));
        };
        Ok(Matrix::from_raw(
            dtype,
            rows as usize,
            cols as usize,
            bytes.to_vec(),
        )?)
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let (info, bytes) = self.tensor(name)?;
        let dtype = info.ggml_type.weight_dtype().ok_or_else(|| {
            ModelError::Unsupported(format!("tensor {name}: GGML type {}", info.ggml_type.0))
        })?;
        let n: u64 = info.dims.iter().product();
        let mut out = vec![0.0; n as usize];
        dequantize_row(dtype, bytes, &mut out);
        Ok(out)
    }
}

/// Loads a chat model from a `.gguf` file or a Hugging Face folder.
/// `progress(done, total)` reports layers loaded.
pub fn load_llm(
    path: &Path,
    knobs: LoadKnobs,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LoadedLlm, ModelError> {
    let default_name = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_else(|| "model".into());
    if path.is_dir() {
        return load_hf_folder(path, knobs, progress, default_name);
    }
    if !path.exists() {
        return Err(ModelError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    }
    let gguf = GgufFile::open(path)?;
    let cfg = LlamaConfig::from_gguf(&gguf)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let chat_template = template_for(&tokenizer)?;
    let model = Llama::load(cfg, &gguf, knobs, progress)?;
    Ok(LoadedLlm {
        model,
        tokenizer,
        chat_template,
        default_name,
    })
}

fn load_hf_folder(
    dir: &Path,
    knobs: LoadKnobs,
    progress: &mut dyn FnMut(usize, usize),
    default_name: String,
) -> Result<LoadedLlm, ModelError> {
    let config_path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
    let cfg = LlamaConfig::from_hf_json(&text)?;
    let tok_config = dir.join("tokenizer_config.json");
    let tokenizer = Tokenizer::from_hf_files(
        &dir.join("tokenizer.json"),
        tok_config.exists().then_some(tok_config.as_path()),
    )?;
    let chat_template = template_for(&tokenizer)?;
    let files = SafetensorsFiles::open_folder(dir)?;
    let model = Llama::load(cfg, &files, knobs, progress)?;
    Ok(LoadedLlm {
        model,
        tokenizer,
        chat_template,
        default_name,
    })
}

fn template_for(tokenizer: &Tokenizer) -> Result<Option<ChatTemplate>, ModelError> {
    tokenizer
        .chat_template_source()
        .map(|src| ChatTemplate::new(src, tokenizer.bos_token(), tokenizer.eos_token()))
        .transpose()
}
