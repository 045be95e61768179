//! Tools through the providers: each fake upstream answers with calls in its
//! own wire format (OpenAI's streamed argument pieces cut every five
//! characters, through escapes and Cyrillic; GigaChat's one
//! `function_call` with an object for arguments; YandexGPT's
//! `toolCallList`), and checks the tool turns sent back as the real API
//! would (a 400 for a `tool` turn that answers no call, a GigaChat
//! `function` turn without name or JSON, a Yandex result without name).
//! Then the real binary: capability routing (a deployment that cannot goes
//! unused, none that can is a 400 naming the parameter), cached calls
//! replayed identically, and the OpenAI Python SDK's tool round trip.

use std::process::Command;

use serde_json::{json, Value};
use sluice_gateway::answer::{collect, Step};
use sluice_gateway::providers::{build, ProviderError};
use sluice_gateway::validate::{FunctionSpec, ToolChoice, Tools};
use sluice_models::{ChatMessage, ToolCall};
use sluice_runtime::FinishReason;
use sluice_tests::fakes::{self, Fault, DEFAULT_REPLY};

use crate::common::{post, sse_events, Reply};
use crate::{
    gigachat_config, key_file, openai, request, start_server, steps, yandex_config, FOLDER,
    GIGACHAT_KEY, YANDEX_KEY,
};

/// Arguments that a cut every few characters splits inside an escape, a
/// two-byte character and a number.
const WEATHER_ARGS: &str = r#"{"city": "Санкт-Петербург", "note": "say \"hi\"\n", "days": 12345}"#;
const TIME_ARGS: &str = r#"{"tz": "Europe/Moscow"}"#;

fn tools(choice: ToolChoice) -> Tools {
    let function = |name: &str| FunctionSpec {
        name: name.into(),
        description: Some(format!("{name} for a place")),
        parameters: Some(json!({"type": "object", "properties": {"city": {"type": "string"}}})),
        strict: false,
    };
    Tools {
        functions: vec![function("get_weather"), function("get_time")],
        choice,
        parallel: true,
    }
}

/// Each call's (id, name, arguments), reassembled from the steps, after
/// checking OpenAI's framing: id and name on a call's first piece only.
fn calls_of(steps: &[Step]) -> Vec<(String, String, String)> {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for s in steps {
        if let Step::ToolCall {
            index,
            id,
            name,
            arguments,
            ..
        } = s
        {
            if *index == calls.len() {
                let (Some(id), Some(name)) = (id, name) else {
                    panic!("call {index} began without its id and name: {s:?}");
                };
                calls.push((id.clone(), name.clone(), String::new()));
            } else {
                assert!(id.is_none() && name.is_none(), "repeated header: {s:?}");
            }
            calls[*index].2.push_str(arguments);
        }
    }
    calls
}

fn finish_of(steps: &[Step]) -> Option<FinishReason> {
    steps.iter().find_map(|s| match s {
        Step::Finished { reason, .. } => Some(*reason),
        _ => None,
    })
}

fn same_json(a: &str, b: &str) -> bool {
    serde_json::from_str::<Value>(a).ok() == serde_json::from_str::<Value>(b).ok()
}

#[tokio::test]
async fn openai_calls_cut_anywhere_reassemble_whole_and_streamed() {
    let (fake, provider, _key) = openai().await;
    fake.control.set_tool_calls(Some(&[
        ("get_weather", WEATHER_ARGS),
        ("get_time", TIME_ARGS),
    ]));
    for stream in [true, false] {
        let mut req = request("gpt-fake", stream);
        req.tools = Some(tools(ToolChoice::Required));
        let mut answer = provider.chat(&req).await.unwrap();
        let steps = steps(answer.as_mut()).await;
        let calls = calls_of(&steps);
        assert_eq!(calls.len(), 2, "stream {stream}: {steps:?}");
        assert_eq!(calls[0].1, "get_weather");
        assert_eq!(calls[0].2, WEATHER_ARGS, "the text, byte for byte");
        assert_eq!(calls[1].1, "get_time");
        assert_eq!(calls[1].2, TIME_ARGS);
        assert!(calls[0].0.starts_with("call_fake0"));
        assert_eq!(finish_of(&steps), Some(FinishReason::ToolCalls));
        if stream {
            let pieces = steps
                .iter()
                .filter(|s| matches!(s, Step::ToolCall { .. }))
                .count();
            assert!(pieces > 10, "arguments arrive in pieces: {pieces}");
        }
        let body = fake.control.last_body().unwrap();
        assert_eq!(body["tool_choice"], "required");
        assert_eq!(body["tools"][1]["function"]["name"], "get_time");
        assert!(body.get("parallel_tool_calls").is_none());
    }
}

