//! `background: true` on `/v1/responses`, with the real binary, the demo
//! model, a SQLite store of each test's own (queried directly) and the
//! OpenAI Python SDK: a background response is returned queued, polled to
//! `completed` with the same output as the foreground answer, and its
//! spend is recorded; a streamed one is resumed after a dropped
//! connection with `starting_after`; cancelling a long one stores
//! `cancelled`, frees its engine blocks and records it as abandoned; the
//! limits refuse a background request exactly as a foreground one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{get, Reply};
use serde_json::{json, Value};
use sluice_tests::{Server, ServerOptions, DEMO_MODEL_ID};

const KEY: &str = "key-bg-0123456789";
const LIMITED: &str = "key-lim-0123456789";

fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A server with its own SQLite store (at the returned path).
async fn start() -> (Server, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("sluice.db");
    let config = format!(
        r#"
[store]
path = "{}"

[[auth.keys]]
tenant = "bg"
key_env = "BG_KEY"
[[auth.keys]]
tenant = "lim"
key_env = "LIM_KEY"
rpm = 1

[[models]]
id = "{DEMO_MODEL_ID}"
path = "{{DEMO_MODEL}}"
"#,
        store.display()
    );
    let server = tokio::task::spawn_blocking(move || {
        Server::start(ServerOptions {
            config: Some(config),
            env: vec![
                ("BG_KEY".into(), KEY.into()),
                ("LIM_KEY".into(), LIMITED.into()),
            ],
            args: Vec::new(),
        })
    })
    .await
    .unwrap();
    (server, store, dir)
}

async fn post(server: &Server, path: &str, key: &str, body: &Value) -> Reply {
    common::post_raw(server, path, body.to_string(), Some(key)).await
}

async fn sqlite_rows(path: &std::path::Path, sql: &str) -> Vec<(i64, String)> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
}

