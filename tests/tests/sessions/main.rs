//! Stored responses and conversations with the real binary, the demo
//! model, real Redis (a key prefix of each test's own) and real
//! PostgreSQL (a schema of its own): a streamed response is stored and
//! identical on GET and on a replayed stream; chaining works at once, from
//! another server sharing the store, and after a restart; `store: false`
//! leaves nothing to GET or to chain; tenants never see each other's ids;
//! concurrent appends to a conversation: one wins, the other gets 409; a
//! retried append writes one row; erasure leaves nothing in the store or in
//! Redis (queried directly) and is audited; `kill -9` of Redis (a
//! `redis-server` of the test's own) right after acknowledged appends loses
//! none of them; the OpenAI Python SDK's `responses` and `conversations`
//! work unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;
mod conversations;
mod durability;
mod python_sdk;
mod responses;

use std::process::Command;
use std::sync::OnceLock;

use common::Reply;
use serde_json::{json, Value};
use sluice_tests::services::{fresh_postgres_schema, OwnRedis};
use sluice_tests::{Server, ServerOptions, DEMO_MODEL_ID};

const KEY_A: &str = "key-a-0123456789";
const KEY_B: &str = "key-b-0123456789";
const ADMIN: &str = "admin-key-0123456789";

fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn config(extra: &str) -> String {
    format!(
        r#"
[[auth.keys]]
tenant = "a"
key_env = "KEY_A"
[[auth.keys]]
tenant = "b"
key_env = "KEY_B"

[admin]
key_env = "ADMIN_KEY"

[[models]]
id = "{DEMO_MODEL_ID}"
path = "{{DEMO_MODEL}}"

{extra}
"#
    )
}

fn options(extra: &str) -> ServerOptions {
    ServerOptions {
        config: Some(config(extra)),
        env: vec![
            ("KEY_A".into(), KEY_A.into()),
            ("KEY_B".into(), KEY_B.into()),
            ("ADMIN_KEY".into(), ADMIN.into()),
        ],
        args: Vec::new(),
    }
}

/// Deletes a test's Redis keys when it ends.
struct RedisKeys(String);

impl RedisKeys {
    fn new(name: &str) -> Self {
        Self(format!("sluice-e2e-sessions-{name}-{}", std::process::id()))
    }

    /// Every key under the prefix with its hash fields.
    fn dump(&self) -> Vec<(String, String)> {
        let out = Command::new("redis-cli")
            .args(["--scan", "--pattern", &format!("{}:*", self.0)])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|key| {
                let fields = Command::new("redis-cli")
                    .args(["hgetall", key])
                    .output()
                    .expect("redis-cli");
                (
                    key.to_string(),
                    String::from_utf8_lossy(&fields.stdout).into_owned(),
                )
            })
            .collect()
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let keys: Vec<String> = self.dump().into_iter().map(|(k, _)| k).collect();
        if !keys.is_empty() {
            let _ = Command::new("redis-cli").arg("del").args(keys).output();
        }
    }
}

/// One server with a SQLite store of the test's own (path known, to query
/// it directly) and Redis in front, shared by the tests of this file.
struct Shared {
    server: Server,
    store: std::path::PathBuf,
    redis: RedisKeys,
    _dir: tempfile::TempDir,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("sluice.db");
        let redis = RedisKeys::new("shared");
        let server = Server::start(options(&format!(
            "[store]\npath = \"{}\"\n[sessions]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{}\"\n",
            store.display(),
            redis.0
        )));
        Shared {
            server,
            store,
            redis,
            _dir: dir,
        }
    })
}

async fn send(server: &Server, method: &str, path: &str, key: &str, body: Option<Value>) -> Reply {
    send_with(server, method, path, key, body, &[]).await
}

async fn send_with(
    server: &Server,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let body = body.map(|b| b.to_string().into());
    common::request(server, method, path, Some(key), headers, body).await
}

/// A short greedy turn.
fn turn(input: Value, extra: Value) -> Value {
    let mut body = json!({
        "model": DEMO_MODEL_ID,
        "input": input,
        "max_output_tokens": 8,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// The events of a Responses stream (`event: <type>` + `data: {...}`),
/// checking that each event's name is its `type`.
fn events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let mut name = None;
            let mut data = None;
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(d).unwrap());
                }
            }
            let data = data.unwrap_or_else(|| panic!("no data in {event:?}"));
            assert_eq!(name.as_deref(), data["type"].as_str(), "{event}");
            data
        })
        .collect()
}

fn text_of(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().clone())
        .map(|p| p["text"].as_str().unwrap().to_string())
        .collect()
}
