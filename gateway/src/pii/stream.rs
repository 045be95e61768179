//! An [`Answer`] whose text passes through a transform that may hold some
//! back: each choice's text, and each tool call's arguments, is its own
//! stream with its own [`Held`] state, so a value split across two steps
//! is seen whole before it is released.

use std::collections::{HashMap, VecDeque};

use futures_util::future::BoxFuture;
use sluice_runtime::Usage;

use crate::answer::{Answer, BoxAnswer, Step};

/// What a stream carries: text, or a tool call's JSON arguments (a value
/// put back there must be escaped as a JSON string's content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Text,
    ToolArguments,
}

/// A transform over one stream of text pieces.
pub trait Held: Send {
    /// Takes the next piece; returns the text that is safe to release.
    fn push(&mut self, piece: &str) -> String;
    /// The stream ended: releases everything still held.
    fn finish(&mut self) -> String;
}

/// Makes the state of a new stream.
pub type MakeHeld = Box<dyn Fn(Carrier) -> Box<dyn Held> + Send>;

/// Key of a stream: a choice's text (`None`) or one of its tool calls.
type StreamKey = (usize, Option<usize>);

/// An answer with each of its streams passed through a [`Held`].
pub struct HeldAnswer {
    inner: BoxAnswer,
    make: MakeHeld,
    streams: HashMap<StreamKey, Box<dyn Held>>,
    /// Steps made by one inner step (a finished choice's released tool
    /// arguments before its `Finished`).
    pending: VecDeque<Step>,
}

impl HeldAnswer {
    pub fn wrap(inner: BoxAnswer, make: MakeHeld) -> BoxAnswer {
        Box::new(Self {
            inner,
            make,
            streams: HashMap::new(),
            pending: VecDeque::new(),
        })
    }

    fn stream(&mut self, key: StreamKey) -> &mut Box<dyn Held> {
        let carrier = match key.1 {
            None => Carrier::Text,
            Some(_) => Carrier::ToolArguments,
        };
        let make = &self.make;
        self.streams.entry(key).or_insert_with(|| make(carrier))
    }

    /// Turns one inner step into the steps to release (none while held).
    fn transform(&mut self, step: Step) {
        match step {
            Step::Token {
                choice,
                text,
                logprob,
                token,
            } => {
                let text = self.stream((choice, None)).push(&text);
                // A held piece with nothing to show is skipped, unless it
                // carries its token's log-probability.
                if !text.is_empty() || logprob.is_some() {
                    self.pending.push_back(Step::Token {
                        choice,
                        text,
                        logprob,
                        token,
                    });
                }
            }
            Step::ToolCall {
                choice,
                index,
                id,
                name,
                arguments,
            } => {
                let arguments = self.stream((choice, Some(index))).push(&arguments);
                if !arguments.is_empty() || id.is_some() || name.is_some() {
                    self.pending.push_back(Step::ToolCall {
                        choice,
                        index,
                        id,
                        name,
                        arguments,
                    });
                }
            }
            Step::Finished {
                choice,
                reason,
                text,
                stop_sequence,
            } => {
                let mut calls: Vec<usize> = self
                    .streams
                    .keys()
                    .filter(|(c, call)| *c == choice && call.is_some())
                    .filter_map(|(_, call)| *call)
                    .collect();
                calls.sort_unstable();
                for index in calls {
                    if let Some(mut held) = self.streams.remove(&(choice, Some(index))) {
                        let arguments = held.finish();
                        if !arguments.is_empty() {
                            self.pending.push_back(Step::ToolCall {
                                choice,
                                index,
                                id: None,
                                name: None,
                                arguments,
                            });
                        }
                    }
                }
                let mut held = self
                    .streams
                    .remove(&(choice, None))
                    .unwrap_or_else(|| (self.make)(Carrier::Text));
                let mut released = held.push(&text);
                released.push_str(&held.finish());
                self.pending.push_back(Step::Finished {
                    choice,
                    reason,
                    text: released,
                    stop_sequence,
                });
            }
            failed @ Step::Failed(_) => {
                self.streams.clear();
                self.pending.push_back(failed);
            }
        }
    }
}

impl HeldAnswer {
    fn release_all(&mut self) {
        let mut keys: Vec<StreamKey> = self.streams.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            let Some(mut held) = self.streams.remove(&key) else {
                continue;
            };
            let text = held.finish();
            if text.is_empty() {
                continue;
            }
            self.pending.push_back(match key {
                (choice, None) => Step::Token {
                    choice,
                    text,
                    logprob: None,
                    token: None,
                },
                (choice, Some(index)) => Step::ToolCall {
                    choice,
                    index,
                    id: None,
                    name: None,
                    arguments: text,
                },
            });
        }
    }
}

impl Answer for HeldAnswer {
    fn num_choices(&self) -> usize {
        self.inner.num_choices()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        Box::pin(async move {
            loop {
                if let Some(step) = self.pending.pop_front() {
                    return Some(step);
                }
                match self.inner.next().await {
                    Some(step) => self.transform(step),
                    // An answer that ended without finishing a choice
                    // still gets what was held back.
                    None if !self.streams.is_empty() => self.release_all(),
                    None => return None,
                }
            }
        })
    }

    fn usage(&self) -> Usage {
        self.inner.usage()
    }
}
