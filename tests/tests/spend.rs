//! The spend log through the real binary: cloud requests, cache hits and
//! locally served requests each leave one row; `/admin/spend` and
//! `/admin/spend/savings` sum them as the responses said.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{get, http_client, Reply};
use serde_json::{json, Value};
use sluice_tests::fakes;
use sluice_tests::{Server, ServerOptions, DEMO_MODEL_ID};

const ADMIN: &str = "admin-key-0123456789";
/// The reference cloud price of the config below, per 1k tokens.
const REF_IN: f64 = 1.0;
const REF_OUT: f64 = 2.0;

fn config(fake: &fakes::FakeServer) -> String {
    format!(
        r#"
[admin]
key_env = "ADMIN_KEY"

[[models]]
id = "{DEMO_MODEL_ID}"
path = "{{DEMO_MODEL}}"

[[providers]]
kind = "openai"
name = "cloud"
base_url = "{}/v1"

[[routes]]
model = "cloud-chat"
[[routes.deployments]]
name = "cloud"
provider = "cloud"
upstream_model = "up-cloud"
price_input_per_1k = 0.5
price_output_per_1k = 1.5

[cache]
enabled = true

[spend]
reference_price = {{ input_per_1k = {REF_IN}, output_per_1k = {REF_OUT} }}
flush_ms = 50
"#,
        fake.base_url()
    )
}

async fn chat(server: &Server, model: &str, prompt: &str) -> Reply {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 4,
        "temperature": 0.0,
    });
    let resp = http_client()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .header("content-type", "application/json")
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

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// (prompt tokens, completion tokens) from the response body.
fn usage(reply: &Reply) -> (f64, f64) {
    let v = reply.json();
    (
        v["usage"]["prompt_tokens"].as_f64().unwrap(),
        v["usage"]["completion_tokens"].as_f64().unwrap(),
    )
}

fn reference(reply: &Reply) -> f64 {
    let (i, o) = usage(reply);
    (i * REF_IN + o * REF_OUT) / 1000.0
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6 * (1.0 + b.abs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_leaves_a_row_and_the_reports_sum_them() {
    let fake = fakes::openai::start(None).await;
    let text = config(&fake);
    let server = tokio::task::spawn_blocking(move || {
        Server::start(ServerOptions {
            config: Some(text),
            env: vec![("ADMIN_KEY".into(), ADMIN.into())],
            args: Vec::new(),
        })
    })
    .await
    .unwrap();

    let mut cloud = Vec::new();
    for i in 0..3 {
        let r = chat(&server, "cloud-chat", &format!("cloud question number {i}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(header(&r, "x-sluice-cache"), "miss");
        cloud.push(r);
    }
    let mut hits = Vec::new();
    for _ in 0..2 {
        let r = chat(&server, "cloud-chat", "cloud question number 0").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(header(&r, "x-sluice-cache"), "exact", "{}", r.body);
        hits.push(r);
    }
    let mut local = Vec::new();
    for i in 0..2 {
        let r = chat(&server, DEMO_MODEL_ID, &format!("local question {i}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        local.push(r);
    }

    // The rows are written in the background: poll until all 7 are there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let by_model = loop {
        let reply = get(&server, "/admin/spend?group_by=model", Some(ADMIN)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let v = reply.json();
        let total: i64 = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_i64().unwrap())
            .sum();
        if total == 7 {
            break v;
        }
        assert!(Instant::now() < deadline, "spend rows missing: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let row = |model: &str| -> Value {
        by_model["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["group"] == model)
            .unwrap_or_else(|| panic!("no {model} in {by_model}"))
            .clone()
    };
    let cloud_row = row("cloud-chat");
    assert_eq!(cloud_row["requests"], 5);
    let tokens_in: f64 = cloud.iter().chain(&hits).map(|r| usage(r).0).sum();
    let tokens_out: f64 = cloud.iter().chain(&hits).map(|r| usage(r).1).sum();
    assert_eq!(cloud_row["tokens_in"].as_f64().unwrap(), tokens_in);
    assert_eq!(cloud_row["tokens_out"].as_f64().unwrap(), tokens_out);
    // Cache hits cost nothing; the misses what `x-sluice-cost` said.
    let cost: f64 = cloud
        .iter()
        .map(|r| header(r, "x-sluice-cost").parse::<f64>().unwrap())
        .sum();
    assert!(cost > 0.0);
    assert!(
        (cloud_row["cost"].as_f64().unwrap() - cost).abs() < 1e-5,
        "{cloud_row} vs {cost}"
    );
    assert_eq!(row(DEMO_MODEL_ID)["requests"], 2);

    let reply = get(&server, "/admin/spend/savings", Some(ADMIN)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let s = reply.json();
    assert_eq!(s["requests"], 7);
    assert_eq!(s["cache_hits"]["requests"], 2);
    assert_eq!(s["local"]["requests"], 2);
    let hit_ref: f64 = hits.iter().map(reference).sum();
    let local_ref: f64 = local.iter().map(reference).sum();
    let all_ref: f64 = cloud.iter().chain(&hits).chain(&local).map(reference).sum();
    assert!(
        close(s["cache_hits"]["reference_cost"].as_f64().unwrap(), hit_ref),
        "{s}"
    );
    assert!(
        close(s["local"]["reference_cost"].as_f64().unwrap(), local_ref),
        "{s}"
    );
    assert!(close(s["reference_cost"].as_f64().unwrap(), all_ref), "{s}");
    let local_cost = s["local"]["cost"].as_f64().unwrap();
    let saved = hit_ref + local_ref - local_cost;
    assert!(close(s["saved"].as_f64().unwrap(), saved), "{s}");
    assert!(
        close(s["saved_pct"].as_f64().unwrap(), saved / all_ref * 100.0),
        "{s}"
    );

    // Grouped by deployment, the cache hits have none.
    let v = get(&server, "/admin/spend?group_by=deployment", Some(ADMIN))
        .await
        .json();
    let none = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["group"].is_null())
        .unwrap();
    assert_eq!(none["requests"], 2);

    // A range before the requests is empty; a bad grouping or time is a 400.
    let v = get(&server, "/admin/spend?from=0&to=1000", Some(ADMIN))
        .await
        .json();
    assert_eq!(v["data"], json!([]));
    get(&server, "/admin/spend?group_by=colour", Some(ADMIN))
        .await
        .expect_error(400);
    get(&server, "/admin/spend?from=yesterday", Some(ADMIN))
        .await
        .expect_error(400);
    // Without an admin credential: refused.
    let status = get(&server, "/admin/spend", None).await.status;
    assert!(status == 401 || status == 403, "{status}");
}
