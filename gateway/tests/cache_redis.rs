//! The Redis cache backend against the real Redis server on 127.0.0.1:6379
//! (and, for the outage test, a `redis-server` this test starts and stops
//! on a free port). Each test uses its own key prefix and deletes it, so
//! tests run in parallel and leave nothing behind.
//!
//! "Two gateway instances" are two [`Cache`]s built from the same settings,
//! as two `sluice serve` processes would build them; the end-to-end test in
//! `tests/tests/cache.rs` does the same with two real processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::{json, Value};
use sluice_gateway::answer::{collect, BoxAnswer};
use sluice_gateway::cache::replay::Replay;
use sluice_gateway::cache::testing::HashedEmbedder;
use sluice_gateway::cache::{
    Backend, Cache, CacheSettings, Decision, Outcome, Request, StoredAnswer, StoredChoice,
};
use sluice_gateway::validate::ValidRequest;
use sluice_runtime::{FinishReason, Usage};

const REDIS: &str = "redis://127.0.0.1:6379";

fn prefix(test: &str) -> String {
    format!("sluice-test:{test}:{}", uuid::Uuid::new_v4().simple())
}

fn settings(url: &str, prefix: &str, ttl: Duration) -> CacheSettings {
    CacheSettings {
        enabled: true,
        backend: Backend::Redis {
            url: url.into(),
            prefix: prefix.into(),
        },
        ttl,
        similarity_threshold: 0.5,
        ..CacheSettings::default()
    }
}

fn instance(url: &str, prefix: &str, ttl: Duration) -> Arc<Cache> {
    Cache::new(
        settings(url, prefix, ttl),
        Some(Arc::new(HashedEmbedder::default())),
    )
    .unwrap()
}

/// Deletes the test's keys however the test ends (over its own blocking
/// connection: the test's runtime may be the one being torn down).
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(REDIS).and_then(|c| c.get_connection()) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

fn asking(q: &str) -> ValidRequest {
    let body: Value = json!({"model": "m", "temperature": 0, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": q}
    ]});
    sluice_gateway::validate::chat(serde_json::from_value(body).unwrap()).unwrap()
}

async fn lookup(cache: &Arc<Cache>, tenant: &str, q: &str) -> Decision {
    let r = asking(q);
    let h = HeaderMap::new();
    cache
        .lookup(
            Request {
                tenant,
                model: &r.model,
                job: &r.job,
                headers: &h,
                sensitive: false,
                regulated: false,
                may_carry_pii: false,
            },
            None,
        )
        .await
}

fn generated(text: &str) -> BoxAnswer {
    Box::new(Replay::new(&StoredAnswer {
        choices: vec![StoredChoice {
            text: text.into(),
            finish_reason: FinishReason::Stop,
            stop_sequence: None,
            tool_calls: Vec::new(),
        }],
        usage: Usage {
            prompt_tokens: 10,
            completion_tokens: 3,
            cached_prompt_tokens: 0,
        },
    }))
}

/// Looks up, and on a miss records `text` as the generated answer.
async fn ask(cache: &Arc<Cache>, tenant: &str, q: &str, text: &str) -> (Outcome, String) {
    let mut d = lookup(cache, tenant, q).await;
    let mut a = match d.take_hit() {
        Some(hit) => hit,
        None => d.record(generated(text)),
    };
    let out = collect(a.as_mut()).await.unwrap();
    (d.outcome, out[0].text.clone())
}

#[tokio::test]
async fn two_instances_share_entries_and_tenants_stay_apart() {
    let p = prefix("share");
    let a = instance(REDIS, &p, Duration::from_secs(60));
    let b = instance(REDIS, &p, Duration::from_secs(60));
    let _cleanup = Cleanup(p.clone());
    let q = "What is the capital of France?";
    assert_eq!(ask(&a, "t1", q, "Paris.").await.0, Outcome::Miss);
    let (outcome, text) = ask(&b, "t1", q, "not used").await;
    assert_eq!((outcome, text.as_str()), (Outcome::Exact, "Paris."));
    // Tenant B, identical request: never tenant A's entry.
    let (outcome, text) = ask(&b, "t2", q, "B's own").await;
    assert_eq!((outcome, text.as_str()), (Outcome::Miss, "B's own"));
    // A paraphrase finds it semantically through the other instance.
    let (outcome, text) = ask(&b, "t1", "what is the capital of France", "x").await;
    assert!(matches!(outcome, Outcome::Semantic { .. }), "{outcome:?}");
    assert_eq!(text, "Paris.");
}

#[tokio::test]
async fn negated_swapped_and_renumbered_questions_do_not_hit() {
    let p = prefix("verify");
    let a = instance(REDIS, &p, Duration::from_secs(60));
    let _cleanup = Cleanup(p.clone());
    ask(&a, "t", "Is a flight from Paris to London 2 hours?", "Yes.").await;
    for q in [
        "Is a flight from Paris to London not 2 hours?",
        "Is a flight from London to Paris 2 hours?",
        "Is a flight from Paris to London 3 hours?",
    ] {
        assert_eq!(lookup(&a, "t", q).await.outcome, Outcome::Miss, "{q}");
    }
}

