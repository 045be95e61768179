use std::collections::VecDeque;

use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use sluice_models::ToolFormat;
use sluice_runtime::{FinishReason, GrammarSpec, Usage};

use super::parser::{Parser, Piece};
use super::*;
use crate::answer::{collect, Answer, Step};
use crate::validate::{FunctionSpec, ToolChoice, Tools};

const FUNCTIONS: [&str; 2] = ["get_weather", "send_mail"];

/// What a whole answer came to: its text and its calls (name, arguments).
#[derive(Debug, Default, PartialEq)]
struct Parsed {
    text: String,
    calls: Vec<(String, String)>,
}

fn absorb(parsed: &mut Parsed, pieces: Vec<Piece>) {
    for piece in pieces {
        match piece {
            Piece::Text(t) => parsed.text.push_str(&t),
            Piece::Call { index, name } => {
                assert_eq!(index, parsed.calls.len(), "calls are announced in order");
                parsed.calls.push((name, String::new()));
            }
            Piece::Arguments { index, text } => parsed.calls[index].1.push_str(&text),
        }
    }
}

fn parse_chunks(format: ToolFormat, chunks: &[&str]) -> Parsed {
    let mut parser = Parser::new(format, FUNCTIONS.iter().map(|f| f.to_string()).collect());
    let mut parsed = Parsed::default();
    for chunk in chunks {
        absorb(&mut parsed, parser.feed(chunk));
    }
    absorb(&mut parsed, parser.finish());
    parsed
}

/// Parses `text` whole, then split in two at every character and one
/// character at a time: all must agree.
fn parse(format: ToolFormat, text: &str) -> Parsed {
    let whole = parse_chunks(format, &[text]);
    let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    for &at in &bounds {
        let (a, b) = text.split_at(at);
        assert_eq!(
            parse_chunks(format, &[a, b]),
            whole,
            "{format:?} split at {at}: {a:?} | {b:?}"
        );
    }
    let chars: Vec<String> = text.chars().map(String::from).collect();
    let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
    assert_eq!(
        parse_chunks(format, &chars),
        whole,
        "{format:?} char by char"
    );
    whole
}

fn call(name: &str, args: &str) -> (String, String) {
    (name.to_string(), args.to_string())
}

fn calls_only(calls: Vec<(String, String)>) -> Parsed {
    Parsed {
        text: String::new(),
        calls,
    }
}

#[test]
fn hermes_calls_are_read_wherever_the_text_is_split() {
    let one = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \
               \"days\": [1, 2.5e1], \"exact\": true, \"note\": \"a \\\"}\\\" b\"}}\n</tool_call>";
    assert_eq!(
        parse(ToolFormat::Hermes, one),
        calls_only(vec![call(
            "get_weather",
            "{\"city\": \"Paris\", \"days\": [1, 2.5e1], \"exact\": true, \"note\": \"a \\\"}\\\" b\"}"
        )])
    );
    let two = "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n\
               </tool_call>\n<tool_call>\n{\"name\": \"send_mail\", \"arguments\": {}}\n</tool_call>\n";
    assert_eq!(
        parse(ToolFormat::Hermes, two),
        Parsed {
            text: "Checking.".into(),
            calls: vec![
                call("get_weather", "{\"city\": \"Oslo\"}"),
                call("send_mail", "{}")
            ],
        }
    );
}

#[test]
fn smollm2_reads_an_array_of_calls_in_one_block() {
    let text = "<tool_call>[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}, \
                {\"name\": \"send_mail\", \"arguments\": {\"to\": \"a@b.c\"}}]</tool_call>";
    assert_eq!(
        parse(ToolFormat::SmolLm2, text),
        calls_only(vec![
            call("get_weather", "{\"city\": \"Rome\"}"),
            call("send_mail", "{\"to\": \"a@b.c\"}")
        ])
    );
    // A single object in the block is read too (Hermes-style output).
    let single = "<tool_call>{\"name\": \"send_mail\", \"arguments\": {}}</tool_call>";
    assert_eq!(
        parse(ToolFormat::SmolLm2, single),
        calls_only(vec![call("send_mail", "{}")])
    );
}

