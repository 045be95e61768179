//! Tokenizers the tests write themselves: a SentencePiece-style GGUF, a
//! byte-level BPE GGUF under each named pre-tokenizer, and a Hugging Face
//! `tokenizer.json` with its config (the SmolLM2 reference tests are in
//! `tokenizer.rs`).

// Test helpers outside #[test] fns are not covered by clippy.toml's allow-*-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::stream;
use serde_json::{json, Value as Json};
use sluice_models::gguf::{GgufFile, GgufValue, GgufWriter};
use sluice_models::{IncrementalDecoder, ModelError, Tokenizer};

// ---------------------------------------------------------------- tiny SPM GGUF

const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_BYTE: i32 = 6;

/// A SentencePiece-style vocabulary: <unk>, <s>, </s>, 256 byte tokens, then
/// pieces whose scores decide the merge order.
fn tiny_spm_vocab() -> Vec<(String, f32, i32)> {
    let mut v = vec![
        ("<unk>".to_string(), 0.0, TYPE_UNKNOWN),
        ("<s>".to_string(), 0.0, TYPE_CONTROL),
        ("</s>".to_string(), 0.0, TYPE_CONTROL),
    ];
    v.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 0.0, TYPE_BYTE)));
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "llo", "hello", "▁hello", "▁w", "or",
        "▁wor", "ld", "▁world",
    ];
    v.extend(
        pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_string(), -(i as f32) - 1.0, TYPE_NORMAL)),
    );
    v
}

fn write_tiny_spm(dir: &Path, extra: &[(&str, GgufValue)]) -> Tokenizer {
    let vocab = tiny_spm_vocab();
    let mut w = GgufWriter::default();
    w.meta("general.architecture", GgufValue::String("llama".into()))
        .meta("tokenizer.ggml.model", GgufValue::String("llama".into()))
        .meta(
            "tokenizer.ggml.tokens",
            GgufValue::Array(
                vocab
                    .iter()
                    .map(|(t, _, _)| GgufValue::String(t.clone()))
                    .collect(),
            ),
        )
        .meta(
            "tokenizer.ggml.scores",
            GgufValue::Array(vocab.iter().map(|(_, s, _)| GgufValue::F32(*s)).collect()),
        )
        .meta(
            "tokenizer.ggml.token_type",
            GgufValue::Array(vocab.iter().map(|(_, _, t)| GgufValue::I32(*t)).collect()),
        );
    for (k, v) in extra {
        w.meta(k, v.clone());
    }
    let path = dir.join("tiny-spm.gguf");
    w.write(&path).expect("write GGUF");
    let gguf = GgufFile::open(&path).expect("open GGUF");
    Tokenizer::from_gguf(&gguf).expect("SPM tokenizer from GGUF")
}

fn spm_id(piece: &str) -> u32 {
    tiny_spm_vocab()
        .iter()
        .position(|(t, _, _)| t == piece)
        .unwrap_or_else(|| panic!("{piece} not in the tiny vocabulary")) as u32
}

#[test]
fn sentencepiece_gguf_merges_by_score_with_a_prefix_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = write_tiny_spm(dir.path(), &[]);
    assert_eq!(
        tok.encode("hello world", false).expect("encode"),
        vec![spm_id("▁hello"), spm_id("▁world")]
    );
    assert_eq!(
        tok.decode(&[spm_id("▁hello"), spm_id("▁world")], true)
            .expect("decode"),
        "hello world"
    );
    // A lower-scored merge must wait: "lld" → "ll" + "d", never "l" + "ld".
    assert_eq!(
        tok.encode("lld", false).expect("encode"),
        vec![spm_id("▁"), spm_id("ll"), spm_id("d")]
    );
}

#[test]
fn sentencepiece_gguf_falls_back_to_bytes_for_unknown_characters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = write_tiny_spm(dir.path(), &[]);
    let ids = tok.encode("hello ö!", false).expect("encode");
    assert_eq!(
        ids,
        vec![
            spm_id("▁hello"),
            spm_id("▁"),
            spm_id("<0xC3>"),
            spm_id("<0xB6>"),
            spm_id("<0x21>")
        ]
    );
    assert_eq!(tok.decode(&ids, true).expect("decode"), "hello ö!");

    let mut dec = IncrementalDecoder::new();
    let chunks: Vec<String> = ids
        .iter()
        .map(|&id| dec.push(&tok, id).expect("push"))
        .collect();
    assert_eq!(chunks, ["hello", " ", "", "ö", "!"]);
    assert_eq!(dec.finish(&tok).expect("finish"), "");
}

