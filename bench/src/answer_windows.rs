//! `sluice-bench answer-windows`: cuts each text of a `text,label` CSV into
//! the windows the stream guard scores, with the gateway's own window code
//! (`analyse::window`, `hold_back`, the demo chat model's tokens), and
//! writes them one JSON object a line: `{"row", "index", "label", "text"}`.
//!
//! Why: the answer head (`models/guard/minilm-answer-injection.*`) is
//! fitted on windows, since windows are what it scores; cutting them here
//! rather than in the data script keeps them byte for byte what a served
//! stream hands the guard (its overlap, its token boundaries).
//! `scripts/answer-guard-data.sh` picks from these lines.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use clap::Args;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::json;
use sluice_gateway::analyse::guard::AsyncAnalyser;
use sluice_gateway::analyse::Stop;

use crate::stream_guard_bench::stream_windows;

#[derive(Args, Debug)]
pub struct AnswerWindowsArgs {
    /// A `text,label` CSV (label 1: injection)
    #[arg(long)]
    csv: PathBuf,
    /// Where the windows go (JSON lines)
    #[arg(long)]
    out: PathBuf,
    /// The chat model whose tokenizer cuts the texts into tokens
    /// [default: the demo SmolLM2-135M GGUF]
    #[arg(long)]
    model: Option<PathBuf>,
    /// `hold_back` window, in tokens (the server's default)
    #[arg(long, default_value_t = 16)]
    window: usize,
}

/// Keeps each window's text, in the order the windows are made, and
/// passes them all.
struct Recording(Arc<Mutex<Vec<String>>>);

impl AsyncAnalyser for Recording {
    fn check(&self, text: String) -> BoxFuture<'static, Option<Stop>> {
        // As the served guard: a blank window is never scored.
        if !text.trim().is_empty() {
            if let Ok(mut all) = self.0.lock() {
                all.push(text);
            }
        }
        futures_util::future::ready(None).boxed()
    }
}

pub fn run(args: AnswerWindowsArgs) -> Result<()> {
    let model = args
        .model
        .clone()
        .unwrap_or_else(sluice_models::demo_chat_model_path);
    let tokenizer = crate::workload::load_tokenizer(&model)?;
    let data =
        sluice_gateway::guard::dataset::read_labelled_csv(&args.csv).map_err(|e| anyhow!(e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut total = 0;
    for (row, r) in data.rows.iter().enumerate() {
        let windows = Arc::new(Mutex::new(Vec::new()));
        let name = format!("row {}", row + 1);
        let recording: Arc<dyn AsyncAnalyser> = Arc::new(Recording(windows.clone()));
        stream_windows(&runtime, &tokenizer, &name, &r.text, args.window, recording)?;
        let windows = std::mem::take(&mut *windows.lock().map_err(|_| anyhow!("poisoned"))?);
        for (index, text) in windows.iter().enumerate() {
            let line =
                json!({"row": row, "index": index, "label": u8::from(r.injection), "text": text});
            writeln!(out, "{line}")?;
        }
        total += windows.len();
    }
    out.flush()?;
    eprintln!(
        "[answer-windows] {} texts -> {total} windows of {} tokens in {} (input sha256 {})",
        data.rows.len(),
        args.window,
        args.out.display(),
        data.sha256
    );
    Ok(())
}
