//! Rate limits across instances, end to end: real `sluice serve` processes
//! sharing the real Redis (and a PostgreSQL store), in front of the fake
//! OpenAI-compatible upstream (cheap answers with known usage).
//!
//! Each test uses its own Redis key prefix; the outage test starts, kills
//! and restarts its own `redis-server` on a free port.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{http_client, post_raw, Reply};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sluice_tests::fakes::{self, FakeServer, Fault};
use sluice_tests::services::{fresh_postgres_schema, unique, OwnRedis};
use sluice_tests::{Server, ServerOptions};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";
/// The `[limits] burst` the configs below set.
const BURST: usize = 3;

/// Keys (tenant, limits line) → the `[[auth.keys]]` entries and their env.
fn keys(keys: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
    let mut text = String::new();
    let mut env = Vec::new();
    for (tenant, limits) in keys {
        let var = format!("KEY_{}", tenant.to_uppercase());
        text.push_str(&format!(
            "[[auth.keys]]\ntenant = \"{tenant}\"\nkey_env = \"{var}\"\n{limits}\n"
        ));
        env.push((var, secret(tenant)));
    }
    (text, env)
}

fn secret(tenant: &str) -> String {
    format!("sk-test-{tenant}-0123456789")
}

struct Setup<'a> {
    fake: &'a FakeServer,
    keys: &'a [(&'a str, &'a str)],
    redis_url: &'a str,
    prefix: &'a str,
    on_store_down: &'a str,
    store_url: Option<&'a str>,
}

async fn start(setup: Setup<'_>) -> Server {
    let (key_text, env) = keys(setup.keys);
    let store = setup
        .store_url
        .map(|url| format!("[store]\nurl = \"{url}\"\n"))
        .unwrap_or_default();
    let config = format!(
        r#"
{key_text}
{store}
[limits]
redis_url = "{redis}"
redis_prefix = "{prefix}"
burst = {BURST}
on_store_down = "{mode}"

[[providers]]
kind = "openai"
name = "cloud"
base_url = "{base}/v1"
[providers.resilience]
max_attempts = 1
breaker_failures = 100000

[[routes]]
model = "chat"
[[routes.deployments]]
name = "cloud"
provider = "cloud"
upstream_model = "up"
"#,
        redis = setup.redis_url,
        prefix = setup.prefix,
        mode = setup.on_store_down,
        base = setup.fake.base_url(),
    );
    tokio::task::spawn_blocking(move || {
        Server::start(ServerOptions {
            config: Some(config),
            env,
            args: Vec::new(),
        })
    })
    .await
    .unwrap()
}

