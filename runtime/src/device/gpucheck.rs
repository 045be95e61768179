//! The sections of `sluice-gpucheck` (see `src/bin/gpucheck.rs`): each
//! returns a JSON value with its figures and a `pass` flag where the issue
//! sets a target; [`Report`] collects them and prints the closing table.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};
use sluice_kernels::cuda_twin::RowSampling;
use sluice_kernels::WeightDType;
use sluice_models::testing::{write_tiny_gguf, TinySpec};
use sluice_models::{load_llm, ActivationPrecision, LlamaConfig, LoadKnobs, ModelError};

mod kv;
mod sampling;

pub use kv::kv_dtypes;
pub use sampling::device_sampling;

use super::compare::compare_executors;
use super::cuda::{self, CudaOps};
use super::plan::PlanLimits;
use super::sizing::ModelShape;
use super::{DeviceExecutor, DeviceExecutorConfig, DeviceModel};
use crate::executor::{CpuExecutor, Executor, RowWant};

/// The check's findings, section by section, in order.
pub struct Report {
    sections: Vec<(String, Value)>,
    path: String,
}

impl Report {
    pub fn new(path: &Path) -> Self {
        Self {
            sections: Vec::new(),
            path: path.display().to_string(),
        }
    }

    pub fn section(&mut self, name: &str, value: Value) {
        eprintln!("[gpucheck] {name}: {value}");
        self.sections.push((name.to_string(), value));
    }

    /// Runs a section unless the deadline has passed; an error is recorded,
    /// not fatal, so that the other sections still report.
    pub fn run(
        &mut self,
        name: &str,
        seconds_left: f64,
        body: impl FnOnce() -> Result<Value, ModelError>,
    ) {
        if seconds_left < 10.0 {
            self.section(name, json!({ "skipped": "deadline", "pass": false }));
            return;
        }
        let started = Instant::now();
        let mut value = match body() {
            Ok(v) => v,
            Err(e) => json!({ "error": e.to_string(), "pass": false }),
        };
        if let Value::Object(map) = &mut value {
            map.insert("seconds".into(), json!(started.elapsed().as_secs_f64()));
        }
        self.section(name, value);
    }

    /// The whole report as one JSON object, sections in order.
    pub fn value(&self) -> Value {
        Value::Object(self.sections.iter().cloned().collect())
    }

    /// The measured copy bandwidth in GB/s, when the ceilings ran.
    pub fn copy_bandwidth_gbs(&self) -> Option<f64> {
        self.sections
            .iter()
            .find(|(n, _)| n == "ceilings")
            .and_then(|(_, v)| v.get("copy_gbs"))
            .and_then(Value::as_f64)
    }

    /// Every section with a `pass` flag passed.
    pub fn all_passed(&self) -> bool {
        self.sections
            .iter()
            .all(|(_, v)| v.get("pass").and_then(Value::as_bool).unwrap_or(true))
    }

