//! The OpenAI-compatible API of the real binary with the real demo model,
//! driven by the `async-openai` SDK and by raw HTTP. One server is shared by
//! every test in this file, and the tests run concurrently against it.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;

use async_openai::types::chat::{
    ChatCompletionStreamOptions, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
    FinishReason, StopConfiguration,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use common::{get, openai, post, sse_events, system, user};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sluice_tests::{Server, DEMO_MODEL_ID};

/// A test that compares exact text across requests holds this exclusively,
/// so that no other test's sequences share its batches: the engine's
/// arithmetic differs slightly with the batch size, and a near-tie can flip
/// a greedy token. Other tests that generate hold it shared.
static ENGINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start_default)
}

/// "What is the capital of France?" under a short system prompt. (Under the
/// template's default system prompt this model answers with a list of
/// Parisian landmarks instead, as llama.cpp's reference run shows.)
fn capital_question(max_tokens: u32) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(DEMO_MODEL_ID)
        .messages([
            system("You are a concise assistant."),
            user("What is the capital of France?"),
        ])
        .temperature(0.0)
        .max_completion_tokens(max_tokens)
        .build()
        .unwrap()
}

async fn greedy_text(prompt: &str, max_tokens: u32) -> (String, Option<FinishReason>) {
    common::greedy_text(server(), prompt, max_tokens).await
}

#[tokio::test]
async fn chat_answers_the_capital_of_france() {
    let _engine = ENGINE.read().await;
    let resp = openai(server(), "none")
        .chat()
        .create(capital_question(32))
        .await
        .unwrap();
    assert!(resp.id.starts_with("chatcmpl-"), "{}", resp.id);
    assert_eq!(resp.object, "chat.completion");
    assert_eq!(resp.model, DEMO_MODEL_ID);
    assert_eq!(resp.choices.len(), 1);
    let text = resp.choices[0].message.content.clone().unwrap();
    assert!(text.contains("Paris"), "answer: {text:?}");
    // Usually EOS right after the answer; a longer ramble is cut at 32.
    assert!(
        matches!(
            resp.choices[0].finish_reason,
            Some(FinishReason::Stop | FinishReason::Length)
        ),
        "{:?}",
        resp.choices[0].finish_reason
    );
    let usage = resp.usage.unwrap();
    assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
}

#[tokio::test]
async fn streamed_answer_equals_the_whole_answer() {
    let _alone = ENGINE.write().await;
    let client = openai(server(), "none");
    let whole = client.chat().create(capital_question(32)).await.unwrap();
    let whole_text = whole.choices[0].message.content.clone().unwrap();

    let mut req = capital_question(32);
    req.stream_options = Some(ChatCompletionStreamOptions {
        include_usage: Some(true),
        include_obfuscation: None,
    });
    let mut stream = client.chat().create_stream(req).await.unwrap();
    let mut ids = Vec::new();
    let mut text = String::new();
    let mut first_role = None;
    let mut finish = None;
    let mut usage = None;
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        chunks += 1;
        ids.push(chunk.id.clone());
        assert_eq!(chunk.object, "chat.completion.chunk");
        if let Some(u) = chunk.usage {
            assert!(chunk.choices.is_empty(), "the usage chunk has no choices");
            usage = Some(u);
            continue;
        }
        let choice = &chunk.choices[0];
        if chunks == 1 {
            first_role = choice.delta.role;
        }
        text.push_str(choice.delta.content.as_deref().unwrap_or(""));
        if choice.finish_reason.is_some() {
            finish = choice.finish_reason;
        }
    }
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one id for every chunk: {ids:?}"
    );
    assert_eq!(first_role, Some(async_openai::types::chat::Role::Assistant));
    // Same request, same greedy answer: streaming changes only the framing.
    assert!(finish.is_some(), "a chunk carries the finish_reason");
    assert_eq!(finish, whole.choices[0].finish_reason);
    assert_eq!(text, whole_text);
    let usage = usage.expect("a usage chunk");
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    assert_eq!(
        usage.completion_tokens,
        whole.usage.unwrap().completion_tokens
    );
}

