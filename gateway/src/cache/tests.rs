//! Unit tests of the cache: keys, policy, verifier, the LRU store, and the
//! lookup → record → hit flow with the hashed test embedder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use sluice_runtime::{FinishReason, Usage};

use super::key::{keys, Key};
use super::memory::{EntryMeta, MemoryStore};
use super::policy::{decide, PolicyInput};
use super::testing::HashedEmbedder;
use super::verify::{verify, Mismatch};
use super::*;
use crate::answer::{collect, Answer, Step};
use crate::error::ApiError;
use crate::validate::ValidRequest;

fn chat(body: Value) -> ValidRequest {
    crate::validate::chat(serde_json::from_value(body).unwrap()).unwrap()
}

fn base() -> Value {
    json!({"model": "m", "temperature": 0, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"}
    ]})
}

fn with(field: &str, value: Value) -> Value {
    let mut b = base();
    b[field] = value;
    b
}

fn exact(body: Value) -> Key {
    let r = chat(body);
    keys("t", &r.model, &r.job).exact
}

#[test]
fn every_output_parameter_changes_the_exact_key() {
    let k0 = exact(base());
    let variants = [
        ("max_tokens", json!(7)),
        ("temperature", json!(0.5)),
        ("top_p", json!(0.5)),
        ("top_k", json!(5)),
        ("min_p", json!(0.1)),
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(0.5)),
        ("repetition_penalty", json!(1.1)),
        ("seed", json!(3)),
        ("stop", json!(["x"])),
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("ignore_eos", json!(true)),
        ("stop_token_ids", json!([2])),
        ("model", json!("other")),
    ];
    let mut seen = vec![k0];
    for (field, value) in variants {
        let k = exact(with(field, value));
        assert!(!seen.contains(&k), "{field} does not change the key");
        seen.push(k);
    }
}

#[test]
fn messages_roles_and_tenant_change_the_exact_key() {
    let k0 = exact(base());
    let mut b = base();
    b["messages"][1]["content"] = json!("What is the capital of Spain?");
    assert_ne!(k0, exact(b));
    let mut b = base();
    b["messages"][0]["role"] = json!("user");
    assert_ne!(k0, exact(b));
    let r = chat(base());
    assert_ne!(keys("a", "m", &r.job).exact, keys("b", "m", &r.job).exact);
    // Concatenation ambiguity: ["ab","c"] vs ["a","bc"].
    let mut a = base();
    a["messages"][0]["content"] = json!("Be brief.What");
    a["messages"][1]["content"] = json!(" is the capital of France?");
    let mut b = base();
    b["messages"][0]["content"] = json!("Be brief.");
    b["messages"][1]["content"] = json!("What is the capital of France?");
    assert_ne!(exact(a), exact(b));
}

#[test]
fn stream_and_include_usage_do_not_change_the_key() {
    let k0 = exact(base());
    let mut b = with("stream", json!(true));
    b["stream_options"] = json!({"include_usage": true});
    assert_eq!(k0, exact(b));
    assert_eq!(k0, exact(with("user", json!("someone"))));
}

#[test]
fn semantic_scope_ignores_the_last_user_message_only() {
    let r1 = chat(base());
    let mut b = base();
    b["messages"][1]["content"] = json!("Tell me France's capital city");
    let r2 = chat(b);
    let s1 = keys("t", "m", &r1.job).semantic.unwrap();
    let s2 = keys("t", "m", &r2.job).semantic.unwrap();
    assert_eq!(s1.scope, s2.scope);
    assert_eq!(s1.text, "What is the capital of France?");
    let mut b = base();
    b["messages"][0]["content"] = json!("Be verbose.");
    let s3 = keys("t", "m", &chat(b).job).semantic.unwrap();
    assert_ne!(s1.scope, s3.scope);
    assert_ne!(s1.scope, keys("u", "m", &r1.job).semantic.unwrap().scope);
    assert_ne!(
        s1.scope,
        keys("t", "m", &chat(with("max_tokens", json!(9))).job)
            .semantic
            .unwrap()
            .scope
    );
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, v.parse().unwrap());
    }
    h
}

fn access(body: Value, h: &HeaderMap, sensitive: bool, nondet: bool) -> (bool, bool) {
    let r = chat(body);
    let (_, s, n) = r.job.parts();
    let a = decide(
        PolicyInput {
            headers: h,
            sensitive,
            cache_nondeterministic: nondet,
        },
        s,
        n,
    );
    (a.read, a.write)
}

