//! Structured output with the real binary and the demo model: every schema
//! of `tests/data/json_schemas.json` (nested objects, bounded arrays, enums,
//! number ranges, patterns, optional fields, `anyOf`, `$ref`, ...) asked for
//! through `response_format: json_schema`, streamed and not, and every
//! answer checked by Python's `jsonschema` (the reference validator); the
//! completions API's `guided_json` / `guided_regex` / `guided_grammar`;
//! schemas the engine cannot follow refused with a 400; `logit_bias` and
//! `min_p` end to end; the OpenAI Python SDK's `chat.completions.parse`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::{post, sse_events};
use serde_json::{json, Value};
use sluice_tests::{Server, DEMO_MODEL_ID};

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start_default)
}

fn suite() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/json_schemas.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn schema_request(case: &Value, stream: bool) -> Value {
    let schema = &case["schema"];
    json!({
        "model": DEMO_MODEL_ID,
        "messages": [
            {"role": "system", "content": format!(
                "Answer only with JSON that matches this JSON schema: {schema}")},
            {"role": "user", "content": case["prompt"]},
        ],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": case["name"], "schema": schema, "strict": true}},
        "temperature": 0,
        "max_tokens": 400,
        "stream": stream,
    })
}

/// The content and finish reason of a chat answer, streamed or not.
async fn chat_content(body: &Value) -> (String, String) {
    let reply = post(server(), "/v1/chat/completions", body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    if body["stream"] != json!(true) {
        let v = reply.json();
        let choice = &v["choices"][0];
        return (
            choice["message"]["content"].as_str().unwrap().to_string(),
            choice["finish_reason"].as_str().unwrap().to_string(),
        );
    }
    let (mut text, mut finish) = (String::new(), String::new());
    for data in sse_events(&reply.body) {
        if data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        if let Some(t) = choice["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (text, finish)
}

/// The Python with `openai`, `pydantic` and `jsonschema`: the one
/// `scripts/python-env.sh` makes (scripts/test.sh exports it), else `python3`.
fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Validates each `{name, schema, output}` with Python's `jsonschema`
/// (formats checked too); returns one line per failure.
fn python_validate(cases: &[Value]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.json");
    std::fs::write(&file, Value::Array(cases.to_vec()).to_string()).unwrap();
    let script = r#"
import json, sys
import jsonschema
bad = []
for c in json.load(open(sys.argv[1])):
    try:
        value = json.loads(c["output"])
        jsonschema.validate(value, c["schema"], format_checker=jsonschema.FormatChecker())
    except Exception as e:
        bad.append(f"{c['name']}: {type(e).__name__}: {str(e).splitlines()[0]} in {c['output']!r}")
print("\n".join(bad))
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .expect("python3 is needed to validate the outputs (scripts/python-env.sh makes one; set SLUICE_PYTHON to it)");
    assert!(
        out.status.success(),
        "the validator failed (is the Python package `jsonschema` installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

async fn run_suite(stream: bool) {
    let cases = suite();
    assert!(cases.len() >= 30, "the suite has {} schemas", cases.len());
    let answers = futures_util::future::join_all(
        cases
            .iter()
            .map(|case| async move { chat_content(&schema_request(case, stream)).await }),
    )
    .await;
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for (case, (output, finish)) in cases.iter().zip(answers) {
        if finish != "stop" {
            failures.push(format!("{}: cut off ({finish}): {output:?}", case["name"]));
        }
        checked.push(json!({"name": case["name"], "schema": case["schema"], "output": output}));
    }
    failures.extend(python_validate(&checked));
    assert!(
        failures.is_empty(),
        "{} of {} outputs do not validate:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_schema_of_the_suite_is_met_without_streaming() {
    run_suite(false).await;
}

#[tokio::test]
async fn every_schema_of_the_suite_is_met_when_streamed() {
    run_suite(true).await;
}

#[tokio::test]
async fn json_object_mode_answers_an_object() {
    let body = json!({
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "Give me a JSON object about a cat."}],
        "response_format": {"type": "json_object"},
        "temperature": 0,
        "max_tokens": 300,
    });
    let (text, finish) = chat_content(&body).await;
    // Greedy, this small model adds keys until max_tokens (the grammar lets
    // an object grow without end); what it wrote is still an object's start.
    assert!(text.starts_with("{\""), "{text}");
    if finish == "stop" {
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(v.is_object(), "{text}");
    } else {
        assert_eq!(finish, "length", "{text}");
    }
}

/// Completions text of a body.
async fn completion_text(body: Value) -> String {
    let reply = post(server(), "/v1/completions", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v = reply.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn completions_follow_guided_json_regex_and_grammar() {
    let base = |extra: Value| {
        let mut b = json!({
            "model": DEMO_MODEL_ID, "prompt": "The answer is", "temperature": 0, "max_tokens": 100,
        });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let text = completion_text(base(
        json!({"guided_regex": "(yes|no), because [a-z ]{1,20}\\."}),
    ))
    .await;
    assert!(
        text.starts_with("yes, because ") || text.starts_with("no, because "),
        "{text:?}"
    );
    assert!(text.ends_with('.'), "{text:?}");

    let schema = json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["n"], "additionalProperties": false});
    let text = completion_text(base(json!({ "guided_json": schema }))).await;
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!((1..=9).contains(&v["n"].as_i64().unwrap()), "{text}");

    let lark = "start: \"colour: \" COLOUR\nCOLOUR: \"red\" | \"green\" | \"blue\"";
    let text = completion_text(base(json!({ "guided_grammar": lark }))).await;
    assert!(
        ["colour: red", "colour: green", "colour: blue"].contains(&text.as_str()),
        "{text:?}"
    );
}

#[tokio::test]
async fn schemas_the_engine_cannot_follow_are_a_400_naming_the_field() {
    for (format, param) in [
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true,
                "schema": {"type": "object", "properties": {"a": {"type": "frobnicate"}}}}}),
            "response_format",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x",
                "schema": {"$ref": "#/$defs/missing"}}}),
            "response_format",
        ),
        (
            json!({"type": "json_schema"}),
            "response_format.json_schema",
        ),
    ] {
        let body = json!({
            "model": DEMO_MODEL_ID,
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": format,
        });
        let reply = post(server(), "/v1/chat/completions", &body).await;
        let err = reply.expect_error(400);
        assert_eq!(err["param"], param, "{err}");
    }
    let reply = post(
        server(),
        "/v1/completions",
        &json!({"model": DEMO_MODEL_ID, "prompt": "x", "guided_regex": "(unclosed"}),
    )
    .await;
    assert_eq!(reply.expect_error(400)["param"], "guided_regex");
}