#[test]
fn llama3_reads_bare_json_python_tag_and_semicolons() {
    let bare = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Lima\"}}";
    assert_eq!(
        parse(ToolFormat::Llama3, bare),
        calls_only(vec![call("get_weather", "{\"city\": \"Lima\"}")])
    );
    let tagged =
        "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Lima\"}}; \
                  {\"name\": \"send_mail\", \"parameters\": {}}";
    assert_eq!(
        parse(ToolFormat::Llama3, tagged),
        calls_only(vec![
            call("get_weather", "{\"city\": \"Lima\"}"),
            call("send_mail", "{}")
        ])
    );
    // JSON later in a text answer is text.
    let prose = "The object {\"name\": \"get_weather\"} is an example.";
    assert_eq!(
        parse(ToolFormat::Llama3, prose),
        Parsed {
            text: prose.into(),
            calls: vec![]
        }
    );
}

#[test]
fn mistral_reads_tool_calls_arrays() {
    let text = "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Kyiv\"}}]";
    assert_eq!(
        parse(ToolFormat::Mistral, text),
        calls_only(vec![call("get_weather", "{\"city\": \"Kyiv\"}")])
    );
}

#[test]
fn text_without_calls_passes_unchanged() {
    for format in ToolFormat::ALL {
        for text in [
            "Plain answer.",
            "a < b, <tool and [TOOL and {braces} and <|python",
            "  leading and trailing space  \n",
            "",
        ] {
            assert_eq!(
                parse(format, text),
                Parsed {
                    text: text.into(),
                    calls: vec![]
                },
                "{format:?}"
            );
        }
    }
}

#[test]
fn malformed_calls_stay_text() {
    let cases = [
        "<tool_call>{not json}</tool_call> after",
        "<tool_call>\n{\"name\": \"rm_rf\", \"arguments\": {}}\n</tool_call>",
        "<tool_call>{\"name\": \"get_weather\", \"arguments\": \"{}\"}</tool_call>",
        "<tool_call>{\"arguments\": {\"a\": 1}}</tool_call>",
        "before <tool_call>{\"name\": \"get_wea",
    ];
    for text in cases {
        assert_eq!(
            parse(ToolFormat::Hermes, text),
            Parsed {
                text: text.into(),
                calls: vec![]
            },
            "{text}"
        );
    }
}

#[test]
fn arguments_before_the_name_wait_for_it() {
    let text = "<tool_call>{\"arguments\": {\"to\": \"x\"}, \"id\": 7, \"name\": \"send_mail\"}</tool_call>";
    assert_eq!(
        parse(ToolFormat::Hermes, text),
        calls_only(vec![call("send_mail", "{\"to\": \"x\"}")])
    );
}

