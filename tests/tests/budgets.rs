//! Budgets across instances: two real `sluice serve` processes share one
//! PostgreSQL store (a fresh schema) and one Redis (a fresh key prefix), in
//! front of a priced fake upstream. A tenant budget worth exactly 10
//! requests, hit by 100 concurrent requests spread over both: spend never
//! overshoots by more than one reservation, the refused requests are 429
//! `budget_exceeded`, and the alert webhook (a small HTTP server here)
//! hears 50%, 80% and 100% once each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::Json;
use common::{get, http_client, post_raw};
use serde_json::{json, Value};
use sluice_tests::fakes::{self, FakeServer};
use sluice_tests::services::fresh_postgres_schema;
use sluice_tests::{Server, ServerOptions};

const KEY: &str = "sk-test-budget-acme";
const ADMIN: &str = "sk-test-budget-admin";
/// Each request: 5 output tokens at 1 RUB per 1k (input is free), so its
/// reservation (max_tokens = 5) is exactly its actual cost: 0.005.
const PER_REQUEST: f64 = 0.005;
const BUDGET: f64 = 10.0 * PER_REQUEST;

/// Collects the webhook's bodies.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route(
            "/hook",
            post(
                |State(seen): State<Arc<Mutex<Vec<Value>>>>, Json(body): Json<Value>| async move {
                    seen.lock().unwrap().push(body);
                    "ok"
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), seen)
}

fn config(store_url: &str, redis_prefix: &str, hook: &str, upstream: &FakeServer) -> String {
    format!(
        r#"
[store]
url = "{store_url}"

[admin]
key_env = "SLUICE_ADMIN_KEY"

[cache]
enabled = false

[budgets]
redis_url = "redis://127.0.0.1:6379"
redis_prefix = "{redis_prefix}"
alert_webhook = "{hook}"
refresh_ms = 0

[[providers]]
kind = "openai"
name = "up"
base_url = "{}/v1"

[[routes]]
model = "chat"
[[routes.deployments]]
name = "up"
provider = "up"
upstream_model = "up-model"
price_input_per_1k = 0.0
price_output_per_1k = 1.0
"#,
        upstream.base_url()
    )
}

async fn start(config: String) -> Server {
    tokio::task::spawn_blocking(move || {
        Server::start(ServerOptions {
            config: Some(config),
            env: vec![
                ("SLUICE_API_KEYS".into(), format!("acme:{KEY}")),
                ("SLUICE_ADMIN_KEY".into(), ADMIN.into()),
            ],
            args: Vec::new(),
        })
    })
    .await
    .unwrap()
}