#[test]
fn sentencepiece_gguf_bos_and_specials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = write_tiny_spm(
        dir.path(),
        &[
            ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
            ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
        ],
    );
    assert_eq!(tok.bos_token(), Some("<s>"));
    assert_eq!(tok.eos_token(), Some("</s>"));
    assert_eq!(tok.eos_ids(), &[2]);
    assert!(
        tok.adds_bos(),
        "SentencePiece vocabularies add BOS unless told otherwise"
    );
    let hello = spm_id("▁hello");
    assert_eq!(tok.encode("hello", true).expect("encode"), vec![1, hello]);
    assert_eq!(
        tok.encode("<s>hello", true).expect("encode"),
        vec![1, hello],
        "never two BOS"
    );
    assert_eq!(
        tok.encode("hello</s>", false).expect("encode"),
        vec![hello, 2]
    );
    assert!(tok.is_special(1) && tok.is_special(2) && tok.is_special(0));
    assert!(!tok.is_special(hello));
    assert_eq!(tok.decode(&[1, hello, 2], true).expect("decode"), "hello");
    assert_eq!(
        tok.decode(&[1, hello, 2], false).expect("decode"),
        "<s> hello</s>"
    );

    let tok = write_tiny_spm(
        dir.path(),
        &[("tokenizer.ggml.add_bos_token", GgufValue::Bool(false))],
    );
    assert_eq!(tok.encode("hello", true).expect("encode"), vec![hello]);
}

#[test]
fn sentencepiece_incremental_decoding_keeps_inner_spaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = write_tiny_spm(dir.path(), &[]);
    let ids = tok.encode("hello world hello", false).expect("encode");
    let (chunks, tail) = stream(&tok, &ids);
    assert_eq!(chunks, ["hello", " world", " hello"]);
    assert_eq!(tail, "");
}

#[test]
fn gguf_without_tokenizer_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty.gguf");
    let mut w = GgufWriter::default();
    w.meta("general.architecture", GgufValue::String("llama".into()));
    w.write(&path).expect("write");
    let gguf = GgufFile::open(&path).expect("open");
    let err = Tokenizer::from_gguf(&gguf).expect_err("no tokenizer metadata");
    assert!(matches!(err, ModelError::Tokenizer(_)), "{err}");

    let mut w = GgufWriter::default();
    w.meta("tokenizer.ggml.model", GgufValue::String("t5".into()))
        .meta(
            "tokenizer.ggml.tokens",
            GgufValue::Array(vec![GgufValue::String("a".into())]),
        );
    w.write(&path).expect("write");
    let gguf = GgufFile::open(&path).expect("open");
    let err = Tokenizer::from_gguf(&gguf).expect_err("unsupported model");
    assert!(
        matches!(err, ModelError::Unsupported(ref m) if m.contains("t5")),
        "{err}"
    );
}

// ------------------------------------------------------ tiny byte-level GGUF

const BPE_TOKENS: [&str; 14] = [
    "<|bos|>", "1", "2", "3", "4", "5", "Ġ", "a", "b", "12", "123", "45", "Ġa", "Ġab",
];

fn bpe_id(piece: &str) -> u32 {
    BPE_TOKENS
        .iter()
        .position(|t| *t == piece)
        .unwrap_or_else(|| panic!("{piece} not in the tiny vocabulary")) as u32
}

