//! `sluice-bench`: measures Sluice and its peers, and writes what it measured.
//!
//! Its subcommands (`cache` and `cache-pairs` are described in
//! [`cache_bench`], `embed`, for the in-process embedding encoder, in
//! [`embed_bench`], `guard`, for the input guard's added latency, in
//! [`guard_bench`], `defence`, for the input defence's normalisation and
//! rules, in [`defence_bench`], `pii`, for the PII scan, in [`pii_bench`],
//! `structured`, what schema-constrained decoding costs, in
//! [`structured_bench`], `warmth`, a conversation's turn-N TTFT with its KV
//! blocks kept warm vs not, in [`warmth_bench`], `sessions`, a session
//! append's latency, in [`sessions_bench`], `stream` and `guard-answers`, the
//! stream analysers' cost and the stream guard's flags on ordinary answers,
//! in [`stream_bench`] and [`stream_guard_bench`]):
//! - `engine`: the Sluice engine in this process, no HTTP: prefill tokens/s on
//!   a long prompt, decode tokens/s and TTFT at several concurrencies, for one
//!   or more weight formats;
//! - `load`: a closed-loop load generator against any OpenAI-compatible server
//!   (TTFT, inter-token latency, tokens/s, requests/s, errors by status);
//! - `llama-cpp`: the same engine workload run on Sluice and on llama.cpp's
//!   `llama-server` in one invocation, with the same token ids and threads;
//! - `mock-upstream` and `overhead`: a fixed-answer upstream and a
//!   non-streaming load against gateways in front of it (the gateway's own
//!   overhead, `bench/run-gateway-overhead.sh`).
//!
//! Design choice: the engine workload is built once as token ids and both
//! sides time it from the client's seat (submit → first token → last token),
//! so a difference in the table is a difference in the engines, not in how
//! each reports itself. llama.cpp's own timings are kept alongside as a check.
//! Progress goes to stderr; tables go to stdout; `--json` keeps everything.

mod answer_windows;
mod cache_bench;
mod decode_load;
mod defence_bench;
mod embed_bench;
mod engine_bench;
mod guard_bench;
mod http;
mod llama_cpp;
mod load;
mod machine;
mod otlp_sink;
mod overhead;
mod pii_bench;
mod prompts;
mod report;
mod sessions_bench;
mod sse;
mod stats;
mod stream_bench;
mod stream_guard_bench;
mod structured_bench;
mod warmth_bench;
mod workload;

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::engine_bench::{run_sluice, SluiceArgs};
use crate::llama_cpp::{resolve_server, run_llama, PeerArgs};
use crate::load::LoadArgs;
use crate::machine::{CpuMeter, Machine};
use crate::report::{BenchReport, SideReport};
use crate::workload::{load_tokenizer, Workload, WorkloadArgs};

#[derive(Parser, Debug)]
#[command(name = "sluice-bench", version, about = "Benchmarks for Sluice")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The Sluice engine in-process: prefill and decode tokens/s, TTFT
    Engine(EngineArgs),
    /// Load generator for any OpenAI-compatible server
    Load(LoadArgs),
    /// Sluice engine and llama.cpp's llama-server side by side in one run
    LlamaCpp(LlamaCppArgs),
    /// A fast fixed-answer OpenAI-compatible upstream (for `overhead`)
    MockUpstream(overhead::MockArgs),
    /// A local OTLP/gRPC trace receiver that counts spans (for the overhead run's sluice-otel row)
    OtlpSink(otlp_sink::SinkArgs),
    /// Non-streaming requests/s and latency of several gateways in front of one upstream
    Overhead(overhead::OverheadArgs),
    /// The response cache: miss / exact hit / semantic hit latency, bytes per entry
    Cache(cache_bench::CacheArgs),
    /// The semantic cache tier's precision/recall over labelled question pairs
    CachePairs(cache_bench::PairsArgs),
    /// The in-process embedding encoder: embeddings/s and 32-token latency, idle and beside LLM decoding
    Embed(embed_bench::EmbedArgs),
    /// The input guard's added latency per chat request, idle and beside LLM decoding
    Guard(guard_bench::GuardArgs),
    /// The input defence's normalisation and rules (L0+L1) on 8 KB texts: p50/p99
    Defence(defence_bench::DefenceArgs),
    /// The PII detector's scan of an 8 KB text: p50/p99 per scan
    Pii(pii_bench::PiiArgs),
    /// Schema compile time (cold, cached) and 8-sequence decode throughput with half constrained
    Structured(structured_bench::StructuredArgs),
    /// A conversation's turn-N TTFT with its KV blocks kept warm between turns vs not
    Warmth(warmth_bench::WarmthArgs),
    /// One session append written through to SQLite or PostgreSQL (and Redis): p50/p99
    Sessions(sessions_bench::SessionsArgs),
    /// Stream analysers: per-chunk p99, decode throughput with the chain on vs off, tokens saved by early stops
    Stream(stream_bench::StreamArgs),
    /// The stream guard's flags on held-out ordinary answers: windows and answers it would stop
    GuardAnswers(stream_guard_bench::GuardAnswersArgs),
    /// Cut a text,label CSV into the stream guard's windows (JSON lines), to train its head on
    AnswerWindows(answer_windows::AnswerWindowsArgs),
}

#[derive(Args, Debug)]
struct EngineArgs {
    #[command(flatten)]
    work: WorkloadArgs,
    #[command(flatten)]
    sluice: SluiceArgs,
}