#[test]
fn policy_caches_deterministic_requests_and_opt_ins_only() {
    let none = HeaderMap::new();
    assert_eq!(access(base(), &none, false, false), (true, true));
    let sampled = with("temperature", json!(0.8));
    assert_eq!(access(sampled.clone(), &none, false, false), (false, false));
    let mut seeded = sampled.clone();
    seeded["seed"] = json!(1);
    assert_eq!(access(seeded, &none, false, false), (true, true));
    let on = headers(&[("x-sluice-cache", "on")]);
    assert_eq!(access(sampled.clone(), &on, false, false), (true, true));
    assert_eq!(access(sampled.clone(), &none, false, true), (true, true));
    let mut n2 = sampled;
    n2["n"] = json!(2);
    assert_eq!(
        access(n2, &on, false, true),
        (false, false),
        "n > 1 unseeded"
    );
}

#[test]
fn policy_honours_cache_control_sensitivity_and_logprobs() {
    let nc = headers(&[("cache-control", "max-age=0, no-cache")]);
    assert_eq!(access(base(), &nc, false, false), (false, true));
    let ns = headers(&[("cache-control", "no-store")]);
    assert_eq!(access(base(), &ns, false, false), (false, false));
    let none = HeaderMap::new();
    assert_eq!(access(base(), &none, true, false), (false, false));
    assert_eq!(
        access(with("logprobs", json!(true)), &none, false, false),
        (false, false)
    );
    let off = headers(&[("x-sluice-cache", "off")]);
    assert_eq!(access(base(), &off, false, false), (false, false));
}

#[test]
fn verifier_accepts_paraphrases() {
    for (a, b) in [
        (
            "What is the capital of France?",
            "Tell me the capital of France.",
        ),
        (
            "How do I reverse a list in Python?",
            "how can I reverse a Python list",
        ),
        (
            "Paris weather tomorrow",
            "What's the weather in Paris tomorrow?",
        ),
        ("Какая столица Франции?", "Назови столицу Франции"),
        ("How do I install Rust?", "What is the way to set up Rust?"),
    ] {
        assert_eq!(verify(a, b), None, "{a} / {b}");
    }
}

#[test]
fn verifier_rejects_what_embeddings_blur() {
    for (a, b, why) in [
        (
            "Is coffee good for health?",
            "Is coffee not good for health?",
            Mismatch::Negation,
        ),
        (
            "Why doesn't my code compile?",
            "Why does my code compile?",
            Mismatch::Negation,
        ),
        (
            "Is it safe to drink tap water in Paris?",
            "Is it unsafe to drink tap water in Paris?",
            Mismatch::Negation,
        ),
        (
            "Is this contract legal?",
            "Is this contract illegal?",
            Mismatch::Negation,
        ),
        (
            "Convert 5 miles to km",
            "Convert 50 miles to km",
            Mismatch::Numbers,
        ),
        (
            "What are two uses of copper?",
            "What are three uses of copper?",
            Mismatch::Numbers,
        ),
        (
            "Events in March 2020",
            "Events in April 2020",
            Mismatch::Dates,
        ),
        (
            "What happened in 1917?",
            "What happened in 1918?",
            Mismatch::Numbers,
        ),
        (
            "Who founded Apple?",
            "Who founded Microsoft?",
            Mismatch::Entities,
        ),
        (
            "Flights from Paris to London",
            "Flights from London to Paris",
            Mismatch::Entities,
        ),
        (
            "Are all birds able to fly?",
            "Are some birds able to fly?",
            Mismatch::Quantifiers,
        ),
        (
            "List at least three fruits",
            "List three fruits",
            Mismatch::Quantifiers,
        ),
        (
            "Which is the largest planet?",
            "Which is the smallest planet?",
            Mismatch::Direction,
        ),
        ("Это правда?", "Это не правда?", Mismatch::Negation),
        (
            "Погода в Москве завтра",
            "Погода в Москве сегодня",
            Mismatch::Dates,
        ),
        (
            "Кто основал Яндекс?",
            "Кто основал Сбер?",
            Mismatch::Entities,
        ),
        (
            "How do I install Rust?",
            "How do I uninstall Rust?",
            Mismatch::Action,
        ),
        (
            "How do I encrypt a file?",
            "How do I decrypt a file?",
            Mismatch::Action,
        ),
        (
            "Is it cheaper to fly?",
            "Is it faster to fly?",
            Mismatch::Direction,
        ),
        (
            "Как установить Docker?",
            "Как удалить Docker?",
            Mismatch::Action,
        ),
    ] {
        assert_eq!(verify(a, b), Some(why), "{a} / {b}");
        assert!(verify(b, a).is_some(), "{b} / {a}");
    }
}

