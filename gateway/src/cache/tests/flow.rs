//! The lookup → record → hit flow through a whole [`Cache`], with the
//! hashed test embedder, and the stored records it leaves.

use super::*;

fn enabled() -> Arc<Cache> {
    let settings = CacheSettings {
        enabled: true,
        similarity_threshold: 0.5,
        ..CacheSettings::default()
    };
    Cache::in_memory(settings, Some(Arc::new(HashedEmbedder::default())))
}

pub(super) async fn lookup(cache: &Arc<Cache>, tenant: &str, body: Value) -> Decision {
    let r = chat(body);
    let h = HeaderMap::new();
    cache
        .lookup(
            Request {
                tenant,
                model: &r.model,
                job: &r.job,
                headers: &h,
                sensitive: false,
                regulated: false,
                may_carry_pii: false,
            },
            None,
        )
        .await
}

/// Generates a fixed answer, the way the engine would.
pub(super) fn generated(text: &str) -> BoxAnswer {
    Box::new(replay::Replay::new(&answer(text)))
}

struct Failing;
impl Answer for Failing {
    fn num_choices(&self) -> usize {
        1
    }
    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        Box::pin(async { Some(Step::Failed(ApiError::Internal("boom".into()))) })
    }
    fn usage(&self) -> Usage {
        Usage::default()
    }
}

#[tokio::test]
async fn miss_then_exact_hit_replays_the_recorded_answer_in_chunks() {
    let cache = enabled();
    let mut d = lookup(&cache, "t", base()).await;
    assert_eq!(d.outcome, Outcome::Miss);
    let text = "The capital of France is Paris, a city on the Seine river.";
    let mut a = d.record(generated(text));
    let out = collect(a.as_mut()).await.unwrap();
    assert_eq!(out[0].text, text);

    let mut d = lookup(&cache, "t", with("stream", json!(true))).await;
    assert_eq!(d.outcome, Outcome::Exact);
    let mut hit = d.take_hit().unwrap();
    assert_eq!(hit.usage().completion_tokens, 2);
    let mut pieces = Vec::new();
    let mut finished = None;
    while let Some(step) = hit.next().await {
        match step {
            Step::Token { text, .. } => pieces.push(text),
            Step::Finished { reason, .. } => finished = Some(reason),
            Step::ToolCall { .. } => panic!("no tool calls were stored"),
            Step::Failed(e) => panic!("{e}"),
        }
    }
    assert!(pieces.len() >= 3, "replayed in several chunks: {pieces:?}");
    assert_eq!(pieces.concat(), text);
    assert_eq!(finished, Some(FinishReason::Stop));
}

#[tokio::test]
async fn tenants_never_share_entries() {
    let cache = enabled();
    let mut d = lookup(&cache, "a", base()).await;
    collect(d.record(generated("for a")).as_mut())
        .await
        .unwrap();
    assert_eq!(lookup(&cache, "b", base()).await.outcome, Outcome::Miss);
    assert_eq!(lookup(&cache, "a", base()).await.outcome, Outcome::Exact);
}

#[tokio::test]
async fn failed_answers_are_not_stored() {
    let cache = enabled();
    let mut d = lookup(&cache, "t", base()).await;
    let mut a = d.record(Box::new(Failing));
    assert!(collect(a.as_mut()).await.is_err());
    assert_eq!(lookup(&cache, "t", base()).await.outcome, Outcome::Miss);
    assert_eq!(cache.usage().0, 0);
}

#[tokio::test]
async fn an_answer_with_any_choice_ended_by_a_content_filter_is_not_stored() {
    let cache = enabled();
    let mut d = lookup(&cache, "t", with("n", json!(2))).await;
    assert_eq!(d.outcome, Outcome::Miss);
    let filtered = StoredAnswer {
        choices: vec![
            StoredChoice {
                text: "Paris.".into(),
                finish_reason: FinishReason::Stop,
                stop_sequence: None,
                tool_calls: Vec::new(),
            },
            StoredChoice {
                text: "I cannot talk about that.".into(),
                finish_reason: FinishReason::ContentFilter,
                stop_sequence: None,
                tool_calls: Vec::new(),
            },
        ],
        usage: Usage::default(),
    };
    let mut a = d.record(Box::new(replay::Replay::new(&filtered)));
    let out = collect(a.as_mut()).await.unwrap();
    assert_eq!(out[1].finish_reason, Some(FinishReason::ContentFilter));
    assert_eq!(
        lookup(&cache, "t", with("n", json!(2))).await.outcome,
        Outcome::Miss
    );
    // Neither tier holds it: nothing was inserted at all.
    assert_eq!(cache.usage().0, 0);
}