#[tokio::test]
async fn sse_framing_matches_openai() {
    let _engine = ENGINE.read().await;
    let body = json!({
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "Name three primary colors."}],
        "temperature": 0, "max_tokens": 6, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let reply = post(server(), "/v1/chat/completions", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(&reply.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], DEMO_MODEL_ID);
        assert!(c["created"].is_u64());
        assert!(c["system_fingerprint"].is_string());
        assert!(c.as_object().unwrap().contains_key("usage"), "{c}");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"]["total_tokens"],
        usage_chunk["usage"]["prompt_tokens"].as_u64().unwrap()
            + usage_chunk["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let (finish_chunk, content_chunks) = rest.split_last().unwrap();
    assert_eq!(finish_chunk["choices"][0]["delta"], json!({}));
    assert_eq!(finish_chunk["choices"][0]["finish_reason"], "length");
    for c in content_chunks.iter().chain([finish_chunk]) {
        assert!(
            c["usage"].is_null(),
            "usage is null before the last chunk: {c}"
        );
    }
    for c in &content_chunks[1..] {
        let delta = c["choices"][0]["delta"]["content"].as_str().unwrap();
        assert!(!delta.is_empty(), "empty deltas are skipped: {c}");
        assert!(c["choices"][0]["finish_reason"].is_null());
    }
}

#[tokio::test]
async fn streamed_deltas_add_up_to_the_reported_usage() {
    let _engine = ENGINE.read().await;
    let body = json!({
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "Tell me about the ocean."}],
        "temperature": 0, "max_tokens": 10, "stream": true, "ignore_eos": true,
        "logprobs": true, "stream_options": {"include_usage": true},
    });
    let reply = post(server(), "/v1/chat/completions", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let events = sse_events(&reply.body);
    let mut text = String::new();
    let mut logprob_tokens = 0;
    let mut usage = Value::Null;
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        if !c["usage"].is_null() {
            usage = c["usage"].clone();
        }
        if let Some(choice) = c["choices"].get(0) {
            text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if let Some(lps) = choice["logprobs"]["content"].as_array() {
                logprob_tokens += lps.len();
            }
        }
    }
    let completion = usage["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(completion, 10);
    assert_eq!(
        logprob_tokens, completion,
        "one logprob per generated token"
    );
    let retokenized = common::demo_tokenizer().encode(&text, false).unwrap();
    assert_eq!(
        retokenized.len(),
        completion,
        "text {text:?} -> {retokenized:?}"
    );
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + completion as u64
    );
}

#[tokio::test]
async fn finish_reason_is_length_after_exactly_max_tokens() {
    let _engine = ENGINE.read().await;
    let req = CreateChatCompletionRequestArgs::default()
        .model(DEMO_MODEL_ID)
        .messages([user("Write a long story about a dragon.")])
        .temperature(0.0)
        .max_tokens(5u32)
        .logprobs(true)
        .top_logprobs(2u8)
        .build()
        .unwrap();
    let resp = openai(server(), "none").chat().create(req).await.unwrap();
    let choice = &resp.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::Length));
    assert_eq!(resp.usage.unwrap().completion_tokens, 5);
    let lps = choice.logprobs.as_ref().unwrap().content.as_ref().unwrap();
    assert_eq!(lps.len(), 5);
    for lp in lps {
        assert!(lp.logprob <= 0.0);
        assert_eq!(lp.top_logprobs.len(), 2);
        assert_eq!(lp.bytes.as_deref(), Some(lp.token.as_bytes()));
    }
}

#[tokio::test]
async fn stop_strings_end_the_answer_and_are_not_returned() {
    let _alone = ENGINE.write().await;
    let (full, _) = greedy_text("Name three primary colors.", 16).await;
    // Stop at the third word, whatever the model says.
    let word = full
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("a longer answer: {full:?}"));
    let stop = format!(" {word}");
    let expected = &full[..full.find(&stop).unwrap()];
    let req = CreateChatCompletionRequestArgs::default()
        .model(DEMO_MODEL_ID)
        .messages([
            system("You are a concise assistant."),
            user("Name three primary colors."),
        ])
        .temperature(0.0)
        .max_completion_tokens(16u32)
        .stop(StopConfiguration::StringArray(vec![
            stop.clone(),
            "never-seen-stop".to_string(),
        ]))
        .build()
        .unwrap();
    let resp = openai(server(), "none").chat().create(req).await.unwrap();
    let text = resp.choices[0].message.content.clone().unwrap();
    assert_eq!(text, expected, "full answer {full:?}, stop {stop:?}");
    assert!(!text.contains(&stop));
    assert_eq!(resp.choices[0].finish_reason, Some(FinishReason::Stop));
}

#[tokio::test]
async fn seeded_sampling_repeats_and_derives_a_seed_per_choice() {
    let _alone = ENGINE.write().await;
    let request = |n: u8| {
        CreateChatCompletionRequestArgs::default()
            .model(DEMO_MODEL_ID)
            .messages([user("Write a haiku about the sea.")])
            .temperature(1.0)
            .seed(1234)
            .n(n)
            .max_completion_tokens(12u32)
            .build()
            .unwrap()
    };
    let texts = |r: async_openai::types::chat::CreateChatCompletionResponse| -> Vec<String> {
        r.choices
            .into_iter()
            .map(|c| c.message.content.unwrap_or_default())
            .collect()
    };
    let client = openai(server(), "none");
    let a = client.chat().create(request(1)).await.unwrap();
    let single_prompt_tokens = a.usage.clone().unwrap().prompt_tokens;
    let a = texts(a);
    let b = texts(client.chat().create(request(1)).await.unwrap());
    assert_eq!(a, b, "the same seed gives the same text");
    let two = client.chat().create(request(2)).await.unwrap();
    assert_eq!(two.choices[1].index, 1);
    let usage = two.usage.clone().unwrap();
    assert_eq!(
        usage.prompt_tokens, single_prompt_tokens,
        "the prompt counts once"
    );
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    let two = texts(two);
    assert_eq!(two.len(), 2);
    assert_ne!(
        two[0], two[1],
        "each choice draws from its own derived seed"
    );
    let again = texts(client.chat().create(request(2)).await.unwrap());
    assert_eq!(two, again, "derived seeds repeat too");
}

