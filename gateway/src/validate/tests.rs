//! Each bad input is refused with a 400 naming its parameter; good input
//! keeps its values.

use super::*;
use crate::openai::json::parse;
use crate::wire::ChatCompletionRequest;
use crate::wire::CompletionRequest;
use serde_json::json;
use serde_json::Value;
use sluice_models::ChatMessage;
use sluice_runtime::GrammarSpec;

fn chat_of(body: Value) -> Result<ValidRequest, ApiError> {
    let req: ChatCompletionRequest = parse(body.to_string().as_bytes())?;
    chat(req)
}

fn completion_of(body: Value) -> Result<ValidRequest, ApiError> {
    let req: CompletionRequest = parse(body.to_string().as_bytes())?;
    completion(req)
}

fn base() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

fn with(extra: Value) -> Value {
    let mut b = base();
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// The param a refused request names; panics if it was accepted or not a 400.
fn param(result: Result<ValidRequest, ApiError>) -> String {
    match result {
        Err(ApiError::InvalidRequest { param, .. }) => param.unwrap_or_default(),
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[test]
fn minimal_chat_gets_openai_defaults() {
    let v = chat_of(base()).unwrap();
    assert_eq!(v.model, "m");
    assert_eq!(v.job.n, 1);
    assert!(!v.stream);
    assert_eq!(v.job.sampling.temperature, 1.0);
    assert_eq!(v.job.sampling.top_p, 1.0);
    assert_eq!(v.job.sampling.max_tokens, None);
    assert_eq!(
        v.job.input,
        Input::Chat(vec![ChatMessage::text("user", "hi")])
    );
}

#[test]
fn out_of_range_numbers_name_their_param() {
    for (body, name) in [
        (json!({"temperature": 5}), "temperature"),
        (json!({"temperature": -0.1}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"top_p": 1.5}), "top_p"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": -5}), "max_tokens"),
        (
            json!({"max_completion_tokens": -1}),
            "max_completion_tokens",
        ),
        (json!({"n": 0}), "n"),
        (json!({"n": 1000}), "n"),
        (json!({"presence_penalty": 3}), "presence_penalty"),
        (json!({"frequency_penalty": -2.5}), "frequency_penalty"),
        (json!({"min_p": 2}), "min_p"),
        (json!({"repetition_penalty": 0}), "repetition_penalty"),
        (json!({"top_k": -2}), "top_k"),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (json!({"stop_token_ids": [-1]}), "stop_token_ids[0]"),
    ] {
        assert_eq!(param(chat_of(with(body.clone()))), name, "{body}");
    }
}

#[test]
fn wrong_types_name_their_param() {
    for (body, name) in [
        (json!({"temperature": "hot"}), "temperature"),
        (json!({"max_tokens": "ten"}), "max_tokens"),
        (json!({"max_tokens": 1.5}), "max_tokens"),
        (json!({"stream": "yes"}), "stream"),
        (json!({"messages": "hello"}), "messages"),
        (
            json!({"messages": [{"role": "user", "content": 7}]}),
            "messages[0].content",
        ),
        (json!({"stop": 3}), "stop"),
        (json!({"stop": ["a", 1]}), "stop[1]"),
        (json!({"model": 3}), "model"),
    ] {
        assert_eq!(param(chat_of(with(body.clone()))), name, "{body}");
    }
}

#[test]
fn empty_or_missing_messages_are_refused() {
    assert_eq!(param(chat_of(with(json!({"messages": []})))), "messages");
    assert_eq!(param(chat_of(json!({"model": "m"}))), "messages");
    assert_eq!(
        param(chat_of(
            json!({"messages": [{"role": "user", "content": "x"}]})
        )),
        "model"
    );
}

#[test]
fn unknown_role_is_refused_and_developer_is_system() {
    let body = with(json!({"messages": [{"role": "wizard", "content": "x"}]}));
    assert_eq!(param(chat_of(body)), "messages[0].role");
    let v = chat_of(with(json!({"messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": "x"}
    ]})))
    .unwrap();
    let Input::Chat(m) = v.job.input else {
        panic!()
    };
    assert_eq!(m[0].role, "system");
}

#[test]
fn text_parts_are_joined_and_images_refused() {
    let v = chat_of(with(json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}
    ]}]})))
    .unwrap();
    let Input::Chat(m) = v.job.input else {
        panic!()
    };
    assert_eq!(m[0].content, "a\nb");
    let body = with(json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}
    ]}]}));
    assert_eq!(param(chat_of(body)), "messages[0].content[0].type");
}

