//! Routing end to end: the real `sluice` binary in front of the fake
//! upstreams (and, where saturation matters, the real demo model on a
//! deliberately tiny engine). Each test writes its own small config.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{get, http_client, post, post_raw, sse_events, Reply};
use serde_json::{json, Value};
use sluice_tests::fakes::{self, FakeServer, Fault, DEFAULT_REPLY};
use sluice_tests::{Server, ServerOptions};

/// Starts `sluice serve` with this config off the async workers (it blocks
/// until the server is ready, and the fakes must keep answering meanwhile).
async fn start(config: String) -> Server {
    tokio::task::spawn_blocking(move || {
        Server::start(ServerOptions {
            config: Some(config),
            ..ServerOptions::default()
        })
    })
    .await
    .unwrap()
}

fn provider(name: &str, fake: &FakeServer) -> String {
    format!(
        r#"
[[providers]]
kind = "openai"
name = "{name}"
base_url = "{}/v1"
[providers.resilience]
max_attempts = 2
backoff_base_ms = 1
backoff_max_ms = 5
breaker_failures = 1000
"#,
        fake.base_url()
    )
}

fn cloud_deployment(name: &str, provider: &str, priority: u32) -> String {
    format!(
        r#"
[[routes.deployments]]
name = "{name}"
provider = "{provider}"
upstream_model = "up-{name}"
priority = {priority}
price_input_per_1k = 0.5
price_output_per_1k = 1.5
"#
    )
}

fn chat_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello to the router please"}],
        "max_tokens": 16,
        "stream": stream,
    })
}

