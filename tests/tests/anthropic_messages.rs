//! Anthropic's Messages API end to end, with the real binary: the
//! Anthropic Python SDK (`messages.create` streamed and not, the stream
//! helper, `count_tokens`, a tool-use round trip, its error classes)
//! against the demo model and against a fake OpenAI-compatible upstream
//! behind a route; raw HTTP for the SSE framing and the error shapes.
//! The key travels as `x-api-key`, as the SDK sends it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::OnceLock;

use common::{anthropic_events, http_client};
use serde_json::{json, Value};
use sluice_tests::fakes::{self, DEFAULT_REPLY};
use sluice_tests::{Server, ServerOptions, DEMO_MODEL_ID};

const KEY: &str = "sk-anthropic-e2e";

fn config(extra: &str) -> String {
    format!(
        r#"
[[auth.keys]]
tenant = "acme"
key_env = "ANTHROPIC_E2E_KEY"

[[models]]
id = "{DEMO_MODEL_ID}"
path = "{{DEMO_MODEL}}"
{extra}
"#
    )
}

fn start(config: String) -> Server {
    Server::start(ServerOptions {
        config: Some(config),
        env: vec![("ANTHROPIC_E2E_KEY".into(), KEY.into())],
        args: Vec::new(),
    })
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| start(config("")))
}

fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs a Python script with (base URL, key, model) as arguments; its
/// stdout's last line, as JSON.
fn run_python(script: &str, base_url: String, model: &str) -> Value {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(base_url)
        .arg(KEY)
        .arg(model)
        .output()
        .expect("a Python with `anthropic` is needed (scripts/python-env.sh; SLUICE_PYTHON)");
    assert!(
        out.status.success(),
        "the Anthropic SDK script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// A raw answer: status, content type, body.
struct Raw {
    status: u16,
    content_type: String,
    body: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts Anthropic's error shape with this status and error type;
    /// returns the message.
    fn expect_error(&self, status: u16, kind: &str) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(
            self.content_type.starts_with("application/json"),
            "{}",
            self.content_type
        );
        let v = self.json();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(v.get("error").unwrap().get("param").is_none(), "{v}");
        let message = v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!message.is_empty(), "{v}");
        message
    }
}

async fn post(server: &Server, path: &str, body: &str, headers: &[(&str, &str)]) -> Raw {
    let mut req = http_client()
        .post(format!("{}{path}", server.base_url()))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.unwrap();
    Raw {
        status: resp.status().as_u16(),
        content_type: resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: resp.text().await.unwrap(),
    }
}

async fn messages(server: &Server, body: &Value) -> Raw {
    post(
        server,
        "/v1/messages?beta=true",
        &body.to_string(),
        &[("x-api-key", KEY), ("anthropic-version", "2023-06-01")],
    )
    .await
}

fn ask(max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": DEMO_MODEL_ID,
        "max_tokens": max_tokens,
        "temperature": 0,
        "system": "You are a concise assistant.",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "stream": stream,
    })
}

#[tokio::test]
async fn a_message_streamed_and_not_says_the_same_in_anthropic_shapes() {
    let whole = messages(server(), &ask(12, false)).await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    let m = whole.json();
    assert!(m["id"].as_str().unwrap().starts_with("msg_"), "{m}");
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["model"], DEMO_MODEL_ID);
    assert_eq!(m["content"][0]["type"], "text");
    let text = m["content"][0]["text"].as_str().unwrap().to_string();
    assert!(!text.is_empty(), "{m}");
    assert!(
        ["end_turn", "max_tokens"].contains(&m["stop_reason"].as_str().unwrap()),
        "{m}"
    );
    assert_eq!(m["stop_sequence"], Value::Null);
    let usage = &m["usage"];
    let prompt = usage["input_tokens"].as_u64().unwrap()
        + usage["cache_read_input_tokens"].as_u64().unwrap();
    assert!(prompt > 10, "{usage}");
    assert_eq!(usage["cache_creation_input_tokens"], 0);
    assert!(usage["output_tokens"].as_u64().unwrap() <= 12);

    let streamed = messages(server(), &ask(12, true)).await;
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    assert!(streamed.content_type.starts_with("text/event-stream"));
    let events = anthropic_events(&streamed.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..2], ["message_start", "ping"], "{names:?}");
    assert_eq!(names[2], "content_block_start");
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert!(
        names[3..names.len() - 3]
            .iter()
            .all(|n| *n == "content_block_delta"),
        "{names:?}"
    );
    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(start["content"], json!([]));
    assert_eq!(
        events[2].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    let streamed_text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(streamed_text, text, "greedy: the same answer both ways");
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], m["stop_reason"]);
    assert_eq!(delta["usage"]["output_tokens"], usage["output_tokens"]);
    let streamed_prompt = delta["usage"]["input_tokens"].as_u64().unwrap()
        + delta["usage"]["cache_read_input_tokens"].as_u64().unwrap();
    assert_eq!(streamed_prompt, prompt);
}

