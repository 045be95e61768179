//! Answers with tool calls: stored (memory and Redis records) and replayed
//! as calls, never served for other tools.

use sluice_models::ToolCall;

use super::flow::lookup;
use super::*;

fn enabled() -> Arc<Cache> {
    let settings = CacheSettings {
        enabled: true,
        similarity_threshold: 0.5,
        ..CacheSettings::default()
    };
    Cache::in_memory(settings, Some(Arc::new(HashedEmbedder::default())))
}

fn weather_tools(description: &str) -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather", "description": description,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

fn asking_with_tools(question: &str, description: &str) -> Value {
    let mut b = base();
    b["messages"][1]["content"] = json!(question);
    b["tools"] = weather_tools(description);
    b
}

fn calls_answer() -> StoredAnswer {
    StoredAnswer {
        choices: vec![StoredChoice {
            text: "Let me look.".into(),
            finish_reason: FinishReason::ToolCalls,
            stop_sequence: None,
            tool_calls: vec![
                ToolCall {
                    id: "call_0123456789abcdefghijklmn".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city": "Paris, the capital of France, on the Seine"}"#.into(),
                },
                ToolCall {
                    id: "call_b".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city": "Лион"}"#.into(),
                },
            ],
        }],
        usage: Usage {
            prompt_tokens: 10,
            completion_tokens: 20,
            cached_prompt_tokens: 0,
        },
    }
}

/// Every step of an answer, as (calls' pieces, finish).
async fn call_pieces(
    answer: &mut dyn Answer,
) -> (Vec<(usize, bool, String)>, Option<FinishReason>) {
    let mut pieces = Vec::new();
    let mut finish = None;
    while let Some(step) = answer.next().await {
        match step {
            Step::ToolCall {
                index,
                id,
                name,
                arguments,
                ..
            } => {
                assert_eq!(id.is_some(), name.is_some(), "id and name come together");
                pieces.push((index, id.is_some(), arguments));
            }
            Step::Finished { reason, .. } => finish = Some(reason),
            Step::Token { .. } => {}
            Step::Failed(e) => panic!("{e}"),
        }
    }
    (pieces, finish)
}

#[tokio::test]
async fn recorded_tool_calls_replay_as_the_same_calls_in_openai_framing() {
    let cache = enabled();
    let body = asking_with_tools("What is the weather in Paris?", "Weather in a city");
    let mut d = lookup(&cache, "t", body.clone()).await;
    assert_eq!(d.outcome, Outcome::Miss);
    let stored = calls_answer();
    let mut a = d.record(Box::new(replay::Replay::new(&stored)));
    let generated = collect(a.as_mut()).await.unwrap();

    let mut d = lookup(&cache, "t", body).await;
    assert_eq!(d.outcome, Outcome::Exact);
    let mut hit = d.take_hit().unwrap();
    let (pieces, finish) = call_pieces(hit.as_mut()).await;
    assert_eq!(finish, Some(FinishReason::ToolCalls));
    // Each call starts with its id and name, then its arguments in pieces.
    assert!(pieces.iter().filter(|p| p.1).count() == 2);
    assert!(pieces.iter().filter(|p| p.0 == 0).count() > 2, "{pieces:?}");
    let mut hit_again = lookup(
        &cache,
        "t",
        asking_with_tools("What is the weather in Paris?", "Weather in a city"),
    )
    .await
    .take_hit()
    .unwrap();
    let replayed = collect(hit_again.as_mut()).await.unwrap();
    assert_eq!(replayed[0].tool_calls, stored.choices[0].tool_calls);
    assert_eq!(replayed[0].tool_calls, generated[0].tool_calls);
    assert_eq!(replayed[0].text, "Let me look.");
    assert_eq!(replayed[0].finish_reason, Some(FinishReason::ToolCalls));
}

#[tokio::test]
async fn a_semantic_neighbour_with_other_tools_is_never_served() {
    let cache = enabled();
    let mut d = lookup(
        &cache,
        "t",
        asking_with_tools("What is the weather in Paris?", "Weather in a city"),
    )
    .await;
    collect(
        d.record(Box::new(replay::Replay::new(&calls_answer())))
            .as_mut(),
    )
    .await
    .unwrap();
    // The same paraphrase finds it with the same tools...
    let same = lookup(
        &cache,
        "t",
        asking_with_tools("what is the weather in Paris", "Weather in a city"),
    )
    .await;
    assert!(
        matches!(same.outcome, Outcome::Semantic { .. }),
        "{:?}",
        same.outcome
    );
    // ...and never with other tools, no tools, or another tool choice.
    let other = lookup(
        &cache,
        "t",
        asking_with_tools("what is the weather in Paris", "Current weather, by city"),
    )
    .await;
    assert_eq!(other.outcome, Outcome::Miss);
    let mut none = asking_with_tools("what is the weather in Paris", "Weather in a city");
    none.as_object_mut().unwrap().remove("tools");
    assert_eq!(lookup(&cache, "t", none).await.outcome, Outcome::Miss);
    let mut forced = asking_with_tools("what is the weather in Paris", "Weather in a city");
    forced["tool_choice"] = json!("required");
    assert_eq!(lookup(&cache, "t", forced).await.outcome, Outcome::Miss);
}

#[test]
fn records_keep_tool_calls_and_refuse_the_old_version() {
    let meta = EntryMeta {
        tenant: Arc::from("t"),
        model: Arc::from("m"),
        scope: None,
        text: None,
        embedding: None,
        embedder: None,
    };
    let stored = calls_answer();
    let bytes = record::encode(&meta, &stored);
    let decoded = record::decode(&bytes).unwrap();
    assert_eq!(decoded.answer, stored);
    // A version-1 record (no calls in its choices) is refused, not read
    // as an answer without its calls.
    let mut old = bytes.clone();
    old[3] = 1;
    assert_eq!(record::decode(&old).unwrap_err(), record::Corrupt::Version);
}