fn deployment_of(reply: &Reply) -> String {
    reply
        .headers
        .get("x-sluice-deployment")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn post_sensitive(server: &Server, body: &Value) -> Reply {
    let resp = http_client()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .header("content-type", "application/json")
        .header("x-sluice-sensitive", "true")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_gives_the_client_one_clean_answer_whole_and_streamed() {
    let (broken, healthy) = (
        fakes::openai::start(None).await,
        fakes::openai::start(None).await,
    );
    broken.control.set_fault(Some(Fault::ServerError));
    let config = format!(
        "{}{}\n[[routes]]\nmodel = \"chat\"\n{}{}",
        provider("broken", &broken),
        provider("healthy", &healthy),
        cloud_deployment("first", "broken", 0),
        cloud_deployment("second", "healthy", 1),
    );
    let server = start(config).await;

    let reply = post(&server, "/v1/chat/completions", &chat_body("chat", false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(deployment_of(&reply), "second");
    let v = reply.json();
    assert_eq!(v["choices"][0]["message"]["content"], DEFAULT_REPLY);
    assert_eq!(v["model"], "chat");
    // Two attempts (the retry bound) at the broken one, then the healthy one.
    assert_eq!(broken.control.requests(), 2);
    assert_eq!(healthy.control.requests(), 1);
    assert_eq!(healthy.control.last_body().unwrap()["model"], "up-second");

    let reply = post(&server, "/v1/chat/completions", &chat_body("chat", true)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(deployment_of(&reply), "second");
    assert!(
        reply.headers.get("x-sluice-cost").is_none(),
        "a stream's cost is not known up front"
    );
    let events = sse_events(&reply.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert!(v.get("error").is_none(), "error event: {e}");
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    assert_eq!(text, DEFAULT_REPLY);
    assert_eq!(broken.control.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_header_matches_the_price_table_and_the_usage() {
    let up = fakes::openai::start(None).await;
    let config = format!(
        "{}\n[[routes]]\nmodel = \"chat\"\n{}",
        provider("up", &up),
        cloud_deployment("only", "up", 0),
    );
    let server = start(config).await;
    let reply = post(&server, "/v1/chat/completions", &chat_body("chat", false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let usage = &reply.json()["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap() as f64,
        usage["completion_tokens"].as_u64().unwrap() as f64,
    );
    assert!(prompt > 0.0 && completion > 0.0, "{usage}");
    let expected = prompt / 1000.0 * 0.5 + completion / 1000.0 * 1.5;
    let header = reply.headers["x-sluice-cost"].to_str().unwrap();
    assert_eq!(header, format!("{expected:.6}"));

    // The public name is listed, and the metrics saw the request.
    let models = get(&server, "/v1/models", None).await.json();
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "chat"));
    let metrics = get(&server, "/metrics", None).await.body;
    assert!(
        metrics.contains(
            r#"sluice_requests_total{model="chat",deployment="only",outcome="success"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_gateway_overhead_seconds_bucket"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_strategy_moves_traffic_away_from_a_failing_deployment() {
    let (flaky, steady) = (
        fakes::openai::start(None).await,
        fakes::openai::start(None).await,
    );
    flaky.control.set_fault(Some(Fault::ServerError));
    let config = format!(
        "{}{}\n[[routes]]\nmodel = \"chat\"\nstrategy = \"learned\"\nseed = 11\n{}{}",
        provider("flaky", &flaky),
        provider("steady", &steady),
        cloud_deployment("flaky", "flaky", 0),
        cloud_deployment("steady", "steady", 0),
    );
    let server = start(config).await;
    let mut flaky_tries_late = 0;
    for i in 0..40 {
        let before = flaky.control.requests();
        let reply = post(&server, "/v1/chat/completions", &chat_body("chat", false)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(deployment_of(&reply), "steady");
        if i >= 20 && flaky.control.requests() > before {
            flaky_tries_late += 1;
        }
    }
    assert!(
        flaky.control.requests() > 0,
        "the bandit explored the flaky one at first"
    );
    assert!(
        flaky_tries_late <= 4,
        "flaky was still tried in {flaky_tries_late} of the last 20"
    );
    assert_eq!(steady.control.requests(), 40);
}

/// A local demo model that runs one sequence and queues none, in front of a cloud fake.
fn tiny_local_config(cloud: &FakeServer) -> String {
    format!(
        r#"
[[models]]
id = "tiny"
path = "{{DEMO_MODEL}}"
[models.engine]
max_num_seqs = 1
max_waiting = 0
{}
[[routes]]
model = "chat"
sensitive_wait_ms = 300
[[routes.deployments]]
name = "local"
local = "tiny"
max_queue_wait_ms = 100
{}"#,
        provider("cloud", cloud),
        cloud_deployment("cloud", "cloud", 1),
    )
}

/// Starts a long local generation and waits until the engine runs it.
async fn occupy_local(server: &Server) -> tokio::task::JoinHandle<()> {
    let url = format!("{}/v1/chat/completions", server.base_url());
    let body = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 1000,
        "ignore_eos": true,
        "stream": true,
    });
    let task = tokio::spawn(async move {
        let resp = http_client()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        // Hold the stream open until aborted.
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "{body}");
    });
    wait_running(server, 1).await;
    task
}

async fn wait_running(server: &Server, running: u64) {
    for _ in 0..600 {
        let ready = get(server, "/ready", None).await.json();
        if ready["models"][0]["running"].as_u64() == Some(running) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the local engine never had {running} running:\n{}",
        server.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensitive_request_never_reaches_the_cloud_even_when_the_local_engine_is_full() {
    let cloud = fakes::openai::start(None).await;
    let server = start(tiny_local_config(&cloud)).await;
    let long = occupy_local(&server).await;

    let reply = post_sensitive(&server, &chat_body("chat", false)).await;
    let err = reply.expect_error(429);
    assert_eq!(err["code"], "queue_full");
    assert!(reply.headers.contains_key("retry-after"));
    let reply = post_sensitive(&server, &chat_body("chat", true)).await;
    reply.expect_error(429);
    assert_eq!(
        cloud.control.requests(),
        0,
        "a sensitive request reached the cloud"
    );

    // The same request without the mark does spill (so the cloud was there to take it).
    let reply = post(&server, "/v1/chat/completions", &chat_body("chat", false)).await;
    assert_eq!(deployment_of(&reply), "cloud", "{}", reply.body);
    assert_eq!(cloud.control.requests(), 1);

    long.abort();
    wait_running(&server, 0).await;
    let reply = post_sensitive(&server, &chat_body("chat", false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(deployment_of(&reply), "local");
    assert_eq!(cloud.control.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_spills_to_the_cloud_when_the_local_engine_is_full_and_returns_when_it_frees() {
    let cloud = fakes::openai::start(None).await;
    let server = start(tiny_local_config(&cloud)).await;

    let reply = post(&server, "/v1/chat/completions", &chat_body("chat", false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(deployment_of(&reply), "local");
    assert_eq!(reply.headers["x-sluice-cost"], "0.000000");

    let long = occupy_local(&server).await;
    for _ in 0..3 {
        let reply = post(&server, "/v1/chat/completions", &chat_body("chat", false)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(deployment_of(&reply), "cloud");
    }
    assert_eq!(cloud.control.requests(), 3);

    long.abort();
    wait_running(&server, 0).await;
    let reply = post(&server, "/v1/chat/completions", &chat_body("chat", false)).await;
    assert_eq!(deployment_of(&reply), "local", "{}", reply.body);
    assert_eq!(cloud.control.requests(), 3);

    // Text completions stay local-only; the local model is still served under its own id.
    let reply = post_raw(
        &server,
        "/v1/completions",
        json!({"model": "tiny", "prompt": "Once", "max_tokens": 2}).to_string(),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(deployment_of(&reply), "tiny");
}
