//! The llama.cpp side: starts `llama-server` once per slot count, drives the
//! same token-id workload through its native `/completion` endpoint (token ids
//! in, so both sides compute identical prompts) and stamps each streamed
//! token at the client, exactly as the Sluice side stamps engine events.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use reqwest::Client;
use serde_json::{json, Value};

use crate::http::{get_status, post_json, post_sse, Failure, Flow};
use crate::report::{DecodeReport, PrefillReport, PrefillRun, SeqTiming, SideReport};
use crate::workload::{shipped_weights, Workload};

/// Where the peer binary comes from and how it is started.
#[derive(Args, Debug, Clone)]
pub struct PeerArgs {
    /// llama-server binary [default: the path bench/scripts/build-llama-server.sh
    /// prints, building it first if needed]
    #[arg(long)]
    pub llama_server: Option<PathBuf>,
    /// One more argument for llama-server, repeatable (`--server-arg=-fa --server-arg=on`)
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Seconds to wait for llama-server to answer /health
    #[arg(long, default_value_t = 180)]
    pub server_start_timeout_s: u64,
    /// Folder for llama-server's logs [default: $TMPDIR/sluice-bench]
    #[arg(long)]
    pub server_log_dir: Option<PathBuf>,
    /// Run only llama.cpp
    #[arg(long, conflicts_with = "skip_llama")]
    pub skip_sluice: bool,
    /// Run only Sluice
    #[arg(long)]
    pub skip_llama: bool,
}

/// The llama-server binary: the one given, else the build script's answer.
pub fn resolve_server(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("--llama-server {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-llama-server.sh");
    if !script.is_file() {
        bail!("{} is missing; pass --llama-server PATH", script.display());
    }
    eprintln!(
        "[llama.cpp] locating llama-server with {}",
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}); pass --llama-server PATH",
            script.display(),
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| anyhow!("{} printed no path", script.display()))?;
    if !path.is_file() {
        bail!(
            "{} printed {}, which is not a file",
            script.display(),
            path.display()
        );
    }
    Ok(path)
}

/// A running llama-server; killed when dropped, so an error anywhere never
/// leaves one spinning on the cores the next measurement needs.
struct LlamaServer {
    child: Child,
    base: String,
    log: PathBuf,
    args: Vec<String>,
}

