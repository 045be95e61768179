//! The response cache through HTTP: the real `sluice` binary with the real
//! demo model (SmolLM2), in-process and Redis backends (the real Redis on
//! 127.0.0.1:6379, two real server processes sharing it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use sluice_tests::services::RedisKeys;
use sluice_tests::{Server, ServerOptions, DEMO_MODEL_ID};

const KEY_A: &str = "key-a-0123456789";
const KEY_B: &str = "key-b-0123456789";
const KEY_S: &str = "key-s-0123456789";
const ADMIN: &str = "admin-key-0123456789";

fn config(cache: &str) -> String {
    format!(
        r#"
[[auth.keys]]
tenant = "a"
key_env = "KEY_A"
[[auth.keys]]
tenant = "b"
key_env = "KEY_B"
[[auth.keys]]
tenant = "s"
key_env = "KEY_S"
sensitive = true

[admin]
key_env = "ADMIN_KEY"

[[models]]
id = "{DEMO_MODEL_ID}"
path = "{{DEMO_MODEL}}"

[cache]
enabled = true
{cache}
"#
    )
}

fn start(cache: &str) -> Server {
    Server::start(ServerOptions {
        config: Some(config(cache)),
        env: [
            ("KEY_A", KEY_A),
            ("KEY_B", KEY_B),
            ("KEY_S", KEY_S),
            ("ADMIN_KEY", ADMIN),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        args: Vec::new(),
    })
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn cache(&self) -> &str {
        self.headers
            .get("x-sluice-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    fn content(&self) -> String {
        self.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

async fn send(
    method: reqwest::Method,
    server: &Server,
    path: &str,
    key: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Reply {
    let body = body.map(|b| b.to_string().into());
    let r = common::request(server, method, path, Some(key), headers, body).await;
    Reply {
        status: r.status,
        headers: r.headers,
        body: r.body,
    }
}

async fn chat(server: &Server, key: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    let r = send(
        reqwest::Method::POST,
        server,
        "/v1/chat/completions",
        key,
        headers,
        Some(body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r
}

fn question(q: &str) -> Value {
    json!({
        "model": DEMO_MODEL_ID,
        "temperature": 0,
        "max_tokens": 24,
        "messages": [{"role": "user", "content": q}]
    })
}

/// The semantic tier with the real encoder (all-MiniLM-L6-v2, which the
/// default config serves when fetched): a paraphrase is served the stored
/// answer; questions that differ in an entity, a number or a negation are
/// not, however close their embeddings.
#[tokio::test]
async fn semantic_hits_with_the_real_encoder_and_never_across_meanings() {
    let server = start("similarity_threshold = 0.9");
    let stored = chat(
        &server,
        KEY_A,
        &[],
        &question("What is the capital of France?"),
    )
    .await;
    assert_eq!(stored.cache(), "miss");

    let paraphrase = chat(
        &server,
        KEY_A,
        &[],
        &question("What's the capital of France?"),
    )
    .await;
    assert_eq!(paraphrase.cache(), "semantic", "{}", paraphrase.body);
    assert_eq!(paraphrase.content(), stored.content());
    let similarity: f32 = paraphrase
        .headers
        .get("x-sluice-cache-similarity")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a semantic hit names its similarity");
    assert!((0.9..=1.0).contains(&similarity), "{similarity}");

    for different in [
        "What is the capital of Germany?",
        "What is not the capital of France?",
        "What were the 2 capitals of France?",
    ] {
        let r = chat(&server, KEY_A, &[], &question(different)).await;
        assert_eq!(
            r.cache(),
            "miss",
            "{different} was served another question's answer"
        );
    }
    // Another tenant never sees tenant A's entries, semantic or exact.
    let other = chat(
        &server,
        KEY_B,
        &[],
        &question("What's the capital of France?"),
    )
    .await;
    assert_eq!(other.cache(), "miss");
}

#[tokio::test]
async fn in_process_cache_through_http() {
    let server = start("");
    let body = question("What is the capital of France?");

    // Miss, then an exact hit with the same answer.
    let first = chat(&server, KEY_A, &[], &body).await;
    assert_eq!(first.cache(), "miss");
    let second = chat(&server, KEY_A, &[], &body).await;
    assert_eq!(second.cache(), "exact");
    assert_eq!(second.content(), first.content());
    assert_eq!(second.json()["usage"], first.json()["usage"]);

    // The same request streamed is served from the same entry, framed as SSE
    // in several chunks, finished, then [DONE].
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let s = chat(&server, KEY_A, &[], &streamed).await;
    assert_eq!(s.cache(), "exact");
    let events = common::sse_events(&s.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, first.content());
    let content_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert!(
        content_chunks >= 2,
        "replayed in several chunks: {events:?}"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        first.json()["choices"][0]["finish_reason"]
    );

    // Another tenant never gets tenant a's entry.
    assert_eq!(chat(&server, KEY_B, &[], &body).await.cache(), "miss");

    // no-cache: not read (but written); no-store: neither.
    let nc = chat(&server, KEY_A, &[("cache-control", "no-cache")], &body).await;
    assert_eq!(nc.cache(), "miss");
    let fresh = question("Name a colour of the rainbow.");
    let ns = chat(&server, KEY_A, &[("cache-control", "no-store")], &fresh).await;
    assert_eq!(ns.cache(), "bypass");
    assert_eq!(chat(&server, KEY_A, &[], &fresh).await.cache(), "miss");

    // Sensitive requests are never cached, by header or by tenant.
    let secret = question("My card number is 4111 1111 1111 1111. Is it valid?");
    for _ in 0..2 {
        let r = chat(&server, KEY_A, &[("x-sluice-sensitive", "true")], &secret).await;
        assert_eq!(r.cache(), "bypass");
    }
    assert_eq!(chat(&server, KEY_A, &[], &secret).await.cache(), "miss");
    for _ in 0..2 {
        assert_eq!(chat(&server, KEY_S, &[], &body).await.cache(), "bypass");
    }

    // Sampled requests are not cached unless they opt in.
    let mut sampled = question("Tell me a word.");
    sampled["temperature"] = json!(0.9);
    assert_eq!(chat(&server, KEY_A, &[], &sampled).await.cache(), "bypass");

    // The completions endpoint has the exact tier.
    let prompt = json!({"model": DEMO_MODEL_ID, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0});
    let post = |h: &'static [(&'static str, &'static str)]| {
        let prompt = prompt.clone();
        let server = &server;
        async move {
            send(
                reqwest::Method::POST,
                server,
                "/v1/completions",
                KEY_A,
                h,
                Some(&prompt),
            )
            .await
        }
    };
    let c1 = post(&[]).await;
    let c2 = post(&[]).await;
    assert_eq!((c1.cache(), c2.cache()), ("miss", "exact"));
    assert_eq!(
        c1.json()["choices"][0]["text"],
        c2.json()["choices"][0]["text"]
    );

    // Admin purge: wrong key refused; tenant a's entries removed.
    let purge = |key: &'static str| {
        let server = &server;
        async move {
            send(
                reqwest::Method::DELETE,
                server,
                "/admin/cache?tenant=a",
                key,
                &[],
                None,
            )
            .await
        }
    };
    assert_eq!(purge(KEY_A).await.status, 401);
    let p = purge(ADMIN).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.json()["purged"].as_u64().unwrap() >= 3, "{}", p.body);
    assert_eq!(chat(&server, KEY_A, &[], &body).await.cache(), "miss");
    assert_eq!(chat(&server, KEY_B, &[], &body).await.cache(), "exact");
}

#[tokio::test]
async fn two_processes_share_a_redis_cache() {
    let prefix = format!(
        "sluice-test:e2e:{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let _cleanup = RedisKeys::under(&prefix);
    let cache = format!(
        "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{prefix}\"\n"
    );
    let one = start(&cache);
    let two = start(&cache);
    let body = question("What is the largest planet?");
    let first = chat(&one, KEY_A, &[], &body).await;
    assert_eq!(first.cache(), "miss");
    let second = chat(&two, KEY_A, &[], &body).await;
    assert_eq!(second.cache(), "exact");
    assert_eq!(second.content(), first.content());
    assert_eq!(chat(&two, KEY_B, &[], &body).await.cache(), "miss");
    let p = send(
        reqwest::Method::DELETE,
        &one,
        "/admin/cache?tenant=a",
        ADMIN,
        &[],
        None,
    )
    .await;
    assert_eq!(p.json()["purged"], 1, "{}", p.body);
    assert_eq!(chat(&two, KEY_A, &[], &body).await.cache(), "miss");
}