#[tokio::test]
async fn bad_requests_get_anthropic_error_objects_with_the_right_status() {
    let s = server();
    let no_max = json!({"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": "x"}]});
    let msg = messages(s, &no_max)
        .await
        .expect_error(400, "invalid_request_error");
    assert!(msg.contains("max_tokens"), "{msg}");

    let image = json!({"model": DEMO_MODEL_ID, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]});
    let msg = messages(s, &image)
        .await
        .expect_error(400, "invalid_request_error");
    assert!(msg.contains("image"), "{msg}");

    let unknown = json!({"model": DEMO_MODEL_ID, "max_tokens": 5, "n": 2,
                         "messages": [{"role": "user", "content": "x"}]});
    let msg = messages(s, &unknown)
        .await
        .expect_error(400, "invalid_request_error");
    assert!(msg.contains("n: Extra inputs are not permitted"), "{msg}");

    let malformed = post(s, "/v1/messages", "{\"model\": ", &[("x-api-key", KEY)]).await;
    malformed.expect_error(400, "invalid_request_error");

    let no_model = json!({"model": "claude-nowhere", "max_tokens": 5,
                          "messages": [{"role": "user", "content": "x"}]});
    let msg = messages(s, &no_model)
        .await
        .expect_error(404, "not_found_error");
    assert!(msg.contains("claude-nowhere"), "{msg}");

    let body = ask(5, false).to_string();
    post(s, "/v1/messages", &body, &[("x-api-key", "sk-wrong")])
        .await
        .expect_error(401, "authentication_error");
    post(s, "/v1/messages", &body, &[])
        .await
        .expect_error(401, "authentication_error");
    // `Authorization: Bearer` works here too, and `x-api-key` on the OpenAI routes.
    let bearer = format!("Bearer {KEY}");
    assert_eq!(
        post(s, "/v1/messages", &body, &[("authorization", &bearer)])
            .await
            .status,
        200
    );
    let chat = json!({"model": DEMO_MODEL_ID, "max_tokens": 2,
                      "messages": [{"role": "user", "content": "x"}]});
    let reply = post(
        s,
        "/v1/chat/completions",
        &chat.to_string(),
        &[("x-api-key", KEY)],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let count = post(
        s,
        "/v1/messages/count_tokens",
        &json!({"model": DEMO_MODEL_ID, "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}]})
        .to_string(),
        &[("x-api-key", KEY)],
    )
    .await;
    count.expect_error(400, "invalid_request_error");
}

#[tokio::test]
async fn the_anthropic_sdk_works_unchanged_against_the_demo_model() {
    let script = r#"
import json, sys
import anthropic

base, key, model = sys.argv[1:4]
client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
greedy = {"temperature": 0}
system = "You are a concise assistant."
question = [{"role": "user", "content": "What is the capital of France?"}]

m = client.messages.create(model=model, max_tokens=16, system=system, messages=question,
                           extra_body=greedy)
assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_"), m
assert m.content[0].type == "text" and m.content[0].text.strip(), m
assert m.stop_reason in ("end_turn", "max_tokens"), m
prompt = m.usage.input_tokens + m.usage.cache_read_input_tokens

with client.messages.stream(model=model, max_tokens=16, system=system, messages=question,
                            extra_body=greedy) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
assert text == m.content[0].text, (text, m.content[0].text)
assert final.content[0].text == text and final.stop_reason == m.stop_reason, final
assert final.usage.output_tokens == m.usage.output_tokens, final.usage
assert final.usage.input_tokens + final.usage.cache_read_input_tokens == prompt, final.usage

kinds = [e.type for e in client.messages.create(model=model, max_tokens=4, system=system,
                                                 messages=question, stream=True, extra_body=greedy)]
assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds

counted = client.messages.count_tokens(model=model, system=system, messages=question)
assert counted.input_tokens == prompt, (counted, prompt)

short = client.messages.create(model=model, max_tokens=2, system=system, messages=question,
                               extra_body=greedy)
assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 2, short

# A second turn of the same user's conversation reuses the first's KV blocks.
meta = {"user_id": "user-42"}
first = client.messages.create(model=model, max_tokens=24, system=system, messages=question,
                               metadata=meta, extra_body=greedy)
turn2 = question + [{"role": "assistant", "content": first.content[0].text},
                    {"role": "user", "content": "And of Italy?"}]
second = client.messages.create(model=model, max_tokens=8, system=system, messages=turn2,
                                metadata=meta, extra_body=greedy)
assert second.usage.cache_read_input_tokens > 0, second.usage

errors = []
try:
    client.messages.create(model="claude-nowhere", max_tokens=4, messages=question)
except anthropic.NotFoundError as e:
    errors.append(e.body["error"]["type"])
try:
    client.messages.create(model=model, max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}])
except anthropic.BadRequestError as e:
    errors.append(e.body["error"]["type"])
try:
    anthropic.Anthropic(base_url=base, api_key="sk-wrong", max_retries=0).messages.create(
        model=model, max_tokens=4, messages=question)
except anthropic.AuthenticationError as e:
    errors.append(e.body["error"]["type"])
assert errors == ["not_found_error", "invalid_request_error", "authentication_error"], errors
print(json.dumps({"text": m.content[0].text, "prompt": prompt, "count": counted.input_tokens,
                  "cache_read": second.usage.cache_read_input_tokens}))
"#;
    let base = server().base_url();
    let out = tokio::task::spawn_blocking(move || run_python(script, base, DEMO_MODEL_ID))
        .await
        .unwrap();
    assert!(out["cache_read"].as_u64().unwrap() > 0, "{out}");
    assert_eq!(out["prompt"], out["count"]);
}