fn write_tiny_bpe(dir: &Path, pre: &str) -> Tokenizer {
    let strings = |items: &[&str]| {
        GgufValue::Array(
            items
                .iter()
                .map(|s| GgufValue::String(s.to_string()))
                .collect(),
        )
    };
    let mut types = vec![GgufValue::I32(TYPE_CONTROL)];
    types.extend((1..BPE_TOKENS.len()).map(|_| GgufValue::I32(TYPE_NORMAL)));
    let mut w = GgufWriter::default();
    w.meta("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
        .meta("tokenizer.ggml.pre", GgufValue::String(pre.into()))
        .meta("tokenizer.ggml.tokens", strings(&BPE_TOKENS))
        .meta("tokenizer.ggml.token_type", GgufValue::Array(types))
        .meta(
            "tokenizer.ggml.merges",
            strings(&["1 2", "12 3", "4 5", "Ġ a"]),
        )
        .meta("tokenizer.ggml.bos_token_id", GgufValue::U32(0));
    let path = dir.join(format!("tiny-bpe-{pre}.gguf"));
    w.write(&path).expect("write GGUF");
    let gguf = GgufFile::open(&path).expect("open GGUF");
    Tokenizer::from_gguf(&gguf).expect("BPE tokenizer from GGUF")
}

#[test]
fn byte_level_gguf_follows_the_named_pre_tokenizer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = |pieces: &[&str]| pieces.iter().map(|p| bpe_id(p)).collect::<Vec<_>>();
    // (pre, pieces of "12345", of "2345", of " ab")
    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
    let cases: [Case; 4] = [
        // Llama 3: numbers in runs of up to three; whole words found in the
        // vocabulary skip merging (ignore_merges).
        ("llama-bpe", &["123", "45"], &["2", "3", "4", "5"], &["Ġab"]),
        // GPT-2: a number is one piece, merged as a whole.
        ("gpt-2", &["123", "45"], &["2", "3", "45"], &["Ġa", "b"]),
        // SmolLM and Qwen2 split digits one by one.
        (
            "smollm",
            &["1", "2", "3", "4", "5"],
            &["2", "3", "4", "5"],
            &["Ġa", "b"],
        ),
        (
            "qwen2",
            &["1", "2", "3", "4", "5"],
            &["2", "3", "4", "5"],
            &["Ġa", "b"],
        ),
    ];
    for (pre, a, b, c) in cases {
        let tok = write_tiny_bpe(dir.path(), pre);
        for (text, want) in [("12345", a), ("2345", b), (" ab", c)] {
            let got = tok.encode(text, false).expect("encode");
            assert_eq!(got, ids(want), "pre {pre}, text {text:?}");
            assert_eq!(tok.decode(&got, true).expect("decode"), text, "pre {pre}");
        }
        // llama.cpp adds BOS by default for Llama 3 vocabularies only.
        let with_bos = tok.encode("a", true).expect("encode");
        assert_eq!(
            with_bos.first() == Some(&0),
            pre == "llama-bpe",
            "pre {pre}: {with_bos:?}"
        );
        assert_eq!(
            tok.encode("<|bos|>a", true).expect("encode"),
            vec![0, bpe_id("a")],
            "pre {pre}"
        );
    }
}

// ------------------------------------------------------- tiny tokenizer.json

fn write_tiny_hf(dir: &Path) -> std::path::PathBuf {
    let vocab = json!({
        "<|bos|>": 0, "<|eos|>": 1, "<|eot|>": 2,
        "h": 3, "i": 4, "Ġ": 5, "t": 6, "e": 7, "r": 8,
        "hi": 9, "Ġt": 10, "he": 11, "Ġthe": 12, "re": 13, "Ġthere": 14
    });
    let added = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0},
        "padding": null,
        "added_tokens": [added(0, "<|bos|>"), added(1, "<|eos|>"), added(2, "<|eot|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab,
            "merges": ["h i", "Ġ t", "h e", "Ġt he", "r e", "Ġthe re"]
        }
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&tokenizer).expect("json"),
    )
    .expect("write");
    path
}

