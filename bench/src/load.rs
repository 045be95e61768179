//! A load generator for any OpenAI-compatible server: N workers share a
//! request counter, each sending its next request as soon as its last one
//! ends (closed loop), until the request count or the time limit is reached.
//!
//! Token counts come from the server's `usage` when it sends one
//! (`stream_options.include_usage`), else from the number of content chunks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use reqwest::Client;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::http::{get_json, post_json, post_sse, Failure, Flow};
use crate::machine::Machine;
use crate::prompts::text_prompt;
use crate::report::write_json;
use crate::stats::{cell, Summary};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// POST {url}/chat/completions with one user message
    Chat,
    /// POST {url}/completions with a plain prompt
    Completions,
}

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Base URL of the OpenAI-compatible API (the part before /chat/completions)
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    pub url: String,
    /// Model id to request [default: the first id GET {url}/models lists]
    #[arg(long)]
    pub model: Option<String>,
    /// Requests in flight at once
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Requests to send in all (warm-up not counted)
    #[arg(long, default_value_t = 32)]
    pub requests: usize,
    /// max_tokens of each request
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Approximate prompt length in tokens (built from common words, distinct per request)
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Stream the answers (needed for TTFT and inter-token latency)
    #[arg(long)]
    pub stream: bool,
    /// Which API to call
    #[arg(long, value_enum, default_value = "chat")]
    pub endpoint: Endpoint,
    /// Total time limit in seconds: no request starts after it, running ones are cut
    #[arg(long, default_value_t = 300.0)]
    pub duration_s: f64,
    /// Per-request time limit in seconds (counted as an error)
    #[arg(long, default_value_t = 120.0)]
    pub request_timeout_s: f64,
    /// Requests sent one by one before measuring (not counted)
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Send `"ignore_eos": true` (vLLM, llama.cpp), so every answer has max_tokens tokens
    #[arg(long)]
    pub ignore_eos: bool,
    /// A JSON object merged into every request body, e.g. '{"top_k": 1}'
    #[arg(long)]
    pub extra_body: Option<String>,
    /// Bearer token
    #[arg(long, env = "SLUICE_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seed of the prompt words
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the results as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One finished (or failed) request.
#[derive(Debug, Default)]
struct Record {
    start: Option<Instant>,
    end: Option<Instant>,
    failure: Option<Failure>,
    /// Cancelled by the total time limit: neither a success nor an error.
    cut: bool,
    ttft_ms: Option<f64>,
    /// Gaps between consecutive content chunks, milliseconds.
    gaps_ms: Vec<f64>,
    chunks: usize,
    usage_completion: Option<usize>,
    usage_prompt: Option<usize>,
}

impl Record {
    fn output_tokens(&self) -> usize {
        self.usage_completion.unwrap_or(self.chunks)
    }
}

#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub tool: &'static str,
    pub url: String,
    pub model: String,
    pub endpoint: Endpoint,
    pub stream: bool,
    pub concurrency: usize,
    pub requests_planned: usize,
    pub max_tokens: usize,
    pub prompt_tokens_approx: usize,
    pub requests_sent: usize,
    pub requests_ok: usize,
    pub errors: BTreeMap<String, usize>,
    pub error_samples: Vec<String>,
    pub cut_by_time_limit: usize,
    pub wall_s: f64,
    pub requests_per_s: f64,
    pub output_tokens: usize,
    pub output_tok_s: f64,
    /// Successful requests whose token count came from `usage` (the rest count chunks).
    pub requests_with_usage: usize,
    pub prompt_tokens_mean: Option<f64>,
    pub ttft_ms: Summary,
    /// Gaps between content chunks; one chunk may hold several tokens.
    pub itl_ms: Summary,
    /// Per request: (end − first token) / (output tokens − 1).
    pub tpot_ms: Summary,
    pub e2e_ms: Summary,
    pub machine: Machine,
}

