//! `sluice-bench embed`: the in-process embedding encoder, no HTTP.
//!
//! Measures embeddings/s at batch sizes 1, 8 and 32 (32-token inputs), and
//! the latency of one 32-token encode through the batching pool, first on
//! an idle machine and then while the LLM engine (in this process, like
//! `sluice-bench engine`) decodes several greedy streams. Design decision:
//! everything goes through `EncoderPool`/`EncoderHandle`, the path the
//! gateway serves, so queueing and the pool's own threads are in the
//! numbers; the engine runs its own threads beside it, as in `sluice serve`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use serde_json::json;
use sluice_models::SentenceEncoder;
use sluice_runtime::{EncoderHandle, EncoderPool, EncoderPoolConfig};

use crate::decode_load::DecodeLoad;
use crate::stats::{cell, Summary};

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Sentence-transformers folder (default: the demo all-MiniLM-L6-v2).
    #[arg(long)]
    embed_model: Option<PathBuf>,
    /// Chat model decoding beside the encoder (default: the demo SmolLM2).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Encoder pool compute threads.
    #[arg(long, default_value_t = 2)]
    encoder_threads: usize,
    /// LLM engine compute threads.
    #[arg(long, default_value_t = 2)]
    llm_threads: usize,
    /// Concurrent decode streams during the loaded latency run.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Encodes per latency run.
    #[arg(long, default_value_t = 200)]
    latency_iters: usize,
    /// Seconds per throughput point.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A 32-token input ([CLS] … [SEP]) built from real text.
fn input_32(encoder: &SentenceEncoder) -> Result<Vec<u32>> {
    let text = "The quarterly report shows that revenue grew in every region, while costs \
                in logistics and marketing fell slightly compared with the previous year, \
                and the board approved a new dividend.";
    let mut ids = encoder.tokenizer().encode_with_special_tokens(text)?;
    if ids.len() < 32 {
        return Err(anyhow!("the sample text has only {} tokens", ids.len()));
    }
    let sep = ids[ids.len() - 1];
    ids.truncate(31);
    ids.push(sep);
    Ok(ids)
}

fn throughput(
    rt: &tokio::runtime::Runtime,
    pool: &EncoderHandle,
    input: &[u32],
    batch: usize,
    seconds: f64,
) -> Result<f64> {
    let started = Instant::now();
    let mut done = 0usize;
    while started.elapsed().as_secs_f64() < seconds {
        let inputs = vec![input.to_vec(); batch];
        rt.block_on(pool.encode_many(inputs))?;
        done += batch;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

fn latencies(
    rt: &tokio::runtime::Runtime,
    pool: &EncoderHandle,
    input: &[u32],
    iters: usize,
) -> Result<Summary> {
    let mut ms = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        rt.block_on(pool.encode(input.to_vec()))?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Summary::of(&ms))
}

pub fn run(args: EmbedArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let dir = args
        .embed_model
        .clone()
        .unwrap_or_else(sluice_models::demo_embedding_model_dir);
    eprintln!(
        "[embed] kernels: packed f32 on {}, int8 on {}",
        sluice_kernels::matmul::packed_kernel_isa(),
        sluice_kernels::matmul::int8_kernel_isa()
    );
    let encoder =
        SentenceEncoder::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
    let input = input_32(&encoder)?;
    let pool = EncoderPool::start(
        Arc::new(encoder),
        EncoderPoolConfig {
            threads: args.encoder_threads,
            ..EncoderPoolConfig::default()
        },
    )?;
    // Warm-up: page in the weights, grow the allocator.
    for _ in 0..5 {
        rt.block_on(pool.encode_many(vec![input.clone(); 32]))?;
    }
    let mut rates = Vec::new();
    for batch in [1usize, 8, 32] {
        let rate = throughput(&rt, &pool, &input, batch, args.seconds)?;
        eprintln!("[embed] batch {batch}: {rate:.1} embeddings/s (32-token inputs)");
        rates.push(json!({"batch": batch, "embeddings_per_s": rate}));
    }
    let idle = latencies(&rt, &pool, &input, args.latency_iters)?;
    eprintln!(
        "[embed] 32-token encode, idle: p50 {} ms, p99 {} ms",
        cell(idle.p50, 2),
        cell(idle.p99, 2)
    );

    let model = args
        .model
        .clone()
        .unwrap_or_else(sluice_models::demo_chat_model_path);
    let decoding = DecodeLoad::start(&model, args.llm_threads, args.streams)?;
    let (loaded_lat, decode_tok_s) =
        decoding.beside(|| latencies(&rt, &pool, &input, args.latency_iters))?;
    decoding.stop();
    eprintln!(
        "[embed] 32-token encode while the LLM decodes {} streams ({decode_tok_s:.1} tok/s): \
         p50 {} ms, p99 {} ms",
        args.streams,
        cell(loaded_lat.p50, 2),
        cell(loaded_lat.p99, 2)
    );
    let report = json!({
        "machine_cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "f32_packed_kernels": sluice_kernels::matmul::packed_kernel_isa(),
        "int8_kernels": sluice_kernels::matmul::int8_kernel_isa(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "embed_model": dir.display().to_string(),
        "encoder_threads": args.encoder_threads,
        "llm_threads": args.llm_threads,
        "throughput": rates,
        "latency_32_tokens_idle_ms": idle,
        "latency_32_tokens_under_decode_ms": loaded_lat,
        "decode_streams": args.streams,
        "decode_tok_s_during": decode_tok_s,
        "pool": {
            "batches": pool.load().batches,
            "mean_batch_size": pool.load().mean_batch_size,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
