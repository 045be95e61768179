//! `/v1/embeddings` against the real binary with the real all-MiniLM-L6-v2:
//! values match the reference, float and base64 agree, `dimensions`
//! truncates and renormalises, every input shape works, bad input is a 400
//! naming the item, an unknown model is a 404 before anything else, a
//! request larger than the encoder queue is served, and the route sits
//! behind the API keys.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;

use base64_decode::decode_f32_le;
use common::post_raw;
use serde_json::{json, Value};
use sluice_tests::{Server, ServerOptions, DEMO_MODEL_ID};

const KEY: &str = "sk-embed-0123456789";
const EMBED_ID: &str = "all-minilm-l6-v2";
/// MODELS.md: "How do I reset my password?" → first five components.
const RESET_PASSWORD: [f32; 5] = [0.0069, -0.06302, -0.07204, -0.0325, -0.04271];

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| start_with_pool("max_wait_us = 1000"))
}

/// A server whose encoder queue holds 4 inputs, in batches of 2: far fewer
/// than one request may carry. Only one test uses it, so nothing else
/// competes for the queue.
fn small_queue_server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| start_with_pool("max_batch_size = 2\nqueue_capacity = 4"))
}

fn start_with_pool(pool: &str) -> Server {
    let dir = sluice_models::demo_embedding_model_dir();
    assert!(
        dir.join("model.safetensors").is_file(),
        "all-MiniLM-L6-v2 is not at {}; fetch it with `scripts/fetch-models.sh embed`",
        dir.display()
    );
    Server::start(ServerOptions {
        config: Some(format!(
            r#"
                [[models]]
                id = "smollm2-135m-instruct"
                path = "{{DEMO_MODEL}}"
                [[encoders]]
                id = "{EMBED_ID}"
                kind = "embedding"
                path = "{}"
                {pool}
                "#,
            dir.display()
        )),
        env: vec![("SLUICE_API_KEYS".into(), format!("tester:{KEY}"))],
        args: Vec::new(),
    })
}

