#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use sluice_kernels::WeightDType;
use sluice_models::testing::{write_tiny_gguf, TinySpec, TINY_VOCAB};
use sluice_models::{load_llm, LoadKnobs, Tokenizer};

use super::*;

/// The tiny model's byte-level tokenizer: 256 byte tokens, then
/// `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` (EOS, 258).
fn tiny_tokenizer() -> Arc<Tokenizer> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &TinySpec::default(), WeightDType::F32).unwrap();
    let loaded = load_llm(&path, LoadKnobs::default(), &mut |_, _| {}).unwrap();
    Arc::new(loaded.tokenizer)
}

const EOS: u32 = 258;

fn grammars() -> (Arc<Tokenizer>, Grammars) {
    let tok = tiny_tokenizer();
    let g = Grammars::new(tok.clone(), TINY_VOCAB + 3).unwrap();
    (tok, g)
}

/// Walks the grammar taking, at each step, the allowed token that `pick`
/// prefers (by logits it builds), until the grammar ends or EOS is chosen.
fn walk(grammar: &Grammar, vocab: usize, pick: impl Fn(usize) -> Vec<f32>) -> (Vec<u8>, bool) {
    let mut seq = grammar.start();
    let mut out = Vec::new();
    for step in 0..200 {
        let mut logits = pick(step);
        logits.resize(vocab, 0.0);
        seq.apply(&mut logits).unwrap();
        let (best, _) = logits
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |acc, (i, &l)| {
                    if l > acc.1 {
                        (i, l)
                    } else {
                        acc
                    }
                },
            );
        let token = best as u32;
        if token == EOS {
            return (out, true);
        }
        assert!(
            token < 256,
            "a special token {token} was allowed mid-grammar"
        );
        out.push(token as u8);
        seq.consume(token).unwrap();
        if seq.is_finished() {
            return (out, true);
        }
    }
    (out, false)
}

#[test]
fn a_regex_grammar_only_lets_matching_text_through() {
    let (_tok, g) = grammars();
    let grammar = g.compile(&GrammarSpec::Regex("(yes|no)!".into())).unwrap();
    // Logits that prefer 'n', then 'o', then whatever else is allowed.
    let (out, ended) = walk(&grammar, TINY_VOCAB, |_| {
        let mut l = vec![0.0; TINY_VOCAB];
        l[b'n' as usize] = 5.0;
        l[b'y' as usize] = 3.0;
        l[b'z' as usize] = 9.0; // never allowed
        l
    });
    assert!(ended);
    assert_eq!(String::from_utf8(out).unwrap(), "no!");
}

#[test]
fn a_schema_walk_yields_json_that_matches_it() {
    let (_tok, g) = grammars();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green"]},
            "count": {"type": "integer", "minimum": 1, "maximum": 9}
        },
        "required": ["colour", "count"],
        "additionalProperties": false
    });
    let grammar = g
        .compile(&GrammarSpec::JsonSchema {
            schema: schema.to_string(),
            strict: true,
        })
        .unwrap();
    // Flat logits: the lowest allowed id wins each step.
    let (out, ended) = walk(&grammar, TINY_VOCAB, |_| vec![0.0; TINY_VOCAB]);
    assert!(ended);
    let text = String::from_utf8(out).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        ["red", "green"].contains(&v["colour"].as_str().unwrap()),
        "{text}"
    );
    let count = v["count"].as_i64().unwrap();
    assert!((1..=9).contains(&count), "{text}");
}

#[test]
fn ids_past_the_tokenizers_vocabulary_are_never_allowed() {
    let (_tok, g) = grammars();
    let grammar = g.compile(&GrammarSpec::JsonObject).unwrap();
    let mut seq = grammar.start();
    let mut logits = vec![1.0; TINY_VOCAB + 3];
    seq.apply(&mut logits).unwrap();
    assert!(logits[TINY_VOCAB..].iter().all(|&l| l == f32::NEG_INFINITY));
    assert_eq!(logits[b'{' as usize], 1.0);
    assert_eq!(
        logits[EOS as usize],
        f32::NEG_INFINITY,
        "EOS before any JSON"
    );
}

#[test]
fn the_same_spec_compiles_once() {
    let (_tok, g) = grammars();
    let spec = GrammarSpec::Regex("[a-z]+".into());
    let a = g.compile(&spec).unwrap();
    let b = g.compile(&spec).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(g.cached(), 1);
    g.compile(&GrammarSpec::Regex("[0-9]+".into())).unwrap();
    assert_eq!(g.cached(), 2);
}

#[test]
fn broken_grammars_are_refused_with_the_reason() {
    let (_tok, g) = grammars();
    for spec in [
        GrammarSpec::JsonSchema {
            schema: r#"{"type": "no-such-type"}"#.into(),
            strict: true,
        },
        GrammarSpec::JsonSchema {
            schema: r##"{"$ref": "#/$defs/missing"}"##.into(),
            strict: true,
        },
        GrammarSpec::JsonSchema {
            schema: "[1, 2]".into(),
            strict: true,
        },
        GrammarSpec::Regex("(unclosed".into()),
        GrammarSpec::Lark("start: undefined_rule".into()),
    ] {
        match g.compile(&spec) {
            Err(err) => assert!(!err.0.is_empty(), "{spec:?}"),
            Ok(_) => panic!("{spec:?} compiled"),
        }
    }
    assert_eq!(g.cached(), 0, "failures are not cached");
}

#[test]
fn sequences_of_one_grammar_do_not_share_state() {
    let (_tok, g) = grammars();
    let grammar = g.compile(&GrammarSpec::Regex("ab|cd".into())).unwrap();
    let mut first = grammar.start();
    first.consume(b'a' as u32).unwrap();
    let mut second = grammar.start();
    let mut logits = vec![0.0; TINY_VOCAB];
    second.apply(&mut logits).unwrap();
    assert_eq!(logits[b'c' as usize], 0.0, "the second starts afresh");
    assert_eq!(logits[b'b' as usize], f32::NEG_INFINITY);
}