#[tokio::test]
async fn an_upstream_reset_inside_the_arguments_fails_after_the_pieces_sent() {
    let (fake, provider, _key) = openai().await;
    fake.control
        .set_tool_calls(Some(&[("get_weather", WEATHER_ARGS)]));
    fake.control.fail_next(1, Fault::ResetAfter { chunks: 3 });
    let mut req = request("gpt-fake", true);
    req.tools = Some(tools(ToolChoice::Auto));
    let mut answer = provider.chat(&req).await.unwrap();
    let steps = steps(answer.as_mut()).await;
    let calls = calls_of(&steps);
    assert_eq!(calls.len(), 1);
    assert!(WEATHER_ARGS.starts_with(&calls[0].2) && calls[0].2.len() < WEATHER_ARGS.len());
    assert!(matches!(steps.last(), Some(Step::Failed(_))), "{steps:?}");
    assert_eq!(finish_of(&steps), None);
}

#[tokio::test]
async fn gigachat_function_call_becomes_one_tool_call_whole_and_streamed() {
    let fake = fakes::gigachat::start(GIGACHAT_KEY).await;
    let key = key_file(GIGACHAT_KEY);
    let provider = build(&gigachat_config(&fake, &key, 60_000)).unwrap();
    fake.control().set_tool_calls(Some(&[
        ("get_weather", WEATHER_ARGS),
        ("get_time", TIME_ARGS),
    ]));
    for stream in [false, true] {
        let mut req = request("GigaChat", stream);
        req.tools = Some(tools(ToolChoice::Function("get_weather".into())));
        let mut answer = provider.chat(&req).await.unwrap();
        let steps = steps(answer.as_mut()).await;
        let calls = calls_of(&steps);
        assert_eq!(calls.len(), 1, "GigaChat makes one call: {steps:?}");
        assert!(calls[0].0.starts_with("call_") && calls[0].0.len() == 29);
        assert_eq!(calls[0].1, "get_weather");
        assert!(same_json(&calls[0].2, WEATHER_ARGS), "{}", calls[0].2);
        assert_eq!(finish_of(&steps), Some(FinishReason::ToolCalls));
        let body = fake.control().last_body().unwrap();
        assert_eq!(body["function_call"], json!({"name": "get_weather"}));
        assert_eq!(body["functions"][0]["name"], "get_weather");
    }
    let mut req = request("GigaChat", false);
    req.tools = Some(tools(ToolChoice::Required));
    let err = provider.chat(&req).await.err().unwrap();
    assert!(
        matches!(err, ProviderError::Unsupported { ref param, .. } if param == "tool_choice"),
        "{err:?}"
    );
}

#[tokio::test]
async fn yandex_tool_call_list_becomes_calls_whole_and_streamed() {
    let fake = fakes::yandex::start(YANDEX_KEY, FOLDER).await;
    let key = key_file(YANDEX_KEY);
    let provider = build(&yandex_config(&fake, &key)).unwrap();
    fake.control.set_tool_calls(Some(&[
        ("get_weather", WEATHER_ARGS),
        ("get_time", TIME_ARGS),
    ]));
    for stream in [false, true] {
        let mut req = request("yandexgpt/latest", stream);
        req.tools = Some(tools(ToolChoice::Required));
        let mut answer = provider.chat(&req).await.unwrap();
        let steps = steps(answer.as_mut()).await;
        let calls = calls_of(&steps);
        assert_eq!(calls.len(), 2, "{steps:?}");
        assert!(same_json(&calls[0].2, WEATHER_ARGS));
        assert!(same_json(&calls[1].2, TIME_ARGS));
        assert_ne!(calls[0].0, calls[1].0, "each call gets its own id");
        assert_eq!(finish_of(&steps), Some(FinishReason::ToolCalls));
        let body = fake.control.last_body().unwrap();
        assert_eq!(body["toolChoice"], json!({"mode": "REQUIRED"}));
        assert_eq!(body["parallelToolCalls"], true);
    }
}

