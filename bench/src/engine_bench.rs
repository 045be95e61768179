//! The Sluice side: the engine in this process, no HTTP in the way. Requests
//! go straight to [`EngineHandle::submit`]; one thread per sequence waits on
//! its event stream and stamps each token as it arrives.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use sluice_kernels::WeightDType;
use sluice_models::{load_llm, LoadKnobs};
use sluice_runtime::{
    Engine, EngineConfig, EngineEvent, EngineHandle, GenerateRequest, SamplingParams,
};

use crate::report::{DecodeReport, PrefillReport, PrefillRun, SeqTiming, SideReport};
use crate::workload::{shipped_weights, Workload};

/// Weight formats to compare: the file as shipped, or requantised at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Requant {
    /// The file's own formats
    #[value(name = "none")]
    None,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
}

impl Requant {
    fn dtype(self) -> Option<WeightDType> {
        match self {
            Self::None => None,
            Self::Q8_0 => Some(WeightDType::Q8_0),
            Self::Q4_0 => Some(WeightDType::Q4_0),
        }
    }
}

/// Engine knobs for the Sluice side.
#[derive(Args, Debug, Clone)]
pub struct SluiceArgs {
    /// Weight formats to run, one Sluice column each (comma-separated):
    /// none (as shipped), q8_0, q4_0
    #[arg(long, value_enum, value_delimiter = ',', default_value = "none")]
    pub requantize: Vec<Requant>,
    /// Tokens computed per engine step (decode tokens plus prefill chunks)
    #[arg(long, default_value_t = 512)]
    pub max_num_batched_tokens: usize,
    /// Share KV blocks of identical prefixes (off: every prefill run computes)
    #[arg(long)]
    pub prefix_caching: bool,
}

