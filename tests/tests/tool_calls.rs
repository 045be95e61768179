//! Tool calling on the local engine with the real binary and the demo model
//! (SmolLM2, whose template knows no tools: the tools are folded into a
//! system block in SmolLM2's own function-calling words, and its calls are
//! `<tool_call>[...]</tool_call>`): a named function and `required` force a
//! call whose arguments validate against the function's schema (checked by
//! Python's `jsonschema`), streamed and not; streamed argument deltas
//! reassemble into the same JSON; `finish_reason` is `tool_calls`; the
//! OpenAI Python SDK does the whole round trip (tools → tool_calls → a
//! `tool` message → a text answer); bad tool inputs are 400s naming the
//! field; a tool-constrained sequence answers the same alone and beside
//! three others.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;

use common::{post, sse_events};
use serde_json::{json, Value};
use sluice_tests::{Server, DEMO_MODEL_ID};

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start_default)
}

fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn weather_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": false,
    })
}

fn mail_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "to": {"type": "string", "maxLength": 40},
            "subject": {"type": "string", "maxLength": 40},
            "urgent": {"type": "boolean"},
        },
        "required": ["to", "subject"],
        "additionalProperties": false,
    })
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather", "description": "The current weather in a city",
            "parameters": weather_schema(), "strict": true}},
        {"type": "function", "function": {
            "name": "send_mail", "description": "Send a short e-mail",
            "parameters": mail_schema()}},
    ])
}

fn schema_of(name: &str) -> Value {
    match name {
        "get_weather" => weather_schema(),
        "send_mail" => mail_schema(),
        other => panic!("the model called '{other}', which was not offered"),
    }
}

fn request(tool_choice: Value, stream: bool) -> Value {
    json!({
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "What is the weather in Paris today?"}],
        "tools": tools(),
        "tool_choice": tool_choice,
        "temperature": 0,
        "max_tokens": 120,
        "stream": stream,
    })
}

fn named(name: &str) -> Value {
    json!({"type": "function", "function": {"name": name}})
}