#[derive(Args, Debug)]
struct LlamaCppArgs {
    #[command(flatten)]
    work: WorkloadArgs,
    #[command(flatten)]
    sluice: SluiceArgs,
    #[command(flatten)]
    peer: PeerArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Cmd::Engine(a) => engine(a),
        Cmd::Load(a) => load(a),
        Cmd::LlamaCpp(a) => llama_cpp(a),
        Cmd::MockUpstream(a) => runtime().and_then(|rt| rt.block_on(overhead::mock_upstream(a))),
        Cmd::OtlpSink(a) => runtime().and_then(|rt| rt.block_on(otlp_sink::otlp_sink(a))),
        Cmd::Overhead(a) => {
            let machine = Machine::detect();
            runtime().and_then(|rt| rt.block_on(overhead::overhead(a, machine)))
        }
        Cmd::Cache(a) => cache_bench::run_cache(a),
        Cmd::CachePairs(a) => cache_bench::run_pairs(a),
        Cmd::Embed(a) => embed_bench::run(a),
        Cmd::Guard(a) => guard_bench::run(a),
        Cmd::Defence(a) => defence_bench::run(a),
        Cmd::Pii(a) => pii_bench::run(a),
        Cmd::Structured(a) => structured_bench::run(a),
        Cmd::Warmth(a) => warmth_bench::run(a),
        Cmd::Sessions(a) => sessions_bench::run(a),
        Cmd::Stream(a) => stream_bench::run(a),
        Cmd::GuardAnswers(a) => stream_guard_bench::run_answers(a),
        Cmd::AnswerWindows(a) => answer_windows::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A single-threaded runtime: the client's own work stays on one core, off
/// the cores the server under test is using.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

fn engine(args: EngineArgs) -> Result<()> {
    let EngineArgs { work, sluice } = args;
    let model = work.model_path();
    let machine = Machine::detect();
    machine.warn_if_busy();
    let workload = Workload::build(&load_tokenizer(&model)?, &work)?;
    let threads = work.threads();
    let meter = CpuMeter::start();
    let mut sides = Vec::new();
    let mut notes = Vec::new();
    for &r in &sluice.requantize {
        match run_sluice(&model, r, &sluice, threads, &workload) {
            Ok(side) => sides.push(side),
            Err(e) => notes.push(format!("sluice with --requantize {r:?} failed: {e:#}")),
        }
    }
    finish(&work, &model, machine, &meter, workload, sides, notes)
}

fn llama_cpp(args: LlamaCppArgs) -> Result<()> {
    let LlamaCppArgs { work, sluice, peer } = args;
    let model = work.model_path();
    if !peer.skip_llama && (model.is_dir() || model.extension().is_none_or(|e| e != "gguf")) {
        bail!(
            "llama.cpp needs a .gguf file; {} is not one",
            model.display()
        );
    }
    let machine = Machine::detect();
    machine.warn_if_busy();
    // Find (or build) the peer first: a missing binary should fail in
    // seconds, not after the Sluice side has run for minutes.
    let server = if peer.skip_llama {
        None
    } else {
        Some(resolve_server(peer.llama_server.as_deref())?)
    };
    let workload = Workload::build(&load_tokenizer(&model)?, &work)?;
    let threads = work.threads();
    let meter = CpuMeter::start();
    let mut sides = Vec::new();
    let mut notes = vec![format!(
        "both sides ran with {threads} compute threads, one after the other (never at once)"
    )];
    if !peer.skip_sluice {
        for &r in &sluice.requantize {
            match run_sluice(&model, r, &sluice, threads, &workload) {
                Ok(side) => sides.push(side),
                Err(e) => {
                    eprintln!("[sluice] failed: {e:#}");
                    notes.push(format!("sluice with --requantize {r:?} failed: {e:#}"));
                }
            }
        }
    }
    if let Some(bin) = server {
        let rt = runtime()?;
        match rt.block_on(run_llama(&bin, &model, threads, &peer, &workload)) {
            Ok(side) => sides.push(side),
            Err(e) => {
                eprintln!("[llama.cpp] failed: {e:#}");
                notes.push(format!("llama.cpp failed: {e:#}"));
            }
        }
    }
    finish(&work, &model, machine, &meter, workload, sides, notes)
}

/// Prints the table, writes the files; fails when a side failed, after
/// keeping what the others measured.
fn finish(
    work: &WorkloadArgs,
    model: &Path,
    machine: Machine,
    meter: &CpuMeter,
    workload: Workload,
    sides: Vec<SideReport>,
    notes: Vec<String>,
) -> Result<()> {
    let failed = notes.iter().any(|n| n.contains("failed"));
    let report = BenchReport {
        tool: "sluice-bench",
        command: command_line(),
        machine,
        cpu_busy_by_others_pct: meter.others_busy_pct(),
        workload: workload.report(model),
        sides,
        notes,
    };
    let table = report.markdown();
    println!("{table}");
    if let Some(path) = &work.json {
        report.write_json(path)?;
    }
    if let Some(path) = &work.markdown {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    if failed {
        bail!("a side failed (see the notes above); the others' results were kept");
    }
    Ok(())
}

fn load(args: LoadArgs) -> Result<()> {
    let machine = Machine::detect();
    let json = args.json.clone();
    let report = runtime()?.block_on(load::run(args, machine))?;
    println!("{}", report.markdown());
    if let Some(path) = json {
        report.write_json(&path)?;
    }
    if report.requests_ok == 0 {
        bail!("no request succeeded");
    }
    Ok(())
}
