//! Tool calls from the local engine: the model writes its calls as text in
//! its family's format ([`ToolFormat`]); [`ToolCalls`] wraps the engine's
//! answer and turns that text into [`Step::ToolCall`] pieces as it arrives
//! (the arguments stream as the model writes them, as vLLM's tool parsers
//! do), lets the text outside calls through, and ends an answer that made
//! calls with `finish_reason: "tool_calls"`. [`grammar`] builds the
//! constraint that forces calls for `tool_choice: "required"` or a named
//! function.
//!
//! Which format a model writes: the model's `tool_parser` in the config,
//! else what its chat template's text shows ([`ToolFormat::detect`]).
//!
//! Design choice: the parser works on text, after detokenisation, not on
//! token ids: the same code then reads every family, and a marker split
//! across tokens (or a JSON value split anywhere) is just text held back
//! until it can be told apart. Logprobs of text inside a call are not
//! reported (a call is not content).

pub mod grammar;
mod json;
pub mod parser;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use futures_util::future::BoxFuture;
use rand::distr::{Alphanumeric, SampleString};
use sluice_models::ToolFormat;
use sluice_runtime::{FinishReason, Usage};

use crate::answer::{Answer, Step};
use crate::validate::{ToolChoice, Tools};
use parser::{Parser, Piece};

pub use grammar::call_grammar;

/// An answer whose text is read for tool calls (or passed through as is,
/// when the request offers no tools or forbids calls).
pub struct ToolCalls<A> {
    inner: A,
    /// One parser per choice; `None`: nothing to parse.
    parsers: Option<Vec<Parser>>,
    ready: VecDeque<Step>,
}

impl<A: Answer> ToolCalls<A> {
    /// Wraps `inner`; its text is parsed for calls to `tools` written in
    /// `format` unless the request forbids calls (`tool_choice: "none"`).
    pub fn new(inner: A, tools: Option<&Tools>, format: ToolFormat) -> Self {
        let parsers = tools.filter(|t| t.choice != ToolChoice::None).map(|t| {
            let names: Vec<String> = t.functions.iter().map(|f| f.name.clone()).collect();
            (0..inner.num_choices())
                .map(|_| Parser::new(format, names.clone()))
                .collect()
        });
        Self {
            inner,
            parsers,
            ready: VecDeque::new(),
        }
    }

    async fn next_step(&mut self) -> Option<Step> {
        loop {
            if let Some(step) = self.ready.pop_front() {
                return Some(step);
            }
            let step = self.inner.next().await?;
            let Some(parsers) = &mut self.parsers else {
                return Some(step);
            };
            match step {
                Step::Token {
                    choice,
                    text,
                    logprob,
                    token,
                } => {
                    let Some(parser) = parsers.get_mut(choice) else {
                        return Some(Step::Token {
                            choice,
                            text,
                            logprob,
                            token,
                        });
                    };
                    let mut logprob = logprob;
                    for piece in parser.feed(&text) {
                        self.ready.push_back(to_step(choice, piece, &mut logprob));
                    }
                }
                Step::Finished {
                    choice,
                    reason,
                    text,
                    stop_sequence,
                } => {
                    let Some(parser) = parsers.get_mut(choice) else {
                        return Some(Step::Finished {
                            choice,
                            reason,
                            text,
                            stop_sequence,
                        });
                    };
                    let mut pieces = parser.feed(&text);
                    pieces.extend(parser.finish());
                    let mut none = None;
                    for piece in pieces {
                        self.ready.push_back(to_step(choice, piece, &mut none));
                    }
                    // A cut-off answer stays `length` even with whole calls in it.
                    let (reason, stop_sequence) = match reason {
                        FinishReason::Stop if parser.calls() > 0 => (FinishReason::ToolCalls, None),
                        other => (other, stop_sequence),
                    };
                    self.ready.push_back(Step::Finished {
                        choice,
                        reason,
                        text: String::new(),
                        stop_sequence,
                    });
                }
                other => return Some(other),
            }
        }
    }
}

/// A parser's piece as a step; the token's logprob goes with the first
/// text that came out of it.
fn to_step(
    choice: usize,
    piece: Piece,
    logprob: &mut Option<sluice_runtime::TokenLogprob>,
) -> Step {
    match piece {
        Piece::Text(text) => Step::Token {
            choice,
            text,
            logprob: logprob.take(),
            token: None,
        },
        Piece::Call { index, name } => Step::ToolCall {
            choice,
            index,
            id: Some(call_id()),
            name: Some(name),
            arguments: String::new(),
        },
        Piece::Arguments { index, text } => Step::ToolCall {
            choice,
            index,
            id: None,
            name: None,
            arguments: text,
        },
    }
}

/// `call_` and 24 random letters and digits, as OpenAI's ids look.
pub fn call_id() -> String {
    format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
}

impl<A: Answer> Answer for ToolCalls<A> {
    fn num_choices(&self) -> usize {
        self.inner.num_choices()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        Box::pin(self.next_step())
    }

    fn usage(&self) -> Usage {
        self.inner.usage()
    }
}
