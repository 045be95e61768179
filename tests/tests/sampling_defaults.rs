//! A model's sampling defaults end to end: the real `sluice` binary with the
//! real demo model. What a request leaves out comes from `[models.defaults]`
//! (before the cache key), `/v1/models` shows them, a provider gets the
//! request as sent, and with no config the demo model answers the README's
//! question sensibly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{get, http_client, post, Reply};
use serde_json::{json, Value};
use sluice_tests::fakes;
use sluice_tests::{Server, ServerOptions, DEMO_MODEL_ID};

async fn start(config: String) -> Server {
    tokio::task::spawn_blocking(move || {
        Server::start(ServerOptions {
            config: Some(config),
            ..ServerOptions::default()
        })
    })
    .await
    .unwrap()
}

fn chat(model: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Write a short story about a dragon."}],
        "max_tokens": 24,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// POSTs a chat request, with the cache on or off for it.
async fn ask(server: &Server, body: &Value, cache: &str) -> Reply {
    let resp = http_client()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .header("x-sluice-cache", cache)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

fn text(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

fn cache_header(reply: &Reply) -> &str {
    reply.headers["x-sluice-cache"].to_str().unwrap()
}

#[tokio::test]
async fn omitted_fields_take_the_models_defaults_before_the_cache_key() {
    let upstream = fakes::openai::start(None).await;
    let server = start(format!(
        r#"
encoders = []
[[models]]
id = "{DEMO_MODEL_ID}"
path = "{{DEMO_MODEL}}"
[models.defaults]
temperature = 0
max_tokens = 24
[cache]
enabled = true
[[providers]]
kind = "openai"
name = "up"
base_url = "{}/v1"
[[routes]]
model = "cloud"
[[routes.deployments]]
name = "cloud"
provider = "up"
upstream_model = "gpt-x"
"#,
        upstream.base_url()
    ))
    .await;

    // Shown on the model, and not on the provider's route.
    let models = get(&server, "/v1/models", None).await.json();
    let entry = |id: &str| {
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {id} in {models}"))
    };
    let demo = entry(DEMO_MODEL_ID);
    assert_eq!(demo["object"], "model");
    assert_eq!(
        demo["defaults"],
        json!({"temperature": 0.0, "max_tokens": 24})
    );
    assert!(entry("cloud").get("defaults").is_none(), "{models}");
    let one = get(&server, &format!("/v1/models/{DEMO_MODEL_ID}"), None)
        .await
        .json();
    assert_eq!(one["defaults"]["temperature"], 0.0, "{one}");

    // Greedy by default: two requests that leave temperature out (and the
    // cache out of it) give the same text, at OpenAI's temperature 1 they
    // would not.
    let a = text(&ask(&server, &chat(DEMO_MODEL_ID, json!({})), "off").await);
    let b = text(&ask(&server, &chat(DEMO_MODEL_ID, json!({})), "off").await);
    assert!(!a.is_empty());
    assert_eq!(a, b);

    // Relying on the defaults and spelling them out are one cache entry:
    // a request at OpenAI's default temperature 1 would not be cached at all.
    let spelled = json!({"temperature": 0.0});
    let first = ask(&server, &chat(DEMO_MODEL_ID, spelled), "on").await;
    assert_eq!(cache_header(&first), "miss", "{}", first.body);
    assert_eq!(text(&first), a);
    let relying = ask(&server, &chat(DEMO_MODEL_ID, json!({})), "on").await;
    assert_eq!(cache_header(&relying), "exact", "{}", relying.body);
    assert_eq!(text(&relying), a);

    // The request wins over the defaults.
    let hot = ask(
        &server,
        &chat(DEMO_MODEL_ID, json!({"temperature": 1.5, "seed": 7})),
        "off",
    )
    .await;
    assert_ne!(text(&hot), a, "temperature 1.5 was not applied");

    // A provider gets the request as the client sent it: no local defaults.
    let reply = post(&server, "/v1/chat/completions", &chat("cloud", json!({}))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let sent = upstream.control.last_body().unwrap();
    assert_ne!(sent["temperature"], json!(0.0), "{sent}");
}

/// The README's curl, as is: with no config the demo model decodes greedily
/// by default (see `demo_defaults` in the gateway's config for why not its
/// authors' temperature 0.2) and names Paris, every time.
#[tokio::test]
async fn the_readme_question_gets_a_sensible_answer_with_no_config() {
    let server = tokio::task::spawn_blocking(Server::start_default)
        .await
        .unwrap();
    let models = get(&server, &format!("/v1/models/{DEMO_MODEL_ID}"), None)
        .await
        .json();
    let defaults = &models["defaults"];
    assert_eq!(defaults["temperature"], 0.0, "{models}");
    assert!(
        (defaults["top_p"].as_f64().unwrap() - 0.9).abs() < 1e-6,
        "{models}"
    );
    let body = json!({
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    });
    for _ in 0..3 {
        let answer = text(&post(&server, "/v1/chat/completions", &body).await);
        assert!(answer.contains("Paris"), "{answer}");
    }
}
