//! An answer in the making, whoever makes it: the local engine
//! ([`crate::generate::Generation`]), an upstream provider, or the cache
//! replaying a stored answer. The handlers render any [`Answer`] as JSON or
//! SSE the same way, so each producer only has to speak in [`Step`]s.

use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use sluice_models::ToolCall;
use sluice_runtime::{FinishReason, TokenLogprob, Usage};

use crate::error::ApiError;

/// What happened next to one of the request's choices.
#[derive(Debug)]
pub enum Step {
    Token {
        choice: usize,
        text: String,
        logprob: Option<TokenLogprob>,
        /// The token's id, when the producer is the local engine (stream
        /// analysers read ids, never re-tokenise); `None` for providers and
        /// cache replays, whose pieces are text only.
        token: Option<u32>,
    },
    Finished {
        choice: usize,
        reason: FinishReason,
        /// Held-back text released at the end; append it.
        text: String,
        /// The stop string that ended the choice, when the producer knows
        /// it (the local engine; an upstream that reports it, as vLLM does
        /// in `stop_reason`; a cache replay of either).
        stop_sequence: Option<String>,
    },
    /// A piece of a tool call, framed as OpenAI streams them: the first
    /// piece of call `index` carries its `id` and function `name`, later
    /// pieces only more of its arguments' JSON text. An answer with calls
    /// finishes with [`FinishReason::ToolCalls`].
    ToolCall {
        choice: usize,
        /// The call's position among the choice's calls, from 0.
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    /// The request failed; no more steps follow.
    Failed(ApiError),
}

/// A source of [`Step`]s for every choice of one request.
pub trait Answer: Send {
    fn num_choices(&self) -> usize;
    /// The next step of any choice; `None` once every choice has finished
    /// or after a failure.
    fn next(&mut self) -> BoxFuture<'_, Option<Step>>;
    /// Token counts so far (final once `next` returned `None`).
    fn usage(&self) -> Usage;
}

pub type BoxAnswer = Box<dyn Answer>;

/// Why an answer was stopped before its producer finished it: a stream
/// analyser's verdict or the budget's cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyStop {
    /// What the client's open choices finish with: `content_filter` for a
    /// policy stop, `length` for a budget or a degeneration stop.
    pub finish: FinishReason,
    /// The reason's wire name (`x-sluice-stop-reason`,
    /// `sluice_stop_reason`): `pii`, `rules`, `degeneration`, `budget`.
    pub reason: &'static str,
}

/// Where the stage that stops an answer leaves its [`EarlyStop`], for the
/// stages that render (the final chunk's field, the header) or record it
/// (a stopped answer is never cached). Set at most once.
#[derive(Debug, Clone, Default)]
pub struct StopNote(Arc<OnceLock<EarlyStop>>);

impl StopNote {
    /// Records the stop; a later one is ignored (the first stop ended it).
    pub fn set(&self, stop: EarlyStop) {
        let _ = self.0.set(stop);
    }

    pub fn get(&self) -> Option<EarlyStop> {
        self.0.get().copied()
    }
}

/// One choice's whole answer, for a non-streamed response.
#[derive(Debug, Default, Clone)]
pub struct ChoiceOutput {
    pub text: String,
    pub finish_reason: Option<FinishReason>,
    /// The stop string that ended it, when known ([`Step::Finished`]).
    pub stop_sequence: Option<String>,
    pub logprobs: Vec<TokenLogprob>,
    /// Whole tool calls, reassembled from their [`Step::ToolCall`] pieces.
    pub tool_calls: Vec<ToolCall>,
}

impl ChoiceOutput {
    /// Adds one [`Step::ToolCall`] piece to the calls so far.
    pub fn add_tool_call(
        &mut self,
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: &str,
    ) {
        while self.tool_calls.len() <= index {
            self.tool_calls.push(ToolCall::default());
        }
        let call = &mut self.tool_calls[index];
        if let Some(id) = id {
            call.id = id;
        }
        if let Some(name) = name {
            call.name = name;
        }
        call.arguments.push_str(arguments);
    }
}

/// Runs an answer to its end.
pub async fn collect(answer: &mut dyn Answer) -> Result<Vec<ChoiceOutput>, ApiError> {
    let mut out: Vec<ChoiceOutput> = (0..answer.num_choices())
        .map(|_| ChoiceOutput::default())
        .collect();
    while let Some(step) = answer.next().await {
        match step {
            Step::Token {
                choice,
                text,
                logprob,
                ..
            } => {
                if let Some(o) = out.get_mut(choice) {
                    o.text.push_str(&text);
                    o.logprobs.extend(logprob);
                }
            }
            Step::Finished {
                choice,
                reason,
                text,
                stop_sequence,
            } => {
                if let Some(o) = out.get_mut(choice) {
                    o.text.push_str(&text);
                    o.finish_reason = Some(reason);
                    o.stop_sequence = stop_sequence;
                }
            }
            Step::ToolCall {
                choice,
                index,
                id,
                name,
                arguments,
            } => {
                if let Some(o) = out.get_mut(choice) {
                    o.add_tool_call(index, id, name, &arguments);
                }
            }
            Step::Failed(err) => return Err(err),
        }
    }
    Ok(out)
}