#[tokio::test]
async fn entries_expire_with_their_ttl() {
    let p = prefix("ttl");
    let a = instance(REDIS, &p, Duration::from_secs(1));
    let _cleanup = Cleanup(p.clone());
    let q = "Name a prime number";
    ask(&a, "t", q, "7").await;
    assert_eq!(lookup(&a, "t", q).await.outcome, Outcome::Exact);
    // Redis expires the key; poll until it has (no timing is asserted).
    let started = Instant::now();
    loop {
        let outcome = lookup(&a, "t", q).await.outcome;
        if outcome == Outcome::Miss {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_corrupted_record_is_skipped_and_deleted() {
    let p = prefix("corrupt");
    let a = instance(REDIS, &p, Duration::from_secs(60));
    let _cleanup = Cleanup(p.clone());
    let q = "What is two plus two?";
    ask(&a, "t", q, "4").await;
    let r = asking(q);
    let key = sluice_gateway::cache::key::keys("t", &r.model, &r.job).exact;
    let store = a.redis().unwrap();
    let mut conn = store.connection();
    let entry = store.entry_key(&key);
    let mut bytes: Vec<u8> = redis::cmd("GET")
        .arg(&entry)
        .query_async(&mut conn)
        .await
        .unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let _: () = redis::cmd("SET")
        .arg(&entry)
        .arg(bytes)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(lookup(&a, "t", q).await.outcome, Outcome::Miss);
    let exists: bool = redis::cmd("EXISTS")
        .arg(&entry)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists, "the corrupt record was deleted");
    // A paraphrase does not find it semantically either.
    assert_eq!(
        lookup(&a, "t", "what is two plus two").await.outcome,
        Outcome::Miss
    );
}

#[tokio::test]
async fn purge_by_tenant_and_model_counts_what_it_removed() {
    let p = prefix("purge");
    let a = instance(REDIS, &p, Duration::from_secs(60));
    let _cleanup = Cleanup(p.clone());
    ask(&a, "t1", "one question", "1").await;
    ask(&a, "t1", "another question", "2").await;
    ask(&a, "t2", "one question", "3").await;
    // A semantic lookup first, so the instance has the vectors memoised.
    let d = lookup(&a, "t1", "one question please").await;
    assert!(
        matches!(d.outcome, Outcome::Semantic { .. }),
        "{:?}",
        d.outcome
    );
    assert_eq!(a.purge(Some("t1"), None).await.unwrap(), 2);
    // Purged entries are gone for the semantic tier too, memo or not.
    let other = instance(REDIS, &p, Duration::from_secs(60));
    assert_eq!(
        lookup(&other, "t1", "one question please").await.outcome,
        Outcome::Miss
    );
    assert_eq!(
        lookup(&a, "t1", "one question please").await.outcome,
        Outcome::Miss
    );
    assert_eq!(
        lookup(&a, "t1", "one question").await.outcome,
        Outcome::Miss
    );
    assert_eq!(
        lookup(&a, "t2", "one question").await.outcome,
        Outcome::Exact
    );
    assert_eq!(a.purge(None, Some("m")).await.unwrap(), 1);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct RedisServer(Child);
impl RedisServer {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}
impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn requests_bypass_while_redis_is_down_and_the_cache_resumes() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let server = RedisServer::start(port);
    let a = instance(&url, "sluice-test:outage", Duration::from_secs(60));
    let q = "What colour is the sky?";
    assert_eq!(ask(&a, "t", q, "Blue.").await.0, Outcome::Miss);
    assert_eq!(ask(&a, "t", q, "x").await.0, Outcome::Exact);
    drop(server);
    // Down: every lookup answers at once (bypass), and the answer still flows.
    for _ in 0..3 {
        let (outcome, text) = ask(&a, "t", q, "generated anyway").await;
        assert_eq!(
            (outcome, text.as_str()),
            (Outcome::Bypass, "generated anyway")
        );
    }
    let _server = RedisServer::start(port);
    // Back (empty: the server kept nothing): the cache resumes after its
    // retry pause; poll rather than assume how long reconnecting takes.
    let started = Instant::now();
    loop {
        let (outcome, _) = ask(&a, "t", q, "Blue again.").await;
        if outcome == Outcome::Exact {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "cache never resumed: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn tool_calls_survive_the_redis_record_and_replay_from_another_instance() {
    let p = prefix("calls");
    let a = instance(REDIS, &p, Duration::from_secs(60));
    let b = instance(REDIS, &p, Duration::from_secs(60));
    let _cleanup = Cleanup(p.clone());
    let calls = vec![
        sluice_models::ToolCall {
            id: "call_AbCdEfGhIjKlMnOpQrStUvWx".into(),
            name: "get_weather".into(),
            arguments: r#"{"city": "Санкт-Петербург", "note": "say \"hi\""}"#.into(),
        },
        sluice_models::ToolCall {
            id: "call_2".into(),
            name: "get_time".into(),
            arguments: "{}".into(),
        },
    ];
    let stored = StoredAnswer {
        choices: vec![StoredChoice {
            text: String::new(),
            finish_reason: FinishReason::ToolCalls,
            stop_sequence: None,
            tool_calls: calls.clone(),
        }],
        usage: Usage {
            prompt_tokens: 10,
            completion_tokens: 30,
            cached_prompt_tokens: 0,
        },
    };
    let q = "What is the weather in Saint Petersburg?";
    let mut d = lookup(&a, "t", q).await;
    assert_eq!(d.outcome, Outcome::Miss);
    collect(d.record(Box::new(Replay::new(&stored))).as_mut())
        .await
        .unwrap();
    let mut d = lookup(&b, "t", q).await;
    assert_eq!(d.outcome, Outcome::Exact);
    let mut hit = d.take_hit().unwrap();
    let out = collect(hit.as_mut()).await.unwrap();
    assert_eq!(out[0].tool_calls, calls);
    assert_eq!(out[0].finish_reason, Some(FinishReason::ToolCalls));
}
