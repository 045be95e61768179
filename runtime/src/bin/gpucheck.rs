//! `sluice-gpucheck`: the prepared proof of the CUDA backend on a lent GPU
//! machine (issue 18), carried there as a stripped binary by
//! `scripts/gpu-check.sh` (which says how, and in which two calls).
//!
//! Sections, in order: the card, driver and libraries; the two ceilings
//! (device-to-device copy bandwidth, cuBLAS bf16 TFLOP/s); each kernel
//! against its CPU twin; a tiny random model and the demo model through the
//! CPU and CUDA executors in this process (logits difference, top-1
//! agreement, greedy text of 5 prompts x 32 tokens); on-device sampling
//! (ids picked by the `sample` kernel on the request path equal to the host
//! sampler's from the same logits and draws); f16 and fp8 KV caches against
//! bf16 (logits difference, top-1); a dummy-weight
//! Llama-3.1-8B decoding at batch 1, 8 and 64 (context 512) without and
//! with CUDA graphs, and with ids sampled on the device, timed with CUDA
//! events, against the bandwidth
//! roofline. Writes JSON, prints a table last, stops starting sections at
//! the deadline. Without a GPU it says so and exits 3.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::{json, Value};
use sluice_models::ModelError;
use sluice_runtime::device::cuda::{self, CudaOps};
use sluice_runtime::device::gpucheck::{self, Report};

struct Args {
    json: PathBuf,
    deadline_s: f64,
    only: Option<String>,
    demo: Option<PathBuf>,
    ordinal: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        json: PathBuf::from("gpucheck.json"),
        deadline_s: 280.0,
        only: None,
        demo: None,
        ordinal: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--json" => args.json = PathBuf::from(value()?),
            "--deadline-s" => {
                args.deadline_s = value()?.parse().map_err(|e| format!("--deadline-s: {e}"))?
            }
            "--only" => args.only = Some(value()?),
            "--demo" => args.demo = Some(PathBuf::from(value()?)),
            "--ordinal" => args.ordinal = value()?.parse().map_err(|e| format!("--ordinal: {e}"))?,
            "-h" | "--help" => {
                return Err("usage: sluice-gpucheck [--json PATH] [--deadline-s S] \
                            [--only env|ceilings|kernels|tiny|sampling|kv|demo|decode] [--demo GGUF] [--ordinal N]"
                    .into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let ops = match CudaOps::open(args.ordinal) {
        Ok(ops) => ops,
        Err(e) => {
            let why = match e {
                ModelError::Device(m) => m,
                other => other.to_string(),
            };
            let line = if why.starts_with("no GPU") {
                why
            } else {
                format!("no GPU usable: {why}")
            };
            println!("{line}");
            let report = json!({ "gpu": false, "error": line });
            write_json(&args.json, &report);
            return ExitCode::from(3);
        }
    };
    let mut report = Report::new(&args.json);
    let wants = |section: &str| args.only.as_deref().is_none_or(|o| o == section);
    let time_left = || args.deadline_s - started.elapsed().as_secs_f64();

    let mut ops = ops;
    let env = cuda::environment(&ops);
    report.section("env", env);
    if wants("ceilings") {
        report.run("ceilings", time_left(), || gpucheck::ceilings(&mut ops));
    }
    if wants("kernels") {
        report.run("kernels", time_left(), || gpucheck::kernel_parity(&ops));
    }
    if wants("tiny") {
        report.run("tiny", time_left(), || gpucheck::tiny_model(&mut ops));
    }
    if wants("sampling") {
        report.run("sampling", time_left(), || {
            gpucheck::device_sampling(&mut ops)
        });
    }
    if wants("kv") {
        report.run("kv", time_left(), || gpucheck::kv_dtypes(&mut ops, None));
    }
    if wants("demo") {
        match &args.demo {
            Some(path) => {
                report.run("demo", time_left(), || gpucheck::demo_model(&mut ops, path));
                report.run("kv_demo", time_left(), || {
                    gpucheck::kv_dtypes(&mut ops, Some(path))
                });
            }
            None if args.only.is_some() => report.section(
                "demo",
                json!({ "skipped": "no --demo GGUF given (scripts/gpu-check.sh run --only demo)" }),
            ),
            None => report.section(
                "demo",
                json!({ "skipped": "run in the second call: scripts/gpu-check.sh run --only demo" }),
            ),
        }
    }
    if wants("decode") {
        let bandwidth = report.copy_bandwidth_gbs();
        report.run("decode", time_left(), || {
            gpucheck::dummy_8b_decode(&mut ops, bandwidth, time_left())
        });
    }
    report.section("elapsed_s", Value::from(started.elapsed().as_secs_f64()));
    write_json(&args.json, &report.value());
    println!("{}", report.table());
    if report.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn write_json(path: &PathBuf, value: &Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}
