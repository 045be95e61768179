//! YandexGPT's wire mapping: cumulative text, statuses, tool calls.
use super::*;
use crate::answer::Step;

fn line(text: &str, status: &str) -> String {
    serde_json::json!({"result": {"alternatives": [{"message": {"role": "assistant", "text": text}, "status": status}],
        "usage": {"inputTextTokens": "7", "completionTokens": "3", "totalTokens": "10"}, "modelVersion": "23.10.2024"}})
    .to_string()
}

fn tokens(d: &mut Decoded) -> Vec<String> {
    d.steps
        .drain(..)
        .filter_map(|s| match s {
            Step::Token { text, .. } => Some(text),
            _ => None,
        })
        .collect()
}

#[test]
fn cumulative_text_becomes_deltas() {
    let mut dec = CumulativeDecoder::new(1);
    let mut out = Decoded::new(1);
    dec.decode(&line("При", "ALTERNATIVE_STATUS_PARTIAL"), &mut out)
        .unwrap();
    dec.decode(&line("Привет", "ALTERNATIVE_STATUS_PARTIAL"), &mut out)
        .unwrap();
    dec.decode(&line("Привет, мир", "ALTERNATIVE_STATUS_FINAL"), &mut out)
        .unwrap();
    assert!(out.all_finished());
    assert_eq!(out.usage.prompt_tokens, 7);
    assert_eq!(out.usage.completion_tokens, 3);
    assert_eq!(tokens(&mut out), vec!["При", "вет", ", мир"]);
}

#[test]
fn a_rewritten_prefix_emits_nothing_and_resynchronises() {
    let mut dec = CumulativeDecoder::new(1);
    let mut out = Decoded::new(1);
    dec.decode(&line("Hello wor", "ALTERNATIVE_STATUS_PARTIAL"), &mut out)
        .unwrap();
    dec.decode(
        &line("Hello, world", "ALTERNATIVE_STATUS_PARTIAL"),
        &mut out,
    )
    .unwrap();
    dec.decode(
        &line("Hello, world!", "ALTERNATIVE_STATUS_TRUNCATED_FINAL"),
        &mut out,
    )
    .unwrap();
    let steps: Vec<_> = out.steps.iter().map(|s| format!("{s:?}")).collect();
    assert!(steps.last().unwrap().contains("Length"), "{steps:?}");
    assert_eq!(tokens(&mut out), vec!["Hello wor", "!"]);
}

#[test]
fn content_filter_status_finishes_as_content_filter() {
    let mut dec = CumulativeDecoder::new(1);
    let mut out = Decoded::new(1);
    dec.decode(&line("Я не", "ALTERNATIVE_STATUS_PARTIAL"), &mut out)
        .unwrap();
    dec.decode(&line("", "ALTERNATIVE_STATUS_CONTENT_FILTER"), &mut out)
        .unwrap();
    assert!(out.all_finished());
    assert!(out.steps.iter().any(|s| matches!(
        s,
        Step::Finished {
            reason: FinishReason::ContentFilter,
            ..
        }
    )));
}

#[test]
fn a_tool_call_list_becomes_calls_once_with_made_up_ids() {
    let mut dec = CumulativeDecoder::new(1);
    let mut out = Decoded::new(1);
    let calls = serde_json::json!({"result": {"alternatives": [{"message": {"role": "assistant",
        "toolCallList": {"toolCalls": [
            {"functionCall": {"name": "weatherTool", "arguments": {"city": "Санкт-Петербург"}}},
            {"functionCall": {"name": "timeTool", "arguments": {}}}]}},
        "status": "ALTERNATIVE_STATUS_TOOL_CALLS"}]}});
    // The same list twice, as a cumulative stream repeats it.
    dec.decode(&calls.to_string(), &mut out).unwrap();
    dec.decode(&calls.to_string(), &mut out).unwrap();
    let steps: Vec<Step> = out.steps.drain(..).collect();
    let made: Vec<(usize, String, String)> = steps
        .iter()
        .filter_map(|s| match s {
            Step::ToolCall {
                index,
                id: Some(id),
                name: Some(name),
                arguments,
                ..
            } => {
                assert!(id.starts_with("call_"));
                Some((*index, name.clone(), arguments.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        made,
        vec![
            (
                0,
                "weatherTool".to_string(),
                r#"{"city":"Санкт-Петербург"}"#.to_string()
            ),
            (1, "timeTool".to_string(), "{}".to_string())
        ]
    );
    assert!(matches!(
        steps.last(),
        Some(Step::Finished {
            reason: FinishReason::ToolCalls,
            ..
        })
    ));
}

#[test]
fn tools_and_tool_turns_take_yandex_shapes() {
    use crate::validate::FunctionSpec;
    use sluice_models::{ChatMessage, ToolCall};
    let mut asked = ChatMessage::text("assistant", "");
    asked.tool_calls = vec![
        ToolCall {
            id: "call_a".into(),
            name: "weatherTool".into(),
            arguments: r#"{"city":"Omsk"}"#.into(),
        },
        ToolCall {
            id: "call_b".into(),
            name: "timeTool".into(),
            arguments: "{}".into(),
        },
    ];
    let result = |id: &str, text: &str| {
        let mut m = ChatMessage::text("tool", text);
        m.tool_call_id = Some(id.into());
        m
    };
    let req = ProviderRequest {
        upstream_model: "yandexgpt/latest".into(),
        messages: vec![
            ChatMessage::text("user", "Weather and time?"),
            asked,
            result("call_a", "-5"),
            result("call_b", "12:00"),
        ],
        sampling: Sampling {
            temperature: 0.3,
            ..crate::providers::neutral_sampling()
        },
        n: 1,
        stream: false,
        tools: Some(Tools {
            functions: vec![FunctionSpec {
                name: "weatherTool".into(),
                description: None,
                parameters: None,
                strict: true,
            }],
            choice: ToolChoice::Required,
            parallel: false,
        }),
        traceparent: None,
    };
    let body =
        serde_json::to_value(CompletionBody::new(&req, "gpt://f/yandexgpt/latest".into()).unwrap())
            .unwrap();
    assert_eq!(body["toolChoice"], serde_json::json!({"mode": "REQUIRED"}));
    assert_eq!(body["parallelToolCalls"], false);
    assert_eq!(body["tools"][0]["function"]["strict"], true);
    let m = &body["messages"];
    assert_eq!(m.as_array().unwrap().len(), 3);
    assert_eq!(
        m[1]["toolCallList"]["toolCalls"][0]["functionCall"]["arguments"]["city"],
        "Omsk"
    );
    let results = &m[2]["toolResultList"]["toolResults"];
    assert_eq!(results[0]["functionResult"]["name"], "weatherTool");
    assert_eq!(
        results[1]["functionResult"],
        serde_json::json!({"name": "timeTool", "content": "12:00"})
    );
    assert!(m[1].get("text").is_none());
}

#[test]
fn huge_token_counts_saturate() {
    let mut dec = CumulativeDecoder::new(1);
    let mut out = Decoded::new(1);
    let line = serde_json::json!({"result": {"alternatives": [{"message": {"role": "assistant", "text": "Hi"}, "status": "ALTERNATIVE_STATUS_FINAL"}],
        "usage": {"inputTextTokens": "99999999999999999999999999", "completionTokens": usize::MAX.to_string()}}});
    dec.decode(&line.to_string(), &mut out).unwrap();
    assert_eq!(out.usage.prompt_tokens, usize::MAX);
    assert_eq!(out.usage.completion_tokens, usize::MAX);
}
