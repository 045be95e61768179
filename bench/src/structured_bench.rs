//! `structured`: what schema-constrained decoding costs, in this process.
//!
//! 1. Schema compile time for the e2e suite's schemas
//!    (`tests/data/json_schemas.json`): each one cold (its first compile,
//!    after the vocabulary's byte trie was built by a warm-up grammar) and
//!    cached (the same spec again, a cache lookup).
//! 2. Decode throughput of `--sequences` sequences (8) decoding at once,
//!    none constrained vs half constrained by a JSON schema, the two kinds
//!    of run interleaved `--repeats` times (medians reported). The schema
//!    asks for at least 40 objects, so no constrained sequence can finish
//!    inside `--max-tokens` and every run keeps the whole batch busy to the
//!    end (checked: a run where one stopped early is reported).
//!
//! Throughput is counted over the window in which every sequence is
//! decoding (from the last first-token to the first last-token): tokens
//! made in it by all sequences, over its length. Prefill and a ragged end
//! stay out of the number, so it measures the decode step itself, which is
//! where mask computation would show.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use sluice_models::{load_llm, LoadKnobs};
use sluice_runtime::{
    Engine, EngineConfig, EngineEvent, EngineHandle, GenerateRequest, Grammar, GrammarSpec,
    SamplingParams,
};

#[derive(Args, Debug)]
pub struct StructuredArgs {
    /// A GGUF file or a Hugging Face folder [default: the demo SmolLM2-135M GGUF]
    #[arg(long)]
    model: Option<PathBuf>,
    /// Compute threads [default: one per core]
    #[arg(long)]
    threads: Option<usize>,
    /// The schema suite (a JSON array of {name, prompt, schema})
    #[arg(long, default_value = "tests/data/json_schemas.json")]
    schemas: PathBuf,
    /// Sequences decoding at once; half of them constrained in the mixed runs
    #[arg(long, default_value_t = 8)]
    sequences: usize,
    /// Tokens each sequence generates
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Runs of each kind (interleaved; medians reported)
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Also write the results as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
}

/// At least 40 objects: more tokens than a run generates, so a constrained
/// sequence never completes its grammar and leaves the batch early.
fn long_schema() -> Value {
    json!({
        "type": "array",
        "minItems": 40,
        "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 20},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "city": {"type": "string", "enum": ["Paris", "Omsk", "Lima", "Oslo"]}
            },
            "required": ["name", "age", "city"],
            "additionalProperties": false
        }
    })
}