impl LlamaServer {
    fn spawn(
        bin: &Path,
        model: &Path,
        threads: usize,
        slots: usize,
        ctx: usize,
        peer: &PeerArgs,
    ) -> Result<Self> {
        // Ask the OS for a free port; the tiny race with another process
        // taking it before llama-server binds shows up as a failed start.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let mut args: Vec<String> = vec![
            "-m".into(),
            model.display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "-t".into(),
            threads.to_string(),
            "-tb".into(),
            threads.to_string(),
            "-np".into(),
            slots.to_string(),
            "-c".into(),
            ctx.to_string(),
            "--cont-batching".into(),
            "--no-webui".into(),
            // No host-memory prompt cache: every prefill computes, as on the Sluice side.
            "--cache-ram".into(),
            "0".into(),
        ];
        args.extend(peer.server_args.iter().cloned());
        let dir = peer
            .server_log_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("sluice-bench"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join(format!("llama-server-np{slots}-port{port}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        eprintln!(
            "[llama.cpp] starting {} {} (log: {})",
            bin.display(),
            args.join(" "),
            log.display()
        );
        let child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            args,
        })
    }

    async fn wait_ready(&mut self, client: &Client, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/health", self.base);
        loop {
            if let Some(status) = self.child.try_wait().context("polling llama-server")? {
                bail!(
                    "llama-server exited ({status}) before it was ready; its log ({}) ends with:\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            if get_status(client, &url).await == Some(200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "llama-server did not answer {url} with 200 within {timeout:?}; log: {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        // Errors here mean it is already gone, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Context per slot: the longest request plus room, in whole 256-token cells.
fn slot_ctx(work: &Workload) -> usize {
    let need = (work.prompt_tokens + 1)
        .max(work.decode_prompt_tokens + work.max_tokens)
        .max(work.warmup.len() + 8)
        + 64;
    need.div_ceil(256) * 256
}

/// Runs the whole workload against llama-server: prefill and one-sequence
/// decode on one slot, then a server with N slots for each concurrency N.
pub async fn run_llama(
    bin: &Path,
    model: &Path,
    threads: usize,
    peer: &PeerArgs,
    work: &Workload,
) -> Result<SideReport> {
    let client = Client::builder()
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    let timeout = Duration::from_secs(peer.server_start_timeout_s);
    let per_slot = slot_ctx(work);
    let weights = shipped_weights(model);
    let mut levels: Vec<usize> = vec![1];
    levels.extend(work.concurrency.iter().copied().filter(|&n| n != 1));

    let mut prefill = None;
    let mut decode = Vec::new();
    let mut server_args = Vec::new();
    let mut load_s = None;
    for slots in levels {
        let started = Instant::now();
        let mut server = LlamaServer::spawn(bin, model, threads, slots, per_slot * slots, peer)?;
        server.wait_ready(&client, timeout).await?;
        let ready_s = started.elapsed().as_secs_f64();
        eprintln!("[llama.cpp] ready with {slots} slots in {ready_s:.2} s");
        if slots == 1 {
            load_s = Some(ready_s);
        }
        server_args = server.args.clone();
        let url = format!("{}/completion", server.base);
        let warm = stream_completion(client.clone(), url.clone(), work.warmup.clone(), 8).await;
        if let Some(e) = warm.error {
            bail!("warm-up request to llama-server failed: {e}");
        }
        if slots == 1 {
            prefill = Some(run_prefill(&client, &url, work).await?);
        }
        if work.concurrency.contains(&slots) {
            eprintln!(
                "[llama.cpp] decode: {slots} sequences x {} tokens ...",
                work.max_tokens
            );
            let timings = run_decode(&client, &url, &work.decode[..slots], work.max_tokens).await?;
            let r = DecodeReport::from_timings(
                slots,
                work.max_tokens,
                work.decode_prompt_tokens,
                &timings,
            );
            eprintln!(
                "[llama.cpp] decode {slots}: {} tokens, {} tok/s decode ({} by its own timings), \
                 {} tok/s end-to-end, TTFT p50 {} ms",
                r.generated_tokens,
                crate::stats::cell(r.decode_tok_s, 1),
                crate::stats::cell(r.self_reported_tok_s_sum, 1),
                crate::stats::cell(r.total_tok_s, 1),
                crate::stats::cell(r.ttft_ms.p50, 0),
            );
            if let Some(e) = r.errors.first() {
                bail!(
                    "llama-server failed {} of {slots} requests: {e}",
                    r.errors.len()
                );
            }
            decode.push(r);
        }
        drop(server);
    }
    decode.sort_by_key(|d| work.concurrency.iter().position(|&c| c == d.concurrency));
    // The slot count varies per run; the rest of the command line does not.
    let settings = json!({
        "binary": bin.display().to_string(),
        "args_last_run": server_args,
        "ctx_per_slot": per_slot,
        "request": {"cache_prompt": false, "temperature": 0.0, "top_k": 1, "ignore_eos": true},
    });
    Ok(SideReport {
        name: format!("llama.cpp {weights}"),
        engine: "llama.cpp".into(),
        weights: format!("{weights} (as shipped)"),
        threads,
        settings,
        load_s,
        prefill,
        decode,
    })
}

async fn run_prefill(client: &Client, url: &str, work: &Workload) -> Result<PrefillReport> {
    let mut runs = Vec::new();
    for (i, prompt) in work.prefill.iter().enumerate() {
        let body = json!({
            "prompt": prompt,
            "n_predict": 1,
            "cache_prompt": false,
            "temperature": 0.0,
            "top_k": 1,
            "stream": false,
        });
        let started = Instant::now();
        let v = post_json(client, url, &body, None)
            .await
            .map_err(|e| anyhow!("prefill request {} to llama-server: {e}", i + 1))?;
        let seconds = started.elapsed().as_secs_f64();
        let timings = &v["timings"];
        let computed = timings["prompt_n"].as_u64().map(|n| n as usize);
        let own = timings["prompt_per_second"].as_f64();
        if let Some(n) = computed.filter(|&n| n < prompt.len()) {
            eprintln!(
                "[llama.cpp] WARNING: prefill {} computed only {n} of {} prompt tokens (a cache hit?)",
                i + 1,
                prompt.len()
            );
        }
        let rate = prompt.len() as f64 / seconds;
        eprintln!(
            "[llama.cpp] prefill {}/{}: {} tokens in {seconds:.3} s = {rate:.1} tok/s (its own timings: {} tok/s)",
            i + 1,
            work.prefill.len(),
            prompt.len(),
            crate::stats::cell(own, 1)
        );
        runs.push(PrefillRun {
            seconds,
            tok_s: rate,
            computed_prompt_tokens: computed,
            self_reported_tok_s: own,
        });
    }
    Ok(PrefillReport::new(work.prompt_tokens, runs))
}

async fn run_decode(
    client: &Client,
    url: &str,
    prompts: &[Vec<u32>],
    max_tokens: usize,
) -> Result<Vec<SeqTiming>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, p) in prompts.iter().enumerate() {
        let fut = stream_completion(client.clone(), url.to_string(), p.clone(), max_tokens);
        set.spawn(async move { (i, fut.await) });
    }
    let mut out: Vec<Option<SeqTiming>> = vec![None; prompts.len()];
    while let Some(joined) = set.join_next().await {
        let (i, t) = joined.context("a request task failed")?;
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(t);
        }
    }
    out.into_iter()
        .map(|t| t.ok_or_else(|| anyhow!("a request task returned nothing")))
        .collect()
}

/// One streamed `/completion` request; every failure ends up in the timing.
async fn stream_completion(
    client: Client,
    url: String,
    prompt: Vec<u32>,
    n_predict: usize,
) -> SeqTiming {
    let body = json!({
        "prompt": prompt,
        "n_predict": n_predict,
        "ignore_eos": true,
        "cache_prompt": false,
        "temperature": 0.0,
        "top_k": 1,
        "stream": true,
    });
    let submitted = Instant::now();
    let mut t = SeqTiming::new(submitted);
    let mut chunks = 0usize;
    let mut predicted = None;
    let mut finished = false;
    let result = post_sse(&client, &url, &body, None, |data, at| {
        let v: Value = serde_json::from_str(data)
            .map_err(|e| Failure::Protocol(format!("event is not JSON ({e}): {data}")))?;
        if let Some(err) = v.get("error") {
            return Err(Failure::Protocol(format!("error event: {err}")));
        }
        let stop = v["stop"].as_bool().unwrap_or(false);
        let has_text = v["content"].as_str().is_some_and(|s| !s.is_empty());
        // Every non-final event is one token (its text may be held back while
        // a UTF-8 character is incomplete); the final one carries timings.
        if !stop || has_text {
            t.on_token(at);
            chunks += 1;
        }
        if stop {
            let timings = &v["timings"];
            predicted = timings["predicted_n"].as_u64().map(|n| n as usize);
            t.self_decode_tok_s = timings["predicted_per_second"].as_f64();
            t.self_prompt_tok_s = timings["prompt_per_second"].as_f64();
            t.computed_prompt_tokens = timings["prompt_n"].as_u64().map(|n| n as usize);
            finished = true;
            return Ok(Flow::Done);
        }
        Ok(Flow::Continue)
    })
    .await;
    t.tokens = predicted.unwrap_or(chunks);
    match result {
        Err(e) => t.error = Some(e.to_string()),
        Ok(()) if !finished => t.error = Some("the stream ended without a stop event".into()),
        Ok(()) => {}
    }
    t
}
