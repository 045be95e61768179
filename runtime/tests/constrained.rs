//! Constrained decoding and `logit_bias` through the engine, on the tiny
//! random model: a grammar's output always parses and ends with `stop`, and a
//! constrained sequence's tokens are the same alone, beside unconstrained and
//! constrained neighbours, and under preemption (batch invariance).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use sluice_kernels::WeightDType;
use sluice_models::testing::{write_tiny_gguf, TinySpec};
use sluice_models::{load_llm, LoadKnobs};
use sluice_runtime::{
    Engine, EngineConfig, EngineEvent, EngineHandle, EventStream, FinishReason, GenerateRequest,
    Grammar, GrammarSpec, SamplingParams,
};

fn tiny_engine(cfg: EngineConfig) -> (tempfile::TempDir, EngineHandle) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &TinySpec::default(), WeightDType::Q8_0).unwrap();
    let loaded = load_llm(&path, LoadKnobs::default(), &mut |_, _| {}).unwrap();
    (dir, Engine::start(loaded, cfg).unwrap())
}

fn prompt(i: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|j| ((i * 31 + j * 7 + j * j) % 256) as u32)
        .collect()
}

fn submit(
    engine: &EngineHandle,
    prompt_tokens: Vec<u32>,
    params: SamplingParams,
    constraint: Option<Arc<Grammar>>,
) -> EventStream {
    engine
        .submit(GenerateRequest {
            prompt_tokens,
            params,
            constraint,
            session: None,
        })
        .unwrap()
}

/// Token ids, text and finish reason of a request.
fn collect(mut stream: EventStream) -> (Vec<u32>, String, FinishReason) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Some(ev) = stream.blocking_recv() {
        match ev {
            EngineEvent::Token { id, text: t, .. } => {
                ids.push(id);
                text.push_str(&t);
            }
            EngineEvent::Finished {
                reason, text: t, ..
            } => {
                text.push_str(&t);
                return (ids, text, reason);
            }
            EngineEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("stream ended without Finished");
}

/// Every value bounded, so that even a random model finishes.
fn schema() -> GrammarSpec {
    GrammarSpec::JsonSchema {
        schema: serde_json::json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z]{1,8}$"},
                "size": {"enum": ["small", "medium", "large"]},
                "count": {"type": "integer", "minimum": 0, "maximum": 999},
                "tags": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 4},
                    "minItems": 1,
                    "maxItems": 3
                },
                "ok": {"type": "boolean"}
            },
            "required": ["name", "size", "count", "tags", "ok"],
            "additionalProperties": false
        })
        .to_string(),
        strict: true,
    }
}

fn check(text: &str) {
    let v: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let name = v["name"].as_str().unwrap();
    assert!((1..=8).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase()));
    assert!(["small", "medium", "large"].contains(&v["size"].as_str().unwrap()));
    assert!((0..=999).contains(&v["count"].as_i64().unwrap()));
    let tags = v["tags"].as_array().unwrap();
    assert!((1..=3).contains(&tags.len()), "{text}");
    assert!(tags
        .iter()
        .all(|t| t.as_str().unwrap().chars().count() <= 4));
    assert!(v["ok"].is_boolean());
}

fn params(temperature: f32, seed: Option<u64>) -> SamplingParams {
    SamplingParams {
        // Room for the longest answer the schema allows (escapes included).
        max_tokens: 200,
        temperature,
        seed,
        ..SamplingParams::default()
    }
}

