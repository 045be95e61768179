//! Tokenizer and incremental detokenizer tests on the real SmolLM2 GGUF,
//! against ids that llama.cpp produced for the same file
//! (`tests/data/tokenization.jsonl`, `tests/data/greedy.jsonl`). The tiny
//! tokenizers the tests write themselves are in `tokenizer_tiny.rs`.

// Test helpers outside #[test] fns are not covered by clippy.toml's allow-*-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::stream;
use serde_json::Value as Json;
use sluice_models::gguf::GgufFile;
use sluice_models::{demo_chat_model_path, IncrementalDecoder, ModelError, Tokenizer};

fn smollm2() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = demo_chat_model_path();
        assert!(
            path.is_file(),
            "the demo model is missing at {}: run scripts/fetch-models.sh first",
            path.display()
        );
        let gguf = GgufFile::open(&path).expect("open the SmolLM2 GGUF");
        Tokenizer::from_gguf(&gguf).expect("build the tokenizer from GGUF metadata")
    })
}

fn jsonl(name: &str) -> Vec<Json> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

#[test]
fn smollm2_encodes_like_llama_cpp() {
    let tok = smollm2();
    let cases = jsonl("tokenization.jsonl");
    assert!(cases.len() >= 30, "reference data looks truncated");
    let mut failures = Vec::new();
    for case in &cases {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids"]);
        let got = tok.encode(text, false).expect("encode");
        if got != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_decode_round_trips_reference_texts() {
    let tok = smollm2();
    for case in jsonl("tokenization.jsonl") {
        let text = case["text"].as_str().expect("text");
        let ids = ids(&case["ids"]);
        assert_eq!(
            tok.decode(&ids, false).expect("decode"),
            text,
            "ids {ids:?}"
        );
    }
}

#[test]
fn decode_skips_special_tokens_only_when_asked() {
    let tok = smollm2();
    let ids = tok.encode("a<|im_end|>b", false).expect("encode");
    assert_eq!(tok.decode(&ids, false).expect("decode"), "a<|im_end|>b");
    assert_eq!(tok.decode(&ids, true).expect("decode"), "ab");
}

#[test]
fn decode_rejects_out_of_range_ids() {
    let tok = smollm2();
    let err = tok
        .decode(&[19556, 49152], true)
        .expect_err("49152 is past the vocabulary");
    assert!(
        matches!(err, ModelError::Tokenizer(ref m) if m.contains("49152")),
        "{err}"
    );
}

#[test]
fn smollm2_chat_prompts_encode_to_reference_ids() {
    let tok = smollm2();
    for case in jsonl("greedy.jsonl") {
        let prompt = case["prompt"].as_str().expect("prompt");
        let want = ids(&case["prompt_ids"]);
        assert_eq!(
            tok.encode(prompt, false).expect("encode"),
            want,
            "{prompt:?}"
        );
        // The prompt already starts with BOS (<|im_start|>) and the model
        // asks for none: asking for BOS must not add a second one.
        assert_eq!(
            tok.encode(prompt, true).expect("encode"),
            want,
            "{prompt:?}"
        );
    }
}

#[test]
fn smollm2_greedy_ids_decode_to_reference_text() {
    let tok = smollm2();
    for case in jsonl("greedy.jsonl") {
        let greedy = ids(&case["greedy_ids"]);
        let want = case["greedy_text"].as_str().expect("greedy_text");
        assert_eq!(tok.decode(&greedy, true).expect("decode"), want);
        let (chunks, tail) = stream(tok, &greedy);
        assert_eq!(chunks.concat() + &tail, want);
    }
}

#[test]
fn smollm2_special_tokens_come_from_metadata() {
    let tok = smollm2();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert_eq!(
        tok.eos_ids().first(),
        Some(&2),
        "EOS comes first: {:?}",
        tok.eos_ids()
    );
    // llama.cpp also ends generation on <|endoftext|>.
    assert!(tok.eos_ids().contains(&0), "{:?}", tok.eos_ids());
    assert!(!tok.eos_ids().contains(&1), "{:?}", tok.eos_ids());
    assert!(!tok.adds_bos(), "tokenizer.ggml.add_bos_token is false");
    assert_eq!(tok.encode("Hello", true).expect("encode"), vec![19556]);
    for id in 0..17 {
        assert!(tok.is_special(id), "control token {id}");
    }
    assert!(!tok.is_special(17));
    assert!(!tok.is_special(905));
    assert_eq!(tok.id_to_token(905).as_deref(), Some("Ġworld"));
    assert_eq!(tok.id_to_token(1).as_deref(), Some("<|im_start|>"));
    assert_eq!(tok.id_to_token(49152), None);
    let template = tok
        .chat_template_source()
        .expect("the GGUF carries a chat template");
    assert!(template.contains("<|im_start|>"), "{template}");
}

#[test]
fn incremental_decoder_never_splits_characters() {
    let tok = smollm2();
    let texts = [
        "Привет, мир! Съешь же ещё этих мягких французских булок.",
        "emoji: 😀🚀👍🏽 and ❤️ and 👨‍👩‍👧",
        "日本語のテキスト、中文文本和한국어 텍스트",
        "mixed: naïve café, Zürich straße, «кавычки» — 数字 12345",
        "<|im_start|>assistant\nОтвет: 42 🙂<|im_end|>\n",
    ];
    let mut held_back = false;
    for text in texts {
        let ids = tok.encode(text, false).expect("encode");
        let (chunks, tail) = stream(tok, &ids);
        for chunk in &chunks {
            assert!(
                !chunk.contains('\u{FFFD}'),
                "broken character in {chunk:?} from {text:?}"
            );
        }
        held_back |= chunks.iter().any(String::is_empty);
        assert_eq!(
            chunks.concat() + &tail,
            tok.decode(&ids, true).expect("decode"),
            "{text:?}"
        );
        assert!(
            tail.is_empty(),
            "valid text leaves nothing to flush: {tail:?}"
        );
    }
    assert!(
        held_back,
        "multi-token characters must be held back at least once"
    );
}

#[test]
fn incremental_decoder_matches_decode_on_every_reference_line() {
    let tok = smollm2();
    for case in jsonl("tokenization.jsonl") {
        let ids = ids(&case["ids"]);
        let (chunks, tail) = stream(tok, &ids);
        assert_eq!(
            chunks.concat() + &tail,
            tok.decode(&ids, true).expect("decode")
        );
    }
}

#[test]
fn incremental_decoder_flushes_incomplete_bytes_on_finish() {
    let tok = smollm2();
    // "Привет" starts with a token holding only the first byte of "П".
    let ids = tok.encode("Привет", false).expect("encode");
    let mut dec = IncrementalDecoder::new();
    assert_eq!(dec.push(tok, ids[0]).expect("push"), "");
    let tail = dec.finish(tok).expect("finish");
    assert_eq!(tail, tok.decode(&ids[..1], true).expect("decode"));
    assert!(tail.contains('\u{FFFD}'));
}
