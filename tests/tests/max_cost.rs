//! A request's own `max_cost` end to end (issue 14): the real `sluice`
//! binary and the demo model behind a priced route. The cap is turned into
//! tokens at the serving deployment's price: the answer stops early with
//! `finish_reason: "length"` and the stop reason `max_cost` (the header of
//! a whole answer, the final chunk's field of a stream), and the spend
//! recorded for it stays within the cap. A bad `max_cost` is a 400. The
//! same on Anthropic's `/v1/messages`: `stop_reason: "max_tokens"`, the
//! header, and the stream's `message_delta` naming `max_cost`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{anthropic_events, get, post_raw, sse_events, Reply};
use serde_json::{json, Value};
use sluice_tests::{Server, ServerOptions, DEMO_MODEL_ID};

const ADMIN: &str = "admin-key-max-cost-0123456789";
/// 0.01 per output token; prompts are free, so the cap is exact in tokens.
const OUTPUT_PER_1K: f64 = 10.0;
/// Ten tokens' worth, and half a token more.
const MAX_COST: f64 = 0.105;

async fn server() -> Server {
    let config = format!(
        r#"
[admin]
key_env = "ADMIN_KEY"

[[models]]
id = "{DEMO_MODEL_ID}"
path = "{{DEMO_MODEL}}"

[[routes]]
model = "priced"
[[routes.deployments]]
name = "local"
local = "{DEMO_MODEL_ID}"
price_input_per_1k = 0.0
price_output_per_1k = {OUTPUT_PER_1K}

[spend]
flush_ms = 50
"#
    );
    tokio::task::spawn_blocking(move || {
        Server::start(ServerOptions {
            config: Some(config),
            env: vec![("ADMIN_KEY".into(), ADMIN.into())],
            args: Vec::new(),
        })
    })
    .await
    .unwrap()
}