    /// The closing table: one line per figure that matters.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let get = |name: &str| {
            self.sections
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
        };
        let line = |out: &mut String, what: &str, value: String, verdict: &str| {
            out.push_str(&format!("| {what:<44} | {value:>28} | {verdict:<6} |\n"));
        };
        out.push_str("\n## sluice-gpucheck\n\n");
        if let Some(env) = get("env") {
            out.push_str(&format!(
                "card: {}, driver {}, CUDA {}\n\n",
                env.get("card").and_then(Value::as_str).unwrap_or("?"),
                env.get("driver").and_then(Value::as_str).unwrap_or("?"),
                env.get("cuda").and_then(Value::as_str).unwrap_or("?"),
            ));
        }
        out.push_str("| check | measured | result |\n|---|---:|---|\n");
        let verdict = |v: &Value| match v.get("pass").and_then(Value::as_bool) {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "",
        };
        if let Some(c) = get("ceilings") {
            let f = |k: &str| c.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
            line(
                &mut out,
                "device-to-device copy (GB/s, read+write)",
                format!("{:.0}", f("copy_gbs")),
                "",
            );
            line(
                &mut out,
                "cuBLAS bf16 8192^3 (TFLOP/s)",
                format!("{:.0}", f("gemm_tflops")),
                "",
            );
        }
        if let Some(k) = get("kernels") {
            let worst = k
                .get("worst_rel_err")
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN);
            let n = k
                .get("checks")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            line(
                &mut out,
                &format!("kernel twins ({n} checks), worst rel. error"),
                format!("{worst:.2e}"),
                verdict(k),
            );
        }
        for name in ["tiny", "demo"] {
            if let Some(m) = get(name) {
                if let Some(skip) = m.get("skipped").and_then(Value::as_str) {
                    line(&mut out, &format!("{name} model"), "skipped".into(), "");
                    out.push_str(&format!("|   ({skip}) | | |\n"));
                    continue;
                }
                let f = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
                line(
                    &mut out,
                    &format!("{name} model: greedy text equal (of 5 x 32)"),
                    format!(
                        "{}",
                        m.get("same_text").and_then(Value::as_u64).unwrap_or(0)
                    ),
                    verdict(m),
                );
                line(
                    &mut out,
                    &format!("{name} model: top-1 agreement"),
                    format!("{:.3}", f("top1")),
                    "",
                );
                line(
                    &mut out,
                    &format!("{name} model: max logit difference"),
                    format!("{:.3e}", f("max_logit_diff")),
                    "",
                );
            }
        }
        if let Some(m) = get("sampling") {
            let u = |k: &str| m.get(k).and_then(Value::as_u64).unwrap_or(0);
            line(
                &mut out,
                "on-device sampling: ids equal to host's",
                format!("{} of {}", u("equal_to_host"), u("device_sampled")),
                verdict(m),
            );
        }
        for name in ["kv", "kv_demo"] {
            let Some(m) = get(name) else { continue };
            for model in ["tiny", "demo"] {
                for dtype in ["f16", "fp8_e4m3"] {
                    let Some(r) = m.get(model).and_then(|v| v.get(dtype)) else {
                        continue;
                    };
                    let f = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
                    line(
                        &mut out,
                        &format!("{model}: {dtype} KV vs bf16: top-1, max diff"),
                        format!("{:.3}, {:.2e}", f("top1"), f("max_logit_diff")),
                        verdict(r),
                    );
                }
            }
        }
        if let Some(d) = get("decode") {
            if let Some(rows) = d.get("runs").and_then(Value::as_array) {
                for r in rows {
                    let f = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
                    line(
                        &mut out,
                        &format!(
                            "8B bf16 decode b={} graphs={}{}",
                            r.get("batch").and_then(Value::as_u64).unwrap_or(0),
                            r.get("graphs").and_then(Value::as_bool).unwrap_or(false),
                            if r.get("device_sampling").and_then(Value::as_bool) == Some(true) {
                                " ids"
                            } else {
                                ""
                            }
                        ),
                        format!(
                            "{:.0} tok/s, {:.0}% roofline",
                            f("tok_s"),
                            f("roofline_pct")
                        ),
                        verdict(r),
                    );
                }
            }
        }
        for (name, v) in &self.sections {
            if let Some(e) = v.get("error").and_then(Value::as_str) {
                out.push_str(&format!("\n{name}: ERROR {e}\n"));
            }
        }
        out.push_str(&format!("\nJSON: {}\n", self.path));
        out
    }
}

/// The two ceilings: copy bandwidth (bytes read + written per second) and
/// cuBLAS bf16 GEMM throughput.
pub fn ceilings(ops: &mut CudaOps) -> Result<Value, ModelError> {
    let copy_gbs = cuda::probe::copy_bandwidth_gbs(ops, 1 << 30, 20)?;
    let gemm_tflops = cuda::probe::gemm_tflops(ops, 8192, 10)?;
    Ok(json!({ "copy_gbs": copy_gbs, "gemm_tflops": gemm_tflops }))
}

/// Every kernel against its CPU twin on random inputs.
pub fn kernel_parity(ops: &CudaOps) -> Result<Value, ModelError> {
    let checks = cuda::kernel_checks(ops, 18)?;
    let worst = checks
        .iter()
        .filter_map(|c| c.get("max_rel_err").and_then(Value::as_f64))
        .fold(0.0f64, f64::max);
    let pass = checks
        .iter()
        .all(|c| c.get("pass").and_then(Value::as_bool).unwrap_or(false));
    Ok(json!({ "checks": checks, "worst_rel_err": worst, "pass": pass }))
}

const PROMPTS: [&str; 5] = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, a small robot",
    "The three primary colours are",
    "To make a cup of tea, first",
];

