//! The gateway-overhead benchmark's two halves:
//!
//! - `mock-upstream`: a fast OpenAI-compatible upstream that answers every
//!   chat completion with the same small answer (whole, or as SSE when the
//!   body asks for `"stream": true`), so what a gateway in front of it adds
//!   is what gets measured;
//! - `overhead`: a closed-loop, non-streaming load against several targets
//!   (the mock directly, Sluice proxying to it, LiteLLM proxying to it) at
//!   several concurrencies in one run, reporting requests/s, p50/p99
//!   latency, errors, and each target's p50 added over the first target's.
//!
//! Design choice: both run on single-threaded runtimes with pre-built
//! bodies, so on a 2-core machine the client and the mock take as little
//! CPU from the gateway under test as possible; the mock's answer is a
//! static byte string.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use reqwest::Client;
use serde::Serialize;

use crate::machine::Machine;
use crate::report::write_json;
use crate::stats::{cell, percentile};

const WHOLE: &str = r#"{"id":"chatcmpl-mock","object":"chat.completion","created":1700000000,"model":"mock-model","system_fingerprint":"fp_mock","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the mock upstream.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#;

const STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"mock-model\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"mock-model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello from the mock upstream.\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"mock-model\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"mock-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19}}\n\n",
    "data: [DONE]\n\n",
);

const MODELS: &str = r#"{"object":"list","data":[{"id":"mock-model","object":"model","created":1700000000,"owned_by":"mock"}]}"#;

#[derive(Args, Debug)]
pub struct MockArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:18001")]
    pub listen: SocketAddr,
}

/// Serves the mock until the process is killed.
pub async fn mock_upstream(args: MockArgs) -> Result<()> {
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/models", get(|| async { json(MODELS) }));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!(
        "mock upstream listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await.context("serving")?;
    Ok(())
}

fn json(body: &'static str) -> Response {
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

async fn chat(body: Bytes) -> Response {
    let wants_stream = contains(&body, b"\"stream\":true") || contains(&body, b"\"stream\": true");
    if wants_stream {
        ([(CONTENT_TYPE, "text/event-stream")], STREAM).into_response()
    } else {
        json(WHOLE)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[derive(Args, Debug)]
pub struct OverheadArgs {
    /// A target as NAME=BASE_URL (up to and including /v1); the first one is
    /// the baseline the others' added latency is measured against. Repeat.
    #[arg(long = "target", required = true)]
    pub targets: Vec<String>,
    /// Model name per target as NAME=MODEL; default `mock-model`
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Concurrent connections, comma-separated
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Measured seconds per (target, concurrency)
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Unmeasured seconds before each measurement
    #[arg(long, default_value_t = 1.0)]
    pub warmup_s: f64,
    /// Bearer token sent to every target
    #[arg(long)]
    pub api_key: Option<String>,
    /// Also write the results as JSON here
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub target: String,
    pub concurrency: usize,
    pub requests_ok: usize,
    pub errors: usize,
    pub error_sample: Option<String>,
    pub requests_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// p50 minus the baseline target's p50 at the same concurrency.
    pub added_p50_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    tool: &'static str,
    command: String,
    machine: Machine,
    duration_s: f64,
    rows: &'a [Row],
}

pub async fn overhead(args: OverheadArgs, machine: Machine) -> Result<()> {
    let mut targets = Vec::new();
    for t in &args.targets {
        let Some((name, url)) = t.split_once('=') else {
            bail!("--target {t}: expected NAME=BASE_URL");
        };
        let model = args
            .models
            .iter()
            .find_map(|m| m.strip_prefix(&format!("{name}=")))
            .unwrap_or("mock-model")
            .to_string();
        targets.push((
            name.to_string(),
            url.trim_end_matches('/').to_string(),
            model,
        ));
    }
    let mut rows: Vec<Row> = Vec::new();
    for &conc in &args.concurrency {
        let mut baseline_p50 = None;
        for (i, (name, url, model)) in targets.iter().enumerate() {
            let mut row = measure(name, url, model, conc, &args).await?;
            if i == 0 {
                baseline_p50 = row.p50_ms;
            } else if let (Some(b), Some(p)) = (baseline_p50, row.p50_ms) {
                row.added_p50_ms = Some(p - b);
            }
            eprintln!(
                "{name:>10} c={conc:<3} {:>9.0} req/s  p50 {} ms  p99 {} ms  errors {}",
                row.requests_per_s,
                cell(row.p50_ms, 3),
                cell(row.p99_ms, 3),
                row.errors
            );
            rows.push(row);
        }
    }
    println!("| target | connections | requests/s | p50 ms | p99 ms | added p50 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} |",
            r.target,
            r.concurrency,
            r.requests_per_s,
            cell(r.p50_ms, 3),
            cell(r.p99_ms, 3),
            cell(r.added_p50_ms, 3),
            r.errors
        );
    }
    if let Some(path) = &args.json {
        let report = Report {
            tool: "sluice-bench overhead",
            command: std::env::args().collect::<Vec<_>>().join(" "),
            machine,
            duration_s: args.duration_s,
            rows: &rows,
        };
        write_json(path, &report)?;
    }
    Ok(())
}

async fn measure(
    name: &str,
    url: &str,
    model: &str,
    concurrency: usize,
    args: &OverheadArgs,
) -> Result<Row> {
    let client = Client::builder()
        .pool_max_idle_per_host(concurrency.max(1))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let endpoint = format!("{url}/chat/completions");
    let body = Bytes::from(format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello."}}],"max_tokens":16}}"#
    ));
    let auth = args.api_key.as_ref().map(|k| format!("Bearer {k}"));
    let warm_until = Instant::now() + Duration::from_secs_f64(args.warmup_s);
    let end = warm_until + Duration::from_secs_f64(args.duration_s);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, endpoint, body, auth) =
            (client.clone(), endpoint.clone(), body.clone(), auth.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut sample = None;
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let mut req = client
                    .post(&endpoint)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
                if let Some(a) = &auth {
                    req = req.header(reqwest::header::AUTHORIZATION, a);
                }
                let result = match req.send().await {
                    Ok(resp) if resp.status().is_success() => {
                        resp.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        Err(format!(
                            "HTTP {status}: {}",
                            text.chars().take(200).collect::<String>()
                        ))
                    }
                    Err(e) => Err(e.to_string()),
                };
                let done = Instant::now();
                if start < warm_until {
                    continue;
                }
                match result {
                    Ok(()) => latencies.push(done.duration_since(start).as_secs_f64() * 1e3),
                    Err(e) => {
                        errors += 1;
                        sample.get_or_insert(e);
                    }
                }
            }
            (latencies, errors, sample)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut error_sample = None;
    while let Some(joined) = workers.join_next().await {
        let (l, e, s) = joined.context("a load worker failed")?;
        latencies.extend(l);
        errors += e;
        if error_sample.is_none() {
            error_sample = s;
        }
    }
    Ok(Row {
        target: name.to_string(),
        concurrency,
        requests_ok: latencies.len(),
        errors,
        error_sample,
        requests_per_s: latencies.len() as f64 / args.duration_s,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        added_p50_ms: None,
    })
}