pub async fn run(args: LoadArgs, machine: Machine) -> Result<LoadReport> {
    if args.concurrency == 0 || args.requests == 0 {
        bail!("--concurrency and --requests must be positive");
    }
    let extra = match &args.extra_body {
        Some(s) => match serde_json::from_str::<Value>(s).context("--extra-body is not JSON")? {
            Value::Object(m) => m,
            _ => bail!("--extra-body must be a JSON object"),
        },
        None => Map::new(),
    };
    let client = Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .context("building the HTTP client")?;
    let base = args.url.trim_end_matches('/').to_string();
    if base.starts_with("https:") && !cfg!(feature = "tls") {
        bail!("{base}: this build has no TLS; rebuild with `--features tls`");
    }
    let model = match &args.model {
        Some(m) => m.clone(),
        None => first_model(&client, &base, args.api_key.as_deref()).await?,
    };
    let url = match args.endpoint {
        Endpoint::Chat => format!("{base}/chat/completions"),
        Endpoint::Completions => format!("{base}/completions"),
    };
    let spec = Arc::new(Spec {
        url,
        model: model.clone(),
        args: args.clone(),
        extra,
    });
    let timeout = Duration::from_secs_f64(args.request_timeout_s.max(0.001));

    for i in 0..args.warmup {
        let r = one_request(&client, &spec, usize::MAX - i).await;
        if let Some(f) = r.failure {
            bail!("warm-up request to {} failed: {f}", spec.url);
        }
    }
    eprintln!(
        "[load] {} requests to {} (model {model}), {} at once, max_tokens {}, ~{} prompt tokens{}",
        args.requests,
        spec.url,
        args.concurrency,
        args.max_tokens,
        args.prompt_tokens,
        if args.stream { ", streaming" } else { "" }
    );

    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration_s.max(0.0));
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, spec, next, done) = (client.clone(), spec.clone(), next.clone(), done.clone());
        set.spawn(async move {
            let mut records = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= spec.args.requests || Instant::now() >= deadline {
                    break;
                }
                let until = deadline.min(Instant::now() + timeout);
                let start = Instant::now();
                let record =
                    match tokio::time::timeout_at(until.into(), one_request(&client, &spec, i))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) if until >= deadline => Record {
                            start: Some(start),
                            end: Some(Instant::now()),
                            cut: true,
                            ..Record::default()
                        },
                        Err(_) => Record {
                            start: Some(start),
                            end: Some(Instant::now()),
                            failure: Some(Failure::Transport(format!(
                                "no answer within {timeout:?}"
                            ))),
                            ..Record::default()
                        },
                    };
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 10 == 0 || n == spec.args.requests {
                    eprintln!(
                        "[load] {n}/{} done, {:.1} s",
                        spec.args.requests,
                        start.duration_since(started).as_secs_f64()
                    );
                }
                records.push(record);
            }
            records
        });
    }
    let mut records = Vec::new();
    while let Some(joined) = set.join_next().await {
        records.extend(joined.context("a load worker failed")?);
    }
    Ok(summarise(&args, model, started, &records, machine))
}

struct Spec {
    url: String,
    model: String,
    args: LoadArgs,
    extra: Map<String, Value>,
}

async fn first_model(client: &Client, base: &str, key: Option<&str>) -> Result<String> {
    let url = format!("{base}/models");
    let v = get_json(client, &url, key)
        .await
        .map_err(|e| anyhow::anyhow!("GET {url} (to pick a model; or pass --model): {e}"))?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("GET {url} listed no model; pass --model"))
}

fn body(spec: &Spec, index: usize) -> Value {
    let a = &spec.args;
    let prompt = text_prompt(index, a.prompt_tokens, a.seed);
    let mut body = match a.endpoint {
        Endpoint::Chat => json!({
            "model": spec.model,
            "messages": [{"role": "user", "content": prompt}],
        }),
        Endpoint::Completions => json!({"model": spec.model, "prompt": prompt}),
    };
    if let Value::Object(m) = &mut body {
        m.insert("max_tokens".into(), json!(a.max_tokens));
        m.insert("temperature".into(), json!(a.temperature));
        m.insert("stream".into(), json!(a.stream));
        if a.stream {
            m.insert("stream_options".into(), json!({"include_usage": true}));
        }
        if a.ignore_eos {
            m.insert("ignore_eos".into(), json!(true));
        }
        for (k, v) in &spec.extra {
            m.insert(k.clone(), v.clone());
        }
    }
    body
}

