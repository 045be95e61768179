//! Traces end to end: the real `sluice` binary exporting OTLP/gRPC to an
//! in-process receiver (`sluice_tests::otlp`), with the real demo model and
//! a fake OpenAI upstream. A request's spans must form one trace that
//! continues the client's `traceparent`, follow the chain in order, carry
//! the GenAI attributes, and propagate to the upstream; content is absent
//! unless turned on; a dead collector fails nothing; JSON log lines carry
//! the trace id.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{get, http_client, Reply};
use serde_json::{json, Value};
use sluice_tests::fakes::{self, FakeServer};
use sluice_tests::otlp::{AttrValue, OtlpReceiver, ReceivedSpan};
use sluice_tests::{Server, ServerOptions, DEMO_MODEL_ID};

/// How long a test waits for spans to arrive (the server flushes every
/// 100 ms; a slow CI machine gets room).
const WAIT: Duration = Duration::from_secs(30);

const PROMPT: &str = "Name a colour of the sky, in one word.";

async fn start(config: String, env: Vec<(String, String)>) -> Server {
    tokio::task::spawn_blocking(move || {
        Server::start(ServerOptions {
            config: Some(config),
            env,
            ..ServerOptions::default()
        })
    })
    .await
    .unwrap()
}

/// The demo model served locally, a fake OpenAI upstream as `cloud-chat`,
/// the response cache on (so its stage looks up and misses), the stream
/// analysers on (so they have a span), and `[telemetry]` with these extra
/// lines.
fn config(endpoint: &str, fake: &FakeServer, telemetry: &str) -> String {
    format!(
        r#"
[[models]]
id = "{DEMO_MODEL_ID}"
path = "{{DEMO_MODEL}}"

[cache]
enabled = true

[stream]
mode = "stream_first"

[[providers]]
kind = "openai"
name = "fake"
base_url = "{}/v1"
[providers.resilience]
max_attempts = 1

[[routes]]
model = "cloud-chat"
[[routes.deployments]]
name = "fake-cloud"
provider = "fake"
upstream_model = "fake-upstream-model"

[telemetry]
endpoint = "{endpoint}"
service_name = "sluice-under-test"
flush_ms = 100
{telemetry}
"#,
        fake.base_url()
    )
}

/// A fresh W3C traceparent (a client that traces): (header, trace id, span id).
fn client_traceparent(seed: u8) -> (String, String, String) {
    let trace_id: String = (0..16)
        .map(|i| format!("{:02x}", seed ^ (i * 7 + 1)))
        .collect();
    let span_id: String = (0..8)
        .map(|i| format!("{:02x}", seed ^ (i * 13 + 3)))
        .collect();
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}

async fn chat(server: &Server, model: &str, traceparent: &str, stream: bool) -> Reply {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": stream,
    });
    let resp = http_client()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .header("content-type", "application/json")
        .header("traceparent", traceparent)
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

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span `{name}` in {:#?}", names(spans)))
}

fn names(spans: &[ReceivedSpan]) -> Vec<String> {
    spans.iter().map(|s| s.name.clone()).collect()
}

