//! The cache's two [`Answer`]s: [`Replay`] serves a stored answer (in
//! several chunks per choice, so a streamed hit is framed like a generated
//! one: text, then each tool call as its id and name followed by pieces of
//! its arguments) and [`Recorder`] passes a generated answer through while
//! keeping a copy, which it stores once every choice has finished.
//!
//! Design choice: the recorder stores when the wrapped answer returns
//! `None`, that is after the last choice finished and before the handler
//! sends `[DONE]`; a failure or a dropped stream (client gone) never
//! reaches that point, so partial answers are never stored. Nor is an
//! answer any of whose choices an upstream's content filter ended. The insert is
//! awaited there rather than spawned: in process it takes microseconds,
//! with Redis one pipelined round trip under a 250 ms timeout, and no task
//! outlives the request.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sluice_runtime::{FinishReason, Usage};

use super::{Cache, StoredAnswer, StoredChoice, Ticket};
use crate::answer::{Answer, BoxAnswer, Step, StopNote};

/// Characters per replayed chunk at most (cut at a char boundary).
const REPLAY_CHUNK_CHARS: usize = 24;

/// A stored answer, replayed as steps.
pub struct Replay {
    num_choices: usize,
    steps: VecDeque<Step>,
    usage: Usage,
}

impl Replay {
    pub fn new(answer: &StoredAnswer) -> Self {
        let mut steps = VecDeque::new();
        for (choice, c) in answer.choices.iter().enumerate() {
            for piece in chunks(&c.text, REPLAY_CHUNK_CHARS) {
                steps.push_back(Step::Token {
                    choice,
                    text: piece.to_string(),
                    logprob: None,
                    token: None,
                });
            }
            // OpenAI's framing: id and name first, then the arguments' text.
            for (index, call) in c.tool_calls.iter().enumerate() {
                steps.push_back(Step::ToolCall {
                    choice,
                    index,
                    id: Some(call.id.clone()),
                    name: Some(call.name.clone()),
                    arguments: String::new(),
                });
                for piece in chunks(&call.arguments, REPLAY_CHUNK_CHARS) {
                    steps.push_back(Step::ToolCall {
                        choice,
                        index,
                        id: None,
                        name: None,
                        arguments: piece.to_string(),
                    });
                }
            }
            steps.push_back(Step::Finished {
                choice,
                reason: c.finish_reason,
                text: String::new(),
                stop_sequence: c.stop_sequence.clone(),
            });
        }
        Self {
            num_choices: answer.choices.len(),
            steps,
            usage: answer.usage,
        }
    }
}

/// Splits text into pieces of at most `max` chars, preferring to end a
/// piece after whitespace so words stay whole.
fn chunks(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let hard = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let cut = if hard == rest.len() {
            hard
        } else {
            rest[..hard]
                .rfind(char::is_whitespace)
                .map(|i| i + rest[i..].chars().next().map_or(1, char::len_utf8))
                .filter(|&i| i > 0)
                .unwrap_or(hard)
        };
        let (piece, tail) = rest.split_at(cut);
        out.push(piece);
        rest = tail;
    }
    out
}

impl Answer for Replay {
    fn num_choices(&self) -> usize {
        self.num_choices
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        let step = self.steps.pop_front();
        Box::pin(async move { step })
    }

    fn usage(&self) -> Usage {
        self.usage
    }
}

/// A generated answer on its way to the client, copied for the cache.
pub struct Recorder {
    inner: BoxAnswer,
    cache: Arc<Cache>,
    ticket: Option<Ticket>,
    choices: Vec<StoredChoice>,
    finished: Vec<bool>,
    /// An answer stopped early is cut short: never stored.
    stop: StopNote,
}

impl Recorder {
    pub fn new(inner: BoxAnswer, cache: Arc<Cache>, ticket: Ticket, stop: StopNote) -> Self {
        let n = inner.num_choices();
        Self {
            inner,
            cache,
            ticket: Some(ticket),
            choices: vec![
                StoredChoice {
                    text: String::new(),
                    finish_reason: FinishReason::Stop,
                    stop_sequence: None,
                    tool_calls: Vec::new(),
                };
                n
            ],
            finished: vec![false; n],
            stop,
        }
    }

    fn observe(&mut self, step: &Step) {
        match step {
            Step::Token { choice, text, .. } => {
                if let Some(c) = self.choices.get_mut(*choice) {
                    c.text.push_str(text);
                }
            }
            Step::Finished {
                choice,
                reason,
                text,
                stop_sequence,
            } => {
                if let (Some(c), Some(f)) = (
                    self.choices.get_mut(*choice),
                    self.finished.get_mut(*choice),
                ) {
                    c.text.push_str(text);
                    c.finish_reason = *reason;
                    c.stop_sequence.clone_from(stop_sequence);
                    *f = true;
                }
                // A filtered answer depends on the upstream's policy of the
                // day and may be a canned refusal: serving it again to
                // everyone who asks the same thing would spread it.
                if *reason == FinishReason::ContentFilter {
                    self.ticket = None;
                }
            }
            Step::ToolCall {
                choice,
                index,
                id,
                name,
                arguments,
            } => {
                if let Some(c) = self.choices.get_mut(*choice) {
                    while c.tool_calls.len() <= *index {
                        c.tool_calls.push(sluice_models::ToolCall::default());
                    }
                    let call = &mut c.tool_calls[*index];
                    if let Some(id) = id {
                        call.id.clone_from(id);
                    }
                    if let Some(name) = name {
                        call.name.clone_from(name);
                    }
                    call.arguments.push_str(arguments);
                }
            }
            // Nothing of a failed answer is stored.
            Step::Failed(_) => self.ticket = None,
        }
    }

    async fn store(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        if self.stop.get().is_some() {
            return;
        }
        if self.finished.iter().all(|f| *f) {
            let answer = StoredAnswer {
                choices: std::mem::take(&mut self.choices),
                usage: self.inner.usage(),
            };
            self.cache.insert(ticket, answer).await;
        }
    }
}

impl Answer for Recorder {
    fn num_choices(&self) -> usize {
        self.inner.num_choices()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        Box::pin(async move {
            let step = self.inner.next().await;
            match &step {
                Some(s) => self.observe(s),
                None => self.store().await,
            }
            step
        })
    }

    fn usage(&self) -> Usage {
        self.inner.usage()
    }
}