/// The spend rows of a tenant, (tokens_out, status), once the writer (which
/// commits in the background) has written `n` of them.
async fn spend_rows(store: &std::path::Path, tenant: &str, n: usize) -> Vec<(i64, String)> {
    let sql = format!("SELECT tokens_out, status FROM spend WHERE tenant = '{tenant}'");
    let mut rows = Vec::new();
    for _ in 0..200 {
        rows = sqlite_rows(store, &sql).await;
        if rows.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rows
}

async fn engine(server: &Server) -> Value {
    get(server, "/ready", None).await.json()["models"][0].clone()
}

/// Runs a Python script with (base URL, key, model); its last stdout line
/// as JSON.
async fn run_python(script: &'static str, server: &Server) -> Value {
    let base = server.api_base();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg("-c")
            .arg(script)
            .arg(base)
            .arg(KEY)
            .arg(DEMO_MODEL_ID)
            .output()
            .expect("python3 with the openai SDK is needed (scripts/python-env.sh; SLUICE_PYTHON)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_polls_a_background_response_to_completion_and_resumes_its_stream() {
    let (server, store, _dir) = start().await;
    let script = r#"
import json, sys, time
from openai import OpenAI, BadRequestError
client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
model = sys.argv[3]
ask = dict(model=model, input="Name three colours.", max_output_tokens=24, temperature=0)

fg = client.responses.create(**ask)
bg = client.responses.create(background=True, **ask)
assert bg.background is True and bg.status in ("queued", "in_progress"), bg
assert bg.output == [], bg
seen = [bg.status]
deadline = time.time() + 300
while True:
    r = client.responses.retrieve(bg.id)
    if r.status != seen[-1]:
        seen.append(r.status)
    if r.status not in ("queued", "in_progress"):
        break
    assert time.time() < deadline, "never finished"
    time.sleep(0.05)
assert r.status == fg.status and r.background is True, (r, fg)
assert r.output_text == fg.output_text, (r.output_text, fg.output_text)
assert r.usage.output_tokens == fg.usage.output_tokens, (r.usage, fg.usage)
# A finished response cannot be cancelled; nor can a foreground one.
for rid in (bg.id, fg.id):
    try:
        client.responses.cancel(rid)
        raise SystemExit("cancelled a finished response")
    except BadRequestError:
        pass
try:
    client.responses.create(background=True, store=False, **ask)
    raise SystemExit("background without store was accepted")
except BadRequestError as e:
    assert e.body["param"] == "background", e.body

# Streamed in the background: read a few events, drop the connection, and
# resume from the last one seen; the run went on without a reader.
stream = client.responses.create(background=True, stream=True, **ask)
first = []
for event in stream:
    first.append(event)
    if event.type == "response.output_text.delta":
        break
stream.close()
rid = first[0].response.id
assert first[0].type == "response.created" and first[0].response.background is True, first[0]
last = first[-1].sequence_number
rest = list(client.responses.retrieve(rid, stream=True, starting_after=last))
numbers = [e.sequence_number for e in first + rest]
assert numbers == list(range(len(numbers))), numbers
assert rest[-1].type == "response.completed" or rest[-1].type == "response.incomplete", rest[-1]
text = "".join(e.delta for e in first + rest if e.type == "response.output_text.delta")
final = client.responses.retrieve(rid)
assert final.output_text == text == fg.output_text, (final.output_text, text, fg.output_text)
# After the end, the same events again from the store.
again = list(client.responses.retrieve(rid, stream=True, starting_after=last))
assert [e.sequence_number for e in again] == [e.sequence_number for e in rest]
assert [e.type for e in again] == [e.type for e in rest]
print(json.dumps({"seen": seen, "output_tokens": r.usage.output_tokens, "text": r.output_text}))
"#;
    let out = run_python(script, &server).await;
    let seen = out["seen"].as_array().unwrap();
    assert!(
        seen.last()
            .is_some_and(|s| s == "completed" || s == "incomplete"),
        "{out}"
    );
    // Spend is recorded for the background runs as for the foreground one:
    // four answers (foreground, background, streamed background... and the
    // refused `store: false` made none), each with its tokens.
    let output_tokens = out["output_tokens"].as_i64().unwrap();
    let rows = spend_rows(&store, "bg", 3).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (tokens_out, status) in &rows {
        assert_eq!(*tokens_out, output_tokens, "{rows:?}");
        assert_ne!(status, "disconnected", "{rows:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_long_background_response_frees_its_engine_blocks() {
    let (server, store, _dir) = start().await;
    let idle = engine(&server).await;
    let total = idle["kv_blocks_total"].as_u64().unwrap();
    assert_eq!(idle["kv_blocks_free"].as_u64(), Some(total), "{idle}");
    // A story of at least 6,000 characters (the grammar will not let it
    // end sooner): minutes of decoding, long past the cancel.
    let schema = json!({
        "type": "object",
        "properties": {"story": {"type": "string", "minLength": 6000}},
        "required": ["story"],
        "additionalProperties": false,
    });
    let body = json!({
        "model": DEMO_MODEL_ID,
        "input": "Tell me a very long story.",
        "max_output_tokens": 4000,
        "temperature": 0,
        "background": true,
        "text": {"format": {"type": "json_schema", "name": "story", "schema": schema}},
    });
    let created = post(&server, "/v1/responses", KEY, &body).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let id = created.json()["id"].as_str().unwrap().to_string();
    // Running in the engine, holding blocks.
    let mut running = Value::Null;
    for _ in 0..1000 {
        running = engine(&server).await;
        if running["running"] == 1 && running["kv_blocks_free"].as_u64() < Some(total) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running["running"], 1, "{running}");
    let status = get(&server, &format!("/v1/responses/{id}"), Some(KEY)).await;
    assert_eq!(status.json()["status"], "in_progress", "{}", status.body);

    let cancelled = post(
        &server,
        &format!("/v1/responses/{id}/cancel"),
        KEY,
        &json!({}),
    )
    .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.json()["status"], "cancelled");
    // Cancelling again answers the same; the stored status stays.
    let again = post(
        &server,
        &format!("/v1/responses/{id}/cancel"),
        KEY,
        &json!({}),
    )
    .await;
    assert_eq!(again.json()["status"], "cancelled", "{}", again.body);

    let mut after = Value::Null;
    for _ in 0..500 {
        after = engine(&server).await;
        if after["running"] == 0 && after["kv_blocks_free"].as_u64() == Some(total) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(after["running"], 0, "{after}");
    assert_eq!(after["kv_blocks_free"].as_u64(), Some(total), "{after}");
    let stored = get(&server, &format!("/v1/responses/{id}"), Some(KEY)).await;
    assert_eq!(stored.json()["status"], "cancelled", "{}", stored.body);
    // Governance saw an abandoned answer, as for a client that went away.
    let rows = spend_rows(&store, "bg", 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1, "disconnected", "{rows:?}");
    // Another tenant's cancel is a 404, like an unknown id.
    post(
        &server,
        &format!("/v1/responses/{id}/cancel"),
        LIMITED,
        &json!({}),
    )
    .await
    .expect_error(404);
    post(&server, "/v1/responses/resp_nope/cancel", KEY, &json!({}))
        .await
        .expect_error(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_request_is_rate_limited_as_a_foreground_one() {
    let (server, _store, _dir) = start().await;
    let body = json!({
        "model": DEMO_MODEL_ID, "input": "Hi", "max_output_tokens": 4,
        "temperature": 0, "background": true,
    });
    let first = post(&server, "/v1/responses", LIMITED, &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    // Past the limit (1 a minute, plus the default burst) the limit
    // refuses at once, with a 429, as for a foreground request.
    let mut second = post(&server, "/v1/responses", LIMITED, &body).await;
    for _ in 0..10 {
        if second.status == 429 {
            break;
        }
        assert_eq!(second.status, 200, "{}", second.body);
        second = post(&server, "/v1/responses", LIMITED, &body).await;
    }
    let err = second.expect_error(429);
    assert_eq!(err["code"], "rate_limit_exceeded", "{err}");
    assert!(second.headers.contains_key("retry-after"));
}