#[test]
fn hf_tokenizer_json_loads_with_its_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokenizer_json = write_tiny_hf(dir.path());
    let config_path = dir.path().join("tokenizer_config.json");
    let config = json!({
        "bos_token": "<|bos|>",
        "eos_token": {"content": "<|eos|>", "special": true},
        "add_bos_token": true,
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
    });
    std::fs::write(&config_path, config.to_string()).expect("write config");
    std::fs::write(
        dir.path().join("generation_config.json"),
        json!({"eos_token_id": [1, 2]}).to_string(),
    )
    .expect("write generation config");

    let tok = Tokenizer::from_hf_files(&tokenizer_json, Some(&config_path)).expect("load");
    // Truncation to 2 in tokenizer.json must not cut prompts.
    assert_eq!(
        tok.encode("hi there hi", false).expect("encode"),
        vec![9, 14, 5, 9]
    );
    assert_eq!(
        tok.encode("hi there", true).expect("encode"),
        vec![0, 9, 14]
    );
    assert_eq!(
        tok.encode("<|bos|>hi", true).expect("encode"),
        vec![0, 9],
        "never two BOS"
    );
    assert_eq!(tok.encode("hi<|eot|>", false).expect("encode"), vec![9, 2]);
    assert_eq!(
        tok.decode(&[0, 9, 14, 2], true).expect("decode"),
        "hi there"
    );
    assert_eq!(
        tok.decode(&[0, 9, 14, 2], false).expect("decode"),
        "<|bos|>hi there<|eot|>"
    );
    assert_eq!(tok.bos_token(), Some("<|bos|>"));
    assert_eq!(tok.bos_id(), Some(0));
    assert_eq!(tok.eos_token(), Some("<|eos|>"));
    assert_eq!(tok.eos_ids(), &[1, 2]);
    assert!(tok.is_special(2) && !tok.is_special(9));
    assert_eq!(tok.vocab_size(), 15);
    assert_eq!(tok.id_to_token(14).as_deref(), Some("Ġthere"));
    assert_eq!(
        tok.chat_template_source(),
        Some("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}")
    );
}

#[test]
fn hf_tokenizer_json_loads_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokenizer_json = write_tiny_hf(dir.path());
    let tok = Tokenizer::from_hf_files(&tokenizer_json, None).expect("load");
    assert_eq!(tok.encode("hi there", true).expect("encode"), vec![9, 14]);
    assert_eq!(tok.bos_id(), None);
    assert_eq!(tok.eos_ids(), &[] as &[u32]);
    assert_eq!(tok.chat_template_source(), None);
}

#[test]
fn hf_missing_tokenizer_json_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err =
        Tokenizer::from_hf_files(&dir.path().join("tokenizer.json"), None).expect_err("no file");
    assert!(
        matches!(err, ModelError::Tokenizer(ref m) if m.contains("tokenizer.json")),
        "{err}"
    );
}

#[test]
fn hf_add_bos_follows_the_post_processor_and_template_file_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokenizer_json = write_tiny_hf(dir.path());
    // Llama 3 style: no add_bos_token in the config, BOS added by the
    // tokenizer's TemplateProcessing post-processor.
    let mut tokenizer: Json =
        serde_json::from_str(&std::fs::read_to_string(&tokenizer_json).expect("read"))
            .expect("json");
    let bos = json!({"SpecialToken": {"id": "<|bos|>", "type_id": 0}});
    tokenizer["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [0], "tokens": ["<|bos|>"]}}
    });
    std::fs::write(&tokenizer_json, tokenizer.to_string()).expect("write");
    let config_path = dir.path().join("tokenizer_config.json");
    std::fs::write(&config_path, json!({"bos_token": "<|bos|>"}).to_string())
        .expect("write config");
    std::fs::write(dir.path().join("chat_template.jinja"), "{{ bos_token }}!")
        .expect("write template");

    let tok = Tokenizer::from_hf_files(&tokenizer_json, Some(&config_path)).expect("load");
    assert!(tok.adds_bos());
    assert_eq!(tok.encode("hi", true).expect("encode"), vec![0, 9]);
    assert_eq!(
        tok.encode("hi", false).expect("encode"),
        vec![9],
        "the post-processor never runs on its own"
    );
    assert_eq!(tok.chat_template_source(), Some("{{ bos_token }}!"));

    std::fs::write(
        &config_path,
        json!({"bos_token": "<|bos|>", "add_bos_token": false}).to_string(),
    )
    .expect("write config");
    let tok = Tokenizer::from_hf_files(&tokenizer_json, Some(&config_path)).expect("load");
    assert_eq!(
        tok.encode("hi", true).expect("encode"),
        vec![9],
        "add_bos_token: false wins"
    );
}
