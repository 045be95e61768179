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

mod common;

use std::process::Command;
use std::sync::OnceLock;

use common::{http_client, Reply};
use serde_json::{json, Value};
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
    let url = format!("{}{path}", server.base_url());
    let client = http_client();
    let mut req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        other => panic!("method {other}"),
    }
    .bearer_auth(key);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = req.send().await.expect("send");
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.expect("body"),
    }
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

#[tokio::test]
async fn a_streamed_response_is_stored_identical_replayed_and_chained_at_once() {
    let s = &shared().server;
    let reply = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(
            json!("Name a colour."),
            json!({"stream": true, "metadata": {"run": "1"}}),
        )),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let live = events(&reply.body);
    for (i, e) in live.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as i64, "{e}");
    }
    assert_eq!(live[0]["type"], "response.created");
    let terminal: Vec<&Value> = live
        .iter()
        .filter(|e| {
            matches!(
                e["type"].as_str(),
                Some("response.completed" | "response.incomplete" | "response.failed")
            )
        })
        .collect();
    assert_eq!(terminal.len(), 1);
    assert_eq!(live.last().unwrap(), terminal[0]);
    let done = &terminal[0]["response"];
    let id = done["id"].as_str().unwrap().to_string();
    assert_eq!(live[0]["response"]["id"], id.as_str());
    let deltas: String = live
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert!(!deltas.is_empty());
    assert_eq!(deltas, text_of(done));

    // GET: the same response.
    let got = send(s, "GET", &format!("/v1/responses/{id}"), KEY_A, None).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(&got.json(), done);
    assert_eq!(got.json()["metadata"]["run"], "1");
    // The stream again, after event 3: the same events.
    let replay = send(
        s,
        "GET",
        &format!("/v1/responses/{id}?stream=true&starting_after=3"),
        KEY_A,
        None,
    )
    .await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(events(&replay.body), live[4..].to_vec());

    // Chained at once; instructions are not inherited.
    let next = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(
            json!("And another?"),
            json!({"previous_response_id": id}),
        )),
    )
    .await;
    assert_eq!(next.status, 200, "{}", next.body);
    let next = next.json();
    assert_eq!(next["previous_response_id"], id.as_str());
    assert!(next["instructions"].is_null());
    // The chained turn saw the first one: more prompt tokens than alone.
    let alone = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(json!("And another?"), json!({}))),
    )
    .await;
    assert!(
        next["usage"]["input_tokens"].as_u64().unwrap()
            > alone.json()["usage"]["input_tokens"].as_u64().unwrap()
    );

    // Another tenant: 404 for every route, as for an unknown id.
    for (method, path) in [
        ("GET", format!("/v1/responses/{id}")),
        ("GET", format!("/v1/responses/{id}/input_items")),
        ("DELETE", format!("/v1/responses/{id}")),
    ] {
        send(s, method, &path, KEY_B, None).await.expect_error(404);
    }
    send(
        s,
        "POST",
        "/v1/responses",
        KEY_B,
        Some(turn(json!("hi"), json!({"previous_response_id": id}))),
    )
    .await
    .expect_error(404);
}

#[tokio::test]
async fn store_false_leaves_nothing_to_get_or_chain_and_bad_requests_are_400s() {
    let s = &shared().server;
    let reply = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(json!("Hello"), json!({"store": false}))),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    send(s, "GET", &format!("/v1/responses/{id}"), KEY_A, None)
        .await
        .expect_error(404);
    send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(json!("more"), json!({"previous_response_id": id}))),
    )
    .await
    .expect_error(404);
    // previous_response_id and conversation together.
    let err = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(
            json!("x"),
            json!({"previous_response_id": "resp_1", "conversation": "conv_1"}),
        )),
    )
    .await
    .expect_error(400);
    assert_eq!(err["param"], "conversation");
    for (extra, param) in [
        (json!({"background": true, "store": false}), "background"),
        (json!({"truncation": "sometimes"}), "truncation"),
        (json!({"frobnicate": 1}), "frobnicate"),
    ] {
        let err = send(
            s,
            "POST",
            "/v1/responses",
            KEY_A,
            Some(turn(json!("x"), extra)),
        )
        .await
        .expect_error(400);
        assert_eq!(err["param"], param);
    }
    let err = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(
            json!([{"role": "user", "content": [{"type": "input_image"}]}]),
            json!({}),
        )),
    )
    .await
    .expect_error(400);
    assert_eq!(err["param"], "input[0].content[0].type");
}