/// Runs `prompts` through the CPU engine and the CUDA executor and reports
/// the agreement; `pass` at the target (4 of 5 greedy texts equal).
fn cpu_vs_cuda(
    ops: &CudaOps,
    model: sluice_models::Llama,
    prompts: &[Vec<u32>],
    decode: Option<&sluice_models::Tokenizer>,
) -> Result<Value, ModelError> {
    let block_size = 16;
    let num_blocks = 64;
    let weights = DeviceModel::upload(&mut ops.clone(), &model)?;
    let limits = PlanLimits::for_engine(512, 8, num_blocks * block_size, block_size, num_blocks);
    let mut gpu = DeviceExecutor::new(
        ops.clone(),
        weights,
        DeviceExecutorConfig {
            limits,
            graphs: true,
        },
    )?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cpu =
        CpuExecutor::new(model, num_blocks, block_size, threads).map_err(ModelError::Config)?;
    let (want, got, a) = compare_executors(&mut cpu, &mut gpu, prompts, 64, 32)?;
    let text = |run: &super::compare::GreedyRun| -> Vec<String> {
        run.tokens
            .iter()
            .map(|t| match decode {
                Some(tok) => tok.decode(t, false).unwrap_or_else(|e| format!("<{e}>")),
                None => format!("{t:?}"),
            })
            .collect()
    };
    Ok(json!({
        "same_text": a.same_text,
        "prompts": a.prompts,
        "top1": a.top1,
        "max_logit_diff": a.max_logit_diff,
        "cpu_text": text(&want),
        "cuda_text": text(&got),
        "pass": a.same_text * 5 >= 4 * a.prompts,
    }))
}

