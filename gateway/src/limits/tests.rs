//! The shared limiter's scripts against the real Redis (127.0.0.1:6379,
//! each test under its own key prefix), and the stage around them.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;

use super::*;
use crate::config::ModelLimit;
use crate::validate::Validate;

const REDIS: &str = "redis://127.0.0.1:6379";

fn prefix(test: &str) -> String {
    format!(
        "sluice-test:limits:{test}:{}",
        uuid::Uuid::new_v4().simple()
    )
}

fn check(dimension: Dimension, limit: u64, burst: u32) -> Check {
    Check {
        kind: ScopeKind::Key,
        scope: "key:t".into(),
        dimension,
        limit,
        rate: match dimension {
            Dimension::Requests => Some(Rate::requests(limit as u32, burst)),
            Dimension::Tokens => Some(Rate::tokens(limit)),
            Dimension::Parallel => None,
        },
    }
}

fn team(mut c: Check) -> Check {
    c.kind = ScopeKind::Team;
    c.scope = "team:red".into();
    c
}

fn granted(outcome: Outcome) -> Vec<(u64, u64)> {
    match outcome {
        Outcome::Granted(s) => s,
        Outcome::Refused { check, retry_us } => {
            panic!("refused by check {check}, retry in {retry_us} us")
        }
    }
}

const TTL: Duration = Duration::from_secs(60);

/// The settlement of lease `lease` giving back `tokens_back` tokens.
fn release(checks: &[Check], tokens_back: i64, lease: &str) -> Release {
    Release {
        items: shared::give_backs(checks, tokens_back),
        lease: lease.into(),
    }
}

#[tokio::test]
async fn the_script_commits_all_or_none_across_scopes() {
    let shared = SharedLimiter::new(REDIS, &prefix("all-or-none")).unwrap();
    let checks = [
        check(Dimension::Requests, 60, 10),
        team(check(Dimension::Tokens, 100, 0)),
        team(check(Dimension::Parallel, 1, 0)),
    ];
    let first = granted(shared.admit(&checks, 60, "a", TTL).await.unwrap());
    assert_eq!(first[1].0, 40, "100 tokens a minute, 60 reserved");
    assert_eq!(first[2].0, 0, "the one parallel slot is taken");
    // The team's slot is taken: refused, and neither the request nor its
    // tokens are counted anywhere.
    assert_eq!(
        shared.admit(&checks, 30, "b", TTL).await.unwrap(),
        Outcome::Refused {
            check: 2,
            retry_us: 1_000_000
        }
    );
    shared.settle(&[release(&checks, 0, "a")]).await.unwrap();
    let third = granted(shared.admit(&checks, 40, "c", TTL).await.unwrap());
    assert_eq!(third[1].0, 0, "60 + 40 tokens: b's 30 were never spent");
    assert_eq!(third[0].0, 9, "burst 10: a and c counted, b not");
}

#[tokio::test]
async fn gcra_on_the_redis_clock_spreads_a_flood() {
    let shared = SharedLimiter::new(REDIS, &prefix("gcra")).unwrap();
    // 60 a minute, 2 above the steady rate: three at once, then one a second.
    let checks = [check(Dimension::Requests, 60, 2)];
    for (i, expected) in [2, 1, 0].into_iter().enumerate() {
        let standing = granted(
            shared
                .admit(&checks, 0, &format!("l{i}"), TTL)
                .await
                .unwrap(),
        );
        assert_eq!(standing[0].0, expected);
        // Back to the initial state once this and the earlier ones are paid off.
        let reset = standing[0].1;
        let i = i as u64;
        assert!(
            (i * 1_000_000 + 1..=(i + 1) * 1_000_000).contains(&reset),
            "{reset}"
        );
    }
    match shared.admit(&checks, 0, "l3", TTL).await.unwrap() {
        Outcome::Refused { check, retry_us } => {
            assert_eq!(check, 0);
            assert!((1..=1_000_000).contains(&retry_us), "{retry_us}");
        }
        other => panic!("a fourth request at once passed: {other:?}"),
    }
}

