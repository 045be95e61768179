//! Regulated mode end to end (issue 13): the real `sluice` binary, the real
//! Redis on 127.0.0.1:6379 as the cache and the sessions' hot layer, a
//! SQLite store file read directly, an on-prem upstream (a loopback fake of
//! an on-prem vLLM) and a cloud fake that must never see a regulated
//! request.
//!
//! A key is regulated by its own flag (`bank`) or by `[regulated] tenants`
//! (`clinic`); `shop` is not, and serves as the control that proves each
//! check could fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{http_client, sse_events, Reply};
use serde_json::{json, Value};
use sluice_tests::fakes::{self, FakeServer};
use sluice_tests::services::RedisKeys;
use sluice_tests::{Server, ServerOptions};

const KEY_BANK: &str = "key-bank-0123456789";
const KEY_CLINIC: &str = "key-clinic-0123456789";
const KEY_SHOP: &str = "key-shop-0123456789";
const MASTER: &str = "a-master-key-for-the-regulated-tests-0123456789";

/// Distinctive words of a regulated question and of the on-prem answer:
/// any of them in Redis or the store file is a plaintext leak.
const QUESTION: &str = "What is the balance of account zebra-quartz-41?";
const ANSWER: &str = "The balance is sapphire-tangerine-77.";
const LEAKS: [&str; 4] = [
    "zebra-quartz",
    "sapphire-tangerine",
    "Zebra-quartz",
    "balance is",
];

fn provider(name: &str, base_url: &str) -> String {
    format!(
        r#"
[[providers]]
kind = "openai"
name = "{name}"
base_url = "{base_url}/v1"
[providers.resilience]
max_attempts = 2
backoff_base_ms = 1
backoff_max_ms = 5
breaker_failures = 1000
"#
    )
}

fn deployment(name: &str, provider: &str, residency: &str, priority: u32) -> String {
    format!(
        r#"
[[routes.deployments]]
name = "{name}"
provider = "{provider}"
upstream_model = "up-{name}"
residency = "{residency}"
priority = {priority}
"#
    )
}

/// A loopback address nothing listens on: an on-prem server that is down.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

struct Setup {
    server: Server,
    onprem: FakeServer,
    cloud: FakeServer,
    prefix: String,
    _store_dir: tempfile::TempDir,
    store_file: std::path::PathBuf,
}