async fn chat(server: &Server, extra: Value) -> Reply {
    let mut body = json!({"model": "priced", "max_tokens": 200, "ignore_eos": true,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Tell me a long story about a cat."}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    post_raw(server, "/v1/chat/completions", body.to_string(), None).await
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_max_cost_stops_a_local_answer_early_and_the_spend_stays_within_it() {
    let server = server().await;

    let whole = chat(&server, json!({"max_cost": MAX_COST})).await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    let v = whole.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 10, "{v}");
    assert_eq!(header(&whole, "x-sluice-stop-reason"), Some("max_cost"));
    let cost: f64 = header(&whole, "x-sluice-cost").unwrap().parse().unwrap();
    assert!(cost > 0.0 && cost <= MAX_COST, "charged {cost}");

    let streamed = chat(
        &server,
        json!({"max_cost": MAX_COST, "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    let events = sse_events(&streamed.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let finish = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .find(|c| !c["finish_reason"].is_null())
        .expect("a finish chunk");
    assert_eq!(finish["finish_reason"], "length", "{finish}");
    assert_eq!(finish["sluice_stop_reason"], "max_cost", "{finish}");
    let usage = chunks.iter().rev().find(|c| !c["usage"].is_null()).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 10, "{usage}");

    // Without a cap the same request runs to its max_tokens.
    let uncapped = chat(&server, json!({"max_tokens": 30})).await;
    assert_eq!(uncapped.json()["usage"]["completion_tokens"], 30);
    assert!(header(&uncapped, "x-sluice-stop-reason").is_none());

    // The spend log (written in the background) charged each capped answer
    // within its cap: 10 tokens at 0.01.
    let deadline = Instant::now() + Duration::from_secs(30);
    let row = loop {
        let reply = get(&server, "/admin/spend?group_by=model", Some(ADMIN)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let v = reply.json();
        let row = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["group"] == "priced")
            .cloned();
        if let Some(row) = row.filter(|r| r["requests"] == 3) {
            break row;
        }
        assert!(Instant::now() < deadline, "spend rows missing: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        row["tokens_out"].as_f64().unwrap(),
        10.0 + 10.0 + 30.0,
        "{row}"
    );
    let capped_cost = row["cost"].as_f64().unwrap() - 30.0 * OUTPUT_PER_1K / 1000.0;
    assert!(
        (capped_cost - 0.2).abs() < 1e-6 && capped_cost <= 2.0 * MAX_COST,
        "{row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_or_non_numeric_max_cost_is_an_openai_style_400() {
    let server = server().await;
    for bad in [json!(-0.5), json!("cheap"), json!(0)] {
        let reply = chat(&server, json!({"max_cost": bad})).await;
        let err = reply.expect_error(400);
        assert_eq!(err["param"], "max_cost", "{err}");
        assert_eq!(err["type"], "invalid_request_error", "{err}");
    }
    let reply = post_raw(
        &server,
        "/v1/completions",
        json!({"model": "priced", "prompt": "Once", "max_cost": -1}).to_string(),
        None,
    )
    .await;
    assert_eq!(reply.expect_error(400)["param"], "max_cost");
}

/// A Messages request to the priced route (no `ignore_eos` on this API: the
/// greedy story runs past ten tokens, which the uncapped call checks).
async fn message(server: &Server, extra: Value) -> Reply {
    let mut body = json!({"model": "priced", "max_tokens": 30, "temperature": 0,
        "messages": [{"role": "user", "content": "Tell me a long story about a cat."}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    post_raw(server, "/v1/messages", body.to_string(), None).await
}

/// The streamed message's `message_delta` (the last event is `message_stop`).
fn message_delta(reply: &Reply) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let events = anthropic_events(&reply.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[names.len() - 2..],
        ["message_delta", "message_stop"],
        "{names:?}"
    );
    events[events.len() - 2].1.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_cost_stops_an_anthropic_message_streamed_and_not_and_names_itself() {
    let server = server().await;

    // Uncapped, the answer runs to its 30 tokens: the cap below is what
    // stops it at ten, not the model's end of turn.
    let uncapped = message(&server, json!({})).await;
    assert_eq!(uncapped.status, 200, "{}", uncapped.body);
    let m = uncapped.json();
    assert_eq!(m["usage"]["output_tokens"], 30, "{m}");
    assert_eq!(m["stop_reason"], "max_tokens", "{m}");
    assert!(header(&uncapped, "x-sluice-stop-reason").is_none());
    let delta = message_delta(&message(&server, json!({"stream": true})).await);
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens", "{delta}");
    assert!(
        delta["delta"].get("sluice_stop_reason").is_none(),
        "{delta}"
    );

    let whole = message(&server, json!({"max_cost": MAX_COST})).await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    let m = whole.json();
    assert_eq!(m["stop_reason"], "max_tokens", "{m}");
    assert_eq!(m["usage"]["output_tokens"], 10, "{m}");
    assert_eq!(header(&whole, "x-sluice-stop-reason"), Some("max_cost"));
    let cost: f64 = header(&whole, "x-sluice-cost").unwrap().parse().unwrap();
    assert!(cost > 0.0 && cost <= MAX_COST, "charged {cost}");

    let streamed = message(&server, json!({"max_cost": MAX_COST, "stream": true})).await;
    let delta = message_delta(&streamed);
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens", "{delta}");
    assert_eq!(delta["delta"]["sluice_stop_reason"], "max_cost", "{delta}");
    assert_eq!(delta["usage"]["output_tokens"], 10, "{delta}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_max_cost_on_messages_is_an_anthropic_400_naming_it() {
    let server = server().await;
    for bad in [json!(-0.5), json!("cheap"), json!(0)] {
        let reply = message(&server, json!({"max_cost": bad})).await;
        assert_eq!(reply.status, 400, "{}", reply.body);
        let v = reply.json();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        let text = v["error"]["message"].as_str().unwrap();
        assert!(text.contains("max_cost"), "{v}");
    }
    // Counting tokens generates nothing: a cap there is refused.
    let reply = post_raw(
        &server,
        "/v1/messages/count_tokens",
        json!({"model": "priced", "max_cost": 0.1,
               "messages": [{"role": "user", "content": "x"}]})
        .to_string(),
        None,
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("max_cost"), "{}", reply.body);
}
