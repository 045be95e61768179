//! The engine-level workload, built once as token ids so that every side of a
//! comparison computes exactly the same prompts: a long prompt for prefill
//! (one distinct prompt per repeat, so no cache can serve a repeat) and short
//! distinct prompts for the decode runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use sluice_models::gguf::GgufFile;
use sluice_models::Tokenizer;

use crate::prompts::token_prompt;
use crate::report::WorkloadReport;

/// The workload knobs shared by `engine` and `llama-cpp`.
#[derive(Args, Debug, Clone)]
pub struct WorkloadArgs {
    /// A GGUF file or a Hugging Face folder [default: the demo SmolLM2-135M GGUF
    /// fetched by scripts/fetch-models.sh]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Compute threads for each side [default: one per core]
    #[arg(long)]
    pub threads: Option<usize>,
    /// Prompt length of the prefill measurement, in tokens
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Prefill runs (the median is reported)
    #[arg(long, default_value_t = 3)]
    pub prefill_repeats: usize,
    /// Sequences decoding at once, one run each (comma-separated)
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    pub concurrency: Vec<usize>,
    /// Tokens each decode sequence generates (EOS ignored)
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Prompt length of each decode sequence, in tokens
    #[arg(long, default_value_t = 32)]
    pub decode_prompt_tokens: usize,
    /// Seed of the prompt words
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the results as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write the markdown table here
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

impl WorkloadArgs {
    pub fn model_path(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(sluice_models::demo_chat_model_path)
    }

    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub fn max_concurrency(&self) -> usize {
        self.concurrency.iter().copied().max().unwrap_or(1)
    }
}

pub struct Workload {
    /// One prompt per prefill repeat, each `prompt_tokens` long.
    pub prefill: Vec<Vec<u32>>,
    /// `max(concurrency)` prompts, each `decode_prompt_tokens` long.
    pub decode: Vec<Vec<u32>>,
    /// A short request that warms caches and thread pools before measuring.
    pub warmup: Vec<u32>,
    pub concurrency: Vec<usize>,
    pub max_tokens: usize,
    pub prompt_tokens: usize,
    pub decode_prompt_tokens: usize,
}

impl Workload {
    pub fn build(tok: &Tokenizer, args: &WorkloadArgs) -> Result<Self> {
        if args.concurrency.is_empty() || args.concurrency.contains(&0) {
            bail!(
                "--concurrency needs positive values, got {:?}",
                args.concurrency
            );
        }
        if args.max_tokens == 0 || args.prefill_repeats == 0 {
            bail!("--max-tokens and --prefill-repeats must be positive");
        }
        let prefill = (0..args.prefill_repeats)
            .map(|r| token_prompt(tok, 1000 + r, args.prompt_tokens, args.seed))
            .collect::<Result<Vec<_>>>()?;
        let decode = (0..args.max_concurrency())
            .map(|i| token_prompt(tok, i, args.decode_prompt_tokens, args.seed))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            prefill,
            decode,
            warmup: token_prompt(tok, 9999, 16, args.seed)?,
            concurrency: args.concurrency.clone(),
            max_tokens: args.max_tokens,
            prompt_tokens: args.prompt_tokens,
            decode_prompt_tokens: args.decode_prompt_tokens,
        })
    }

    pub fn report(&self, model: &Path) -> WorkloadReport {
        WorkloadReport {
            model: model.display().to_string(),
            prefill_prompt_tokens: self.prompt_tokens,
            prefill_repeats: self.prefill.len(),
            decode_prompt_tokens: self.decode_prompt_tokens,
            decode_max_tokens: self.max_tokens,
            concurrency: self.concurrency.clone(),
            sampling: "greedy (temperature 0), ignore_eos",
        }
    }
}

/// The model's tokenizer alone, without loading its weights.
pub fn load_tokenizer(model: &Path) -> Result<Tokenizer> {
    if model.is_dir() {
        let config = model.join("tokenizer_config.json");
        return Tokenizer::from_hf_files(
            &model.join("tokenizer.json"),
            config.exists().then_some(config.as_path()),
        )
        .with_context(|| format!("loading the tokenizer of {}", model.display()));
    }
    let gguf = open_gguf(model)?;
    Tokenizer::from_gguf(&gguf)
        .with_context(|| format!("loading the tokenizer of {}", model.display()))
}

fn open_gguf(model: &Path) -> Result<GgufFile> {
    if !model.exists() {
        bail!(
            "model {} not found; run scripts/fetch-models.sh chat, or pass --model",
            model.display()
        );
    }
    GgufFile::open(model).with_context(|| format!("opening {}", model.display()))
}

/// The type most of the model's matrices are stored in ("Q4_1"), for labels.
pub fn shipped_weights(model: &Path) -> String {
    if model.is_dir() {
        return "safetensors".into();
    }
    let Ok(gguf) = open_gguf(model) else {
        return "unknown".into();
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for info in gguf.tensors.values().filter(|t| t.dims.len() == 2) {
        let name = match info.ggml_type.weight_dtype() {
            Some(d) => format!("{d:?}"),
            None => format!("ggml type {}", info.ggml_type.0),
        };
        *counts.entry(name).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map_or_else(|| "unknown".into(), |(name, _)| name)
}