#[tokio::test]
async fn a_lease_of_a_vanished_instance_lapses() {
    let shared = SharedLimiter::new(REDIS, &prefix("lapse")).unwrap();
    let checks = [check(Dimension::Parallel, 1, 0)];
    let short = Duration::from_millis(150);
    granted(shared.admit(&checks, 0, "crashed", short).await.unwrap());
    assert!(matches!(
        shared.admit(&checks, 0, "next", short).await.unwrap(),
        Outcome::Refused { .. }
    ));
    // Nobody settles "crashed"; its lease expires on Redis's clock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    granted(shared.admit(&checks, 0, "next", short).await.unwrap());
}

#[tokio::test]
async fn unused_tokens_come_back_and_an_overrun_is_charged() {
    let shared = SharedLimiter::new(REDIS, &prefix("refund")).unwrap();
    let checks = [check(Dimension::Tokens, 100, 0)];
    granted(shared.admit(&checks, 80, "a", TTL).await.unwrap());
    assert!(matches!(
        shared.admit(&checks, 80, "b", TTL).await.unwrap(),
        Outcome::Refused { .. }
    ));
    // "a" used 10 of its 80.
    shared.settle(&[release(&checks, 70, "a")]).await.unwrap();
    let standing = granted(shared.admit(&checks, 80, "c", TTL).await.unwrap());
    assert_eq!(standing[0].0, 10);
    // "c" used 90: 10 more than it reserved; nothing is left.
    shared.settle(&[release(&checks, -10, "c")]).await.unwrap();
    assert!(matches!(
        shared.admit(&checks, 5, "d", TTL).await.unwrap(),
        Outcome::Refused { .. }
    ));
}

#[tokio::test]
async fn one_settle_call_settles_many_requests_in_order() {
    let shared = SharedLimiter::new(REDIS, &prefix("batch")).unwrap();
    let checks = [
        check(Dimension::Tokens, 100, 0),
        check(Dimension::Parallel, 3, 0),
    ];
    for lease in ["a", "b", "c"] {
        granted(shared.admit(&checks, 30, lease, TTL).await.unwrap());
    }
    assert!(matches!(
        shared.admit(&checks, 1, "d", TTL).await.unwrap(),
        Outcome::Refused { check: 1, .. }
    ));
    // "a" used nothing, "b" 10, "c" 35 (5 beyond its reservation): 45 spent.
    shared
        .settle(&[
            release(&checks, 30, "a"),
            release(&checks, 20, "b"),
            release(&checks, -5, "c"),
        ])
        .await
        .unwrap();
    let standing = granted(shared.admit(&checks, 0, "d", TTL).await.unwrap());
    assert_eq!(standing[0].0, 55);
    assert_eq!(standing[1].0, 2, "every slot but d's is free again");
}

fn job(max_tokens: u64) -> Job {
    let request: crate::wire::ChatCompletionRequest = serde_json::from_value(json!({
        "model": "m",
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": max_tokens,
    }))
    .unwrap();
    request.validate().unwrap().job
}

fn stage(redis: Option<&str>, on_store_down: OnStoreDown, test: &str) -> Limits {
    let settings = LimitsSettings {
        redis_url: redis.map(str::to_string),
        redis_prefix: prefix(test),
        burst: 0,
        on_store_down,
        models: vec![ModelLimit {
            model: "m".into(),
            rpm: None,
            tpm: Some(1000),
            max_parallel: None,
        }],
        ..LimitsSettings::default()
    };
    let (limits, worker) = Limits::new(LimitsSetup {
        settings,
        lease_ttl: TTL,
        audit: Audit::off(),
        counter: None,
    })
    .unwrap();
    tokio::spawn(worker.run());
    limits
}