/// The conversation after a call: every provider sends the assistant's
/// call and the tool's result in its own shapes (the fakes refuse wrong
/// ones with a 400), and the upstream answers with text.
#[tokio::test]
async fn tool_results_go_back_in_each_providers_own_turns() {
    let (ofake, openai, _okey) = openai().await;
    let gfake = fakes::gigachat::start(GIGACHAT_KEY).await;
    let gkey = key_file(GIGACHAT_KEY);
    let giga = build(&gigachat_config(&gfake, &gkey, 60_000)).unwrap();
    let yfake = fakes::yandex::start(YANDEX_KEY, FOLDER).await;
    let ykey = key_file(YANDEX_KEY);
    let yandex = build(&yandex_config(&yfake, &ykey)).unwrap();
    for control in [&ofake.control, gfake.control(), &yfake.control] {
        control.set_tool_calls(Some(&[("get_weather", WEATHER_ARGS)]));
    }
    let mut asked = ChatMessage::text("assistant", "");
    asked.tool_calls = vec![ToolCall {
        id: "call_abc".into(),
        name: "get_weather".into(),
        arguments: WEATHER_ARGS.into(),
    }];
    let mut result = ChatMessage::text("tool", "-3 C, snow");
    result.tool_call_id = Some("call_abc".into());
    for (provider, model) in [
        (&openai, "gpt-fake"),
        (&giga, "GigaChat"),
        (&yandex, "yandexgpt/latest"),
    ] {
        let mut req = request(model, false);
        req.messages.extend([asked.clone(), result.clone()]);
        req.tools = Some(tools(ToolChoice::Auto));
        let mut answer = provider.chat(&req).await.unwrap();
        let out = collect(answer.as_mut()).await.unwrap();
        assert_eq!(out[0].text, DEFAULT_REPLY, "{model}");
        assert!(out[0].tool_calls.is_empty());
        assert_eq!(out[0].finish_reason, Some(FinishReason::Stop));
    }
    let o = ofake.control.last_body().unwrap();
    assert_eq!(o["messages"][2]["tool_calls"][0]["id"], "call_abc");
    assert_eq!(o["messages"][3]["tool_call_id"], "call_abc");
    let g = gfake.control().last_body().unwrap();
    assert_eq!(g["messages"][3]["role"], "function");
    assert_eq!(g["messages"][3]["name"], "get_weather");
    let y = yfake.control.last_body().unwrap();
    assert_eq!(
        y["messages"][3]["toolResultList"]["toolResults"][0]["functionResult"]["name"],
        "get_weather"
    );

    // A result that answers no call: OpenAI's own 400 reaches us as one.
    let mut orphan = result.clone();
    orphan.tool_call_id = Some("call_nobody".into());
    let mut req = request("gpt-fake", false);
    req.messages.push(orphan);
    let err = openai.chat(&req).await.err().unwrap();
    assert!(
        matches!(err, ProviderError::Status { status: 400, .. }),
        "{err:?}"
    );
}

// ---- the real binary ----

fn providers_config(openai_url: &str, giga: &fakes::gigachat::GigaChatFake) -> String {
    format!(
        r#"
[cache]
enabled = true

[[providers]]
kind = "openai"
name = "oa"
base_url = "{openai_url}/v1"

[[providers]]
kind = "gigachat"
name = "giga"
base_url = "{}"
oauth_url = "{}"
auth_key_env = "FAKE_GIGACHAT_KEY"
scope = "GIGACHAT_API_PERS"

[[routes]]
model = "mixed"
[[routes.deployments]]
name = "mixed-giga"
provider = "giga"
upstream_model = "GigaChat"
priority = 0
[[routes.deployments]]
name = "mixed-openai"
provider = "oa"
upstream_model = "gpt-fake"
priority = 1

[[routes]]
model = "giga-only"
[[routes.deployments]]
name = "only-giga"
provider = "giga"
upstream_model = "GigaChat"

[[routes]]
model = "no-tools"
[[routes.deployments]]
name = "plain-openai"
provider = "oa"
upstream_model = "gpt-fake"
capabilities = []

[[routes]]
model = "tools"
[[routes.deployments]]
name = "tools-openai"
provider = "oa"
upstream_model = "gpt-fake"
"#,
        giga.server.base_url(),
        giga.oauth_url()
    )
}