/// Whether a streamed chunk adds text, for either endpoint.
fn has_text(v: &Value) -> bool {
    let choice = &v["choices"][0];
    let non_empty = |x: &Value| x.as_str().is_some_and(|s| !s.is_empty());
    non_empty(&choice["delta"]["content"])
        || non_empty(&choice["delta"]["reasoning_content"])
        || non_empty(&choice["text"])
}

fn read_usage(v: &Value, r: &mut Record) {
    let usage = &v["usage"];
    if usage.is_object() {
        r.usage_completion = usage["completion_tokens"].as_u64().map(|n| n as usize);
        r.usage_prompt = usage["prompt_tokens"].as_u64().map(|n| n as usize);
    }
}

async fn one_request(client: &Client, spec: &Spec, index: usize) -> Record {
    let body = body(spec, index);
    let key = spec.args.api_key.as_deref();
    let start = Instant::now();
    let mut r = Record {
        start: Some(start),
        ..Record::default()
    };
    if !spec.args.stream {
        match post_json(client, &spec.url, &body, key).await {
            Ok(v) => read_usage(&v, &mut r),
            Err(f) => r.failure = Some(f),
        }
        r.end = Some(Instant::now());
        return r;
    }
    let mut last: Option<Instant> = None;
    let result = post_sse(client, &spec.url, &body, key, |data, at| {
        if data.trim() == "[DONE]" {
            return Ok(Flow::Done);
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|e| Failure::Protocol(format!("event is not JSON ({e})")))?;
        if let Some(err) = v.get("error") {
            return Err(Failure::Protocol(format!("error event: {err}")));
        }
        if has_text(&v) {
            match last {
                None => r.ttft_ms = Some(at.duration_since(start).as_secs_f64() * 1e3),
                Some(prev) => r.gaps_ms.push(at.duration_since(prev).as_secs_f64() * 1e3),
            }
            last = Some(at);
            r.chunks += 1;
        }
        read_usage(&v, &mut r);
        Ok(Flow::Continue)
    })
    .await;
    r.end = Some(Instant::now());
    if let Err(f) = result {
        r.failure = Some(f);
    }
    r
}

fn summarise(
    args: &LoadArgs,
    model: String,
    started: Instant,
    records: &[Record],
    machine: Machine,
) -> LoadReport {
    let ok: Vec<&Record> = records
        .iter()
        .filter(|r| r.failure.is_none() && !r.cut)
        .collect();
    let mut errors = BTreeMap::new();
    let mut error_samples = Vec::new();
    for f in records.iter().filter_map(|r| r.failure.as_ref()) {
        *errors.entry(f.kind()).or_insert(0) += 1;
        if error_samples.len() < 5 {
            error_samples.push(f.to_string());
        }
    }
    let end = records
        .iter()
        .filter_map(|r| r.end)
        .max()
        .unwrap_or(started);
    let wall_s = end.duration_since(started).as_secs_f64();
    let output_tokens: usize = ok.iter().map(|r| r.output_tokens()).sum();
    let per_s = |n: f64| if wall_s > 0.0 { n / wall_s } else { 0.0 };
    let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e3;
    let ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_ms).collect();
    let gaps: Vec<f64> = ok.iter().flat_map(|r| r.gaps_ms.iter().copied()).collect();
    let e2e: Vec<f64> = ok
        .iter()
        .filter_map(|r| Some(ms(r.start?, r.end?)))
        .collect();
    let tpot: Vec<f64> = ok
        .iter()
        .filter_map(|r| {
            let n = r.output_tokens();
            let total = ms(r.start?, r.end?);
            let ttft = r.ttft_ms?;
            (n > 1).then(|| (total - ttft) / (n - 1) as f64)
        })
        .collect();
    let prompts: Vec<f64> = ok
        .iter()
        .filter_map(|r| r.usage_prompt)
        .map(|n| n as f64)
        .collect();
    LoadReport {
        tool: "sluice-bench load",
        url: args.url.clone(),
        model,
        endpoint: args.endpoint,
        stream: args.stream,
        concurrency: args.concurrency,
        requests_planned: args.requests,
        max_tokens: args.max_tokens,
        prompt_tokens_approx: args.prompt_tokens,
        requests_sent: records.len(),
        requests_ok: ok.len(),
        errors,
        error_samples,
        cut_by_time_limit: records.iter().filter(|r| r.cut).count(),
        wall_s,
        requests_per_s: per_s(ok.len() as f64),
        output_tokens,
        output_tok_s: per_s(output_tokens as f64),
        requests_with_usage: ok.iter().filter(|r| r.usage_completion.is_some()).count(),
        prompt_tokens_mean: (!prompts.is_empty())
            .then(|| prompts.iter().sum::<f64>() / prompts.len() as f64),
        ttft_ms: Summary::of(&ttft),
        itl_ms: Summary::of(&gaps),
        tpot_ms: Summary::of(&tpot),
        e2e_ms: Summary::of(&e2e),
        machine,
    }
}

