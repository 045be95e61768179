//! Streaming exactly as OpenAI frames it: `data: {json}\n\n` events, one id
//! for every chunk, content deltas as they come (empty ones skipped), a
//! chunk with `finish_reason` per choice, then a usage chunk with
//! `choices: []` when asked, then `data: [DONE]`. A failure mid-stream sends
//! one error object and ends the stream without `[DONE]`.
//!
//! A choice that a stream analyser (or the budget) stopped early ends with
//! its `finish_reason` chunk carrying `sluice_stop_reason` (`pii`,
//! `rules`, `degeneration`, `budget`): the headers have left by then.
//!
//! The stream owns the [`crate::answer::Answer`]: when the client
//! disconnects, axum drops the stream, which drops the engine's event
//! streams (cancelling the sequences) or the upstream connection.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use sluice_runtime::{FinishReason, TokenLogprob, Usage};
use tracing::Instrument;

use crate::answer::{BoxAnswer, Step, StopNote};
use crate::wire::UsageWire;

/// The chunks of one endpoint's stream, as JSON text.
pub trait Framing: Send + 'static {
    /// Sent for each choice before any token (chat: the assistant role).
    fn opening(&self, choice: usize) -> Option<String>;
    /// New text for a choice, with the log-probabilities of its tokens.
    /// `logprobs` is empty unless the request asked for them.
    fn content(&mut self, choice: usize, text: &str, logprobs: &[TokenLogprob]) -> String;
    /// The choice's last chunk; `stop_sequence` is the stop string that
    /// ended it, when known (vLLM's `stop_reason`).
    fn finish(&self, choice: usize, reason: FinishReason, stop_sequence: Option<&str>) -> String;
    /// A piece of a tool call (see [`Step::ToolCall`]); `None` where the
    /// endpoint has no tool calls to show (completions never ask for them).
    fn tool_call(
        &mut self,
        _choice: usize,
        _index: usize,
        _id: Option<&str>,
        _name: Option<&str>,
        _arguments: &str,
    ) -> Option<String> {
        None
    }
    fn usage(&self, usage: UsageWire) -> String;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Opening,
    Running,
    Ended,
}

struct Driver<F: Framing> {
    generation: BoxAnswer,
    framing: F,
    include_usage: bool,
    queue: VecDeque<String>,
    /// Log-probabilities of tokens whose text is still held back, per choice;
    /// they ride on that choice's next content chunk.
    pending_logprobs: Vec<Vec<TokenLogprob>>,
    phase: Phase,
    choices: usize,
    /// Tokens received so far, over all choices (for the log).
    tokens: usize,
    /// The request's span: the stream outlives the handler that opened it.
    span: tracing::Span,
    /// Set when the answer was stopped early.
    stop: StopNote,
}

/// The SSE response for a started generation.
pub fn respond<F: Framing>(generation: BoxAnswer, framing: F, include_usage: bool) -> Response {
    respond_noted(generation, framing, include_usage, StopNote::default())
}

/// [`respond`], with the note an early stop leaves (see the module's doc).
pub fn respond_noted<F: Framing>(
    generation: BoxAnswer,
    framing: F,
    include_usage: bool,
    stop: StopNote,
) -> Response {
    let choices = generation.num_choices();
    let driver = Driver {
        generation,
        framing,
        include_usage,
        queue: VecDeque::new(),
        pending_logprobs: vec![Vec::new(); choices],
        phase: Phase::Opening,
        choices,
        tokens: 0,
        span: tracing::Span::current(),
        stop,
    };
    let events = stream::unfold(driver, |mut d| async move {
        let span = d.span.clone();
        let data = d.next_data().instrument(span).await?;
        Some((Ok::<_, Infallible>(Event::default().data(data)), d))
    });
    Sse::new(events).into_response()
}

impl<F: Framing> Driver<F> {
    async fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(data) = self.queue.pop_front() {
                return Some(data);
            }
            match self.phase {
                Phase::Ended => return None,
                Phase::Opening => {
                    for choice in 0..self.choices {
                        self.queue.extend(self.framing.opening(choice));
                    }
                    self.phase = Phase::Running;
                }
                Phase::Running => match self.generation.next().await {
                    Some(step) => self.on_step(step),
                    None => {
                        if self.include_usage {
                            let usage = self.generation.usage();
                            self.queue.push_back(self.framing.usage(usage.into()));
                        }
                        self.queue.push_back("[DONE]".into());
                        self.phase = Phase::Ended;
                        self.log_end(None);
                    }
                },
            }
        }
    }

    fn on_step(&mut self, step: Step) {
        match step {
            Step::Token {
                choice,
                text,
                logprob,
                ..
            } => {
                self.tokens += 1;
                if let Some(pending) = self.pending_logprobs.get_mut(choice) {
                    pending.extend(logprob);
                }
                if !text.is_empty() {
                    self.push_content(choice, &text);
                }
            }
            Step::Finished {
                choice,
                reason,
                text,
                stop_sequence,
            } => {
                let has_pending = self
                    .pending_logprobs
                    .get(choice)
                    .is_some_and(|p| !p.is_empty());
                if !text.is_empty() || has_pending {
                    self.push_content(choice, &text);
                }
                let mut data = self
                    .framing
                    .finish(choice, reason, stop_sequence.as_deref());
                if let Some(stop) = self.stop.get().filter(|s| s.finish == reason) {
                    data = with_stop_reason(data, stop.reason);
                }
                self.queue.push_back(data);
            }
            Step::ToolCall {
                choice,
                index,
                id,
                name,
                arguments,
            } => {
                self.tokens += 1;
                let piece = self.framing.tool_call(
                    choice,
                    index,
                    id.as_deref(),
                    name.as_deref(),
                    &arguments,
                );
                self.queue.extend(piece);
            }
            Step::Failed(err) => {
                self.queue.push_back(err.body_json());
                self.phase = Phase::Ended;
                self.log_end(Some(&err.to_string()));
            }
        }
    }

    fn push_content(&mut self, choice: usize, text: &str) {
        let logprobs = self
            .pending_logprobs
            .get_mut(choice)
            .map(std::mem::take)
            .unwrap_or_default();
        let data = self.framing.content(choice, text, &logprobs);
        self.queue.push_back(data);
    }

    fn log_end(&self, error: Option<&str>) {
        let Usage {
            prompt_tokens,
            completion_tokens,
            ..
        } = self.generation.usage();
        match error {
            None => tracing::info!(prompt_tokens, completion_tokens, "stream finished"),
            Some(e) => tracing::warn!(prompt_tokens, completion_tokens, error = e, "stream failed"),
        }
    }
}

/// Adds `sluice_stop_reason` to every choice of a finish chunk.
fn with_stop_reason(data: String, reason: &'static str) -> String {
    let Ok(mut chunk) = serde_json::from_str::<serde_json::Value>(&data) else {
        return data;
    };
    let Some(choices) = chunk.get_mut("choices").and_then(|c| c.as_array_mut()) else {
        return data;
    };
    for choice in choices {
        if let Some(choice) = choice.as_object_mut() {
            choice.insert("sluice_stop_reason".into(), reason.into());
        }
    }
    chunk.to_string()
}

impl<F: Framing> Drop for Driver<F> {
    fn drop(&mut self) {
        if self.phase != Phase::Ended {
            let _entered = self.span.enter();
            tracing::info!(
                tokens_sent = self.tokens,
                "client went away mid-stream; generation cancelled"
            );
        }
    }
}
