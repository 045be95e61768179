//! The [`Answer`]s providers hand back: [`ReadyAnswer`] for a whole
//! (non-streamed) response, [`StreamAnswer`] for an upstream stream decoded
//! event by event by a provider's [`EventDecoder`].
//!
//! Design choice: the stream is read inside `next()` itself, with no task of
//! its own: nothing runs when nobody asks, a dropped answer drops the
//! connection at once (which is how the upstream learns the client went
//! away), and backpressure is the client's pace.

use std::collections::VecDeque;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sluice_runtime::{FinishReason, Usage};

use super::messages::new_call_id;
use super::sse_client::{Framing, StreamParser};
use super::{error_chain, ProviderError};
use crate::answer::{Answer, BoxAnswer, Step};

/// What decoding produced so far.
#[derive(Debug, Default)]
pub(super) struct Decoded {
    pub steps: VecDeque<Step>,
    pub usage: Usage,
    finished: Vec<bool>,
    /// Per choice: the calls whose first piece (id and name) went out, by
    /// their index.
    calls: Vec<Vec<usize>>,
}

/// One piece of a tool call as an upstream sent it.
#[derive(Debug, Default)]
pub(super) struct CallPiece {
    pub index: usize,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

impl Decoded {
    pub fn new(num_choices: usize) -> Self {
        Self {
            steps: VecDeque::new(),
            usage: Usage::default(),
            finished: vec![false; num_choices],
            calls: vec![Vec::new(); num_choices],
        }
    }

    /// A piece of a tool call, normalised to OpenAI's framing whatever the
    /// upstream did: the first piece of a call carries its id (made up when
    /// the upstream sent none) and name; an id or name repeated on later
    /// pieces (some servers do) is dropped, so a client that joins the
    /// pieces' fields gets each once.
    pub fn tool_call(&mut self, choice: usize, piece: CallPiece) -> Result<(), ProviderError> {
        self.check_choice(choice)?;
        let CallPiece {
            index,
            id,
            name,
            arguments,
        } = piece;
        let Some(started) = self.calls.get_mut(choice) else {
            return Ok(());
        };
        if started.contains(&index) {
            if !arguments.is_empty() {
                self.steps.push_back(Step::ToolCall {
                    choice,
                    index,
                    id: None,
                    name: None,
                    arguments,
                });
            }
            return Ok(());
        }
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Err(ProviderError::Malformed(format!(
                "tool call {index} of choice {choice} began without a function name"
            )));
        };
        started.push(index);
        self.steps.push_back(Step::ToolCall {
            choice,
            index,
            id: Some(id.filter(|i| !i.is_empty()).unwrap_or_else(new_call_id)),
            name: Some(name),
            arguments,
        });
        Ok(())
    }

    /// Whether `choice` called a tool so far.
    pub fn called(&self, choice: usize) -> bool {
        self.calls.get(choice).is_some_and(|c| !c.is_empty())
    }

    pub fn token(&mut self, choice: usize, text: String) -> Result<(), ProviderError> {
        self.check_choice(choice)?;
        if !text.is_empty() {
            self.steps.push_back(Step::Token {
                choice,
                text,
                logprob: None,
                token: None,
            });
        }
        Ok(())
    }

    /// Ends `choice`. An answer that called tools ends with `tool_calls`
    /// even where the upstream said `stop` (Ollama and older vLLM do):
    /// clients look at the reason to know they must run the calls.
    pub fn finish(&mut self, choice: usize, reason: FinishReason) -> Result<(), ProviderError> {
        self.finish_with_stop(choice, reason, None)
    }

    /// Ends `choice`, naming the stop string that ended it when the
    /// upstream said (vLLM's `stop_reason`); it is kept only for a `stop`.
    pub fn finish_with_stop(
        &mut self,
        choice: usize,
        reason: FinishReason,
        stop_sequence: Option<String>,
    ) -> Result<(), ProviderError> {
        self.check_choice(choice)?;
        let (reason, stop_sequence) = match reason {
            FinishReason::Stop if self.called(choice) => (FinishReason::ToolCalls, None),
            FinishReason::Stop => (reason, stop_sequence),
            other => (other, None),
        };
        if let Some(done) = self.finished.get_mut(choice) {
            if !*done {
                *done = true;
                self.steps.push_back(Step::Finished {
                    choice,
                    reason,
                    text: String::new(),
                    stop_sequence,
                });
            }
        }
        Ok(())
    }

    pub fn all_finished(&self) -> bool {
        self.finished.iter().all(|f| *f)
    }

    fn check_choice(&self, choice: usize) -> Result<(), ProviderError> {
        if choice >= self.finished.len() {
            return Err(ProviderError::Malformed(format!(
                "choice index {choice} but {} choices were asked for",
                self.finished.len()
            )));
        }
        Ok(())
    }