/// A stop sequence cut from the model's own greedy answer ends the answer
/// there, and the SDK sees `stop_reason == "stop_sequence"` and the string
/// (whole, streamed through the helper, and in the raw `message_delta`).
#[tokio::test]
async fn a_stop_sequence_from_the_greedy_answer_is_reported_streamed_and_not() {
    let script = r#"
import json, sys
import anthropic

base, key, model = sys.argv[1:4]
client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
greedy = {"temperature": 0}
system = "You are a concise assistant."
question = [{"role": "user", "content": "Tell me about Paris, the capital of France."}]

full = client.messages.create(model=model, max_tokens=40, system=system, messages=question,
                              extra_body=greedy)
text = full.content[0].text
assert len(text) > 20, full
# Four characters from the middle of the answer: most likely spread over
# more than one token, and not at its start.
at = len(text) // 2
stop = text[at:at + 4]
expected = text[:text.find(stop)]
sequences = ["\u0001never", stop]

m = client.messages.create(model=model, max_tokens=40, system=system, messages=question,
                           stop_sequences=sequences, extra_body=greedy)
assert m.stop_reason == "stop_sequence", m
assert m.stop_sequence == stop, (m.stop_sequence, stop)
got = m.content[0].text if m.content else ""
assert got == expected, (got, expected)

with client.messages.stream(model=model, max_tokens=40, system=system, messages=question,
                            stop_sequences=sequences, extra_body=greedy) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
assert streamed == expected, (streamed, expected)
assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop, final

deltas = [e for e in client.messages.create(model=model, max_tokens=40, system=system,
                                             messages=question, stop_sequences=sequences,
                                             stream=True, extra_body=greedy)
          if e.type == "message_delta"]
assert len(deltas) == 1, deltas
assert deltas[0].delta.stop_reason == "stop_sequence", deltas
assert deltas[0].delta.stop_sequence == stop, deltas

# Without stop sequences the same answer ends as before, with no string.
assert full.stop_sequence is None and full.stop_reason in ("end_turn", "max_tokens"), full
print(json.dumps({"stop": stop, "text": got, "reason": m.stop_reason}))
"#;
    let base = server().base_url();
    let out = tokio::task::spawn_blocking(move || run_python(script, base, DEMO_MODEL_ID))
        .await
        .unwrap();
    assert_eq!(out["reason"], "stop_sequence", "{out}");
}

#[tokio::test]
async fn the_sdk_does_a_tool_use_round_trip_streamed_and_not() {
    let script = r#"
import json, sys
import anthropic

base, key, model = sys.argv[1:4]
client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
greedy = {"temperature": 0}
tools = [{"name": "get_weather", "description": "The current weather in a city",
          "input_schema": {"type": "object",
                           "properties": {"city": {"type": "string", "maxLength": 30}},
                           "required": ["city"], "additionalProperties": False}}]
question = [{"role": "user", "content": "What is the weather in Paris today?"}]
out = []
for stream in (False, True):
    kwargs = dict(model=model, max_tokens=60, tools=tools,
                  tool_choice={"type": "tool", "name": "get_weather"},
                  messages=question, extra_body=greedy)
    if stream:
        with client.messages.stream(**kwargs) as s:
            r = s.get_final_message()
    else:
        r = client.messages.create(**kwargs)
    assert r.stop_reason == "tool_use", r
    calls = [b for b in r.content if b.type == "tool_use"]
    assert calls and calls[0].name == "get_weather", r
    assert isinstance(calls[0].input, dict) and isinstance(calls[0].input.get("city"), str), calls
    messages = question + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in r.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id,
                                      "content": "18 degrees and sunny"}]},
    ]
    answer = client.messages.create(model=model, max_tokens=40, tools=tools,
                                    tool_choice={"type": "none"}, messages=messages,
                                    extra_body=greedy)
    assert answer.stop_reason in ("end_turn", "max_tokens"), answer
    assert answer.content[0].type == "text" and answer.content[0].text.strip(), answer
    out.append({"id": calls[0].id, "input": calls[0].input})