#[test]
fn unsupported_features_are_refused_by_name() {
    for (body, name) in [
        (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
        (json!({"tool_choice": "auto"}), "tool_choice"),
        (json!({"functions": []}), "functions"),
        (json!({"store": true}), "store"),
        (json!({"modalities": ["text", "audio"]}), "modalities"),
        (json!({"frobnicate": 1}), "frobnicate"),
        (
            json!({"messages": [{"role": "user", "content": "x", "name": "bob"}]}),
            "messages[0].name",
        ),
    ] {
        assert_eq!(param(chat_of(with(body.clone()))), name, "{body}");
    }
}

#[test]
fn harmless_fields_are_accepted() {
    let v = chat_of(with(json!({
        "response_format": {"type": "text"},
        "logit_bias": {},
        "store": false,
        "metadata": {"k": "v"},
        "parallel_tool_calls": true,
        "user": "u-1",
        "modalities": ["text"],
        "tools": null,
    })));
    assert!(v.is_ok(), "{v:?}");
}

#[test]
fn stop_accepts_string_or_up_to_four() {
    let v = chat_of(with(json!({"stop": "END"}))).unwrap();
    assert_eq!(v.job.sampling.stop_strings, ["END"]);
    let v = chat_of(with(json!({"stop": ["a", "b"]}))).unwrap();
    assert_eq!(v.job.sampling.stop_strings, ["a", "b"]);
    assert_eq!(
        param(chat_of(with(json!({"stop": ["a", "b", "c", "d", "e"]})))),
        "stop"
    );
    assert_eq!(param(chat_of(with(json!({"stop": [""]})))), "stop[0]");
}

#[test]
fn stream_options_need_stream() {
    assert_eq!(
        param(chat_of(with(
            json!({"stream_options": {"include_usage": true}})
        ))),
        "stream_options"
    );
    let v = chat_of(with(
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    ))
    .unwrap();
    assert!(v.stream && v.include_usage);
}

#[test]
fn max_completion_tokens_is_max_tokens() {
    let v = chat_of(with(json!({"max_completion_tokens": 7}))).unwrap();
    assert_eq!(v.job.sampling.max_tokens, Some(7));
    assert_eq!(
        param(chat_of(with(
            json!({"max_completion_tokens": 7, "max_tokens": 8})
        ))),
        "max_completion_tokens"
    );
}

#[test]
fn logprobs_default_to_zero_alternatives() {
    let v = chat_of(with(json!({"logprobs": true}))).unwrap();
    assert_eq!(v.job.sampling.logprobs, Some(0));
    let v = chat_of(with(json!({"logprobs": true, "top_logprobs": 3}))).unwrap();
    assert_eq!(v.job.sampling.logprobs, Some(3));
}

#[test]
fn seeds_are_derived_per_choice() {
    let v = chat_of(with(json!({"seed": 42, "n": 3}))).unwrap();
    let seeds: Vec<_> = (0..3)
        .map(|i| v.job.sampling.to_params(10, i).seed)
        .collect();
    assert_eq!(seeds, [Some(42), Some(43), Some(44)]);
    let v = chat_of(with(json!({"seed": -1}))).unwrap();
    assert_eq!(v.job.sampling.seed, Some(u64::MAX));
}

#[test]
fn tool_turns_are_read_with_their_calls_and_ids() {
    let body = with(json!({"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
        {"role": "tool", "content": "12C", "tool_call_id": "c1"},
    ]}));
    let v = chat_of(body).unwrap();
    let Input::Chat(m) = &v.job.input else {
        panic!("chat input expected")
    };
    assert_eq!(m[1].content, "");
    assert_eq!(m[1].tool_calls[0].name, "get_weather");
    assert_eq!(m[1].tool_calls[0].arguments, "{\"city\":\"Oslo\"}");
    assert_eq!(m[2].tool_call_id.as_deref(), Some("c1"));
}

