use serde_json::json;

use super::*;
use crate::validate::ToolChoice;

fn call(body: Value, endpoint: Endpoint) -> Result<ValidRequest, ApiError> {
    let request: MessagesRequest = serde_json::from_value(body).unwrap();
    MessagesCall {
        request,
        tenant: "acme".into(),
        endpoint,
    }
    .validate()
}

fn create(body: Value) -> Result<ValidRequest, ApiError> {
    call(body, Endpoint::Create)
}

fn message_of(err: ApiError) -> String {
    assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{err:?}");
    err.to_string()
}

fn chat(req: &ValidRequest) -> &[ChatMessage] {
    match &req.job.input {
        Input::Chat(m) => m,
        other => panic!("not chat: {other:?}"),
    }
}

#[test]
fn system_blocks_and_turns_become_chat_messages() {
    let req = create(json!({
        "model": "m",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "Be brief."},
                   {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
            {"role": "user", "content": [{"type": "text", "text": "Again"}]}
        ],
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.5,
        "top_k": 5
    }))
    .unwrap();
    let roles: Vec<(&str, &str)> = chat(&req)
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        roles,
        [
            ("system", "Be brief.\nBe kind."),
            ("user", "Hi"),
            ("assistant", "Hello."),
            ("user", "Again")
        ]
    );
    assert_eq!(req.job.sampling.max_tokens, Some(64));
    assert_eq!(req.job.sampling.stop_strings, ["\n\nHuman:"]);
    assert_eq!(req.job.sampling.top_k, 5);
    assert!((req.job.sampling.temperature - 0.5).abs() < 1e-6);
    assert!(!req.stream);
    // No user id: no session.
    assert_eq!(req.job.session, None);
}

#[test]
fn a_tool_round_trip_maps_onto_tool_calls_and_tool_turns() {
    let req = create(json!({
        "model": "m",
        "max_tokens": 64,
        "tools": [{"name": "get_weather", "description": "Weather in a city",
                   "input_schema": {"type": "object",
                                    "properties": {"city": {"type": "string"}},
                                    "required": ["city"]}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1",
                 "content": [{"type": "text", "text": "18C, sunny"}]},
                {"type": "text", "text": "Thanks"}]}
        ]
    }))
    .unwrap();
    let m = chat(&req);
    assert_eq!(m[1].role, "assistant");
    assert_eq!(m[1].content, "Let me look.");
    assert_eq!(m[1].tool_calls.len(), 1);
    assert_eq!(m[1].tool_calls[0].id, "toolu_1");
    assert_eq!(m[1].tool_calls[0].name, "get_weather");
    let args: Value = serde_json::from_str(&m[1].tool_calls[0].arguments).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(m[2].role, "tool");
    assert_eq!(m[2].tool_call_id.as_deref(), Some("toolu_1"));
    assert_eq!(m[2].content, "18C, sunny");
    assert_eq!(
        (m[3].role.as_str(), m[3].content.as_str()),
        ("user", "Thanks")
    );
    let tools = req.job.tools.as_ref().unwrap();
    assert_eq!(tools.functions[0].name, "get_weather");
    assert!(tools.functions[0].parameters.is_some());
    assert_eq!(tools.choice, ToolChoice::Required);
    assert!(!tools.parallel);
}

#[test]
fn tool_choice_tool_names_one_function_and_none_shows_none() {
    let base = |choice: Value| {
        create(json!({
            "model": "m", "max_tokens": 8,
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": choice,
            "messages": [{"role": "user", "content": "x"}]
        }))
    };
    let named = base(json!({"type": "tool", "name": "f"})).unwrap();
    assert_eq!(
        named.job.tools.unwrap().choice,
        ToolChoice::Function("f".into())
    );
    let none = base(json!({"type": "none"})).unwrap();
    assert_eq!(none.job.tools.unwrap().choice, ToolChoice::None);
    let auto = base(json!({"type": "auto"})).unwrap();
    assert_eq!(auto.job.tools.unwrap().choice, ToolChoice::Auto);
    assert!(message_of(base(json!({"type": "tool"})).unwrap_err()).contains("tool_choice.name"));
    assert!(message_of(base(json!({"type": "tool", "name": "g"})).unwrap_err()).contains("'g'"));
}