#[tokio::test]
async fn input_items_page_with_a_cursor_and_function_calls_are_stored_and_replayed() {
    let s = &shared().server;
    let input = json!([
        {"role": "user", "content": "What is the weather in Oslo?"},
        {"type": "function_call", "call_id": "call_w1", "name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
        {"type": "function_call_output", "call_id": "call_w1", "output": "Sunny, 20 C"},
        {"role": "user", "content": "Say it in one word."},
    ]);
    let reply = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(input, json!({}))),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after
            .as_ref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let page = send(
            s,
            "GET",
            &format!("/v1/responses/{id}/input_items?limit=3&order=asc{cursor}"),
            KEY_A,
            None,
        )
        .await;
        assert_eq!(page.status, 200, "{}", page.body);
        let page = page.json();
        seen.extend(page["data"].as_array().unwrap().clone());
        if page["has_more"] == false {
            break;
        }
        after = Some(page["last_id"].as_str().unwrap().to_string());
    }
    let kinds: Vec<&str> = seen.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "message",
            "function_call",
            "function_call_output",
            "message"
        ]
    );
    assert_eq!(seen[1]["call_id"], "call_w1");
    assert_eq!(seen[2]["output"], "Sunny, 20 C");
    // Chaining replays them: the model sees the call and its output again.
    let next = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(json!("Thanks"), json!({"previous_response_id": id}))),
    )
    .await;
    assert_eq!(next.status, 200, "{}", next.body);
}