fn chat(max_tokens: u64, stream: bool) -> String {
    json!({
        "model": "chat",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
    .to_string()
}

async fn ask(server: &Server, tenant: &str, max_tokens: u64) -> Reply {
    post_raw(
        server,
        "/v1/chat/completions",
        chat(max_tokens, false),
        Some(&secret(tenant)),
    )
    .await
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

fn error_code(reply: &Reply) -> Value {
    serde_json::from_str::<Value>(&reply.body).unwrap()["error"]["code"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_grant_a_60_rpm_key_at_most_limit_plus_burst() {
    let fake = fakes::openai::start(None).await;
    let prefix = unique("sluice-test:limits:rpm");
    let store = fresh_postgres_schema("limits_rpm");
    let limited = [("busy", "rpm = 60")];
    let setup = || Setup {
        fake: &fake,
        keys: &limited,
        redis_url: SHARED_REDIS,
        prefix: &prefix,
        on_store_down: "open",
        store_url: Some(&store),
    };
    let a = start(setup()).await;
    let b = start(setup()).await;
    let servers = [&a, &b];

    let started = Instant::now();
    let replies: Vec<Reply> = futures_util::stream::iter(0..600)
        .map(|i| ask(servers[i % 2], "busy", 1))
        .buffer_unordered(32)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let granted = replies.iter().filter(|r| r.status == 200).count();
    for reply in &replies {
        match reply.status {
            200 => {
                assert_eq!(header(reply, "x-ratelimit-limit-requests"), Some("60"));
                assert!(header(reply, "x-ratelimit-remaining-requests").is_some());
                assert!(header(reply, "x-ratelimit-reset-requests").is_some());
            }
            429 => {
                assert_eq!(error_code(reply), "rate_limit_exceeded", "{}", reply.body);
                assert!(
                    header(reply, "retry-after").is_some(),
                    "{:?}",
                    reply.headers
                );
                assert_eq!(header(reply, "x-ratelimit-limit-requests"), Some("60"));
                assert_eq!(header(reply, "x-ratelimit-remaining-requests"), Some("0"));
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert!(granted <= 60 + BURST, "{granted} granted");
    // Stronger, and what per-instance counters would break: one shared
    // budget grants the burst at once and then one a second, however the
    // requests are spread (two separate counters would grant twice that).
    let steady = elapsed.as_secs_f64().ceil() as usize;
    assert!(
        (1..=BURST + 1 + steady + 1).contains(&granted),
        "{granted} granted in {elapsed:?}"
    );
    assert_eq!(
        fake.control.requests(),
        granted,
        "only granted requests reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_mid_stream_releases_its_slot() {
    let fake = fakes::openai::start(None).await;
    let prefix = unique("sluice-test:limits:parallel");
    let server = start(Setup {
        fake: &fake,
        keys: &[("single", "max_parallel = 1")],
        redis_url: SHARED_REDIS,
        prefix: &prefix,
        on_store_down: "open",
        store_url: None,
    })
    .await;
    // The first answer drips slowly: it holds the one slot while it lasts.
    fake.control.fail_next(
        1,
        Fault::SlowDrip {
            every: Duration::from_millis(500),
        },
    );
    let mut response = http_client()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .bearer_auth(secret("single"))
        .header("content-type", "application/json")
        .body(chat(50, true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());

    let busy = ask(&server, "single", 1).await;
    assert_eq!(busy.status, 429, "{}", busy.body);
    assert_eq!(error_code(&busy), "rate_limit_exceeded");
    assert!(header(&busy, "retry-after").is_some());

    // The client goes away mid-stream.
    drop(response);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let next = ask(&server, "single", 1).await;
        if next.status == 200 {
            break;
        }
        assert_eq!(next.status, 429, "{}", next.body);
        assert!(
            Instant::now() < deadline,
            "the disconnected stream never released its slot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_a_request_did_not_use_are_refunded() {
    let fake = fakes::openai::start(None).await;
    let prefix = unique("sluice-test:limits:tpm");
    let server = start(Setup {
        fake: &fake,
        keys: &[("tokens", "tpm = 300")],
        redis_url: SHARED_REDIS,
        prefix: &prefix,
        on_store_down: "open",
        store_url: None,
    })
    .await;
    // 200 reserved (plus the prompt); the fake answers in about a dozen.
    let first = ask(&server, "tokens", 200).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), Some("300"));
    let left: u64 = header(&first, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(left < 100, "the reservation shows: {left} left");
    // Without the refund 2 × 200 would not fit in 300.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let second = ask(&server, "tokens", 200).await;
        if second.status == 200 {
            break;
        }
        assert_eq!(second.status, 429, "{}", second.body);
        assert!(
            Instant::now() < deadline,
            "the unused tokens never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A reservation larger than the minute's allowance is refused, and says why.
    let too_big = ask(&server, "tokens", 1000).await;
    assert_eq!(too_big.status, 429, "{}", too_big.body);
    assert!(too_big.body.contains("max_tokens"), "{}", too_big.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_gives_the_configured_mode_and_limits_are_shared_again_after() {
    let fake = fakes::openai::start(None).await;
    let redis = OwnRedis::start();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let prefix = unique("sluice-test:limits:outage");
    // "tight" keys: one request a minute (and the burst above it).
    let keys = [
        ("load", "rpm = 100000"),
        ("t1", "rpm = 1"),
        ("t2", "rpm = 1"),
        ("t3", "rpm = 1"),
        ("t4", "rpm = 1"),
        ("t5", "rpm = 1"),
    ];
    let setup = |mode| Setup {
        fake: &fake,
        keys: &keys,
        redis_url: &url,
        prefix: &prefix,
        on_store_down: mode,
        store_url: None,
    };
    let open = start(setup("open")).await;
    let closed = start(setup("closed")).await;
    for server in [&open, &closed] {
        assert_eq!(ask(server, "load", 1).await.status, 200);
    }

    let port = redis.stop();
    // Mid-load: a few requests to each while Redis is away.
    for _ in 0..5 {
        let served = ask(&open, "load", 1).await;
        assert_eq!(served.status, 200, "open mode serves: {}", served.body);
        let refused = ask(&closed, "load", 1).await;
        assert_eq!(refused.status, 503, "closed mode refuses: {}", refused.body);
        assert_eq!(error_code(&refused), "store_unavailable");
        assert!(header(&refused, "retry-after").is_some());
    }

    let _redis = OwnRedis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ask(&closed, "load", 1).await.status != 200 {
        assert!(Instant::now() < deadline, "closed mode never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Shared again: a tight key's requests through the open instance use
    // up the minute for the closed one too. (The open instance may still be
    // inside its one-second pause after the outage for the first key; each
    // try takes a fresh key.)
    let mut shared = false;
    for tenant in ["t1", "t2", "t3", "t4", "t5"] {
        for _ in 0..=BURST {
            assert_eq!(ask(&open, tenant, 1).await.status, 200);
        }
        let other = ask(&closed, tenant, 1).await;
        if other.status == 429 {
            assert_eq!(error_code(&other), "rate_limit_exceeded");
            shared = true;
            break;
        }
        assert_eq!(other.status, 200, "{}", other.body);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(
        shared,
        "the instances never shared their counts again\nopen:\n{}\nclosed:\n{}",
        open.logs(),
        closed.logs()
    );
}

/// How many parallel leases Redis holds for a config key's tenant.
fn leases_held(prefix: &str, tenant: &str) -> usize {
    let out = Command::new("redis-cli")
        .args(["-p", "6379", "ZCARD"])
        .arg(format!("{prefix}:tenant:{tenant}:max_parallel"))
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Settles keep up with admissions under sustained load, so parallel
/// leases neither pile up nor leak: 64 clients send requests back to back
/// to a key allowing 128 in parallel, through a Redis 2 ms away each way
/// (another host, not loopback). At most 64 requests are ever in flight, so
/// any 429 is a lease that outlived its request; afterwards Redis holds
/// none. Settling one lease at a time (one round trip each, ~250 a second
/// here) fell behind admissions: released leases piled up in the queue
/// until every admission was refused, and past the queue's end they were
/// dropped and held until their expiry (minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_leases_are_released_as_fast_as_requests_are_admitted() {
    const CLIENTS: usize = 64;
    const REQUESTS: usize = 3000;
    let fake = fakes::openai::start(None).await;
    let redis = "127.0.0.1:6379".parse().unwrap();
    let link = sluice_tests::slow_link::SlowLink::start(redis, Duration::from_millis(2)).await;
    let url = format!("redis://{}", link.addr());
    let prefix = unique("sluice-test:limits:leases");
    let server = start(Setup {
        fake: &fake,
        keys: &[("steady", "max_parallel = 128")],
        redis_url: &url,
        prefix: &prefix,
        // A Redis call past its 250 ms timeout (a loaded machine) serves
        // under the local limiter instead of failing the request: this
        // test is about leases, not outages.
        on_store_down: "open",
        store_url: None,
    })
    .await;

    let replies: Vec<Reply> = futures_util::stream::iter(0..REQUESTS)
        .map(|_| ask(&server, "steady", 1))
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status != 200).collect();
    assert!(
        refused.is_empty(),
        "{} of {REQUESTS} requests refused with at most {CLIENTS} in flight, first: {} {}",
        refused.len(),
        refused[0].status,
        refused[0].body
    );
    assert_eq!(fake.control.requests(), REQUESTS);

    // The last settles are on their way; none may be lost.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = leases_held(&prefix, "steady");
        if held == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} parallel leases still held in Redis after every answer\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A call to Redis that times out may still have run: the admit script
/// added the request's parallel lease, but the gateway, hearing nothing,
/// served the request under its local limiter and had no lease to release.
/// That slot stayed taken until the lease's expiry (minutes). Now the
/// gateway queues the lease's removal and retries it until Redis answers:
/// here Redis is 200 ms away each way (a 400 ms round trip, past the 250 ms
/// call timeout) while one request is admitted, then the link recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_added_by_a_timed_out_admission_is_released_once_redis_answers() {
    let fake = fakes::openai::start(None).await;
    let redis = "127.0.0.1:6379".parse().unwrap();
    let link = sluice_tests::slow_link::SlowLink::start(redis, Duration::ZERO).await;
    let url = format!("redis://{}", link.addr());
    let prefix = unique("sluice-test:limits:timeout");
    let server = start(Setup {
        fake: &fake,
        keys: &[("late", "max_parallel = 4")],
        redis_url: &url,
        prefix: &prefix,
        on_store_down: "open",
        store_url: None,
    })
    .await;
    // One request on a fast link first: the connection is up and the
    // scripts are loaded, so the slow call below is the admit script itself.
    assert_eq!(ask(&server, "late", 1).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while leases_held(&prefix, "late") != 0 {
        assert!(Instant::now() < deadline, "{}", server.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    link.set_one_way(Duration::from_millis(200));
    let reply = ask(&server, "late", 1).await;
    assert_eq!(
        reply.status, 200,
        "served under the local limiter: {}",
        reply.body
    );
    // The admit script ran on Redis after the gateway gave up on it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while leases_held(&prefix, "late") == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow admit never reached Redis; the test proves nothing\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    link.set_one_way(Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let held = leases_held(&prefix, "late");
        if held == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} lease(s) of a timed-out admission still held after Redis recovered\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