fn chat() -> String {
    json!({
        "model": "chat",
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 5,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_hold_one_budget_and_alert_once_per_threshold() {
    let upstream = fakes::openai::start(None).await;
    let (hook, alerts) = webhook().await;
    let store_url = fresh_postgres_schema("e2e_budget");
    let prefix = format!(
        "e2e:budget:{}:{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let one = start(config(&store_url, &prefix, &hook, &upstream)).await;
    let two = start(config(&store_url, &prefix, &hook, &upstream)).await;

    let created = http_client()
        .post(format!("{}/admin/budgets", one.base_url()))
        .bearer_auth(ADMIN)
        .json(&json!({"scope": "tenant", "target": "acme", "amount": BUDGET, "period": "day"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200, "{}", created.text().await.unwrap());
    // A budget in another currency is refused: there is no conversion.
    let usd = http_client()
        .post(format!("{}/admin/budgets", two.base_url()))
        .bearer_auth(ADMIN)
        .json(&json!({"scope": "team", "target": "x", "amount": 1.0, "currency": "USD", "period": "day"}))
        .send()
        .await
        .unwrap();
    assert_eq!(usd.status(), 400);

    let servers = [&one, &two];
    let replies = futures_util::future::join_all((0..100).map(|i| {
        let server = servers[i % 2];
        post_raw(server, "/v1/chat/completions", chat(), Some(KEY))
    }))
    .await;
    let mut granted = 0;
    let mut cost = 0.0;
    for reply in &replies {
        match reply.status {
            200 => {
                granted += 1;
                cost += reply
                    .headers
                    .get("x-sluice-cost")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<f64>().ok())
                    .expect("a priced answer carries x-sluice-cost");
            }
            429 => {
                let err = reply.expect_error(429);
                assert_eq!(err["code"], "budget_exceeded", "{err}");
                assert!(reply.headers.get("retry-after").is_some());
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    // A refusal means 10 reservations of exactly their cost were held or
    // spent: never fewer granted, and one instance alone would have let
    // 10 through on its own.
    assert_eq!(granted, 10, "{granted} requests granted");
    assert!(
        cost <= BUDGET + PER_REQUEST + 1e-9,
        "{granted} requests cost {cost}, past the budget {BUDGET} by more than one reservation"
    );

    // Every answer settled: the counters show what was spent, nothing held.
    let mut listed = Value::Null;
    for _ in 0..200 {
        let reply = get(&two, "/admin/budgets", Some(ADMIN)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        listed = reply.json();
        if listed["data"][0]["reserved"].as_f64() == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let row = &listed["data"][0];
    assert_eq!(row["id"], "tenant/acme", "{listed}");
    assert_eq!(row["reserved"].as_f64(), Some(0.0), "{listed}");
    let spent = row["spent"].as_f64().unwrap();
    assert!(
        (spent - cost).abs() < 1e-6,
        "counted {spent}, answers cost {cost}"
    );

    // 10 requests spend the budget exactly: every threshold is crossed.
    {
        let thresholds = || {
            let mut t: Vec<u64> = alerts
                .lock()
                .unwrap()
                .iter()
                .map(|a| a["threshold_pct"].as_u64().unwrap())
                .collect();
            t.sort_unstable();
            t
        };
        for _ in 0..400 {
            if thresholds().len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // Time for a duplicate from the other instance to arrive, if one were sent.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(thresholds(), [50, 80, 100]);
        let first = alerts.lock().unwrap()[0].clone();
        assert_eq!(first["scope"], "tenant");
        assert_eq!(first["target"], "acme");
        assert_eq!(first["currency"], "RUB");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_releases_its_reservation() {
    let upstream = fakes::openai::start(None).await;
    upstream.control.set_fault(Some(fakes::Fault::SlowDrip {
        every: Duration::from_millis(200),
    }));
    let (hook, _alerts) = webhook().await;
    let prefix = format!(
        "e2e:budget:dc:{}:{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let server = start(config(
        &fresh_postgres_schema("e2e_budget"),
        &prefix,
        &hook,
        &upstream,
    ))
    .await;
    let created = http_client()
        .post(format!("{}/admin/budgets", server.base_url()))
        .bearer_auth(ADMIN)
        .json(&json!({"scope": "tenant", "target": "acme", "amount": BUDGET, "period": "calendar_month"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let body = json!({
        "model": "chat", "stream": true, "max_tokens": 5,
        "messages": [{"role": "user", "content": "Say hello"}],
    });
    let mut resp = http_client()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.chunk().await.unwrap().expect("a first chunk");
    // While the stream runs, its worst case is held.
    let row = get(&server, "/admin/budgets", Some(ADMIN)).await.json()["data"][0].clone();
    assert!(
        (row["reserved"].as_f64().unwrap() - PER_REQUEST).abs() < 1e-9,
        "{row}"
    );
    drop(resp);
    let mut row = Value::Null;
    for _ in 0..200 {
        row = get(&server, "/admin/budgets", Some(ADMIN)).await.json()["data"][0].clone();
        if row["reserved"].as_f64() == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(row["reserved"].as_f64(), Some(0.0), "{row}");
    // Charged for what was generated before the disconnect, never more than reserved.
    let spent = row["spent"].as_f64().unwrap();
    assert!(spent < PER_REQUEST, "{spent}");
}