/// A tiny base64 decoder, so the test checks the wire format without
/// sharing the server's code.
mod base64_decode {
    pub fn decode_f32_le(text: &str) -> Vec<f32> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut n = 0;
        let mut bytes = Vec::new();
        for c in text.bytes().filter(|&c| c != b'=') {
            let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
            bits = (bits << 6) | v;
            n += 6;
            if n >= 8 {
                n -= 8;
                bytes.push((bits >> n) as u8);
            }
        }
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

async fn embed(body: Value) -> common::Reply {
    embed_on(server(), body).await
}

async fn embed_on(server: &Server, body: Value) -> common::Reply {
    post_raw(server, "/v1/embeddings", body.to_string(), Some(KEY)).await
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[tokio::test]
async fn embeddings_match_the_reference_and_report_usage() {
    let reply = embed(json!({"model": EMBED_ID, "input": "How do I reset my password?"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v = reply.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], EMBED_ID);
    assert_eq!(v["data"][0]["object"], "embedding");
    assert_eq!(v["data"][0]["index"], 0);
    let e = floats(&v["data"][0]["embedding"]);
    assert_eq!(e.len(), 384);
    for (got, want) in e.iter().zip(RESET_PASSWORD) {
        assert!((got - want).abs() < 1e-3, "{got} vs reference {want}");
    }
    assert!((norm(&e) - 1.0).abs() < 1e-4);
    // [CLS] how do i reset my password ? [SEP]
    assert_eq!(v["usage"]["prompt_tokens"], 9);
    assert_eq!(v["usage"]["total_tokens"], 9);
}

#[tokio::test]
async fn float_and_base64_agree_and_arrays_keep_their_order() {
    let input = json!([
        "What is the capital of France?",
        "How do I reset my password?"
    ]);
    let float = embed(json!({"model": EMBED_ID, "input": input}))
        .await
        .json();
    let b64 = embed(json!({"model": EMBED_ID, "input": input, "encoding_format": "base64"}))
        .await
        .json();
    assert_eq!(float["data"].as_array().unwrap().len(), 2);
    for i in 0..2 {
        assert_eq!(float["data"][i]["index"], i);
        let f = floats(&float["data"][i]["embedding"]);
        let b = decode_f32_le(b64["data"][i]["embedding"].as_str().unwrap());
        assert_eq!(f.len(), b.len());
        for (x, y) in f.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }
    let second = floats(&float["data"][1]["embedding"]);
    for (got, want) in second.iter().zip(RESET_PASSWORD) {
        assert!((got - want).abs() < 1e-3);
    }
}

#[tokio::test]
async fn dimensions_truncate_and_renormalise() {
    let full = embed(json!({"model": EMBED_ID, "input": "hello world"}))
        .await
        .json();
    let short = embed(json!({"model": EMBED_ID, "input": "hello world", "dimensions": 64}))
        .await
        .json();
    let full = floats(&full["data"][0]["embedding"]);
    let short = floats(&short["data"][0]["embedding"]);
    assert_eq!(short.len(), 64);
    assert!((norm(&short) - 1.0).abs() < 1e-4);
    let scale = norm(&full[..64]);
    for (s, f) in short.iter().zip(&full[..64]) {
        assert!((s - f / scale).abs() < 1e-5);
    }
}

#[tokio::test]
async fn token_inputs_embed_like_the_text_they_spell() {
    let text = embed(json!({"model": EMBED_ID, "input": "hello world"}))
        .await
        .json();
    // [CLS] hello world [SEP] in the MiniLM (bert-base-uncased) vocabulary.
    let ids = embed(json!({"model": EMBED_ID, "input": [101, 7592, 2088, 102]}))
        .await
        .json();
    let nested = embed(json!({"model": EMBED_ID, "input": [[101, 7592, 2088, 102], [101, 102]]}))
        .await
        .json();
    let a = floats(&text["data"][0]["embedding"]);
    let b = floats(&ids["data"][0]["embedding"]);
    let c = floats(&nested["data"][0]["embedding"]);
    assert_eq!(nested["data"].as_array().unwrap().len(), 2);
    for ((x, y), z) in a.iter().zip(&b).zip(&c) {
        assert!((x - y).abs() < 1e-5 && (x - z).abs() < 1e-5);
    }
}

#[tokio::test]
async fn bad_requests_are_400s_naming_the_parameter() {
    let cases = [
        (json!({"model": EMBED_ID, "input": []}), "input"),
        (json!({"model": EMBED_ID, "input": ["ok", ""]}), "input[1]"),
        (json!({"model": EMBED_ID, "input": ""}), "input"),
        (
            json!({"model": EMBED_ID, "input": ["ok", "word ".repeat(600)]}),
            "input[1]",
        ),
        (
            json!({"model": EMBED_ID, "input": [[1, 2], [99999999]]}),
            "input[1]",
        ),
        (
            json!({"model": EMBED_ID, "input": "x", "dimensions": 0}),
            "dimensions",
        ),
        (
            json!({"model": EMBED_ID, "input": "x", "dimensions": 385}),
            "dimensions",
        ),
        (
            json!({"model": EMBED_ID, "input": "x", "encoding_format": "hex"}),
            "encoding_format",
        ),
        (json!({"model": DEMO_MODEL_ID, "input": "x"}), "model"),
    ];
    for (body, param) in cases {
        let reply = embed(body.clone()).await;
        let err = reply.expect_error(400);
        assert_eq!(err["param"], param, "{body}: {}", reply.body);
    }
    let unknown = embed(json!({"model": "no-such-embedder", "input": "x"})).await;
    assert_eq!(unknown.expect_error(404)["code"], "model_not_found");
}

#[tokio::test]
async fn an_unknown_model_is_a_404_whatever_else_the_body_holds() {
    // Every other field is wrong too, and the input is past the 2048-item
    // limit: none of it may be looked at (let alone tokenised) before the model.
    let too_many = vec![""; 3000];
    let reply = embed(json!({
        "model": "no-such-embedder",
        "input": too_many,
        "encoding_format": "hex",
        "dimensions": 0,
    }))
    .await;
    let err = reply.expect_error(404);
    assert_eq!(err["code"], "model_not_found");
    assert_eq!(err["param"], Value::Null, "{}", reply.body);
}

#[tokio::test]
async fn a_request_with_more_inputs_than_the_encoder_queue_holds_is_served_in_order() {
    let server = small_queue_server();
    let texts: Vec<String> = (0..40)
        .map(|i| format!("Sentence {i} is about the number {}.", i * 7))
        .collect();
    let reply = embed_on(server, json!({"model": EMBED_ID, "input": texts})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v = reply.json();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), texts.len());
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["index"], i);
    }
    // Each vector is its own text's: the same as that text embedded alone.
    for i in [0, 1, 17, 39] {
        let alone = embed_on(server, json!({"model": EMBED_ID, "input": texts[i]}))
            .await
            .json();
        let want = floats(&alone["data"][0]["embedding"]);
        let got = floats(&data[i]["embedding"]);
        for (x, y) in got.iter().zip(&want) {
            assert!((x - y).abs() < 1e-4, "input {i}: {x} vs {y} alone");
        }
    }
}

#[tokio::test]
async fn embeddings_need_an_api_key_and_encoders_are_listed() {
    let body = json!({"model": EMBED_ID, "input": "x"}).to_string();
    let reply = post_raw(server(), "/v1/embeddings", body, None).await;
    reply.expect_error(401);
    let models = reqwest::Client::new()
        .get(format!("{}/models", server().api_base()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&EMBED_ID) && ids.contains(&DEMO_MODEL_ID),
        "{ids:?}"
    );
}