#[tokio::test]
async fn sixteen_concurrent_greedy_requests_match_the_sequential_answer() {
    let _alone = ENGINE.write().await;
    let prompt = "Write a haiku about the sea.";
    let (sequential, _) = greedy_text(prompt, 16).await;
    let answers = futures_util::future::join_all((0..16).map(|_| greedy_text(prompt, 16))).await;
    for (i, (text, _)) in answers.iter().enumerate() {
        assert_eq!(text, &sequential, "request {i}");
    }
}

#[tokio::test]
async fn completions_take_strings_string_arrays_and_token_ids() {
    let _alone = ENGINE.write().await;
    let client = openai(server(), "none");
    let one = client
        .completions()
        .create(
            CreateCompletionRequestArgs::default()
                .model(DEMO_MODEL_ID)
                .prompt("The sky is")
                .max_tokens(6u32)
                .temperature(0.0)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(one.id.starts_with("cmpl-"));
    assert_eq!(one.object, "text_completion");
    let text = one.choices[0].text.clone();
    assert!(!text.is_empty());
    let usage = one.usage.unwrap();
    assert_eq!(usage.completion_tokens, 6);

    let ids = common::demo_tokenizer().encode("The sky is", true).unwrap();
    let by_ids = client
        .completions()
        .create(
            CreateCompletionRequestArgs::default()
                .model(DEMO_MODEL_ID)
                .prompt(ids)
                .max_tokens(6u32)
                .temperature(0.0)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        by_ids.choices[0].text, text,
        "token ids and text give the same answer"
    );

    let reply = post(
        server(),
        "/v1/completions",
        &json!({"model": DEMO_MODEL_ID, "prompt": ["The sky is", "1, 2, 3,"],
                "max_tokens": 4, "temperature": 0, "logprobs": 1}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v = reply.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[1]["index"], 1);
    // (Not compared with `text`: two prompts share a batch, and batched
    // arithmetic may flip a near-tie; see the batch-invariance test.)
    assert!(choices
        .iter()
        .all(|c| !c["text"].as_str().unwrap().is_empty()));
    assert_eq!(
        choices[1]["logprobs"]["tokens"].as_array().unwrap().len(),
        4
    );
    assert_eq!(v["usage"]["completion_tokens"], 8);
}

#[tokio::test]
async fn completions_stream_text_chunks() {
    let _engine = ENGINE.read().await;
    let reply = post(
        server(),
        "/v1/completions",
        &json!({"model": DEMO_MODEL_ID, "prompt": "The sky is", "max_tokens": 4,
                "temperature": 0, "stream": true}),
    )
    .await;
    let events = sse_events(&reply.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage key without include_usage"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

#[tokio::test]
async fn models_are_listed_and_retrieved() {
    let client = openai(server(), "none");
    let list = client.models().list().await.unwrap();
    assert_eq!(list.object, "list");
    // The default config also serves the demo embedding encoder when it is fetched.
    let minilm = sluice_models::demo_embedding_model_dir()
        .join("model.safetensors")
        .is_file();
    assert_eq!(list.data.len(), 1 + usize::from(minilm));
    assert_eq!(list.data[0].id, DEMO_MODEL_ID);
    if minilm {
        assert_eq!(list.data[1].id, "all-minilm-l6-v2");
    }
    let model = client.models().retrieve(DEMO_MODEL_ID).await.unwrap();
    assert_eq!(model.object, "model");
    let err = get(server(), "/v1/models/gpt-17", None)
        .await
        .expect_error(404);
    assert_eq!(err["code"], "model_not_found");
}

#[tokio::test]
async fn health_and_ready_answer() {
    assert_eq!(get(server(), "/health", None).await.status, 200);
    let ready = get(server(), "/ready", None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["models"][0]["state"], "ready");
    // While the model loaded, /ready said 503 (when the harness was quick
    // enough to see it), then 200; never anything else.
    let seen = &server().ready_statuses;
    assert_eq!(seen.last(), Some(&200), "{seen:?}");
    assert!(seen.iter().all(|s| *s == 503 || *s == 200), "{seen:?}");
}