counted = client.messages.count_tokens(model=model, tools=tools, messages=question)
plain = client.messages.count_tokens(model=model, messages=question)
assert counted.input_tokens > plain.input_tokens, (counted, plain)
print(json.dumps(out))
"#;
    let base = server().base_url();
    let out = tokio::task::spawn_blocking(move || run_python(script, base, DEMO_MODEL_ID))
        .await
        .unwrap();
    assert_eq!(out.as_array().unwrap().len(), 2, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_route_to_an_openai_compatible_upstream() {
    let fake = fakes::openai::start(None).await;
    let config = config(&format!(
        r#"
[[providers]]
kind = "openai"
name = "cloud"
base_url = "{}/v1"

[[routes]]
model = "claude-via-cloud"
[[routes.deployments]]
name = "cloud-a"
provider = "cloud"
upstream_model = "up-model"
"#,
        fake.base_url()
    ));
    let server = tokio::task::spawn_blocking(move || start(config))
        .await
        .unwrap();
    let body = json!({
        "model": "claude-via-cloud",
        "max_tokens": 32,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": "Hello"}],
        "stop_sequences": ["END"],
    });
    let reply = messages(&server, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let m = reply.json();
    assert_eq!(m["content"][0]["text"], DEFAULT_REPLY);
    assert_eq!(m["model"], "claude-via-cloud");
    assert_eq!(m["stop_reason"], "end_turn");
    // The upstream got the request in its own (OpenAI) shape.
    let sent = fake.control.last_body().unwrap();
    assert_eq!(sent["model"], "up-model");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(sent["messages"][1]["content"], "Hello");
    assert_eq!(sent["stop"], json!(["END"]));

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let reply = messages(&server, &streamed).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let text: String = anthropic_events(&reply.body)
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, DEFAULT_REPLY);

    // An upstream that names the stop string that matched (vLLM's
    // `stop_reason`, as the fake does) gives `stop_sequence` and the string.
    let mut stopped = body.clone();
    stopped["stop_sequences"] = json!(["END", "nice"]);
    let reply = messages(&server, &stopped).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let m = reply.json();
    assert_eq!(
        m["content"][0]["text"], "Hello from the fake upstream, ",
        "{m}"
    );
    assert_eq!(m["stop_reason"], "stop_sequence", "{m}");
    assert_eq!(m["stop_sequence"], "nice", "{m}");
    stopped["stream"] = json!(true);
    let reply = messages(&server, &stopped).await;
    let stopped_events = anthropic_events(&reply.body);
    let delta = stopped_events
        .iter()
        .find(|(n, _)| n == "message_delta")
        .unwrap();
    assert_eq!(
        delta.1["delta"]["stop_reason"], "stop_sequence",
        "{}",
        reply.body
    );
    assert_eq!(delta.1["delta"]["stop_sequence"], "nice", "{}", reply.body);

    // The upstream's tool calls come back as tool_use blocks, streamed as
    // input_json_delta pieces that add up to the arguments.
    fake.control
        .set_tool_calls(Some(&[("get_weather", r#"{"city": "Paris"}"#)]));
    let mut with_tools = body.clone();
    with_tools["tools"] = json!([{"name": "get_weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let reply = messages(&server, &with_tools).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let m = reply.json();
    assert_eq!(m["stop_reason"], "tool_use", "{m}");
    let call = m["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap_or_else(|| panic!("{m}"));
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["input"], json!({"city": "Paris"}));
    let sent = fake.control.last_body().unwrap();
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");

    with_tools["stream"] = json!(true);
    let reply = messages(&server, &with_tools).await;
    let events = anthropic_events(&reply.body);
    let start = events
        .iter()
        .find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .unwrap_or_else(|| panic!("{}", reply.body));
    assert_eq!(start.1["content_block"]["name"], "get_weather");
    let index = start.1["index"].clone();
    let arguments: String = events
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && d["index"] == index)
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Paris"})
    );
    let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");

    // A count needs a local tokenizer: this route has none.
    let count = post(
        &server,
        "/v1/messages/count_tokens",
        &json!({"model": "claude-via-cloud", "messages": [{"role": "user", "content": "x"}]})
            .to_string(),
        &[("x-api-key", KEY)],
    )
    .await;
    let msg = count.expect_error(400, "invalid_request_error");
    assert!(msg.contains("tokenizer"), "{msg}");
}