#[test]
fn malformed_tool_turns_name_the_field() {
    for (messages, name) in [
        (
            json!([{"role": "tool", "content": "42"}]),
            "messages[0].tool_call_id",
        ),
        (
            json!([{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "x", "tool_call_id": "c1"}]),
            "messages[1].tool_call_id",
        ),
        (
            json!([{"role": "assistant", "content": "x", "tool_calls": [{"id": "c1"}]}]),
            "messages[0].tool_calls[0].type",
        ),
        (
            json!([{"role": "user", "content": "x", "tool_calls": []}]),
            "messages[0].tool_calls",
        ),
        (
            json!([{"role": "assistant", "content": null, "tool_calls": [{"id": "c1",
                "type": "function", "function": {"name": "f", "arguments": {}}}]}]),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json!([{"role": "assistant", "content": null}]),
            "messages[0].content",
        ),
        (
            json!([{"role": "user", "content": "x", "name": "bob"}]),
            "messages[0].name",
        ),
    ] {
        let body = with(json!({ "messages": messages }));
        assert_eq!(param(chat_of(body)), name, "{messages}");
    }
}

#[test]
fn completion_prompt_shapes() {
    let c = |p: Value| completion_of(json!({"model": "m", "prompt": p}));
    assert_eq!(
        c(json!("hi")).unwrap().job.input,
        Input::Text(vec!["hi".into()])
    );
    assert_eq!(
        c(json!(["a", "b"])).unwrap().job.input,
        Input::Text(vec!["a".into(), "b".into()])
    );
    assert_eq!(
        c(json!([1, 2, 3])).unwrap().job.input,
        Input::Tokens(vec![vec![1, 2, 3]])
    );
    assert_eq!(
        c(json!([[1], [2, 3]])).unwrap().job.input,
        Input::Tokens(vec![vec![1], vec![2, 3]])
    );
    assert_eq!(param(c(json!([]))), "prompt");
    assert_eq!(param(c(json!(["a", 1]))), "prompt[1]");
    assert_eq!(param(c(json!([1, -1]))), "prompt[1]");
    assert_eq!(param(c(json!([[1], []]))), "prompt[1]");
    assert_eq!(param(c(json!({"text": "x"}))), "prompt");
    assert_eq!(param(completion_of(json!({"model": "m"}))), "prompt");
}

#[test]
fn completion_refuses_echo_and_suffix() {
    let c = |extra: Value| {
        let mut b = json!({"model": "m", "prompt": "x"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        completion_of(b)
    };
    assert_eq!(param(c(json!({"echo": true}))), "echo");
    assert_eq!(param(c(json!({"suffix": "end"}))), "suffix");
    assert_eq!(param(c(json!({"best_of": 3}))), "best_of");
    assert_eq!(param(c(json!({"logprobs": 21}))), "logprobs");
    assert!(c(json!({"echo": false, "best_of": 1, "logprobs": 2})).is_ok());
}

#[test]
fn too_many_choices_are_refused() {
    let prompts: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    let r = completion_of(json!({"model": "m", "prompt": prompts, "n": 16}));
    assert_eq!(param(r), "n");
}

#[test]
fn response_format_becomes_a_grammar() {
    let sampling = |extra: Value| chat_of(with(extra)).unwrap().job.sampling;
    assert_eq!(
        sampling(json!({"response_format": {"type": "text"}})).constraint,
        None
    );
    let c = sampling(json!({"response_format": {"type": "json_object"}}))
        .constraint
        .unwrap();
    assert_eq!(c.spec, GrammarSpec::JsonObject);
    assert_eq!(c.param, "response_format");
    let c = sampling(json!({"response_format": {"type": "json_schema", "json_schema": {
        "name": "point", "strict": true,
        "schema": {"type": "object", "properties": {"y": {"type": "number"}, "x": {"type": "number"}}}
    }}}))
    .constraint
    .unwrap();
    let GrammarSpec::JsonSchema { schema, strict } = c.spec else {
        panic!("{:?}", c.spec)
    };
    assert!(strict);
    // Property order is the schema's own: it is the order the model writes.
    assert!(schema.find("\"y\"") < schema.find("\"x\""), "{schema}");
}

#[test]
fn malformed_response_formats_name_the_field_at_fault() {
    for (format, name) in [
        (json!({"type": "xml"}), "response_format"),
        (json!("json"), "response_format"),
        (
            json!({"type": "json_schema"}),
            "response_format.json_schema",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"schema": {}}}),
            "response_format.json_schema.name",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}),
            "response_format.json_schema.name",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "a", "schema": [1]}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "a", "strict": "yes"}}),
            "response_format.json_schema.strict",
        ),
    ] {
        let body = with(json!({ "response_format": format }));
        assert_eq!(param(chat_of(body)), name, "{format}");
    }
}