#[tokio::test]
async fn concurrent_conversation_appends_one_wins_and_a_retry_writes_one_row() {
    let shared = shared();
    let s = &shared.server;
    let conv = send(
        s,
        "POST",
        "/v1/conversations",
        KEY_A,
        Some(json!({"metadata": {"k": "v"}})),
    )
    .await;
    assert_eq!(conv.status, 200, "{}", conv.body);
    let version = conv.headers["x-sluice-session-version"]
        .to_str()
        .unwrap()
        .to_string();
    let id = conv.json()["id"].as_str().unwrap().to_string();
    let path = format!("/v1/conversations/{id}/items");
    let body = |text: &str| Some(json!({"items": [{"role": "user", "content": text}]}));
    let if_match = [("if-match", version.as_str())];
    let (a, b) = tokio::join!(
        send_with(s, "POST", &path, KEY_A, body("from a"), &if_match),
        send_with(s, "POST", &path, KEY_A, body("from b"), &if_match),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", a.body, b.body);
    let loser = if a.status == 409 { &a } else { &b };
    assert_eq!(loser.json()["error"]["code"], "conflict");

    // A retried append (same Idempotency-Key) writes one row.
    for _ in 0..2 {
        let r = send_with(
            s,
            "POST",
            &path,
            KEY_A,
            body("once"),
            &[("idempotency-key", "retry-1")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let rows = sqlite_count(
        &shared.store,
        &format!("SELECT COUNT(*) FROM session_items WHERE session_id = '{id}'"),
    )
    .await;
    assert_eq!(rows, 2);
    // A response in the conversation adds its input and output to it.
    let r = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(json!("Hello"), json!({"conversation": id}))),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let items = send(s, "GET", &format!("{path}?order=asc"), KEY_A, None)
        .await
        .json();
    let roles: Vec<&str> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "user", "user", "assistant"]);
    // Tenant b sees none of it.
    send(s, "GET", &format!("/v1/conversations/{id}"), KEY_B, None)
        .await
        .expect_error(404);
}

async fn sqlite_count(path: &std::path::Path, sql: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
}

#[tokio::test]
async fn erasing_a_user_leaves_nothing_in_the_store_or_redis_and_is_audited() {
    let shared = shared();
    let s = &shared.server;
    let user = format!("erase-me-{}", std::process::id());
    let mut ids = Vec::new();
    for text in ["my secret one", "my secret two"] {
        let r = send(
            s,
            "POST",
            "/v1/responses",
            KEY_A,
            Some(turn(json!(text), json!({"user": user}))),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let id = r.json()["id"].as_str().unwrap().to_string();
        // Read once, so Redis holds a copy.
        assert_eq!(
            send(s, "GET", &format!("/v1/responses/{id}"), KEY_A, None)
                .await
                .status,
            200
        );
        ids.push(id);
    }
    // Not an admin: refused.
    send(
        s,
        "DELETE",
        &format!("/admin/users/{user}/data"),
        KEY_A,
        None,
    )
    .await
    .expect_error(403);
    let r = send(
        s,
        "DELETE",
        &format!("/admin/users/{user}/data?tenant=a"),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["sessions_deleted"], 2);
    for id in &ids {
        for sql in [
            format!("SELECT COUNT(*) FROM sessions WHERE id = '{id}'"),
            format!("SELECT COUNT(*) FROM session_items WHERE session_id = '{id}'"),
        ] {
            assert_eq!(sqlite_count(&shared.store, &sql).await, 0, "{sql}");
        }
        send(s, "GET", &format!("/v1/responses/{id}"), KEY_A, None)
            .await
            .expect_error(404);
    }
    let user_rows = sqlite_count(
        &shared.store,
        &format!("SELECT COUNT(*) FROM sessions WHERE user_id = '{user}'"),
    )
    .await;
    assert_eq!(user_rows, 0);
    // Redis keeps tombstones only: no text of the user's.
    for (key, fields) in shared.redis.dump() {
        assert!(!fields.contains("my secret"), "{key}: {fields}");
    }
    // The audit log's writer commits in the background: wait for it.
    let audited = format!(
        "SELECT COUNT(*) FROM audit WHERE action = 'data.erased' AND target = 'user:{user}'"
    );
    let mut found = 0;
    for _ in 0..100 {
        found = sqlite_count(&shared.store, &audited).await;
        if found > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(found, 1);
}

/// A fresh schema in the test PostgreSQL; the store URL pointing at it.
async fn fresh_postgres_schema() -> String {
    use sqlx::Connection;
    let base = std::env::var("SLUICE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("e2e_sessions_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432 (database `test`) is needed by this test");
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    format!("{base}?options=-c%20search_path%3D{schema}")
}

#[tokio::test]
async fn two_servers_share_sessions_and_chaining_survives_a_restart() {
    let url = fresh_postgres_schema().await;
    let redis = RedisKeys::new("pg");
    let extra = format!(
        "[store]\nurl = \"{url}\"\n[sessions]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{}\"\n",
        redis.0
    );
    let a = Server::start(options(&extra));
    let b = Server::start(options(&extra));
    let first = send(
        &a,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(json!("Hi"), json!({}))),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json()["id"].as_str().unwrap().to_string();
    // b chains a's response at once.
    let second = send(
        &b,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(json!("More"), json!({"previous_response_id": first}))),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.body);
    let second = second.json()["id"].as_str().unwrap().to_string();
    // Both stop; a new server (empty Redis prefix is not needed: the store
    // holds everything) chains the chain.
    a.stop();
    b.stop();
    drop(redis);
    let c = Server::start(options(&extra));
    let third = send(
        &c,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(
            json!("Again"),
            json!({"previous_response_id": second}),
        )),
    )
    .await;
    assert_eq!(third.status, 200, "{}", third.body);
    assert_eq!(
        send(&c, "GET", &format!("/v1/responses/{first}"), KEY_A, None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn the_openai_python_sdk_speaks_responses_and_conversations() {
    let script = r#"
import sys
from openai import OpenAI, NotFoundError
client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2])
model = sys.argv[3]

r = client.responses.create(model=model, input="Say hi.", max_output_tokens=8, temperature=0,
                            instructions="Be brief.", metadata={"sdk": "yes"})
assert r.status in ("completed", "incomplete"), r.status
assert r.output_text, r
got = client.responses.retrieve(r.id)
assert got.output_text == r.output_text and got.metadata == {"sdk": "yes"}

stream = client.responses.create(model=model, input="Count to three.", max_output_tokens=8,
                                 temperature=0, previous_response_id=r.id, stream=True)
kinds, text, final = [], "", None
for event in stream:
    kinds.append(event.type)
    if event.type == "response.output_text.delta":
        text += event.delta
    if event.type in ("response.completed", "response.incomplete"):
        final = event.response
assert kinds[0] == "response.created", kinds
assert final is not None and final.output_text == text, (final, text)
assert client.responses.retrieve(final.id).output_text == text

items = client.responses.input_items.list(final.id)
assert [i.type for i in items.data] == ["message"], items

client.responses.delete(r.id)
try:
    client.responses.retrieve(r.id)
    raise SystemExit("a deleted response was found")
except NotFoundError:
    pass

conv = client.conversations.create(metadata={"topic": "demo"},
                                   items=[{"type": "message", "role": "user", "content": "Hello!"}])
assert client.conversations.retrieve(conv.id).metadata == {"topic": "demo"}
client.conversations.update(conv.id, metadata={"topic": "changed"})
assert client.conversations.retrieve(conv.id).metadata == {"topic": "changed"}
added = client.conversations.items.create(conv.id, items=[
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "More"}]}])
assert len(added.data) == 1
listed = client.conversations.items.list(conv.id, order="asc")
assert len(listed.data) == 2, listed
one = client.conversations.items.retrieve(added.data[0].id, conversation_id=conv.id)
assert one.id == added.data[0].id
turn = client.responses.create(model=model, input="And you?", conversation=conv.id,
                               max_output_tokens=8, temperature=0)
assert len(client.conversations.items.list(conv.id).data) == 4
client.conversations.items.delete(added.data[0].id, conversation_id=conv.id)
assert len(client.conversations.items.list(conv.id).data) == 3
client.conversations.delete(conv.id)
try:
    client.conversations.retrieve(conv.id)
    raise SystemExit("a deleted conversation was found")
except NotFoundError:
    pass
print("ok")
"#;
    let base = shared().server.api_base();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg("-c")
            .arg(script)
            .arg(base)
            .arg(KEY_A)
            .arg(DEMO_MODEL_ID)
            .output()
            .expect("python3 with the openai SDK is needed (scripts/python-env.sh; SLUICE_PYTHON)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `redis-server` of the test's own on a free port, without persistence
/// (the shared one on 6379 is never touched).
struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl OwnRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is needed by this test");
        // Owned (and so killed and waited for on drop) before any panic.
        let redis = Self { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn kill_9(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success());
        self.child.wait().unwrap();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn killing_redis_after_an_acknowledged_append_loses_nothing() {
    let mut redis = OwnRedis::start();
    let s = Server::start(options(&format!(
        "[sessions]\nredis_url = \"redis://127.0.0.1:{}\"\n",
        redis.port
    )));
    let conv = send(&s, "POST", "/v1/conversations", KEY_A, Some(json!({}))).await;
    assert_eq!(conv.status, 200, "{}", conv.body);
    let id = conv.json()["id"].as_str().unwrap().to_string();
    let path = format!("/v1/conversations/{id}/items");
    let mut acknowledged = Vec::new();
    for text in ["one", "two", "three"] {
        let r = send(
            &s,
            "POST",
            &path,
            KEY_A,
            Some(json!({"items": [{"role": "user", "content": text}]})),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        acknowledged.push(r.json()["data"][0]["id"].as_str().unwrap().to_string());
    }
    // Read once, so the copy in Redis is the one being read...
    assert_eq!(send(&s, "GET", &path, KEY_A, None).await.status, 200);
    // ...and Redis dies right after the acknowledgements.
    redis.kill_9();
    let listed = send(&s, "GET", &format!("{path}?order=asc"), KEY_A, None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let ids: Vec<String> = listed.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, acknowledged);
    // Writes go on without Redis, acknowledged only once durable.
    let r = send(
        &s,
        "POST",
        &path,
        KEY_A,
        Some(json!({"items": [{"role": "user", "content": "four"}]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let listed = send(&s, "GET", &path, KEY_A, None).await.json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 4);
}