impl LoadReport {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "{} {} (model {}), {} requests sent ({} ok, {} cut by the time limit), concurrency {}, \
             max_tokens {}, ~{} prompt tokens{}{}\n\n",
            match self.endpoint {
                Endpoint::Chat => "chat completions at",
                Endpoint::Completions => "completions at",
            },
            self.url,
            self.model,
            self.requests_sent,
            self.requests_ok,
            self.cut_by_time_limit,
            self.concurrency,
            self.max_tokens,
            self.prompt_tokens_approx,
            self.prompt_tokens_mean
                .map_or_else(String::new, |m| format!(" ({m:.0} by the server's count)")),
            if self.stream { ", streaming" } else { "" },
        );
        out.push_str("| measure | value |\n|---|---:|\n");
        out.push_str(&format!(
            "| output tok/s (all requests) | {:.1} |\n",
            self.output_tok_s
        ));
        out.push_str(&format!("| requests/s | {:.2} |\n", self.requests_per_s));
        out.push_str(&format!(
            "| output tokens | {} ({} of {} requests counted by usage, the rest by chunks) |\n",
            self.output_tokens, self.requests_with_usage, self.requests_ok
        ));
        out.push_str(&format!("| wall s | {:.2} |\n", self.wall_s));
        let mut line = |name: &str, s: &Summary, pcts: &[(&str, Option<f64>)]| {
            if s.count == 0 {
                return;
            }
            let cells: Vec<String> = pcts
                .iter()
                .map(|(n, v)| format!("{n} {}", cell(*v, 1)))
                .collect();
            out.push_str(&format!("| {name} | {} |\n", cells.join(" / ")));
        };
        let t = &self.ttft_ms;
        line(
            "TTFT ms",
            t,
            &[("p50", t.p50), ("p90", t.p90), ("p99", t.p99)],
        );
        let i = &self.itl_ms;
        line("inter-chunk ms", i, &[("p50", i.p50), ("p99", i.p99)]);
        let p = &self.tpot_ms;
        line(
            "time per output token ms",
            p,
            &[("p50", p.p50), ("p99", p.p99)],
        );
        let e = &self.e2e_ms;
        line("request latency ms", e, &[("p50", e.p50), ("p99", e.p99)]);
        if self.errors.is_empty() {
            out.push_str("| errors | 0 |\n");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            out.push_str(&format!("| errors | {} |\n", list.join(", ")));
        }
        for e in &self.error_samples {
            out.push_str(&format!("\nerror sample: {e}\n"));
        }
        out
    }

    pub fn write_json(&self, path: &std::path::Path) -> Result<()> {
        write_json(path, self)
    }
}