#[tokio::test]
async fn logit_bias_bans_and_forces_tokens() {
    let tokenizer = common::demo_tokenizer();
    let body = |bias: Value| {
        json!({
            "model": DEMO_MODEL_ID, "prompt": "The capital of France is", "temperature": 0,
            "max_tokens": 3, "ignore_eos": true, "logit_bias": bias,
        })
    };
    let free = post(server(), "/v1/completions", &body(json!({})))
        .await
        .json();
    let free_text = free["choices"][0]["text"].as_str().unwrap().to_string();
    let first = tokenizer.encode(&free_text, false).unwrap()[0];
    let banned = post(
        server(),
        "/v1/completions",
        &body(json!({ first.to_string(): -100 })),
    )
    .await
    .json();
    let banned_text = banned["choices"][0]["text"].as_str().unwrap();
    assert_ne!(
        tokenizer.encode(banned_text, false).unwrap().first(),
        Some(&first),
        "{free_text:?} vs {banned_text:?}"
    );
    let x = tokenizer.encode("x", false).unwrap()[0];
    let forced = post(
        server(),
        "/v1/completions",
        &body(json!({ x.to_string(): 100 })),
    )
    .await
    .json();
    assert_eq!(forced["choices"][0]["text"], "xxx");

    let vocab = tokenizer.vocab_size();
    let reply = post(
        server(),
        "/v1/completions",
        &body(json!({ vocab.to_string(): 1 })),
    )
    .await;
    assert_eq!(
        reply.expect_error(400)["param"],
        format!("logit_bias.{vocab}")
    );
}

#[tokio::test]
async fn min_p_of_one_samples_like_greedy() {
    // With min_p = 1 only tokens as likely as the best survive: the answer
    // is the greedy one whatever the seed.
    let body = |extra: Value| {
        let mut b = json!({
            "model": DEMO_MODEL_ID, "prompt": "Once upon a time", "max_tokens": 12,
            "ignore_eos": true,
        });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let greedy = post(
        server(),
        "/v1/completions",
        &body(json!({"temperature": 0})),
    )
    .await
    .json();
    for seed in [1, 2, 3] {
        let sampled = post(
            server(),
            "/v1/completions",
            &body(json!({"temperature": 1.5, "min_p": 1.0, "seed": seed})),
        )
        .await
        .json();
        assert_eq!(
            sampled["choices"][0]["text"], greedy["choices"][0]["text"],
            "seed {seed}"
        );
    }
}

#[tokio::test]
async fn the_openai_python_sdk_parses_into_a_pydantic_model() {
    let script = r#"
import sys
from typing import List, Literal
from openai import OpenAI
from pydantic import BaseModel, Field

class Ingredient(BaseModel):
    name: str = Field(max_length=20)
    grams: int = Field(ge=1, le=1000)

class Recipe(BaseModel):
    title: str = Field(max_length=40)
    difficulty: Literal["easy", "medium", "hard"]
    ingredients: List[Ingredient] = Field(min_length=1, max_length=3)

client = OpenAI(base_url=sys.argv[1], api_key="none")
completion = client.chat.completions.parse(
    model=sys.argv[2],
    messages=[
        {"role": "system", "content": "You write recipes as JSON."},
        {"role": "user", "content": "A pancake recipe."},
    ],
    response_format=Recipe,
    temperature=0,
    max_tokens=300,
)
message = completion.choices[0].message
assert completion.choices[0].finish_reason == "stop", completion
assert isinstance(message.parsed, Recipe), message
print(message.parsed.model_dump_json())
"#;
    let base_url = server().api_base();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg("-c")
            .arg(script)
            .arg(base_url)
            .arg(DEMO_MODEL_ID)
            .output()
            .expect("a Python with the `openai` package is needed (scripts/python-env.sh; SLUICE_PYTHON)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the SDK's parse() failed (needs the Python from scripts/python-env.sh in SLUICE_PYTHON):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(parsed["ingredients"]
        .as_array()
        .is_some_and(|a| !a.is_empty()));
}