#[test]
fn completions_take_one_guided_grammar() {
    let prompt = |extra: Value| {
        let mut b = json!({"model": "m", "prompt": "p"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let spec = |extra: Value| {
        completion_of(prompt(extra))
            .unwrap()
            .job
            .sampling
            .constraint
    };
    assert_eq!(
        spec(json!({"guided_regex": "[0-9]+"})).unwrap().spec,
        GrammarSpec::Regex("[0-9]+".into())
    );
    assert_eq!(
        spec(json!({"guided_grammar": "start: \"a\""}))
            .unwrap()
            .param,
        "guided_grammar"
    );
    // A schema as an object or as JSON text is the same grammar.
    assert_eq!(
        spec(json!({"guided_json": {"type": "integer"}})),
        spec(json!({"guided_json": "{\"type\": \"integer\"}"}))
    );
    assert_eq!(
        spec(json!({"response_format": {"type": "json_object"}}))
            .unwrap()
            .spec,
        GrammarSpec::JsonObject
    );
    assert_eq!(
        param(completion_of(prompt(
            json!({"guided_regex": "a", "guided_json": {"type": "string"}})
        ))),
        "guided_regex"
    );
    assert_eq!(
        param(completion_of(prompt(json!({"guided_json": "{not json"})))),
        "guided_json"
    );
}

#[test]
fn logit_bias_is_parsed_sorted_and_bounded() {
    let bias =
        |b: Value| chat_of(with(json!({ "logit_bias": b }))).map(|v| v.job.sampling.logit_bias);
    assert_eq!(
        bias(json!({"50": 5, "7": -100})).unwrap(),
        vec![(7, -100.0), (50, 5.0)]
    );
    assert_eq!(bias(json!({})).unwrap(), vec![]);
    let refused = |b: Value| param(chat_of(with(json!({ "logit_bias": b }))));
    assert_eq!(refused(json!({"x": 1})), "logit_bias.x");
    assert_eq!(refused(json!({"5": 101})), "logit_bias.5");
    assert_eq!(refused(json!({"5": "1"})), "logit_bias.5");
    let params = chat_of(with(json!({"logit_bias": {"3": 2.5}})))
        .unwrap()
        .job
        .sampling
        .to_params(10, 0);
    assert_eq!(params.logit_bias, vec![(3, 2.5)]);
}

#[test]
fn max_cost_is_a_positive_number_on_chat_and_completions() {
    assert_eq!(chat_of(base()).unwrap().max_cost, None);
    assert_eq!(
        chat_of(with(json!({"max_cost": 0.25}))).unwrap().max_cost,
        Some(0.25)
    );
    assert_eq!(
        chat_of(with(json!({"max_cost": null}))).unwrap().max_cost,
        None
    );
    let prompt = json!({"model": "m", "prompt": "hi", "max_cost": 2});
    assert_eq!(completion_of(prompt).unwrap().max_cost, Some(2.0));
    for bad in [
        json!(-0.01),
        json!(0),
        json!("0.5"),
        json!("NaN"),
        json!([1]),
    ] {
        assert_eq!(
            param(chat_of(with(json!({"max_cost": bad.clone()})))),
            "max_cost",
            "{bad}"
        );
        let prompt = json!({"model": "m", "prompt": "hi", "max_cost": bad.clone()});
        assert_eq!(param(completion_of(prompt)), "max_cost", "{bad}");
    }
    // Still unknown: a misspelling is refused by name.
    assert_eq!(param(chat_of(with(json!({"max_costs": 1})))), "max_costs");
}
