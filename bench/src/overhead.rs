//! The gateway-overhead benchmark's two halves:
//!
//! - `mock-upstream`: a fast OpenAI-compatible upstream that answers every
//!   chat completion with the same small answer (whole, or as SSE when the
//!   body asks for `"stream": true`), so what a gateway in front of it adds
//!   is what gets measured;
//! - `overhead`: a closed-loop, non-streaming load against several targets
//!   (the mock directly, Sluice proxying to it, TensorZero and LiteLLM
//!   proxying to it) at several concurrencies in one run, reporting
//!   requests/s, p50/p99 latency, errors, and each target's p50 added over
//!   the first target's.
//!
//! Design choice: both run on single-threaded runtimes with small bodies
//! built per request, so on a 2-core machine the client and the mock take
//! as little CPU from the gateway under test as possible; the mock's answer
//! is a static byte string. Every request in a run is different (a counter
//! in the message) and asks for temperature 0: a gateway with a response
//! cache then does what a cache-enabled gateway does for new questions (look
//! up, miss, store) instead of either skipping the cache (sampled requests
//! are not cached by default) or answering from it (identical requests
//! would all be hits after the first, which measures the cache, not the
//! proxy). Every target gets the same bodies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    /// Bearer token for one target as NAME=KEY (instead of --api-key). Repeat.
    #[arg(long = "key")]
    pub keys: Vec<String>,
    /// Send the same request every time (no counter, no temperature): the
    /// body of the runs recorded before the cache was turned on
    #[arg(long)]
    pub same_body: bool,
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
    /// Answers a Sluice cache served (`x-sluice-cache: exact|semantic`);
    /// with distinct requests it stays 0, which is what makes the row a
    /// proxy measurement.
    pub cache_hits: usize,
    /// Answers Sluice's guard flagged (`x-sluice-guard: flagged`).
    pub guard_flagged: usize,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    tool: &'static str,
    command: String,
    machine: Machine,
    duration_s: f64,
    same_body: bool,
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
    // One counter for the whole run, so no request repeats an earlier one
    // at another concurrency (a cache keeps its entries between them).
    let counter = Arc::new(AtomicU64::new(0));
    for &conc in &args.concurrency {
        let mut baseline_p50 = None;
        for (i, (name, url, model)) in targets.iter().enumerate() {
            let mut row = measure(name, url, model, conc, &args, &counter).await?;
            if i == 0 {
                baseline_p50 = row.p50_ms;
            } else if let (Some(b), Some(p)) = (baseline_p50, row.p50_ms) {
                row.added_p50_ms = Some(p - b);
            }
            eprintln!(
                "{name:>12} c={conc:<3} {:>9.0} req/s  p50 {} ms  p99 {} ms  errors {}  cache hits {}  guard flagged {}",
                row.requests_per_s,
                cell(row.p50_ms, 3),
                cell(row.p99_ms, 3),
                row.errors,
                row.cache_hits,
                row.guard_flagged
            );
            if let Some(e) = &row.error_sample {
                eprintln!("{name:>12} first error: {e}");
            }
            rows.push(row);
        }
    }
    println!(
        "| target | connections | requests/s | p50 ms | p99 ms | added p50 ms | errors | cache hits |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            r.target,
            r.concurrency,
            r.requests_per_s,
            cell(r.p50_ms, 3),
            cell(r.p99_ms, 3),
            cell(r.added_p50_ms, 3),
            r.errors,
            r.cache_hits
        );
    }
    if let Some(path) = &args.json {
        let report = Report {
            tool: "sluice-bench overhead",
            command: std::env::args().collect::<Vec<_>>().join(" "),
            machine,
            duration_s: args.duration_s,
            same_body: args.same_body,
            rows: &rows,
        };
        write_json(path, &report)?;
    }
    Ok(())
}

/// What one answer said besides its status.
#[derive(Default)]
struct Seen {
    cache_hit: bool,
    guard_flagged: bool,
}

fn seen(headers: &reqwest::header::HeaderMap) -> Seen {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Seen {
        cache_hit: matches!(value("x-sluice-cache"), Some("exact" | "semantic")),
        guard_flagged: value("x-sluice-guard") == Some("flagged"),
    }
}