fn answer(text: &str) -> Arc<StoredAnswer> {
    Arc::new(StoredAnswer {
        choices: vec![StoredChoice {
            text: text.into(),
            finish_reason: FinishReason::Stop,
        }],
        usage: Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            cached_prompt_tokens: 0,
        },
    })
}

fn meta() -> EntryMeta {
    EntryMeta {
        tenant: Arc::from("t"),
        model: Arc::from("m"),
        scope: None,
        text: None,
        embedding: None,
    }
}

#[test]
fn lru_evicts_the_least_recently_used_beyond_max_entries() {
    let store = MemoryStore::new(Bounds {
        max_entries: 2,
        max_bytes: 1 << 20,
        max_per_scope: 10,
    });
    let now = Instant::now();
    let later = now + Duration::from_secs(60);
    let k = |i: u8| Key([i; 32]);
    store.insert(k(1), meta(), answer("one"), later);
    store.insert(k(2), meta(), answer("two"), later);
    assert!(store.get(&k(1), now).is_some()); // 1 is now more recent than 2
    store.insert(k(3), meta(), answer("three"), later);
    assert!(store.get(&k(2), now).is_none());
    assert!(store.get(&k(1), now).is_some());
    assert!(store.get(&k(3), now).is_some());
    assert_eq!(store.usage().0, 2);
}

#[test]
fn byte_bound_evicts_and_oversized_entries_are_not_stored() {
    let store = MemoryStore::new(Bounds {
        max_entries: 100,
        max_bytes: 1000,
        max_per_scope: 10,
    });
    let later = Instant::now() + Duration::from_secs(60);
    for i in 0..10u8 {
        store.insert(Key([i; 32]), meta(), answer(&"x".repeat(100)), later);
        assert!(store.usage().1 <= 1000);
    }
    assert!(store.usage().0 < 10);
    store.insert(Key([99; 32]), meta(), answer(&"x".repeat(2000)), later);
    assert!(store.get(&Key([99; 32]), Instant::now()).is_none());
}

#[test]
fn expired_entries_are_not_served() {
    let store = MemoryStore::new(CacheSettings::default().bounds);
    let now = Instant::now();
    store.insert(
        Key([1; 32]),
        meta(),
        answer("a"),
        now + Duration::from_secs(5),
    );
    assert!(store
        .get(&Key([1; 32]), now + Duration::from_secs(4))
        .is_some());
    assert!(store
        .get(&Key([1; 32]), now + Duration::from_secs(5))
        .is_none());
    assert_eq!(store.usage(), (0, 0));
}

#[test]
fn purge_removes_by_tenant_or_model() {
    let store = MemoryStore::new(CacheSettings::default().bounds);
    let later = Instant::now() + Duration::from_secs(60);
    for (i, (t, m)) in [("a", "x"), ("a", "y"), ("b", "x")].iter().enumerate() {
        let mut e = meta();
        e.tenant = Arc::from(*t);
        e.model = Arc::from(*m);
        store.insert(Key([i as u8; 32]), e, answer("z"), later);
    }
    assert_eq!(store.purge(Some("a"), Some("y")), 1);
    assert_eq!(store.purge(None, Some("x")), 2);
    assert_eq!(store.usage(), (0, 0));
}

fn enabled() -> Arc<Cache> {
    let settings = CacheSettings {
        enabled: true,
        similarity_threshold: 0.5,
        ..CacheSettings::default()
    };
    Cache::in_memory(settings, Some(Arc::new(HashedEmbedder::default())))
}

async fn lookup(cache: &Arc<Cache>, tenant: &str, body: Value) -> Decision {
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
            },
            None,
        )
        .await
}

/// Generates a fixed answer, the way the engine would.
fn generated(text: &str) -> BoxAnswer {
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

fn asking(question: &str) -> Value {
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
            },
            StoredChoice {
                text: String::new(),
                finish_reason: FinishReason::Stop,
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
}

#[test]
fn records_round_trip_and_any_flipped_byte_is_rejected() {
    let meta = EntryMeta {
        tenant: Arc::from("t"),
        model: Arc::from("m"),
        scope: Some(Key([7; 32])),
        text: Some("Какая столица Франции?".into()),
        embedding: Some(HashedEmbedder::new(16).embed_now("x y")),
    };
    let stored = answer("Paris.");
    let bytes = record::encode(&meta, &stored);
    let d = record::decode(&bytes).unwrap();
    assert_eq!(d.answer, *stored);
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