#[test]
fn arguments_stream_before_the_call_ends() {
    let mut parser = Parser::new(ToolFormat::Hermes, vec!["get_weather".into()]);
    let first = parser.feed("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"ci");
    assert_eq!(
        first,
        vec![
            Piece::Call {
                index: 0,
                name: "get_weather".into()
            },
            Piece::Arguments {
                index: 0,
                text: "{\"ci".into()
            }
        ]
    );
    assert_eq!(
        parser.feed("ty\": \"Bern\"}}\n</tool"),
        vec![Piece::Arguments {
            index: 0,
            text: "ty\": \"Bern\"}".into()
        }]
    );
    assert_eq!(parser.feed("_call>"), vec![]);
    assert_eq!(parser.finish(), vec![]);
    assert_eq!(parser.calls(), 1);
}

#[test]
fn a_possible_marker_is_held_back_and_released_when_it_is_not_one() {
    let mut parser = Parser::new(ToolFormat::Hermes, vec!["f".into()]);
    assert_eq!(parser.feed("Hi <tool"), vec![Piece::Text("Hi".into())]);
    assert_eq!(parser.feed("box>"), vec![Piece::Text(" <toolbox>".into())]);
}

/// Steps given in order, as an engine would.
struct Scripted(VecDeque<Step>);

impl Answer for Scripted {
    fn num_choices(&self) -> usize {
        1
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        Box::pin(std::future::ready(self.0.pop_front()))
    }

    fn usage(&self) -> Usage {
        Usage::default()
    }
}

fn weather_tools(choice: ToolChoice) -> Tools {
    Tools {
        functions: vec![FunctionSpec {
            name: "get_weather".into(),
            description: None,
            parameters: Some(
                json!({"type": "object", "properties": {"city": {"type": "string"}},
                                    "required": ["city"]}),
            ),
            strict: true,
        }],
        choice,
        parallel: false,
    }
}

fn scripted(pieces: &[&str]) -> Scripted {
    let mut steps: VecDeque<Step> = pieces
        .iter()
        .map(|t| Step::Token {
            choice: 0,
            text: t.to_string(),
            logprob: None,
            token: None,
        })
        .collect();
    steps.push_back(Step::Finished {
        choice: 0,
        reason: FinishReason::Stop,
        text: String::new(),
        stop_sequence: None,
    });
    Scripted(steps)
}

#[tokio::test]
async fn an_answer_with_calls_finishes_with_tool_calls_and_openai_ids() {
    let tools = weather_tools(ToolChoice::Auto);
    let inner = scripted(&[
        "<tool_",
        "call>\n{\"name\": \"get_weather\", ",
        "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
    ]);
    let mut answer = ToolCalls::new(inner, Some(&tools), ToolFormat::Hermes);
    let out = collect(&mut answer).await.unwrap();
    assert_eq!(out[0].finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(out[0].text, "");
    let call = &out[0].tool_calls[0];
    assert_eq!(call.name, "get_weather");
    assert_eq!(call.arguments, "{\"city\": \"Paris\"}");
    let suffix = call.id.strip_prefix("call_").unwrap();
    assert_eq!(suffix.len(), 24);
    assert!(suffix.chars().all(|c| c.is_ascii_alphanumeric()));
}

#[tokio::test]
async fn tool_choice_none_leaves_the_text_alone() {
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>";
    let tools = weather_tools(ToolChoice::None);
    let mut answer = ToolCalls::new(scripted(&[text]), Some(&tools), ToolFormat::Hermes);
    let out = collect(&mut answer).await.unwrap();
    assert_eq!(out[0].text, text);
    assert_eq!(out[0].finish_reason, Some(FinishReason::Stop));
    assert!(out[0].tool_calls.is_empty());
}

#[test]
fn forced_choices_get_a_grammar_per_family_and_auto_none() {
    let named = weather_tools(ToolChoice::Function("get_weather".into()));
    for format in ToolFormat::ALL {
        let Some(GrammarSpec::Lark(lark)) = call_grammar(format, &named, None) else {
            panic!("{format:?}: no grammar");
        };
        assert!(lark.contains("\\\"get_weather\\\""), "{lark}");
        assert!(lark.contains("%json"), "{lark}");
        assert!(lark.contains(format.arguments_key()), "{format:?}: {lark}");
    }
    assert_eq!(
        call_grammar(ToolFormat::Hermes, &weather_tools(ToolChoice::Auto), None),
        None
    );
    assert_eq!(
        call_grammar(ToolFormat::Hermes, &weather_tools(ToolChoice::None), None),
        None
    );
    let answer = GrammarSpec::JsonObject;
    let Some(GrammarSpec::Lark(either)) = call_grammar(
        ToolFormat::Hermes,
        &weather_tools(ToolChoice::Auto),
        Some(&answer),
    ) else {
        panic!("auto with a response_format is a call or the JSON answer");
    };
    assert!(either.starts_with("start: calls | answer"), "{either}");
    let _: Value = json!(null);
}