/// One choice's calls (id, name, arguments), its content and finish
/// reason, streamed or not. Streamed deltas are checked as OpenAI frames
/// them: the first delta of a call has its id, type and name.
async fn calls_of(body: &Value) -> (Vec<(String, String, String)>, Option<String>, String) {
    let reply = post(server(), "/v1/chat/completions", body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    if body["stream"] != json!(true) {
        let v = reply.json();
        let choice = &v["choices"][0];
        let calls = choice["message"]["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|c| {
                assert_eq!(c["type"], "function", "{c}");
                (
                    c["id"].as_str().unwrap().to_string(),
                    c["function"]["name"].as_str().unwrap().to_string(),
                    c["function"]["arguments"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        return (
            calls,
            choice["message"]["content"].as_str().map(str::to_string),
            choice["finish_reason"].as_str().unwrap().to_string(),
        );
    }
    let mut calls: BTreeMap<u64, (String, String, String)> = BTreeMap::new();
    let (mut content, mut finish, mut argument_deltas) = (None::<String>, String::new(), 0);
    for data in sse_events(&reply.body) {
        if data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        // The first chunk's `"content": ""` (beside the role) is no text.
        if let Some(t) = choice["delta"]["content"]
            .as_str()
            .filter(|t| !t.is_empty())
        {
            content.get_or_insert_with(String::new).push_str(t);
        }
        for delta in choice["delta"]["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let index = delta["index"].as_u64().unwrap();
            let entry = calls.entry(index).or_insert_with(|| {
                assert_eq!(delta["type"], "function", "first delta of a call: {delta}");
                (
                    delta["id"]
                        .as_str()
                        .expect("first delta has the id")
                        .to_string(),
                    delta["function"]["name"]
                        .as_str()
                        .expect("first delta has the name")
                        .to_string(),
                    String::new(),
                )
            });
            if let Some(a) = delta["function"]["arguments"].as_str() {
                if !a.is_empty() {
                    argument_deltas += 1;
                }
                entry.2.push_str(a);
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    assert!(
        calls.is_empty() || argument_deltas > 1,
        "arguments stream in several deltas: {}",
        reply.body
    );
    (calls.into_values().collect(), content, finish)
}

/// Checks each (name, arguments) against its function's schema with
/// Python's `jsonschema`; returns one line per failure.
fn python_validate(calls: &[(String, String)]) -> Vec<String> {
    let cases: Vec<Value> = calls
        .iter()
        .map(|(name, args)| json!({"name": name, "schema": schema_of(name), "output": args}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("calls.json");
    std::fs::write(&file, Value::Array(cases).to_string()).unwrap();
    let script = r#"
import json, sys
import jsonschema
bad = []
for c in json.load(open(sys.argv[1])):
    try:
        jsonschema.validate(json.loads(c["output"]), c["schema"])
    except Exception as e:
        bad.append(f"{c['name']}: {type(e).__name__}: {str(e).splitlines()[0]} in {c['output']!r}")
print("\n".join(bad))
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .expect("python3 with jsonschema is needed (scripts/python-env.sh; SLUICE_PYTHON)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn assert_call_id(id: &str) {
    let suffix = id.strip_prefix("call_").unwrap_or_else(|| panic!("{id}"));
    assert_eq!(suffix.len(), 24, "{id}");
    assert!(suffix.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
}

async fn forced_call_validates(tool_choice: Value, stream: bool) -> Vec<(String, String)> {
    let (calls, content, finish) = calls_of(&request(tool_choice.clone(), stream)).await;
    assert_eq!(finish, "tool_calls", "{tool_choice}: {calls:?} {content:?}");
    assert!(!calls.is_empty(), "{tool_choice}: no call");
    assert_eq!(content, None, "an answer of calls only has no content");
    for (id, _, _) in &calls {
        assert_call_id(id);
    }
    let pairs: Vec<(String, String)> = calls.into_iter().map(|(_, n, a)| (n, a)).collect();
    let failures = python_validate(&pairs);
    assert!(failures.is_empty(), "{tool_choice}: {failures:?}");
    pairs
}

#[tokio::test]
async fn a_named_function_is_called_with_arguments_that_match_its_schema() {
    for name in ["get_weather", "send_mail"] {
        let plain = forced_call_validates(named(name), false).await;
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].0, name);
        let streamed = forced_call_validates(named(name), true).await;
        assert_eq!(
            streamed, plain,
            "streamed deltas reassemble into the same call"
        );
    }
}

#[tokio::test]
async fn required_calls_one_of_the_offered_functions() {
    let plain = forced_call_validates(json!("required"), false).await;
    let streamed = forced_call_validates(json!("required"), true).await;
    assert_eq!(streamed, plain);
    // Without parallel calls, exactly one.
    let mut body = request(json!("required"), false);
    body["parallel_tool_calls"] = json!(false);
    let (calls, _, finish) = calls_of(&body).await;
    assert_eq!((calls.len(), finish.as_str()), (1, "tool_calls"));
}

#[tokio::test]
async fn tool_choice_none_answers_with_text() {
    let (calls, content, finish) = calls_of(&request(json!("none"), false)).await;
    assert!(calls.is_empty(), "{calls:?}");
    assert!(!content.unwrap_or_default().is_empty());
    assert_ne!(finish, "tool_calls");
}

#[tokio::test]
async fn a_tool_result_is_answered_with_text() {
    let body = json!({
        "model": DEMO_MODEL_ID,
        "messages": [
            {"role": "user", "content": "What is the weather in Paris today?"},
            {"role": "assistant", "content": null, "tool_calls": [{
                "id": "call_abc", "type": "function",
                "function": {"name": "get_weather",
                             "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
            {"role": "tool", "tool_call_id": "call_abc", "content": "{\"temperature\": 21, \"sky\": \"sunny\"}"},
        ],
        "tools": tools(),
        "tool_choice": "none",
        "temperature": 0,
        "max_tokens": 60,
    });
    let (calls, content, finish) = calls_of(&body).await;
    assert!(calls.is_empty());
    assert_eq!(finish, "stop");
    assert!(!content.unwrap_or_default().trim().is_empty());
}

#[tokio::test]
async fn bad_tool_inputs_are_400_naming_the_field() {
    let base = request(json!("auto"), false);
    let cases = [
        (json!({"tools": {"type": "function"}}), "tools"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}),
            "tools[0].function.parameters",
        ),
        (
            json!({"tool_choice": named("delete_everything")}),
            "tool_choice",
        ),
        (json!({"tool_choice": "sometimes"}), "tool_choice"),
        (
            json!({"tool_choice": "required",
                   "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f",
                   "parameters": {"type": "object", "properties": {"x": {"type": "string", "pattern": "("}}}}}],
                   "tool_choice": "required"}),
            "tools",
        ),
        (
            json!({"messages": [{"role": "tool", "content": "21 degrees"}]}),
            "messages[0].tool_call_id",
        ),
    ];
    for (change, param) in cases {
        let mut body = base.clone();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let reply = post(server(), "/v1/chat/completions", &body).await;
        let err = reply.expect_error(400);
        assert_eq!(err["param"], param, "{change}: {err}");
        assert_eq!(err["type"], "invalid_request_error", "{err}");
    }
    // The server still answers afterwards.
    forced_call_validates(named("get_weather"), false).await;
}

#[tokio::test]
async fn a_tool_constrained_sequence_answers_the_same_beside_others() {
    let body = request(named("send_mail"), false);
    let alone = calls_of(&body).await;
    let others = [
        json!({"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": "Tell me a story."}],
               "temperature": 0.9, "seed": 3, "max_tokens": 60}),
        request(json!("required"), false),
        json!({"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": "Count to ten."}],
               "temperature": 0, "max_tokens": 40}),
    ];
    let (together, ..) = tokio::join!(
        calls_of(&body),
        post(server(), "/v1/chat/completions", &others[0]),
        calls_of(&others[1]),
        post(server(), "/v1/chat/completions", &others[2]),
    );
    let strip =
        |(calls, content, finish): (Vec<(String, String, String)>, Option<String>, String)| {
            (
                calls
                    .into_iter()
                    .map(|(_, n, a)| (n, a))
                    .collect::<Vec<_>>(),
                content,
                finish,
            )
        };
    assert_eq!(strip(together), strip(alone));
}

#[tokio::test]
async fn the_openai_python_sdk_does_a_tool_round_trip_streamed_and_not() {
    let script = r#"
import json, sys
import jsonschema
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="none")
model = sys.argv[2]
tools = json.loads(sys.argv[3])
schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}

def first_turn(stream, tool_choice):
    messages = [{"role": "user", "content": "What is the weather in Paris today?"}]
    kwargs = dict(model=model, messages=messages, tools=tools, tool_choice=tool_choice,
                  temperature=0, max_tokens=120)
    if not stream:
        r = client.chat.completions.create(**kwargs)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        calls = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    else:
        calls, finish = {}, None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            for d in delta.tool_calls or []:
                entry = calls.setdefault(d.index, [d.id, d.function.name, ""])
                entry[2] += d.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        assert finish == "tool_calls", finish
        calls = [tuple(calls[i]) for i in sorted(calls)]
    assert calls, "no call"
    for id_, name, args in calls:
        assert id_.startswith("call_") and len(id_) == 29, id_
        jsonschema.validate(json.loads(args), schemas[name])
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in calls]})
    for i, n, a in calls:
        messages.append({"role": "tool", "tool_call_id": i,
                         "content": json.dumps({"ok": True, "temperature": 21})})
    return messages

def final_turn(stream, messages):
    kwargs = dict(model=model, messages=messages, tools=tools, tool_choice="none",
                  temperature=0, max_tokens=60)
    if not stream:
        r = client.chat.completions.create(**kwargs)
        assert r.choices[0].finish_reason in ("stop", "length"), r
        return r.choices[0].message.content
    text = ""
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return text

out = []
for stream in (False, True):
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        answer = final_turn(stream, first_turn(stream, choice))
        assert answer and answer.strip(), (stream, choice, answer)
        out.append(answer)
print(json.dumps(out))
"#;
    let base_url = server().api_base();
    let tools = tools().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg("-c")
            .arg(script)
            .arg(base_url)
            .arg(DEMO_MODEL_ID)
            .arg(tools)
            .output()
            .expect("a Python with `openai` and `jsonschema` is needed (scripts/python-env.sh; SLUICE_PYTHON)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the SDK's tool round trip failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answers.len(), 4);
}