fn tool_body(model: &str, choice: Value, stream: bool, question: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": choice,
        "temperature": 0,
        "stream": stream,
    })
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
}

/// The calls of a chat answer, whole or streamed, as (id, name, arguments),
/// and its finish reason; a streamed one is checked for OpenAI's framing.
fn wire_calls(reply: &Reply, stream: bool) -> (Vec<(String, String, String)>, String) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let triple = |c: &Value| {
        (
            c["id"].as_str().unwrap_or_default().to_string(),
            c["function"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            c["function"]["arguments"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    if !stream {
        let v = reply.json();
        let choice = &v["choices"][0];
        let calls = choice["message"]["tool_calls"]
            .as_array()
            .map(|a| a.iter().map(triple).collect())
            .unwrap_or_default();
        return (calls, choice["finish_reason"].as_str().unwrap_or("").into());
    }
    let events = sse_events(&reply.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = String::new();
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        let choice = &v["choices"][0];
        for d in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = d["index"].as_u64().unwrap() as usize;
            if index == calls.len() {
                assert_eq!(d["type"], "function", "{e}");
                calls.push(triple(d));
            } else {
                assert!(d.get("id").is_none(), "id repeated: {e}");
                calls[index]
                    .2
                    .push_str(d["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (calls, finish)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_only_to_deployments_that_can_serve_them_or_get_a_400_naming_the_parameter() {
    let ofake = fakes::openai::start(None).await;
    let gfake = fakes::gigachat::start(GIGACHAT_KEY).await;
    ofake
        .control
        .set_tool_calls(Some(&[("get_weather", WEATHER_ARGS)]));
    gfake
        .control()
        .set_tool_calls(Some(&[("get_weather", WEATHER_ARGS)]));
    let server = start_server(
        providers_config(&ofake.base_url(), &gfake),
        &[("FAKE_GIGACHAT_KEY", GIGACHAT_KEY)],
    )
    .await;

    // `required`: GigaChat (first by priority) cannot, so OpenAI answers.
    let reply = post(
        &server,
        "/v1/chat/completions",
        &tool_body("mixed", json!("required"), false, "Weather in Omsk?"),
    )
    .await;
    assert_eq!(
        header(&reply, "x-sluice-deployment"),
        "mixed-openai",
        "{}",
        reply.body
    );
    assert_eq!(wire_calls(&reply, false).1, "tool_calls");
    assert_eq!(
        (ofake.control.requests(), gfake.control().requests()),
        (1, 0)
    );

    // `auto`: GigaChat can, and is first.
    let reply = post(
        &server,
        "/v1/chat/completions",
        &tool_body("mixed", json!("auto"), false, "Weather in Tomsk?"),
    )
    .await;
    assert_eq!(
        header(&reply, "x-sluice-deployment"),
        "mixed-giga",
        "{}",
        reply.body
    );
    let (calls, finish) = wire_calls(&reply, false);
    assert_eq!((calls.len(), finish.as_str()), (1, "tool_calls"));
    assert_eq!(gfake.control().requests(), 1);

    // No deployment can: a 400 naming the parameter, and no upstream asked.
    let before = (ofake.control.requests(), gfake.control().requests());
    let reply = post(
        &server,
        "/v1/chat/completions",
        &tool_body("giga-only", json!("required"), false, "Weather?"),
    )
    .await;
    let err = reply.expect_error(400);
    assert_eq!(err["param"], "tool_choice");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("no deployment of model 'giga-only' supports 'tool_choice'"),
        "{message}"
    );
    let reply = post(
        &server,
        "/v1/chat/completions",
        &tool_body("no-tools", json!("auto"), true, "Weather?"),
    )
    .await;
    let err = reply.expect_error(400);
    assert_eq!(err["param"], "tools");
    assert_eq!(
        err["message"],
        "no deployment of model 'no-tools' supports 'tools'"
    );
    let mut formatted = json!({"model": "giga-only", "messages": [{"role": "user", "content": "JSON please"}],
        "response_format": {"type": "json_object"}});
    let err = post(&server, "/v1/chat/completions", &formatted)
        .await
        .expect_error(400);
    assert_eq!(err["param"], "response_format");
    // ...which the OpenAI route passes on.
    formatted["model"] = json!("tools");
    let reply = post(&server, "/v1/chat/completions", &formatted).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        ofake.control.last_body().unwrap()["response_format"],
        json!({"type": "json_object"})
    );
    assert_eq!(
        (ofake.control.requests(), gfake.control().requests()),
        (before.0 + 1, before.1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tool_call_answers_replay_identically_whole_and_streamed() {
    let ofake = fakes::openai::start(None).await;
    let gfake = fakes::gigachat::start(GIGACHAT_KEY).await;
    ofake.control.set_tool_calls(Some(&[
        ("get_weather", WEATHER_ARGS),
        ("get_weather", TIME_ARGS),
    ]));
    let server = start_server(
        providers_config(&ofake.base_url(), &gfake),
        &[("FAKE_GIGACHAT_KEY", GIGACHAT_KEY)],
    )
    .await;
    // Recorded whole, then streamed; and recorded streamed, then whole.
    for (question, first_stream) in [("Weather in Kazan?", false), ("Weather in Perm?", true)] {
        let before = ofake.control.requests();
        let first = post(
            &server,
            "/v1/chat/completions",
            &tool_body("tools", json!("auto"), first_stream, question),
        )
        .await;
        assert_eq!(header(&first, "x-sluice-cache"), "miss");
        let (recorded, finish) = wire_calls(&first, first_stream);
        assert_eq!(finish, "tool_calls");
        assert_eq!(recorded.len(), 2);
        assert_eq!(recorded[0].2, WEATHER_ARGS);
        for stream in [!first_stream, first_stream] {
            let hit = post(
                &server,
                "/v1/chat/completions",
                &tool_body("tools", json!("auto"), stream, question),
            )
            .await;
            assert_eq!(header(&hit, "x-sluice-cache"), "exact", "stream {stream}");
            assert_eq!(
                wire_calls(&hit, stream),
                (recorded.clone(), "tool_calls".to_string())
            );
        }
        assert_eq!(
            ofake.control.requests(),
            before + 1,
            "the hits never reached the upstream"
        );
    }
    // Other tools for the same question: not the cached calls.
    let mut other = tool_body("tools", json!("auto"), false, "Weather in Kazan?");
    other["tools"][0]["function"]["description"] = json!("Current weather by city name");
    let reply = post(&server, "/v1/chat/completions", &other).await;
    assert_eq!(header(&reply, "x-sluice-cache"), "miss");
}

fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_runs_a_tool_round_trip_through_a_provider() {
    let ofake = fakes::openai::start(None).await;
    let gfake = fakes::gigachat::start(GIGACHAT_KEY).await;
    ofake
        .control
        .set_tool_calls(Some(&[("get_weather", WEATHER_ARGS)]));
    let server = start_server(
        providers_config(&ofake.base_url(), &gfake),
        &[("FAKE_GIGACHAT_KEY", GIGACHAT_KEY)],
    )
    .await;
    let script = r#"
import json, sys
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="none")
tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
for stream in (False, True):
    messages = [{"role": "user", "content": "What is the weather in Saint Petersburg? (stream=%s)" % stream}]
    if stream:
        with client.chat.completions.stream(model="tools", messages=messages, tools=tools,
                                            tool_choice="required") as s:
            for event in s:
                pass
            final = s.get_final_completion()
        choice = final.choices[0]
    else:
        final = client.chat.completions.create(model="tools", messages=messages, tools=tools,
                                               tool_choice="required")
        choice = final.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert args["city"] == "Санкт-Петербург", args
    assert call.id.startswith("call_"), call
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
        for c in choice.message.tool_calls]})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"t": -3})})
    answer = client.chat.completions.create(model="tools", messages=messages, tools=tools)
    assert answer.choices[0].finish_reason == "stop", answer
    assert answer.choices[0].message.content, answer
    print(answer.choices[0].message.content)
"#;
    let base_url = server.api_base();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg("-c")
            .arg(script)
            .arg(base_url)
            .output()
            .expect("a Python with the `openai` package is needed (scripts/python-env.sh; SLUICE_PYTHON)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the SDK's tool round trip failed (needs the Python from scripts/python-env.sh in SLUICE_PYTHON):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.lines().count(), 2, "{printed}");
    // The conversation reached the upstream with the call and its result.
    let body = ofake.control.last_body().unwrap();
    assert_eq!(body["messages"][2]["role"], "tool");
    assert_eq!(
        body["messages"][1]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
}