/// The body of request number `n` (see the module's design note).
fn request_body(model: &str, n: u64, same_body: bool) -> Bytes {
    if same_body {
        return Bytes::from(format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello."}}],"max_tokens":16}}"#
        ));
    }
    Bytes::from(format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello. This is request {n}."}}],"max_tokens":16,"temperature":0}}"#
    ))
}

async fn measure(
    name: &str,
    url: &str,
    model: &str,
    concurrency: usize,
    args: &OverheadArgs,
    counter: &Arc<AtomicU64>,
) -> Result<Row> {
    let client = Client::builder()
        .pool_max_idle_per_host(concurrency.max(1))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let endpoint = format!("{url}/chat/completions");
    let key = args
        .keys
        .iter()
        .find_map(|k| k.strip_prefix(&format!("{name}=")))
        .or(args.api_key.as_deref());
    let auth = key.map(|k| format!("Bearer {k}"));
    let same_body = args.same_body;
    let warm_until = Instant::now() + Duration::from_secs_f64(args.warmup_s);
    let end = warm_until + Duration::from_secs_f64(args.duration_s);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, endpoint, model, auth, counter) = (
            client.clone(),
            endpoint.clone(),
            model.to_string(),
            auth.clone(),
            counter.clone(),
        );
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut sample = None;
            let (mut cache_hits, mut guard_flagged) = (0usize, 0usize);
            loop {
                let body = request_body(&model, counter.fetch_add(1, Ordering::Relaxed), same_body);
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let mut req = client
                    .post(&endpoint)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body);
                if let Some(a) = &auth {
                    req = req.header(reqwest::header::AUTHORIZATION, a);
                }
                let result = match req.send().await {
                    Ok(resp) if resp.status().is_success() => {
                        let seen = seen(resp.headers());
                        resp.bytes().await.map(|_| seen).map_err(|e| e.to_string())
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
                    Ok(seen) => {
                        latencies.push(done.duration_since(start).as_secs_f64() * 1e3);
                        cache_hits += usize::from(seen.cache_hit);
                        guard_flagged += usize::from(seen.guard_flagged);
                    }
                    Err(e) => {
                        errors += 1;
                        sample.get_or_insert(e);
                    }
                }
            }
            (latencies, errors, sample, cache_hits, guard_flagged)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut error_sample = None;
    let (mut cache_hits, mut guard_flagged) = (0, 0);
    while let Some(joined) = workers.join_next().await {
        let (l, e, s, hits, flagged) = joined.context("a load worker failed")?;
        latencies.extend(l);
        errors += e;
        cache_hits += hits;
        guard_flagged += flagged;
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
        cache_hits,
        guard_flagged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &Bytes) -> serde_json::Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn every_request_of_a_run_differs_and_asks_for_a_repeatable_answer() {
        let a = parse(&request_body("tensorzero::model_name::mock", 7, false));
        let b = parse(&request_body("tensorzero::model_name::mock", 8, false));
        assert_ne!(a["messages"], b["messages"]);
        assert_eq!(a["model"], "tensorzero::model_name::mock");
        // Sampled requests are not cached by default: temperature 0 makes
        // the cache look up and store.
        assert_eq!(a["temperature"], 0);
        assert_eq!(a["max_tokens"], 16);
    }

    #[test]
    fn same_body_repeats_the_old_request() {
        let a = request_body("m", 1, true);
        assert_eq!(a, request_body("m", 2, true));
        assert!(parse(&a).get("temperature").is_none());
    }

    #[test]
    fn only_cache_hits_and_flags_are_counted() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-sluice-cache", "miss".parse().unwrap());
        let s = seen(&h);
        assert!(!s.cache_hit && !s.guard_flagged);
        for hit in ["exact", "semantic"] {
            h.insert("x-sluice-cache", hit.parse().unwrap());
            assert!(seen(&h).cache_hit, "{hit}");
        }
        h.insert("x-sluice-guard", "flagged".parse().unwrap());
        assert!(seen(&h).guard_flagged);
    }
}