/// The tiny random model (2 layers, GQA 4:2, head_dim 32: the attention
/// kernels take multiples of 32), f32 weights.
fn load_tiny() -> Result<sluice_models::Llama, ModelError> {
    let dir = std::env::temp_dir().join(format!("sluice-gpucheck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
    let path = dir.join("tiny.gguf");
    let spec = TinySpec {
        hidden: 128,
        heads: 4,
        kv_heads: 2,
        ffn: 256,
        ..TinySpec::default()
    };
    write_tiny_gguf(&path, &spec, WeightDType::F32)?;
    let knobs = LoadKnobs {
        activations: ActivationPrecision::F32,
        ..LoadKnobs::default()
    };
    let loaded = load_llm(&path, knobs, &mut |_, _| {})?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(loaded.model)
}

/// Five prompts of 7 to 27 tokens for the tiny model.
fn tiny_prompts() -> Vec<Vec<u32>> {
    (0..5)
        .map(|i| {
            (0..7 + 5 * i)
                .map(|j| ((i * 31 + j * 7 + j * j) % 256) as u32)
                .collect()
        })
        .collect()
}

/// The tiny random model through both executors.
pub fn tiny_model(ops: &mut CudaOps) -> Result<Value, ModelError> {
    cpu_vs_cuda(ops, load_tiny()?, &tiny_prompts(), None)
}

/// The demo model (SmolLM2-135M) through both executors.
pub fn demo_model(ops: &mut CudaOps, path: &Path) -> Result<Value, ModelError> {
    let knobs = LoadKnobs {
        activations: ActivationPrecision::F32,
        ..LoadKnobs::default()
    };
    let loaded = load_llm(path, knobs, &mut |_, _| {})?;
    let prompts = PROMPTS
        .iter()
        .map(|p| loaded.tokenizer.encode(p, false))
        .collect::<Result<Vec<_>, _>>()?;
    cpu_vs_cuda(ops, loaded.model, &prompts, Some(&loaded.tokenizer))
}

/// Llama-3.1-8B's shape with random bf16 weights.
fn llama31_8b_config() -> LlamaConfig {
    LlamaConfig {
        architecture: sluice_models::config::Architecture::Llama,
        vocab_size: 128_256,
        hidden_size: 4096,
        intermediate_size: 14_336,
        num_layers: 32,
        num_heads: 32,
        num_kv_heads: 8,
        head_dim: 128,
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_style: sluice_kernels::rope::RopeStyle::HalfSplit,
        rope_scaling: None,
        max_position_embeddings: 131_072,
        tie_word_embeddings: false,
        attention_bias: false,
    }
}

/// Decodes the dummy 8B model at batch 1, 8, 64 with 512 tokens of context,
/// with and without graphs; tok/s against the bandwidth roofline (weights
/// read once per step plus each sequence's KV).
pub fn dummy_8b_decode(
    ops: &mut CudaOps,
    copy_gbs: Option<f64>,
    seconds_left: f64,
) -> Result<Value, ModelError> {
    let cfg = llama31_8b_config();
    let shape = ModelShape::of(&cfg);
    let (ctx, block_size, steps, warmup) = (512usize, 16usize, 32usize, 4usize);
    let blocks_per_seq = (ctx + warmup + steps).div_ceil(block_size);
    let num_blocks = 64 * blocks_per_seq;
    let built = Instant::now();
    let weights = DeviceModel::random(&mut ops.clone(), &cfg, 8)?;
    let limits =
        PlanLimits::for_engine(64, 64, blocks_per_seq * block_size, block_size, num_blocks);
    let mut exec = DeviceExecutor::new(
        ops.clone(),
        weights,
        DeviceExecutorConfig {
            limits,
            graphs: true,
        },
    )?;
    let build_s = built.elapsed().as_secs_f64();
    let bandwidth = copy_gbs.unwrap_or(3000.0) * 1e9;
    let greedy_ids = vec![
        RowWant::Token(RowSampling {
            top_p: 1.0,
            ..RowSampling::default()
        });
        64
    ];
    let mut runs = Vec::new();
    let started = Instant::now();
    for batch in [1usize, 8, 64] {
        // Logits to the host without and with graphs, then ids sampled on
        // the device (greedy), which copies 4 bytes a row instead of 512 KB.
        for (graphs, on_device) in [(false, false), (true, false), (true, true)] {
            if seconds_left - started.elapsed().as_secs_f64() < 15.0 {
                runs.push(json!({ "batch": batch, "graphs": graphs, "skipped": "deadline" }));
                continue;
            }
            exec.set_graphs(graphs);
            let tables: Vec<Vec<u32>> = (0..batch)
                .map(|i| ((i * blocks_per_seq) as u32..((i + 1) * blocks_per_seq) as u32).collect())
                .collect();
            let tokens: Vec<[u32; 1]> = (0..batch).map(|i| [(i * 7 + 1) as u32]).collect();
            let step = |exec: &mut DeviceExecutor<CudaOps>, pos: usize| {
                let seqs: Vec<_> = tables
                    .iter()
                    .zip(&tokens)
                    .map(|(t, tok)| sluice_models::SeqBatch {
                        tokens: tok,
                        start_pos: pos,
                        block_table: t,
                        want_logits: true,
                    })
                    .collect();
                if on_device {
                    exec.execute_rows(&seqs, &greedy_ids[..batch]).map(|_| ())
                } else {
                    exec.execute(&seqs).map(|_| ())
                }
            };
            // The KV of the first 512 positions is whatever the cache holds:
            // attention reads it all the same, which is what is timed.
            for w in 0..warmup {
                step(&mut exec, ctx + w)?;
            }
            let timer = cuda::probe::Timer::start(exec.ops())?;
            for s in 0..steps {
                step(&mut exec, ctx + warmup + s)?;
            }
            let ms = timer.stop_ms(exec.ops())?;
            let tok_s = (batch * steps) as f64 / (ms / 1e3);
            let avg_ctx = (ctx + warmup + steps / 2) as f64;
            let bytes = 2.0 * shape.params_read_per_step() as f64
                + batch as f64
                    * avg_ctx
                    * shape.kv_bytes_per_token(super::sizing::KvDType::Bf16) as f64;
            let roofline = batch as f64 / (bytes / bandwidth);
            let pct = 100.0 * tok_s / roofline;
            let mut run = json!({
                "batch": batch, "graphs": graphs, "device_sampling": on_device,
                "tok_s": tok_s, "step_ms": ms / steps as f64,
                "roofline_tok_s": roofline, "roofline_pct": pct,
            });
            // The targets, with graphs: batch 1 at >= 70% of the
            // roofline, batch 64 at >= 8,000 tok/s (H100).
            if graphs && !on_device && batch == 1 {
                run["pass"] = json!(pct >= 70.0);
            }
            if graphs && !on_device && batch == 64 {
                run["pass"] = json!(tok_s >= 8000.0);
            }
            runs.push(run);
        }
    }
    Ok(json!({
        "model": "Llama-3.1-8B shape, random bf16 weights",
        "context": ctx, "steps": steps, "build_s": build_s,
        "bandwidth_gbs": bandwidth / 1e9, "runs": runs,
    }))
}