fn caller(rpm: u32, max_parallel: u32) -> Principal {
    let mut p = Principal::anonymous();
    p.tenant = Arc::from("t");
    p.limits.rpm = Some(rpm);
    p.limits.max_parallel = Some(max_parallel);
    p
}

#[tokio::test]
async fn a_refusal_names_its_scope_and_carries_the_headers() {
    let limits = stage(Some(REDIS), OnStoreDown::Open, "refusal");
    let p = caller(60, 10);
    let admitted = limits.admit(&p, "m", &job(100)).await.unwrap();
    let names: Vec<&str> = admitted.headers.0.iter().map(|(n, _)| *n).collect();
    assert!(
        names.contains(&"x-ratelimit-remaining-requests"),
        "{names:?}"
    );
    assert!(names.contains(&"x-ratelimit-remaining-tokens"), "{names:?}");
    let tokens_left = admitted
        .headers
        .0
        .iter()
        .find(|(n, _)| *n == "x-ratelimit-remaining-tokens")
        .unwrap();
    assert_eq!(tokens_left.1, "900");
    let err = limits.admit(&p, "m", &job(100)).await.err().unwrap();
    assert_eq!(err.status(), StatusCode::TOO_MANY_REQUESTS);
    let ApiError::RateLimited {
        message,
        code,
        headers,
        retry_after,
    } = err
    else {
        unreachable!()
    };
    assert_eq!(code, "rate_limit_exceeded");
    assert!(
        message.contains("anonymous") || message.contains("key"),
        "{message}"
    );
    assert!(retry_after.as_secs() >= 1);
    assert!(headers.contains(&("x-ratelimit-remaining-requests", "0".into())));
}

#[tokio::test]
async fn a_lease_settles_its_unused_tokens_and_its_slot() {
    let limits = stage(Some(REDIS), OnStoreDown::Open, "settle");
    let p = caller(6000, 1);
    let lease = limits
        .admit(&p, "m", &job(800))
        .await
        .unwrap()
        .lease
        .unwrap();
    assert!(
        limits.admit(&p, "m", &job(100)).await.is_err(),
        "slot taken"
    );
    lease.finish(50);
    // 750 tokens and the slot go back through the worker; poll for them.
    let mut next = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(admitted) = limits.admit(&p, "m", &job(800)).await {
            next = Some(admitted);
            break;
        }
    }
    let next = next.expect("the slot and the tokens never came back");
    // A lease dropped unsettled (the request failed before answering)
    // gives everything back too.
    drop(next);
    let mut again = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if limits.admit(&p, "m", &job(800)).await.is_ok() {
            again = true;
            break;
        }
    }
    assert!(again);
}

#[tokio::test]
async fn without_redis_open_serves_under_the_local_limit_and_closed_refuses() {
    // Nothing listens on port 1.
    let down = "redis://127.0.0.1:1";
    let open = stage(Some(down), OnStoreDown::Open, "open");
    let p = caller(60, 10);
    open.admit(&p, "m", &job(10)).await.unwrap();
    // The local limiter still holds: 60 a minute, no burst.
    let err = open.admit(&p, "m", &job(10)).await.err().unwrap();
    assert_eq!(err.status(), StatusCode::TOO_MANY_REQUESTS);

    let closed = stage(Some(down), OnStoreDown::Closed, "closed");
    let err = closed.admit(&p, "m", &job(10)).await.err().unwrap();
    assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The refused request took nothing from the local limiter either.
    let checks = closed.scopes.checks(&p, "m");
    granted(closed.local.admit(&checks, 10));
}

#[test]
fn resets_read_like_openai_durations() {
    assert_eq!(duration_text(250_000), "250ms");
    assert_eq!(duration_text(1_500_000), "1.5s");
    assert_eq!(duration_text(1_000_000), "1s");
    assert_eq!(duration_text(360_000_000), "6m0s");
}