#[test]
fn bad_requests_get_a_400_that_names_the_field() {
    let cases = [
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens",
        ),
        (
            json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens",
        ),
        (json!({"model": "m", "max_tokens": 8}), "messages"),
        (
            json!({"model": "m", "max_tokens": 8, "messages": []}),
            "messages",
        ),
        (
            json!({"model": "m", "max_tokens": 8, "frequency_penalty": 1,
                "messages": [{"role": "user", "content": "x"}]}),
            "frequency_penalty",
        ),
        (
            json!({"model": "m", "max_tokens": 8, "temperature": 1.5,
                "messages": [{"role": "user", "content": "x"}]}),
            "temperature",
        ),
        (
            json!({"model": "m", "max_tokens": 8,
                "messages": [{"role": "system", "content": "x"}]}),
            "messages.0.role",
        ),
        (
            json!({"model": "m", "max_tokens": 8,
                "messages": [{"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}]}]}),
            "image",
        ),
        (
            json!({"model": "m", "max_tokens": 8,
                "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "The answer is"}]}),
            "prefill",
        ),
        (
            json!({"model": "m", "max_tokens": 8, "thinking": {"type": "enabled", "budget_tokens": 1024},
                "messages": [{"role": "user", "content": "x"}]}),
            "thinking",
        ),
        (
            json!({"model": "m", "max_tokens": 8, "metadata": {"session": "s"},
                "messages": [{"role": "user", "content": "x"}]}),
            "metadata.session",
        ),
        (
            json!({"model": "m", "max_tokens": 8, "stop_sequences": "STOP",
                "messages": [{"role": "user", "content": "x"}]}),
            "stop_sequences",
        ),
        (
            json!({"model": "m", "max_tokens": 8,
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
                "messages": [{"role": "user", "content": "x"}]}),
            "tools.0",
        ),
        (
            json!({"model": "m", "max_tokens": 8,
                "tools": [{"name": "f"}],
                "messages": [{"role": "user", "content": "x"}]}),
            "input_schema",
        ),
        (
            json!({"model": "m", "max_tokens": 8,
                "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}]}]}),
            "tool_use",
        ),
    ];
    for (body, needle) in cases {
        let shown = body.to_string();
        let err = create(body).expect_err(&shown);
        assert!(err.status().is_client_error(), "{shown}: {err:?}");
        let message = err.to_string();
        assert!(message.contains(needle), "{shown}: {message}");
    }
}

#[test]
fn count_tokens_takes_no_max_tokens() {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    let req = call(body.clone(), Endpoint::CountTokens).unwrap();
    assert_eq!(req.job.sampling.max_tokens, None);
    let mut with = body;
    with["max_tokens"] = json!(5);
    assert!(message_of(call(with, Endpoint::CountTokens).unwrap_err()).contains("max_tokens"));
}

#[test]
fn max_cost_is_a_positive_number_carried_to_the_request_and_refused_by_count_tokens() {
    let body = |max_cost: Value| {
        json!({"model": "m", "max_tokens": 8, "max_cost": max_cost,
               "messages": [{"role": "user", "content": "x"}]})
    };
    assert_eq!(create(body(json!(0.25))).unwrap().max_cost, Some(0.25));
    assert_eq!(create(body(Value::Null)).unwrap().max_cost, None);
    for bad in [json!(-1), json!(0), json!("0.1"), json!([0.1])] {
        let err = create(body(bad.clone())).unwrap_err();
        assert!(
            matches!(&err, ApiError::InvalidRequest { param: Some(p), .. } if p == "max_cost"),
            "{bad}: {err:?}"
        );
    }
    let mut counting = body(json!(0.25));
    counting.as_object_mut().unwrap().remove("max_tokens");
    let err = call(counting, Endpoint::CountTokens).unwrap_err();
    assert!(message_of(err).contains("max_cost"));
}

#[test]
fn a_user_id_names_a_session_per_tenant_user_and_system_prompt() {
    let session = |user: &str, system: &str, tenant: &str| {
        let request: MessagesRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 8, "system": system,
            "metadata": {"user_id": user},
            "messages": [{"role": "user", "content": "x"}]
        }))
        .unwrap();
        MessagesCall {
            request,
            tenant: tenant.into(),
            endpoint: Endpoint::Create,
        }
        .validate()
        .unwrap()
        .job
        .session
        .unwrap()
    };
    let a = session("u1", "You are a coder.", "acme");
    assert_eq!(a, session("u1", "You are a coder.", "acme"));
    assert_ne!(a, session("u2", "You are a coder.", "acme"));
    assert_ne!(a, session("u1", "You are a poet.", "acme"));
    assert_ne!(a, session("u1", "You are a coder.", "other"));
    let req = create(
        json!({"model": "m", "max_tokens": 8, "metadata": {"user_id": "u1"},
                            "messages": [{"role": "user", "content": "x"}]}),
    )
    .unwrap();
    assert_eq!(req.user.as_deref(), Some("u1"));
}