#[tokio::test]
async fn a_dropped_answer_is_not_stored() {
    let cache = enabled();
    let mut d = lookup(&cache, "t", base()).await;
    let mut a = d.record(generated(
        "one two three four five six seven eight nine ten eleven",
    ));
    let _first = a.next().await;
    drop(a);
    assert_eq!(cache.usage().0, 0);
}

pub(super) fn asking(question: &str) -> Value {
    let mut b = base();
    b["messages"][1]["content"] = json!(question);
    b
}

#[tokio::test]
async fn semantic_hit_for_a_paraphrase_with_similarity_header() {
    let cache = enabled();
    let mut d = lookup(&cache, "t", asking("What is the capital of France?")).await;
    assert!(
        d.embedding().is_some(),
        "the lookup hands back its embedding"
    );
    collect(d.record(generated("Paris.")).as_mut())
        .await
        .unwrap();

    let d = lookup(&cache, "t", asking("what is the capital of France")).await;
    let Outcome::Semantic { similarity } = d.outcome else {
        panic!("expected a semantic hit, got {:?}", d.outcome);
    };
    assert!(similarity > 0.5 && similarity <= 1.0001);
    let mut h = HeaderMap::new();
    d.set_headers(&mut h);
    assert_eq!(h["x-sluice-cache"], "semantic");
    assert!(h.contains_key("x-sluice-cache-similarity"));
}

#[tokio::test]
async fn semantic_candidates_failing_the_verifier_are_misses() {
    let cache = enabled();
    let mut d = lookup(&cache, "t", asking("Is the capital of France Paris?")).await;
    collect(d.record(generated("Yes.")).as_mut()).await.unwrap();
    for q in [
        "Is the capital of France not Paris?",
        "Is the capital of Germany Paris?",
        "Was the capital of France Paris in 1700?",
    ] {
        assert_eq!(
            lookup(&cache, "t", asking(q)).await.outcome,
            Outcome::Miss,
            "{q}"
        );
    }
    // A different system prompt is another scope, however close the question.
    let mut b = asking("Is the capital of France Paris?");
    b["messages"][0]["content"] = json!("Answer in French.");
    assert_eq!(lookup(&cache, "t", b).await.outcome, Outcome::Miss);
}

#[tokio::test]
async fn disabled_cache_bypasses() {
    let cache = Cache::disabled();
    let d = lookup(&cache, "t", base()).await;
    assert_eq!(d.outcome, Outcome::Bypass);
}

#[test]
fn replay_keeps_every_choice_whole() {
    let stored = StoredAnswer {
        choices: vec![
            StoredChoice {
                text: "Ünïcödé текст with many words in it, enough for chunks".into(),
                finish_reason: FinishReason::Length,
                stop_sequence: None,
                tool_calls: Vec::new(),
            },
            StoredChoice {
                text: String::new(),
                finish_reason: FinishReason::Stop,
                stop_sequence: Some("END".into()),
                tool_calls: Vec::new(),
            },
        ],
        usage: Usage::default(),
    };
    let mut r = replay::Replay::new(&stored);
    let out = futures_util::FutureExt::now_or_never(collect(&mut r))
        .unwrap()
        .unwrap();
    assert_eq!(out[0].text, stored.choices[0].text);
    assert_eq!(out[0].finish_reason, Some(FinishReason::Length));
    assert_eq!(out[1].text, "");
    assert_eq!(out[0].stop_sequence, None);
    assert_eq!(out[1].stop_sequence.as_deref(), Some("END"));
}

#[test]
fn records_round_trip_and_any_flipped_byte_is_rejected() {
    let meta = EntryMeta {
        tenant: Arc::from("t"),
        model: Arc::from("m"),
        scope: Some(Key([7; 32])),
        text: Some("Какая столица Франции?".into()),
        embedding: Some(HashedEmbedder::new(16).embed_now("x y")),
        embedder: Some(Arc::from("test@1")),
    };
    let mut stored = (*answer("Paris.")).clone();
    // The stop string that ended it is served again with the answer.
    stored.choices[0].stop_sequence = Some("\n\nUser:".into());
    let bytes = record::encode(&meta, &stored);
    let d = record::decode(&bytes).unwrap();
    assert_eq!(d.answer, stored);
    assert_eq!(d.meta.scope, meta.scope);
    assert_eq!(d.meta.text, meta.text);
    assert_eq!(d.meta.embedding, meta.embedding);
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x20;
        assert!(
            record::decode(&bad).is_err(),
            "byte {i} flipped was accepted"
        );
    }
    assert!(record::decode(&bytes[..bytes.len() - 1]).is_err());
    assert!(record::decode(b"").is_err());
}