/// Loads the model with `requant`, runs the workload, stops the engine.
pub fn run_sluice(
    model: &Path,
    requant: Requant,
    args: &SluiceArgs,
    threads: usize,
    work: &Workload,
) -> Result<SideReport> {
    let weights = match requant.dtype() {
        None => format!("{} (as shipped)", shipped_weights(model)),
        Some(d) => format!("{d:?} (requantised at load)"),
    };
    let short = match requant.dtype() {
        None => shipped_weights(model),
        Some(d) => format!("{d:?}"),
    };
    let name = format!("sluice {short}");
    eprintln!("[sluice] loading {} as {weights}", model.display());
    let started = Instant::now();
    // A terminal gets a counter that moves in place; a log gets one line.
    let tty = std::io::stderr().is_terminal();
    let mut progress = |done: usize, total: usize| {
        if tty {
            eprint!("\r[sluice] loading layers {done}/{total}");
            let _ = std::io::stderr().flush();
        } else if done == total {
            eprint!("[sluice] loaded {total} layers");
        }
    };
    let loaded = load_llm(
        model,
        LoadKnobs {
            requantize: requant.dtype(),
            ..LoadKnobs::default()
        },
        &mut progress,
    )
    .with_context(|| format!("loading {}", model.display()))?;
    eprintln!();
    let cfg = EngineConfig {
        threads: Some(threads),
        max_num_batched_tokens: args.max_num_batched_tokens,
        max_num_seqs: EngineConfig::default()
            .max_num_seqs
            .max(work.concurrency.iter().copied().max().unwrap_or(1)),
        enable_prefix_caching: args.prefix_caching,
        ..EngineConfig::default()
    };
    let settings = json!({
        "threads": threads,
        "max_num_batched_tokens": cfg.max_num_batched_tokens,
        "max_num_seqs": cfg.max_num_seqs,
        "block_size": cfg.block_size,
        "kv_cache_bytes": cfg.kv_cache_bytes,
        "enable_prefix_caching": cfg.enable_prefix_caching,
    });
    let handle = Engine::start(loaded, cfg).context("starting the engine")?;
    let load_s = started.elapsed().as_secs_f64();
    eprintln!(
        "[sluice] {name}: loaded in {load_s:.2} s ({:.0} MB of weights, {threads} threads)",
        handle.info().weight_bytes as f64 / 1e6
    );

    run_batch(&handle, std::slice::from_ref(&work.warmup), 8).context("warm-up request")?;

    let mut runs = Vec::new();
    for (i, prompt) in work.prefill.iter().enumerate() {
        let t = run_batch(&handle, std::slice::from_ref(prompt), 1)?;
        let ttft = t
            .first()
            .and_then(SeqTiming::ttft)
            .ok_or_else(|| anyhow!("prefill run {} produced no token", i + 1))?
            .as_secs_f64();
        let rate = prompt.len() as f64 / ttft;
        eprintln!(
            "[sluice] prefill {}/{}: {} tokens in {ttft:.3} s = {rate:.1} tok/s",
            i + 1,
            work.prefill.len(),
            prompt.len()
        );
        runs.push(PrefillRun {
            seconds: ttft,
            tok_s: rate,
            computed_prompt_tokens: None,
            self_reported_tok_s: None,
        });
    }
    let prefill = PrefillReport::new(work.prompt_tokens, runs);

    let mut decode = Vec::new();
    for &n in &work.concurrency {
        eprintln!(
            "[sluice] decode: {n} sequences x {} tokens ...",
            work.max_tokens
        );
        let timings = run_batch(&handle, &work.decode[..n], work.max_tokens)?;
        let r = DecodeReport::from_timings(n, work.max_tokens, work.decode_prompt_tokens, &timings);
        eprintln!(
            "[sluice] decode {n}: {} tokens, {} tok/s decode, {} tok/s end-to-end, TTFT p50 {} ms",
            r.generated_tokens,
            crate::stats::cell(r.decode_tok_s, 1),
            crate::stats::cell(r.total_tok_s, 1),
            crate::stats::cell(r.ttft_ms.p50, 0),
        );
        decode.push(r);
    }
    // Dropping the last handle stops the engine thread and frees its memory
    // before the next side loads.
    drop(handle);
    Ok(SideReport {
        name,
        engine: "sluice".into(),
        weights,
        threads,
        settings,
        load_s: Some(load_s),
        prefill: Some(prefill),
        decode,
    })
}

/// Submits every prompt at once and waits for all of them to finish.
fn run_batch(
    handle: &EngineHandle,
    prompts: &[Vec<u32>],
    max_tokens: usize,
) -> Result<Vec<SeqTiming>> {
    let mut streams = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let request = GenerateRequest {
            prompt_tokens: prompt.clone(),
            params: SamplingParams {
                max_tokens,
                temperature: 0.0,
                ignore_eos: true,
                ..SamplingParams::default()
            },
            constraint: None,
            session: None,
        };
        let submitted = Instant::now();
        let stream = handle
            .submit(request)
            .context("submitting a request to the engine")?;
        streams.push((submitted, stream));
    }
    let timings = std::thread::scope(|scope| {
        let workers: Vec<_> = streams
            .into_iter()
            .map(|(submitted, mut stream)| {
                scope.spawn(move || {
                    let mut t = SeqTiming::new(submitted);
                    t.error = Some("the event stream ended without a Finished event".into());
                    while let Some(event) = stream.blocking_recv() {
                        match event {
                            EngineEvent::Token { .. } => {
                                t.on_token(Instant::now());
                                t.tokens += 1;
                            }
                            EngineEvent::Finished { usage, .. } => {
                                t.tokens = usage.completion_tokens;
                                t.error = None;
                                break;
                            }
                            EngineEvent::Error(e) => {
                                t.error = Some(e);
                                break;
                            }
                        }
                    }
                    t
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| anyhow!("an event collector thread panicked"))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    if let Some(e) = timings.iter().find_map(|t| t.error.as_ref()) {
        bail!("the engine failed a request: {e}");
    }
    Ok(timings)
}