async fn start() -> Setup {
    let onprem = fakes::openai::start(None).await;
    onprem.control.set_reply(ANSWER);
    let cloud = fakes::openai::start(None).await;
    let prefix = format!(
        "sluice-test:e2e:regulated:{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let store_dir = tempfile::tempdir().unwrap();
    let store_file = store_dir.path().join("sluice.db");
    let config = format!(
        r#"
[[auth.keys]]
tenant = "bank"
key_env = "KEY_BANK"
regulated = true
[[auth.keys]]
tenant = "clinic"
key_env = "KEY_CLINIC"
[[auth.keys]]
tenant = "shop"
key_env = "KEY_SHOP"

[regulated]
tenants = ["clinic"]
master_key_env = "SLUICE_TEST_MASTER"

[store]
path = "{store}"

[sessions]
redis_url = "redis://127.0.0.1:6379"
redis_prefix = "{prefix}:sessions"

[cache]
enabled = true
backend = "redis"
redis_url = "redis://127.0.0.1:6379"
redis_prefix = "{prefix}:cache"

[pii]
enabled = true
{onprem}{down}{cloud}
[[routes]]
model = "chat"
{d1}{d2}
[[routes]]
model = "chat-down"
{d3}{d4}"#,
        store = store_file.display(),
        onprem = provider("onprem", &onprem.base_url()),
        down = provider("down", &closed_port_url()),
        cloud = provider("cloud", &cloud.base_url()),
        d1 = deployment("local-vllm", "onprem", "on_prem", 0),
        d2 = deployment("cloud", "cloud", "cloud", 1),
        d3 = deployment("local-down", "down", "on_prem", 0),
        d4 = deployment("cloud-too", "cloud", "cloud", 1),
    );
    let server = tokio::task::spawn_blocking(move || {
        Server::start(ServerOptions {
            config: Some(config),
            env: [
                ("KEY_BANK", KEY_BANK),
                ("KEY_CLINIC", KEY_CLINIC),
                ("KEY_SHOP", KEY_SHOP),
                ("SLUICE_TEST_MASTER", MASTER),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            args: Vec::new(),
        })
    })
    .await
    .unwrap();
    Setup {
        server,
        onprem,
        cloud,
        prefix,
        _store_dir: store_dir,
        store_file,
    }
}

async fn post(server: &Server, path: &str, key: &str, body: &Value) -> Reply {
    let resp = http_client()
        .post(format!("{}{path}", server.base_url()))
        .bearer_auth(key)
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

/// A chat request as `key`: `question` to `model`.
async fn chat(server: &Server, key: &str, model: &str, question: &str, stream: bool) -> Reply {
    post(
        server,
        "/v1/chat/completions",
        key,
        &ask(model, question, stream),
    )
    .await
}

fn ask(model: &str, question: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 16,
        "stream": stream,
    })
}

fn cache_of(reply: &Reply) -> String {
    reply
        .headers
        .get("x-sluice-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_string()
}

fn content(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs `commands` (one a line) through one `redis-cli` reading stdin;
/// its raw output (stdout is not a terminal).
fn redis_cli(commands: &str) -> String {
    let mut child = Command::new("redis-cli")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every key in the whole Redis (`redis-cli --scan`): its name, its value
/// read by type (`GET`, `SMEMBERS`, `ZRANGE`, `HGETALL`, `LRANGE`), and its
/// `DUMP`. DUMP alone is not enough to find text: Redis may LZF-compress
/// the values it serialises.
fn redis_dump() -> String {
    let out = Command::new("redis-cli").arg("--scan").output().unwrap();
    assert!(out.status.success(), "redis-cli --scan failed");
    let names = String::from_utf8_lossy(&out.stdout).into_owned();
    let keys: Vec<String> = names
        .lines()
        .filter(|k| !k.is_empty())
        .map(|k| format!("\"{}\"", k.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    let types: String = keys.iter().map(|k| format!("TYPE {k}\n")).collect();
    let types = redis_cli(&types);
    let mut reads = String::new();
    for (key, kind) in keys.iter().zip(types.lines()) {
        let read = match kind.trim() {
            "string" => format!("GET {key}"),
            "set" => format!("SMEMBERS {key}"),
            "zset" => format!("ZRANGE {key} 0 -1"),
            "hash" => format!("HGETALL {key}"),
            "list" => format!("LRANGE {key} 0 -1"),
            _ => String::new(),
        };
        reads.push_str(&format!("{read}\nDUMP {key}\n"));
    }
    format!("{names}\n{}", redis_cli(&reads))
}

fn file_text(path: &Path) -> String {
    let mut text = String::new();
    for p in [path.to_path_buf(), path.with_extension("db-wal")] {
        if let Ok(bytes) = std::fs::read(&p) {
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    text
}

fn leaks(text: &str) -> Vec<&'static str> {
    LEAKS.iter().copied().filter(|w| text.contains(w)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regulated_key_whose_local_model_is_down_gets_503_and_the_cloud_sees_nothing() {
    let s = start().await;
    let _cleanup = RedisKeys::under(&s.prefix);
    for key in [KEY_BANK, KEY_CLINIC] {
        let reply = post(
            &s.server,
            "/v1/chat/completions",
            key,
            &ask("chat-down", "Hi", false),
        )
        .await;
        let err = reply.expect_error(503);
        assert_eq!(err["code"], "on_prem_unavailable", "{}", reply.body);
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("never sent to a cloud"),
            "{err}"
        );
        assert!(reply.headers.contains_key("retry-after"));
        let reply = post(
            &s.server,
            "/v1/chat/completions",
            key,
            &ask("chat-down", "Hi", true),
        )
        .await;
        reply.expect_error(503);
    }
    assert_eq!(
        s.cloud.control.requests(),
        0,
        "a regulated request reached the cloud"
    );
    // The control: an unregulated key's same request does fail over to
    // the cloud, so the cloud was there to take it.
    let reply = chat(&s.server, KEY_SHOP, "chat-down", "Hi", false).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(s.cloud.control.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_the_store_hold_no_plaintext_of_a_regulated_request() {
    let s = start().await;
    let _cleanup = RedisKeys::under(&s.prefix);

    // Cached (sealed), served again from the cache.
    let first = chat(&s.server, KEY_BANK, "chat", QUESTION, false).await;
    assert_eq!(content(&first), ANSWER);
    assert_eq!(cache_of(&first), "miss");
    let again = chat(&s.server, KEY_BANK, "chat", QUESTION, false).await;
    assert_eq!(cache_of(&again), "exact", "{}", again.body);
    assert_eq!(content(&again), ANSWER);
    assert_eq!(
        s.onprem.control.requests(),
        1,
        "the hit did not reach the model"
    );
    // Streamed too (a replay of the sealed entry).
    let streamed = chat(&s.server, KEY_BANK, "chat", QUESTION, true).await;
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    assert_eq!(cache_of(&streamed), "exact");
    let mut text = String::new();
    for event in sse_events(&streamed.body) {
        if let Ok(v) = serde_json::from_str::<Value>(&event) {
            text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(text, ANSWER);

    // A stored response (a session: the store and the Redis hot layer).
    let stored = post(
        &s.server,
        "/v1/responses",
        KEY_BANK,
        &json!({"model": "chat", "input": format!("{QUESTION} (stored)"), "store": true}),
    )
    .await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    let id = stored.json()["id"].as_str().unwrap().to_string();
    let read = http_client()
        .get(format!("{}/v1/responses/{id}", s.server.base_url()))
        .bearer_auth(KEY_BANK)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert!(
        read.text().await.unwrap().contains("sapphire-tangerine"),
        "read back plain"
    );

    // The whole Redis, every key's DUMP: no plaintext of any of it.
    let dump = redis_dump();
    assert!(dump.contains(&s.prefix), "the scan saw this test's keys");
    assert_eq!(leaks(&dump), Vec::<&str>::new(), "plaintext in Redis");
    assert_eq!(
        leaks(&file_text(&s.store_file)),
        Vec::<&str>::new(),
        "plaintext in the store"
    );

    // The control: an unregulated tenant's request is in Redis in the clear,
    // so the dump above would have shown a leak.
    s.onprem
        .control
        .set_reply("A plain answer about marble-otter.");
    let plain = chat(
        &s.server,
        KEY_SHOP,
        "chat",
        "Tell me of marble-otter-12",
        false,
    )
    .await;
    assert_eq!(cache_of(&plain), "miss", "{}", plain.body);
    assert!(
        redis_dump().contains("marble-otter"),
        "the control left no plaintext"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regulated_entry_is_not_served_to_another_tenant_and_pii_is_never_cached() {
    let s = start().await;
    let _cleanup = RedisKeys::under(&s.prefix);
    let first = chat(&s.server, KEY_BANK, "chat", QUESTION, false).await;
    assert_eq!(cache_of(&first), "miss", "{}", first.body);
    assert_eq!(
        cache_of(&chat(&s.server, KEY_BANK, "chat", QUESTION, false).await),
        "exact"
    );
    // Another regulated tenant (by `[regulated] tenants`) asking the same.
    let other = chat(&s.server, KEY_CLINIC, "chat", QUESTION, false).await;
    assert_eq!(cache_of(&other), "miss", "{}", other.body);
    assert_eq!(s.onprem.control.requests(), 2);

    // A prompt with personal data: neither read nor written, each time.
    let pii = "Write to ivan.petrov@example.com about the contract";
    for _ in 0..2 {
        let reply = chat(&s.server, KEY_BANK, "chat", pii, false).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(cache_of(&reply), "bypass");
    }
    assert_eq!(s.onprem.control.requests(), 4);
    // The control: an unregulated tenant's masked prompt is cached as before.
    for expected in ["miss", "exact"] {
        let reply = chat(&s.server, KEY_SHOP, "chat", pii, false).await;
        assert_eq!(cache_of(&reply), expected, "{}", reply.body);
    }
}