#[test]
fn constrained_output_parses_and_is_the_same_alone_or_in_a_crowd() {
    let (_d, engine) = tiny_engine(EngineConfig::default());
    let grammar = engine.compile_grammar(&schema()).unwrap();
    let cases = [(0.0, None), (1.0, Some(7)), (0.8, Some(99))];
    for (temperature, seed) in cases {
        let p = params(temperature, seed);
        let alone = collect(submit(
            &engine,
            prompt(1, 12),
            p.clone(),
            Some(grammar.clone()),
        ));
        assert_eq!(alone.2, FinishReason::Stop, "{:?}", alone.1);
        check(&alone.1);

        // Beside free-running and other constrained sequences, arriving apart.
        let mut others = Vec::new();
        for i in 0..4 {
            std::thread::sleep(Duration::from_millis(2));
            let free = SamplingParams {
                max_tokens: 40,
                ignore_eos: true,
                ..SamplingParams::default()
            };
            others.push(submit(&engine, prompt(10 + i, 20 + i), free, None));
            let c = params(1.0, Some(i as u64));
            others.push(submit(&engine, prompt(20 + i, 9), c, Some(grammar.clone())));
        }
        let crowded = collect(submit(&engine, prompt(1, 12), p, Some(grammar.clone())));
        for (i, s) in others.into_iter().enumerate() {
            let (_, text, reason) = collect(s);
            if i % 2 == 1 {
                assert_eq!(reason, FinishReason::Stop);
                check(&text);
            }
        }
        assert_eq!(
            alone.0, crowded.0,
            "temperature {temperature}, seed {seed:?}"
        );
    }
}

#[test]
fn constrained_output_survives_preemption_unchanged() {
    let grammar_of = |e: &EngineHandle| e.compile_grammar(&schema()).unwrap();
    let (_d, roomy) = tiny_engine(EngineConfig::default());
    let g = grammar_of(&roomy);
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| prompt(i, 5 + i * 7)).collect();
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| {
            collect(submit(
                &roomy,
                p.clone(),
                params(0.0, None),
                Some(g.clone()),
            ))
            .0
        })
        .collect();

    let (_d2, small) = tiny_engine(EngineConfig {
        num_kv_blocks: Some(16),
        max_num_batched_tokens: 16,
        enable_prefix_caching: false,
        ..EngineConfig::default()
    });
    let g = grammar_of(&small);
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| submit(&small, p.clone(), params(0.0, None), Some(g.clone())))
        .collect();
    let squeezed: Vec<_> = streams
        .into_iter()
        .map(|s| {
            let (ids, text, _) = collect(s);
            check(&text);
            ids
        })
        .collect();
    assert!(small.load().preemptions > 0, "expected preemption");
    assert_eq!(alone, squeezed);
}

#[test]
fn a_regex_grammar_ends_the_sequence_with_stop() {
    let (_d, engine) = tiny_engine(EngineConfig::default());
    let g = engine
        .compile_grammar(&GrammarSpec::Regex("(cat|dog)-[0-9]{2}".into()))
        .unwrap();
    let (_, text, reason) = collect(submit(&engine, prompt(3, 8), params(1.0, Some(3)), Some(g)));
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(text.len(), 6, "{text:?}");
    assert!(
        text.starts_with("cat-") || text.starts_with("dog-"),
        "{text:?}"
    );
    assert!(text[4..].bytes().all(|b| b.is_ascii_digit()), "{text:?}");
}

#[test]
fn logit_bias_forces_and_bans_tokens() {
    let (_d, engine) = tiny_engine(EngineConfig::default());
    let base = SamplingParams {
        max_tokens: 12,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let forced = SamplingParams {
        logit_bias: vec![(b'x' as u32, 100.0)],
        ..base.clone()
    };
    let (ids, _, _) = collect(submit(&engine, prompt(4, 10), forced, None));
    assert!(ids.iter().all(|&t| t == b'x' as u32), "{ids:?}");

    let (free, _, _) = collect(submit(&engine, prompt(4, 10), base.clone(), None));
    let banned = SamplingParams {
        logit_bias: vec![(free[0], -100.0)],
        ..base
    };
    let (ids, _, _) = collect(submit(&engine, prompt(4, 10), banned, None));
    assert_ne!(ids[0], free[0], "a -100 bias must ban the greedy token");
}