fn has(spans: &[ReceivedSpan], name: &str) -> bool {
    spans.iter().any(|s| s.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_whose_spans_follow_the_chain_with_genai_attributes() {
    let receiver = OtlpReceiver::start().await;
    let fake = fakes::openai::start(None).await;
    let server = start(config(&receiver.endpoint(), &fake, ""), Vec::new()).await;

    // The local engine, streamed: the whole chain, the engine's stages.
    let (traceparent, trace_id, client_span) = client_traceparent(0x5a);
    let reply = chat(&server, DEMO_MODEL_ID, &traceparent, true).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let call_name = format!("chat {DEMO_MODEL_ID}");
    let spans = receiver
        .trace(&trace_id, WAIT, |s| {
            has(s, "POST /v1/chat/completions") && has(s, "sluice.recorders") && has(s, &call_name)
        })
        .await;

    // One trace, continuing the client's: the root's parent is its span.
    let root = named(&spans, "POST /v1/chat/completions");
    assert_eq!(root.parent_span_id, client_span);
    assert_eq!(root.kind, 2, "the root is a server span");
    assert_eq!(root.service_name.as_deref(), Some("sluice-under-test"));
    assert_eq!(
        root.attr("http.response.status_code"),
        Some(&AttrValue::Int(200))
    );
    for span in &spans {
        assert_eq!(span.trace_id, trace_id);
        if span.span_id != root.span_id {
            assert!(
                spans.iter().any(|p| p.span_id == span.parent_span_id),
                "`{}` hangs under a span of the trace",
                span.name
            );
        }
    }

    // The chain's stages, under the root, in the order a request meets them
    // (the guard's when it screened the request: it needs the demo encoder).
    let guarded = reply.headers.contains_key("x-sluice-guard");
    let chain: Vec<&str> = [
        "sluice.auth",
        "sluice.limits",
        "sluice.budget",
        "sluice.guard",
        "sluice.cache",
        "sluice.router",
    ]
    .into_iter()
    .filter(|s| guarded || *s != "sluice.guard")
    .collect();
    let mut last_start = root.start_unix_nano;
    for name in chain {
        let span = named(&spans, name);
        assert_eq!(
            span.parent_span_id, root.span_id,
            "{name} is a stage of the request"
        );
        assert!(
            span.start_unix_nano >= last_start,
            "{name} starts after the stage before it: {:?}",
            names(&spans)
        );
        assert!(span.end_unix_nano >= span.start_unix_nano);
        last_start = span.start_unix_nano;
    }
    assert_eq!(
        named(&spans, "sluice.cache").str_attr("sluice.cache.result"),
        Some("miss")
    );

    // The inference span: GenAI's name and attributes.
    let call = named(&spans, &call_name);
    assert_eq!(call.parent_span_id, root.span_id);
    assert!(call.start_unix_nano >= named(&spans, "sluice.router").start_unix_nano);
    assert_eq!(call.str_attr("gen_ai.operation.name"), Some("chat"));
    assert_eq!(call.str_attr("gen_ai.request.model"), Some(DEMO_MODEL_ID));
    assert_eq!(call.str_attr("gen_ai.response.model"), Some(DEMO_MODEL_ID));
    assert_eq!(call.str_attr("gen_ai.provider.name"), Some("sluice"));
    assert_eq!(call.str_attr("gen_ai.system"), Some("sluice"));
    assert_eq!(
        call.attr("gen_ai.request.max_tokens"),
        Some(&AttrValue::Int(8))
    );
    let input = call
        .attr("gen_ai.usage.input_tokens")
        .and_then(AttrValue::as_int)
        .unwrap();
    let output = call
        .attr("gen_ai.usage.output_tokens")
        .and_then(AttrValue::as_int)
        .unwrap();
    assert!(input > 5, "the prompt's tokens: {input}");
    assert!((1..=8).contains(&output), "the answer's tokens: {output}");
    match call.attr("gen_ai.response.finish_reasons") {
        Some(AttrValue::Strings(reasons)) => {
            assert_eq!(reasons.len(), 1);
            assert!(
                ["stop", "length"].contains(&reasons[0].as_str()),
                "{reasons:?}"
            );
        }
        other => panic!("finish reasons: {other:?}"),
    }
    // The root carries the request's model and operation too.
    assert_eq!(root.str_attr("gen_ai.request.model"), Some(DEMO_MODEL_ID));
    assert_eq!(root.str_attr("gen_ai.operation.name"), Some("chat"));

    // The engine's stages under the call, back to back.
    let queue = named(&spans, "sluice.engine.queue");
    let prefill = named(&spans, "sluice.engine.prefill");
    let decode = named(&spans, "sluice.engine.decode");
    for stage in [queue, prefill, decode] {
        assert_eq!(stage.parent_span_id, call.span_id, "{}", stage.name);
    }
    assert_eq!(queue.end_unix_nano, prefill.start_unix_nano);
    assert_eq!(prefill.end_unix_nano, decode.start_unix_nano);
    assert!(queue.start_unix_nano >= call.start_unix_nano);
    assert!(decode.end_unix_nano <= call.end_unix_nano);

    // On the way back: the analysers read the answer, the recorders settle
    // after it.
    let analysers = named(&spans, "sluice.stream_analysers");
    let recorders = named(&spans, "sluice.recorders");
    assert!(analysers.start_unix_nano >= call.start_unix_nano);
    assert!(recorders.start_unix_nano >= decode.end_unix_nano);
    assert_eq!(recorders.str_attr("sluice.ending"), Some("completed"));
    assert!(root.end_unix_nano >= recorders.end_unix_nano);

    // Content is not recorded by default.
    for span in &spans {
        assert!(
            span.attr("gen_ai.input.messages").is_none(),
            "{}",
            span.name
        );
        assert!(
            span.attr("gen_ai.output.messages").is_none(),
            "{}",
            span.name
        );
    }

    // A provider call carries `traceparent`: the upstream's parent is the
    // call span, in the request's trace.
    let (traceparent, trace_id, _) = client_traceparent(0x3c);
    let reply = chat(&server, "cloud-chat", &traceparent, false).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let sent = fake
        .control
        .last_headers()
        .unwrap()
        .get("traceparent")
        .expect("the upstream got a traceparent")
        .to_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[0], "00");
    assert_eq!(
        parts[1], trace_id,
        "the upstream continues the request's trace"
    );
    let spans = receiver
        .trace(&trace_id, WAIT, |s| {
            has(s, "chat cloud-chat") && has(s, "sluice.recorders")
        })
        .await;
    let call = named(&spans, "chat cloud-chat");
    assert_eq!(
        parts[2], call.span_id,
        "the upstream's parent is the call span"
    );
    assert_eq!(call.kind, 3, "a call across the network is a client span");
    assert_eq!(call.str_attr("gen_ai.provider.name"), Some("openai"));
    assert_eq!(
        call.str_attr("gen_ai.response.model"),
        Some("fake-upstream-model")
    );
    assert!(call.attr("gen_ai.usage.output_tokens").is_some());
    assert!(
        !has(&spans, "sluice.engine.queue"),
        "no engine stage for a cloud call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_recorded_only_when_turned_on() {
    let receiver = OtlpReceiver::start().await;
    let fake = fakes::openai::start(None).await;
    fake.control.set_reply("The sky is blue today");
    let server = start(
        config(&receiver.endpoint(), &fake, "record_content = true"),
        Vec::new(),
    )
    .await;
    let (traceparent, trace_id, _) = client_traceparent(0x71);
    let reply = chat(&server, "cloud-chat", &traceparent, true).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let spans = receiver
        .trace(&trace_id, WAIT, |s| has(s, "chat cloud-chat"))
        .await;
    let call = named(&spans, "chat cloud-chat");
    let input: Value =
        serde_json::from_str(call.str_attr("gen_ai.input.messages").unwrap()).unwrap();
    assert_eq!(input[0]["role"], "user");
    assert_eq!(input[0]["parts"][0]["content"], PROMPT);
    let output: Value =
        serde_json::from_str(call.str_attr("gen_ai.output.messages").unwrap()).unwrap();
    assert_eq!(output[0]["role"], "assistant");
    assert_eq!(output[0]["parts"][0]["content"], "The sky is blue today");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_fails_no_request_and_its_drops_are_counted() {
    // A port that was just free: nothing listens there.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let fake = fakes::openai::start(None).await;
    let server = start(
        config(&format!("http://{dead}"), &fake, "timeout_ms = 200"),
        Vec::new(),
    )
    .await;
    for i in 0..20u8 {
        let (traceparent, _, _) = client_traceparent(i);
        let reply = chat(&server, "cloud-chat", &traceparent, i % 2 == 0).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
    }
    let reply = chat(&server, DEMO_MODEL_ID, &client_traceparent(99).0, false).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The spans could not be exported: counted, not silently lost.
    let mut dropped = 0.0;
    for _ in 0..200 {
        let metrics = get(&server, "/metrics", None).await;
        dropped = metrics
            .body
            .lines()
            .filter(|l| l.starts_with("sluice_telemetry_spans_dropped_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if dropped > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped > 0.0, "no dropped span was counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_of_a_request_carry_its_trace_id() {
    let receiver = OtlpReceiver::start().await;
    let fake = fakes::openai::start(None).await;
    let server = start(
        config(&receiver.endpoint(), &fake, ""),
        vec![("SLUICE_LOG_FORMAT".into(), "json".into())],
    )
    .await;
    let (traceparent, trace_id, _) = client_traceparent(0x42);
    let reply = chat(&server, "cloud-chat", &traceparent, false).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut answered = None;
    for _ in 0..100 {
        answered = server.logs().lines().find_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            (v["message"] == "answered" && v["trace_id"] == trace_id.as_str()).then_some(v)
        });
        if answered.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line =
        answered.unwrap_or_else(|| panic!("no JSON line with the trace id:\n{}", server.logs()));
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["status"], 200);
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16));
    // The format applies from the first lines on (before the config is
    // read): the start-up line is JSON too, without a trace id.
    let listening = server
        .logs()
        .lines()
        .find(|l| l.contains("listening on http://"))
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .unwrap();
    assert!(listening.get("trace_id").is_none(), "{listening}");
    // And the trace the line names is the one the collector has.
    let spans = receiver
        .trace(&trace_id, WAIT, |s| has(s, "POST /v1/chat/completions"))
        .await;
    let root = named(&spans, "POST /v1/chat/completions");
    assert_eq!(line["span_id"], root.span_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_is_exported_without_waiting_for_the_flush_interval() {
    let receiver = OtlpReceiver::start().await;
    let fake = fakes::openai::start(None).await;
    // Ten minutes between timed flushes: only a full batch (4 spans; one
    // request makes more) can bring the trace within the test's wait.
    let config = config(&receiver.endpoint(), &fake, "batch = 4")
        .replace("flush_ms = 100", "flush_ms = 600000");
    let server = start(config, Vec::new()).await;
    let (traceparent, trace_id, _) = client_traceparent(0x5a);
    let reply = chat(&server, "cloud-chat", &traceparent, false).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let spans = receiver.trace(&trace_id, WAIT, |s| s.len() >= 4).await;
    assert!(spans.len() >= 4, "{:?}", names(&spans));
}