    fn has_content(&self) -> bool {
        self.steps.iter().any(|s| {
            matches!(
                s,
                Step::Token { .. } | Step::ToolCall { .. } | Step::Finished { .. }
            )
        })
    }
}

/// Turns one framed payload of a provider's stream into steps.
pub(super) trait EventDecoder: Send {
    /// Returns `true` when the payload says the stream is over (`[DONE]`).
    fn decode(&mut self, payload: &str, out: &mut Decoded) -> Result<bool, ProviderError>;
}

/// A whole answer, already decoded.
pub(super) struct ReadyAnswer {
    num_choices: usize,
    steps: VecDeque<Step>,
    usage: Usage,
}

impl ReadyAnswer {
    pub fn boxed(decoded: Decoded) -> Result<BoxAnswer, ProviderError> {
        if !decoded.all_finished() {
            return Err(ProviderError::Malformed(
                "the answer lacks a choice or its finish reason".into(),
            ));
        }
        Ok(Box::new(Self {
            num_choices: decoded.finished.len(),
            steps: decoded.steps,
            usage: decoded.usage,
        }))
    }
}

impl Answer for ReadyAnswer {
    fn num_choices(&self) -> usize {
        self.num_choices
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        Box::pin(std::future::ready(self.steps.pop_front()))
    }

    fn usage(&self) -> Usage {
        self.usage
    }
}

/// An upstream stream being decoded as it is read.
pub(super) struct StreamAnswer<D> {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    parser: StreamParser,
    decoder: D,
    decoded: Decoded,
    /// The upstream said it is done, or the body ended.
    upstream_done: bool,
    /// A failure was reported; nothing follows.
    failed: bool,
}

impl<D: EventDecoder + 'static> StreamAnswer<D> {
    /// Reads the stream until its first content step (a token or a finish),
    /// so failures before that are still a plain `Err` the router can fail
    /// over on.
    pub async fn open(
        response: reqwest::Response,
        framing: Framing,
        decoder: D,
        num_choices: usize,
    ) -> Result<BoxAnswer, ProviderError> {
        let mut answer = Self {
            body: response.bytes_stream().boxed(),
            parser: StreamParser::new(framing),
            decoder,
            decoded: Decoded::new(num_choices),
            upstream_done: false,
            failed: false,
        };
        while !answer.decoded.has_content() {
            if answer.upstream_done {
                return Err(ProviderError::Malformed(
                    "the stream ended before any content".into(),
                ));
            }
            answer.pump().await?;
        }
        Ok(Box::new(answer))
    }

    /// Reads one network chunk and decodes every payload it completes.
    async fn pump(&mut self) -> Result<(), ProviderError> {
        match self.body.next().await {
            Some(Ok(bytes)) => self.parser.feed(&bytes)?,
            Some(Err(err)) => return Err(ProviderError::Transport(error_chain(&err))),
            None => {
                self.parser.finish()?;
                self.upstream_done = true;
            }
        }
        while let Some(payload) = self.parser.next_payload() {
            if self.decoder.decode(&payload, &mut self.decoded)? {
                self.upstream_done = true;
            }
        }
        if self.upstream_done && !self.decoded.all_finished() {
            return Err(ProviderError::Transport(
                "the stream ended before every choice finished".into(),
            ));
        }
        Ok(())
    }
}

impl<D: EventDecoder + 'static> Answer for StreamAnswer<D> {
    fn num_choices(&self) -> usize {
        self.decoded.finished.len()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        Box::pin(async move {
            loop {
                if let Some(step) = self.decoded.steps.pop_front() {
                    return Some(step);
                }
                if self.failed || self.upstream_done {
                    return None;
                }
                if let Err(err) = self.pump().await {
                    tracing::warn!(error = %err, "upstream stream failed after it started");
                    self.failed = true;
                    // Steps decoded before the failure still go out first.
                    self.decoded
                        .steps
                        .push_back(Step::Failed(err.to_api_error()));
                }
            }
        })
    }

    fn usage(&self) -> Usage {
        self.decoded.usage
    }
}

/// The runtime's finish reason for an OpenAI-compatible upstream's.
/// `content_filter` must reach the client as such (and keeps the answer out
/// of the cache); `function_call` is the name of OpenAI's old functions API
/// (and GigaChat's) for `tool_calls`; a reason the runtime has no name for
/// is a plain stop, noted in the log.
pub(super) fn finish_reason(wire: &str) -> FinishReason {
    match wire {
        "length" => FinishReason::Length,
        "stop" => FinishReason::Stop,
        "content_filter" => FinishReason::ContentFilter,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        other => {
            tracing::info!(reason = other, "upstream finish reason reported as stop");
            FinishReason::Stop
        }
    }
}