pub fn run(args: StructuredArgs) -> Result<()> {
    let model = args
        .model
        .clone()
        .unwrap_or_else(sluice_models::demo_chat_model_path);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if args.sequences < 2 {
        bail!("--sequences must be at least 2 (half of them are constrained)");
    }
    let suite = read_suite(&args.schemas)?;
    eprintln!("[structured] loading {}", model.display());
    let loaded = load_llm(&model, LoadKnobs::default(), &mut |_: usize, _: usize| {})
        .with_context(|| format!("loading {}", model.display()))?;
    let cfg = EngineConfig {
        threads: Some(threads),
        max_num_seqs: EngineConfig::default().max_num_seqs.max(args.sequences),
        ..EngineConfig::default()
    };
    let handle = Engine::start(loaded, cfg).context("starting the engine")?;

    let compile = measure_compile(&handle, &suite)?;
    eprintln!(
        "[structured] {} schemas: cold p50 {:.2} ms, max {:.2} ms; cached p50 {:.4} ms (trie + first grammar {:.1} ms)",
        compile.cold_ms.len(),
        median(&compile.cold_ms),
        max(&compile.cold_ms),
        median(&compile.cached_ms),
        compile.trie_ms
    );

    let grammar = handle
        .compile_grammar(&GrammarSpec::JsonSchema {
            schema: long_schema().to_string(),
            strict: true,
        })
        .map_err(|e| anyhow!("the benchmark's schema: {e}"))?;
    let prompt = handle
        .tokenizer()
        .encode(
            "List forty people as JSON objects with their name, age and city:",
            true,
        )
        .map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
    // Warm-up: thread pools, KV blocks, the grammar's first masks.
    decode_run(&handle, &prompt, 2, 1, &grammar, 16)?;
    let mut plain = Vec::new();
    let mut mixed = Vec::new();
    let mut notes = Vec::new();
    for r in 0..args.repeats {
        for constrained in [0, args.sequences / 2] {
            let run = decode_run(
                &handle,
                &prompt,
                args.sequences,
                constrained,
                &grammar,
                args.max_tokens,
            )?;
            eprintln!(
                "[structured] run {} with {constrained}/{} constrained: {:.1} tok/s in the full-batch window ({} tokens, {:.3} s)",
                r + 1,
                args.sequences,
                run.tok_s,
                run.window_tokens,
                run.window_s
            );
            if run.short_sequences > 0 {
                notes.push(format!(
                    "run {} ({constrained} constrained): {} sequences stopped before max_tokens",
                    r + 1,
                    run.short_sequences
                ));
            }
            if constrained == 0 {
                plain.push(run.tok_s);
            } else {
                mixed.push(run.tok_s);
            }
        }
    }
    drop(handle);
    let plain_tok_s = median(&plain);
    let mixed_tok_s = median(&mixed);
    let lower_pct = (1.0 - mixed_tok_s / plain_tok_s) * 100.0;
    let table = format!(
        "| measure | value |\n|---|---|\n\
         | schemas compiled | {} |\n\
         | vocabulary trie + first grammar | {:.1} ms |\n\
         | compile cold, p50 / mean / max | {:.2} / {:.2} / {:.2} ms |\n\
         | compile cached, p50 / max | {:.4} / {:.4} ms |\n\
         | decode, {n} sequences, none constrained (median of {r}) | {plain_tok_s:.1} tok/s |\n\
         | decode, {n} sequences, {h} constrained (median of {r}) | {mixed_tok_s:.1} tok/s |\n\
         | throughput lower with half constrained | {lower_pct:.1}% (target < 10%) |\n",
        compile.cold_ms.len(),
        compile.trie_ms,
        median(&compile.cold_ms),
        mean(&compile.cold_ms),
        max(&compile.cold_ms),
        median(&compile.cached_ms),
        max(&compile.cached_ms),
        n = args.sequences,
        h = args.sequences / 2,
        r = args.repeats,
    );
    println!("{table}");
    for n in &notes {
        println!("note: {n}");
    }
    if let Some(path) = &args.json {
        let report = json!({
            "tool": "sluice-bench structured",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "model": model.display().to_string(),
            "threads": threads,
            "sequences": args.sequences,
            "max_tokens": args.max_tokens,
            "compile": {
                "trie_and_first_ms": compile.trie_ms,
                "per_schema": compile.names.iter().zip(&compile.cold_ms).zip(&compile.cached_ms)
                    .map(|((name, cold), cached)| json!({"name": name, "cold_ms": cold, "cached_ms": cached}))
                    .collect::<Vec<_>>(),
            },
            "decode_tok_s": {"none_constrained": plain, "half_constrained": mixed},
            "throughput_lower_pct": lower_pct,
            "notes": notes,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

struct Suite {
    names: Vec<String>,
    specs: Vec<GrammarSpec>,
}

fn read_suite(path: &Path) -> Result<Suite> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cases: Vec<Value> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut names = Vec::with_capacity(cases.len());
    let mut specs = Vec::with_capacity(cases.len());
    for case in cases {
        let schema = case
            .get("schema")
            .ok_or_else(|| anyhow!("a case without a schema in {}", path.display()))?;
        names.push(case["name"].as_str().unwrap_or("?").to_string());
        specs.push(GrammarSpec::JsonSchema {
            schema: schema.to_string(),
            strict: true,
        });
    }
    if specs.is_empty() {
        bail!("{} holds no schemas", path.display());
    }
    Ok(Suite { names, specs })
}

struct Compile {
    names: Vec<String>,
    trie_ms: f64,
    cold_ms: Vec<f64>,
    cached_ms: Vec<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn measure_compile(handle: &EngineHandle, suite: &Suite) -> Result<Compile> {
    let started = Instant::now();
    handle
        .compile_grammar(&GrammarSpec::JsonObject)
        .map_err(|e| anyhow!("the warm-up grammar: {e}"))?;
    let trie_ms = ms(started.elapsed());
    let mut cold_ms = Vec::with_capacity(suite.specs.len());
    let mut cached_ms = Vec::with_capacity(suite.specs.len());
    for (name, spec) in suite.names.iter().zip(&suite.specs) {
        let t = Instant::now();
        handle
            .compile_grammar(spec)
            .map_err(|e| anyhow!("schema {name}: {e}"))?;
        cold_ms.push(ms(t.elapsed()));
        let t = Instant::now();
        handle
            .compile_grammar(spec)
            .map_err(|e| anyhow!("schema {name}: {e}"))?;
        cached_ms.push(ms(t.elapsed()));
    }
    Ok(Compile {
        names: suite.names.clone(),
        trie_ms,
        cold_ms,
        cached_ms,
    })
}

struct DecodeRun {
    tok_s: f64,
    window_tokens: usize,
    window_s: f64,
    /// Sequences that made fewer than `max_tokens` tokens.
    short_sequences: usize,
}

/// `sequences` copies of `prompt` at once, the first `constrained` of them
/// under `grammar`; every token's arrival time is kept.
fn decode_run(
    handle: &EngineHandle,
    prompt: &[u32],
    sequences: usize,
    constrained: usize,
    grammar: &Arc<Grammar>,
    max_tokens: usize,
) -> Result<DecodeRun> {
    let mut streams = Vec::with_capacity(sequences);
    for i in 0..sequences {
        let request = GenerateRequest {
            prompt_tokens: prompt.to_vec(),
            params: SamplingParams {
                max_tokens,
                temperature: 0.0,
                ignore_eos: true,
                ..SamplingParams::default()
            },
            constraint: (i < constrained).then(|| grammar.clone()),
            session: None,
        };
        streams.push(handle.submit(request).context("submitting a request")?);
    }
    let arrivals = std::thread::scope(|scope| {
        let workers: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                scope.spawn(move || -> Result<Vec<Instant>> {
                    let mut times = Vec::with_capacity(max_tokens);
                    while let Some(event) = stream.blocking_recv() {
                        match event {
                            EngineEvent::Token { .. } => times.push(Instant::now()),
                            EngineEvent::Finished { .. } => return Ok(times),
                            EngineEvent::Error(e) => bail!("the engine failed a sequence: {e}"),
                        }
                    }
                    bail!("the event stream ended without a Finished event")
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| anyhow!("an event collector thread panicked"))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let short_sequences = arrivals.iter().filter(|t| t.len() < max_tokens).count();
    let (Some(start), Some(end)) = (
        arrivals.iter().filter_map(|t| t.first()).max(),
        arrivals.iter().filter_map(|t| t.last()).min(),
    ) else {
        bail!("a sequence produced no token");
    };
    let window_tokens: usize = arrivals
        .iter()
        .map(|t| t.iter().filter(|at| **at > *start && **at <= *end).count())
        .sum();
    let window_s = end.saturating_duration_since(*start).as_secs_f64();
    if window_s <= 0.0 {
        bail!("no window in which every sequence was decoding (raise --max-tokens)");
    }
    Ok(DecodeRun {
        tok_s: window_tokens as f64 / window_s,
        window_tokens,
        window_s,
        short_sequences,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}
