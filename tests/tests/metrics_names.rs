//! `/metrics` as a vLLM dashboard and a cardinality-conscious operator need
//! it: the engine's metrics under vLLM's names with `sluice:` for `vllm:`,
//! vLLM's types and buckets, counting what the engine really did; every
//! exported name in the catalog with its type; and no label taking a
//! per-request value (the series count does not grow with distinct
//! requests). The real `sluice` binary with the demo model, a fake
//! OpenAI-compatible upstream behind a second route, the cache on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{get, http_client, Reply};
use serde_json::json;
use sluice_gateway::metrics::catalog::{self, Kind};
use sluice_tests::fakes::{self, FakeServer};
use sluice_tests::prom::Scrape;
use sluice_tests::{local_and_cloud_config, Server, ServerOptions, DEMO_MODEL_ID};

async fn start(upstream: &FakeServer) -> Server {
    Server::spawn(ServerOptions {
        config: Some(local_and_cloud_config("", &upstream.base_url())),
        ..ServerOptions::default()
    })
    .await
}

/// A chat request that no other request repeats: its own prompt, user
/// and request id (the values a careless label would copy).
async fn distinct_chat(server: &Server, model: &str, n: usize, stream: bool) -> Reply {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": format!("Request zq7-{n}: name a colour.")}],
        "max_tokens": 2,
        "stream": stream,
        // Deterministic, so the cache may serve and store it.
        "temperature": 0,
        "user": format!("user-zq7-{n}"),
    });
    let resp = http_client()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .header("content-type", "application/json")
        .header("x-request-id", format!("req-zq7-{n}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

async fn scrape(server: &Server) -> Scrape {
    let reply = get(server, "/metrics", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    Scrape::parse(&reply.body)
}

/// Scrapes until `done` holds (the engine hands its figures over between
/// steps, just after the answer has left), or fails with the last scrape.
async fn scrape_until(server: &Server, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let started = Instant::now();
    loop {
        let s = scrape(server).await;
        if done(&s) {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} never held; last scrape: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const ENGINE_LABELS: [(&str, &str); 2] = [("model_name", DEMO_MODEL_ID), ("engine", "0")];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_metrics_carry_vllms_names_types_buckets_and_real_counts() {
    let upstream = fakes::openai::start(None).await;
    let server = start(&upstream).await;

    // Before any request: every engine series exists at zero, as vLLM's do.
    let idle = scrape(&server).await;
    for m in catalog::ALL
        .iter()
        .filter(|m| m.name.starts_with("sluice:"))
    {
        assert_eq!(
            idle.types.get(m.name).map(String::as_str),
            Some(m.kind.as_str()),
            "# TYPE of {}",
            m.name
        );
        let sample = match m.kind {
            Kind::Histogram => format!("{}_count", m.name),
            Kind::Counter | Kind::Gauge => m.name.to_string(),
        };
        assert!(
            idle.find(&sample, &ENGINE_LABELS).next().is_some(),
            "{sample} has no series for the demo model"
        );
    }
    assert!(idle.help[catalog::KV_CACHE_USAGE_PERC].contains("KV-cache usage"));

    // Local requests, whole and streamed; the engine's figures must add up
    // to what the answers' usage says.
    let (mut prompt, mut generated, mut answers) = (0.0, 0.0, 0.0);
    for n in 0..6 {
        let reply = distinct_chat(&server, DEMO_MODEL_ID, n, false).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let usage = &reply.json()["usage"];
        prompt += usage["prompt_tokens"].as_f64().unwrap();
        generated += usage["completion_tokens"].as_f64().unwrap();
        answers += 1.0;
    }
    let reply = distinct_chat(&server, DEMO_MODEL_ID, 100, true).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let streamed = common::sse_events(&reply.body);
    assert_eq!(streamed.last().map(String::as_str), Some("[DONE]"));
    answers += 1.0;

    let s = scrape_until(&server, "seven finished requests counted", |s| {
        s.sum(catalog::REQUEST_SUCCESS, &ENGINE_LABELS) == answers
    })
    .await;
    let finished = |reason: &str| {
        s.sum(
            catalog::REQUEST_SUCCESS,
            &[("model_name", DEMO_MODEL_ID), ("finished_reason", reason)],
        )
    };
    assert_eq!(finished("stop") + finished("length"), answers);
    assert_eq!(finished("abort") + finished("error"), 0.0);
    // The streamed request's usage is not in its body; it ran to
    // max_tokens or a stop like the others: at least one token, at most two.
    let gen_total = s.sum(catalog::GENERATION_TOKENS, &ENGINE_LABELS);
    assert!(
        gen_total >= generated + 1.0 && gen_total <= generated + 2.0,
        "generation_tokens_total {gen_total} vs usage {generated} + the stream's"
    );
    let prompt_total = s.sum(catalog::PROMPT_TOKENS, &ENGINE_LABELS);
    assert!(
        prompt_total > prompt && prompt_total < prompt * 1.5,
        "prompt_tokens_total {prompt_total} vs usage {prompt} + the stream's"
    );
    let count = |name: &str| s.sum(&format!("{name}_count"), &ENGINE_LABELS);
    for name in [
        catalog::TIME_TO_FIRST_TOKEN,
        catalog::E2E_REQUEST_LATENCY,
        catalog::REQUEST_QUEUE_TIME,
        catalog::REQUEST_PREFILL_TIME,
        catalog::REQUEST_DECODE_TIME,
        catalog::REQUEST_INFERENCE_TIME,
        catalog::REQUEST_PROMPT_TOKENS,
        catalog::REQUEST_GENERATION_TOKENS,
    ] {
        assert_eq!(count(name), answers, "{name}_count");
    }
    // One latency per token after a request's first.
    assert_eq!(
        count(catalog::INTER_TOKEN_LATENCY),
        gen_total - answers,
        "inter_token_latency_seconds_count"
    );
    assert_eq!(
        s.sum(
            &format!("{}_sum", catalog::REQUEST_PROMPT_TOKENS),
            &ENGINE_LABELS
        ),
        prompt_total
    );
    // The requests ran one after another: one step per token at least, and
    // the steps computed every prompt token not found in the prefix cache
    // plus every generated token but each request's last (never fed back).
    assert!(count(catalog::ITERATION_TOKENS) >= gen_total);
    let hits = s.sum(catalog::PREFIX_CACHE_HITS, &ENGINE_LABELS);
    assert_eq!(
        s.sum(
            &format!("{}_sum", catalog::ITERATION_TOKENS),
            &ENGINE_LABELS
        ),
        prompt_total - hits + gen_total - answers,
        "tokens computed by the steps"
    );
    assert_eq!(
        s.sum(catalog::PREFIX_CACHE_QUERIES, &ENGINE_LABELS),
        prompt_total,
        "every prompt token is looked up once"
    );
    // Idle again: nothing running or waiting.
    assert_eq!(s.sum(catalog::NUM_REQUESTS_RUNNING, &ENGINE_LABELS), 0.0);
    assert_eq!(s.sum(catalog::NUM_REQUESTS_WAITING, &ENGINE_LABELS), 0.0);

    // vLLM's buckets, exactly.
    let les = |name: &str| -> Vec<String> {
        s.find(&format!("{name}_bucket"), &ENGINE_LABELS)
            .map(|b| b.label("le").unwrap().to_string())
            .collect()
    };
    let vllm_ttft = [
        "0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "0.75",
        "1", "2.5", "5", "7.5", "10", "20", "40", "80", "160", "640", "2560", "+Inf",
    ];
    assert_eq!(les(catalog::TIME_TO_FIRST_TOKEN), vllm_ttft);
    let vllm_itl = [
        "0.01", "0.025", "0.05", "0.075", "0.1", "0.15", "0.2", "0.3", "0.4", "0.5", "0.75", "1",
        "2.5", "5", "7.5", "10", "20", "40", "80", "+Inf",
    ];
    assert_eq!(les(catalog::INTER_TOKEN_LATENCY), vllm_itl);
    let vllm_request_latency = [
        "0.3", "0.5", "0.8", "1", "1.5", "2", "2.5", "5", "10", "15", "20", "30", "40", "50", "60",
        "120", "240", "480", "960", "1920", "7680", "+Inf",
    ];
    for name in [
        catalog::E2E_REQUEST_LATENCY,
        catalog::REQUEST_QUEUE_TIME,
        catalog::REQUEST_PREFILL_TIME,
        catalog::REQUEST_DECODE_TIME,
    ] {
        assert_eq!(les(name), vllm_request_latency, "{name}");
    }
    let vllm_iteration = [
        "1", "8", "16", "32", "64", "128", "256", "512", "1024", "2048", "4096", "8192", "16384",
        "+Inf",
    ];
    assert_eq!(les(catalog::ITERATION_TOKENS), vllm_iteration);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_exported_name_is_in_the_catalog_with_its_type() {
    let upstream = fakes::openai::start(None).await;
    let server = start(&upstream).await;
    // Local and cloud, whole and streamed, a cache miss then a hit.
    for (model, stream) in [
        (DEMO_MODEL_ID, false),
        (DEMO_MODEL_ID, true),
        ("cloud", false),
        ("cloud", true),
    ] {
        let reply = distinct_chat(&server, model, 1, stream).await;
        assert_eq!(reply.status, 200, "{model}: {}", reply.body);
    }
    let again = distinct_chat(&server, DEMO_MODEL_ID, 1, false).await;
    assert_eq!(again.status, 200);
    let s = scrape_until(&server, "a cache hit counted", |s| {
        s.sum(catalog::CACHE_REQUESTS, &[("outcome", "exact")]) >= 1.0
    })
    .await;
    assert!(s.types.len() > 30, "{:?}", s.types.keys());
    for (name, kind) in &s.types {
        let listed = catalog::find(name)
            .unwrap_or_else(|| panic!("{name} is exported but not in the catalog"));
        assert_eq!(kind, listed.kind.as_str(), "# TYPE of {name}");
        // The labels the catalog documents are the labels exported.
        let series_name = match listed.kind {
            Kind::Histogram => format!("{name}_count"),
            Kind::Counter | Kind::Gauge => name.clone(),
        };
        for sample in s.find(&series_name, &[]) {
            let keys: BTreeSet<&str> = sample.labels.iter().map(|(k, _)| k.as_str()).collect();
            let documented: BTreeSet<&str> = listed.labels.iter().copied().collect();
            assert_eq!(keys, documented, "labels of {}", sample.series());
        }
    }
    for name in [
        "sluice_requests_total",
        catalog::OVERHEAD_SECONDS,
        catalog::DEPLOYMENT_TTFT_SECONDS,
        catalog::CIRCUIT_STATE,
        catalog::CACHE_REQUESTS,
        catalog::LIMIT_REFUSALS,
        catalog::BUDGET_REFUSALS,
        catalog::STREAM_STOPS,
    ] {
        assert!(s.types.contains_key(name), "{name} is not exported");
    }
    assert_eq!(
        s.sum(
            catalog::CIRCUIT_STATE,
            &[("model", "cloud"), ("deployment", "up")]
        ),
        0.0,
        "a healthy provider's circuit is closed"
    );
    assert!(
        s.find(catalog::CIRCUIT_STATE, &[("deployment", DEMO_MODEL_ID)])
            .next()
            .is_none(),
        "a local deployment has no breaker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn series_do_not_grow_with_a_thousand_distinct_requests() {
    let upstream = fakes::openai::start(None).await;
    let server = start(&upstream).await;
    // Eight clients at once; one request in four to the local engine, the
    // rest through the provider, streamed and not.
    async fn run(server: &Server, range: std::ops::Range<usize>) {
        let mut pending = Vec::new();
        for n in range {
            let model = if n % 4 == 0 { DEMO_MODEL_ID } else { "cloud" };
            pending.push(distinct_chat(server, model, n, n % 2 == 1));
            if pending.len() == 8 {
                for reply in futures_util::future::join_all(pending.drain(..)).await {
                    assert_eq!(reply.status, 200, "{}", reply.body);
                }
            }
        }
        for reply in futures_util::future::join_all(pending).await {
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
    }
    run(&server, 0..100).await;
    let series =
        |s: &Scrape| -> BTreeSet<String> { s.samples.iter().map(|x| x.series()).collect() };
    let after_100 = scrape_until(&server, "100 requests counted", |s| {
        s.sum("sluice_requests_total", &[]) == 100.0
    })
    .await;
    run(&server, 100..1000).await;
    let after_1000 = scrape_until(&server, "1000 requests counted", |s| {
        s.sum("sluice_requests_total", &[]) == 1000.0
    })
    .await;
    assert_eq!(
        series(&after_1000),
        series(&after_100),
        "series appeared or vanished between 100 and 1,000 distinct requests"
    );
    let local = after_1000.sum(catalog::REQUEST_SUCCESS, &ENGINE_LABELS);
    assert_eq!(local, 250.0, "one request in four ran on the engine");
    for sample in &after_1000.samples {
        for (key, value) in &sample.labels {
            assert!(
                !value.contains("zq7"),
                "label {key} of {} took a per-request value",
                sample.name
            );
        }
    }
}
