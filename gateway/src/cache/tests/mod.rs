//! Unit tests of the cache: keys, policy, verifier and the LRU store here;
//! the lookup → record → hit flow in `flow.rs`.

mod embedders;
mod flow;
mod sealed;
mod tool_calls;

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
    let (_, s, n, _) = r.job.parts();
    let a = decide(
        PolicyInput {
            headers: h,
            sensitive,
            regulated: false,
            may_carry_pii: false,
            sealing: false,
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
fn a_regulated_request_is_cached_only_sealed_and_without_personal_data() {
    let r = chat(base());
    let (_, s, n, _) = r.job.parts();
    let none = HeaderMap::new();
    let regulated = |may_carry_pii: bool, sealing: bool| {
        let a = decide(
            PolicyInput {
                headers: &none,
                // Regulated callers are always sensitive as well.
                sensitive: true,
                regulated: true,
                may_carry_pii,
                sealing,
                cache_nondeterministic: false,
            },
            s,
            n,
        );
        (a.read, a.write)
    };
    assert_eq!(regulated(false, true), (true, true));
    assert_eq!(regulated(true, true), (false, false), "PII: never cached");
    assert_eq!(
        regulated(false, false),
        (false, false),
        "nothing to seal with"
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

/// Issue 11: questions that differ by an antonym, a reversed direction or
/// role, a unit or the person asked about embed close and used to hit.
#[test]
fn verifier_rejects_opposites_swapped_roles_units_and_scope() {
    for (a, b, why) in [
        (
            "Is it allowed to park here overnight?",
            "Is it forbidden to park here overnight?",
            Mismatch::Opposite,
        ),
        (
            "Why do prices increase in winter?",
            "Why do prices decrease in winter?",
            Mismatch::Direction,
        ),
        (
            "When does the ferry arrive in Split?",
            "When does the ferry depart from Split?",
            Mismatch::Opposite,
        ),
        (
            "Should I buy gold right now?",
            "Should I sell gold right now?",
            Mismatch::Action,
        ),
        (
            "What does Brazil import?",
            "What does Brazil export?",
            Mismatch::Action,
        ),
        (
            "How do I include a folder in the backup?",
            "How do I exclude a folder from the backup?",
            Mismatch::Opposite,
        ),
        (
            "Why did the cat bite the dog?",
            "Why did the dog bite the cat?",
            Mismatch::Roles,
        ),
        (
            "How do I convert a tuple to a list?",
            "How do I convert a list to a tuple?",
            Mismatch::Roles,
        ),
        (
            "How do I get from the station to the old town?",
            "How do I get from the old town to the station?",
            Mismatch::Roles,
        ),
        (
            "How many grams of salt are in a cup?",
            "How many grams of salt are in a tablespoon?",
            Mismatch::Units,
        ),
        (
            "What is 10 miles in kilometers?",
            "What is 10 kilometers in miles?",
            Mismatch::Units,
        ),
        (
            "What is a healthy heart rate for a child?",
            "What is a healthy heart rate for an adult?",
            Mismatch::Scope,
        ),
        (
            "Are the sales figures rising this quarter?",
            "Are the sales figures falling this quarter?",
            Mismatch::Opposite,
        ),
    ] {
        assert_eq!(verify(a, b), Some(why), "{a} / {b}");
        assert!(verify(b, a).is_some(), "{b} / {a}");
    }
}

#[test]
fn verifier_still_accepts_reworded_routes_roles_and_units() {
    for (a, b) in [
        (
            "How do I get from the airport to downtown?",
            "How can I get to downtown from the airport?",
        ),
        (
            "What is the difference between a list and a tuple?",
            "What's the difference between a tuple and a list?",
        ),
        (
            "How many calories are in a cup of rice?",
            "How many calories does a cup of rice have?",
        ),
        (
            "What should I feed a kitten?",
            "What food should a kitten eat?",
        ),
        (
            "Is it allowed to bring a laptop on a plane?",
            "Am I allowed to bring my laptop on a plane?",
        ),
    ] {
        assert_eq!(verify(a, b), None, "{a} / {b}");
        assert_eq!(verify(b, a), None, "{b} / {a}");
    }
}

fn answer(text: &str) -> Arc<StoredAnswer> {
    Arc::new(StoredAnswer {
        choices: vec![StoredChoice {
            text: text.into(),
            finish_reason: FinishReason::Stop,
            stop_sequence: None,
            tool_calls: Vec::new(),
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
        embedder: None,
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
