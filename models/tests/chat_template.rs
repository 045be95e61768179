//! Chat template rendering: the demo model's own template against prompts
//! llama.cpp rendered (`tests/data/greedy.jsonl`), and Hugging Face template
//! features (raise_exception, Python methods, tojson, loop controls).

// Test helpers outside #[test] fns are not covered by clippy.toml's allow-*-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod smollm2;

use smollm2::{smollm2, smollm2_template};

use std::path::Path;

use serde_json::Value as Json;
use sluice_models::{ChatMessage, ChatTemplate, ModelError};

fn greedy_cases() -> Vec<Json> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/greedy.jsonl");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

fn messages(case: &Json) -> Vec<ChatMessage> {
    serde_json::from_value(case["messages"].clone()).expect("messages")
}

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage::text(role, content)
}

#[test]
fn smollm2_template_renders_reference_prompts() {
    let template = smollm2_template();
    let cases = greedy_cases();
    assert!(!cases.is_empty());
    for case in &cases {
        let want = case["prompt"].as_str().expect("prompt");
        let got = template.render(&messages(case), true).expect("render");
        assert_eq!(got, want);
        // And end to end: the rendered prompt tokenises to the reference ids.
        let want_ids: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).expect("ids");
        assert_eq!(smollm2().encode(&got, true).expect("encode"), want_ids);
    }
}

#[test]
fn without_generation_prompt_the_assistant_header_is_omitted() {
    let template = smollm2_template();
    for case in greedy_cases() {
        let with = template.render(&messages(&case), true).expect("render");
        let without = template.render(&messages(&case), false).expect("render");
        assert!(!without.ends_with("<|im_start|>assistant\n"), "{without:?}");
        assert_eq!(format!("{without}<|im_start|>assistant\n"), with);
    }
}

#[test]
fn smollm2_template_adds_default_system_prompt_only_when_missing() {
    let template = smollm2_template();
    let out = template
        .render(&[msg("user", "Hi")], false)
        .expect("render");
    assert!(out.starts_with("<|im_start|>system\n"), "{out:?}");
    let out = template
        .render(&[msg("system", "Be terse."), msg("user", "Hi")], false)
        .expect("render");
    assert_eq!(
        out,
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn raise_exception_surfaces_as_a_template_error() {
    let source = "{% if messages[0]['role'] != 'user' %}\
                  {{ raise_exception('Conversation roles must start with user') }}\
                  {% endif %}{{ messages[0]['content'] }}";
    let template = ChatTemplate::new(source, None, None).expect("compile");
    assert_eq!(
        template
            .render(&[msg("user", "ok")], false)
            .expect("render"),
        "ok"
    );
    let err = template
        .render(&[msg("assistant", "no")], false)
        .expect_err("the template raises");
    match err {
        ModelError::Template(m) => assert_eq!(m, "Conversation roles must start with user"),
        other => panic!("expected a template error, got {other:?}"),
    }
}

#[test]
fn llama3_style_template_uses_bos_token_and_trims() {
    let source = "{% set loop_messages = messages %}{% for message in loop_messages %}\
        {% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}\
        {% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}\
        {% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
    let template =
        ChatTemplate::new(source, Some("<|begin_of_text|>"), Some("<|eot_id|>")).expect("compile");
    let messages = [msg("system", "Be brief."), msg("user", "  Hi there \n")];
    assert_eq!(
        template.render(&messages, true).expect("render"),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert_eq!(
        template.render(&messages, false).expect("render"),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
    );
}

#[test]
fn missing_bos_token_renders_as_undefined() {
    let template = ChatTemplate::new("[{{ bos_token }}]{{ eos_token is defined }}", None, None)
        .expect("compile");
    assert_eq!(template.render(&[], false).expect("render"), "[]False");
    let template = ChatTemplate::new(
        "[{{ bos_token }}]{{ eos_token }}",
        Some("<s>"),
        Some("</s>"),
    )
    .expect("compile");
    assert_eq!(template.render(&[], false).expect("render"), "[<s>]</s>");
}

#[test]
fn python_string_methods_work() {
    let source = "{% for m in messages %}{{ m.content.strip().upper() }}|{{ m.role.startswith('us') }}|\
                  {{ m.content.split(',') | length }}|{{ m.content.replace('a', 'o').lstrip() }};{% endfor %}";
    let template = ChatTemplate::new(source, None, None).expect("compile");
    assert_eq!(
        template
            .render(&[msg("user", "  a,b  ")], false)
            .expect("render"),
        "A,B|True|2|o,b  ;"
    );
}

#[test]
fn blocks_are_trimmed_like_transformers() {
    // transformers compiles with trim_blocks and lstrip_blocks.
    let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}\n";
    let template = ChatTemplate::new(source, None, None).expect("compile");
    assert_eq!(
        template
            .render(
                &[msg("user", "a"), msg("system", "x"), msg("user", "b")],
                false
            )
            .expect("render"),
        "a\nb\n"
    );
}

#[test]
fn loop_controls_work() {
    let source = "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}\
                  {% if m.content == 'stop' %}{% break %}{% endif %}{{ m.content }}{% endfor %}";
    let template = ChatTemplate::new(source, None, None).expect("compile");
    let messages = [
        msg("system", "s"),
        msg("user", "a"),
        msg("user", "stop"),
        msg("user", "b"),
    ];
    assert_eq!(template.render(&messages, false).expect("render"), "a");
}

#[test]
fn tojson_matches_python_json_dumps() {
    let template = ChatTemplate::new(
        "{{ {'b': 1, 'a': [1, 2.5, 'é<&>\\'\"', none, true]} | tojson }}",
        None,
        None,
    )
    .expect("compile");
    assert_eq!(
        template.render(&[], false).expect("render"),
        r#"{"b": 1, "a": [1, 2.5, "é<&>'\"", null, true]}"#
    );
    let template = ChatTemplate::new(
        "{{ messages[0] | tojson(indent=2) }}|{{ {'z': 'ж', 'a': {}} | tojson(ensure_ascii=true, sort_keys=true) }}",
        None,
        None,
    )
    .expect("compile");
    assert_eq!(
        template
            .render(&[msg("user", "hi")], false)
            .expect("render"),
        "{\n  \"role\": \"user\",\n  \"content\": \"hi\"\n}|{\"a\": {}, \"z\": \"\\u0436\"}"
    );
}

#[test]
fn strftime_now_renders_a_date() {
    let template = ChatTemplate::new(
        "{{ strftime_now('%Y') }}|{{ strftime_now('%d %b %Y') }}",
        None,
        None,
    )
    .expect("compile");
    let out = template.render(&[], false).expect("render");
    let (year, date) = out.split_once('|').expect("two parts");
    let year: i32 = year.parse().expect("a year");
    assert!(year >= 2024, "{out}");
    assert!(
        date.ends_with(&year.to_string()) && date.len() == 11,
        "{out}"
    );
}

#[test]
fn template_errors_say_what_went_wrong() {
    let err = ChatTemplate::new("{% if %}", None, None).expect_err("syntax error");
    assert!(
        matches!(err, ModelError::Template(ref m) if m.contains("syntax")),
        "{err}"
    );
    let template =
        ChatTemplate::new("{{ messages[0].content.nosuchmethod() }}", None, None).expect("compile");
    let err = template
        .render(&[msg("user", "x")], false)
        .expect_err("unknown method");
    assert!(
        matches!(err, ModelError::Template(ref m) if m.contains("nosuchmethod") || m.contains("method")),
        "{err}"
    );
}
