//! Stream analysers: small checks that read every answer stream as it is
//! made (the local engine's, a provider's, a cache replay's) and may stop
//! it early, saving the tokens that would follow.
//!
//! Main types: [`Analyser`] (one check: per token, per window of text, or
//! both), [`StreamAnalysers`] (built once at start from `[stream]`,
//! `[pii]` and `[defence]`; it wraps each request's answer) and
//! [`window::Analysed`] (the wrapped answer: it holds, releases and stops).
//!
//! The analysers: [`policy::PiiBlock`] and [`policy::OutputRules`] read
//! windows of text and stop with `content_filter`;
//! [`degeneration::Degeneration`] reads token ids (words where the producer
//! has no ids) and stops a loop with `length`; [`guard::OutputGuard`] (an
//! [`guard::AsyncAnalyser`]: an encoder pass) scores whole windows with the
//! input side's `[guard]` and stops with `content_filter`. The budget's cap (the
//! `budget` module) stops at the tokens the caller's budget covers and
//! reports into the same [`StopNote`](crate::answer::StopNote).
//!
//! Design decision: an early stop drops the wrapped answer at once. For the
//! local engine that drops the sequence's event stream, which the engine
//! notices before its next step and frees the sequence's KV blocks; for a
//! provider it closes the upstream connection. The client's open choices
//! end with a well-formed `Finished` (and `[DONE]`), never an error, and
//! the answer's usage counts what was generated, which is what is charged.

pub mod degeneration;
pub mod guard;
pub mod policy;
pub mod window;

use std::sync::Arc;

use sluice_runtime::FinishReason;

use crate::answer::{BoxAnswer, StopNote};
use crate::config::{GuardAction, StreamMode, StreamSettings};
use crate::defence::InputDefence;
use crate::guard::{Guard, GuardEncoders};
use crate::pii::Pii;

pub use window::{Analysed, Framing as WindowFraming};

/// The response header of a non-streamed answer an analyser stopped; a
/// streamed one carries `sluice_stop_reason` in its final chunk instead.
pub const STOP_HEADER: &str = "x-sluice-stop-reason";

/// What kind of stop an analyser asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// A policy violation: `content_filter`. In `stream_first` mode only
    /// recorded, since the text has left already.
    Policy,
    /// The budget is spent: `length`.
    Budget,
    /// The answer loops: `length`.
    Degenerate,
}

impl StopKind {
    pub fn finish(self) -> FinishReason {
        match self {
            Self::Policy => FinishReason::ContentFilter,
            Self::Budget | Self::Degenerate => FinishReason::Length,
        }
    }
}

/// An analyser's verdict to stop the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The analyser's name: the stop reason on the wire and in metrics.
    pub analyser: &'static str,
    pub kind: StopKind,
    /// For the audit log and the server's log; never the answer's text.
    pub detail: String,
}

/// One check over one stream of an answer (a choice). Each stream gets
/// its own instances, so an analyser keeps its state in plain fields.
pub trait Analyser: Send {
    /// One generated piece: the engine's token id when the producer has
    /// one, and its text. Cheap checks only: this runs on every token.
    fn on_token(&mut self, _token: Option<u32>, _text: &str) -> Option<Stop> {
        None
    }

    /// A window of text about to be released: the tail of what was
    /// already analysed, then what arrived since.
    fn on_window(&mut self, _text: &str) -> Option<Stop> {
        None
    }
}

/// Told once when an answer is stopped (the chain writes the audit record).
pub type OnStop = Box<dyn FnOnce(&Stop) + Send>;

/// Told of each policy hit on text already sent (`stream_first`): the
/// chain writes an audit record.
pub type OnObserve = Box<dyn Fn(&Stop) + Send>;

/// The serving guard, for the windows of the answers it applies to.
pub struct StreamGuard {
    pub guard: Arc<Guard>,
    pub encoders: Arc<dyn GuardEncoders>,
    /// `[guard] action`: what a key that names none gets (`off`: no guard
    /// on its answers; `block`: a guard that cannot score stops them).
    pub action: GuardAction,
}

/// The analysers and their settings, built once at start.
pub struct StreamAnalysers {
    settings: StreamSettings,
    pii: Option<Arc<Pii>>,
    rules: Option<(Arc<crate::defence::rules::RuleSet>, f32)>,
    /// The guard over windows, fail-open and fail-closed; `None` when no
    /// guard serves.
    guard: Option<[Arc<dyn guard::AsyncAnalyser>; 2]>,
    guard_action: GuardAction,
}

/// One request's wrapping: where its answer goes and who is told.
pub struct Wrap {
    pub model: String,
    /// The caller's key's mode, over the route's; `None`: the route's.
    pub key_mode: Option<StreamMode>,
    /// The caller's key's guard-on-windows switch, over the route's.
    pub key_guard: Option<bool>,
    /// The caller's key's guard action (`off` turns the guard off for its
    /// answers too); `None`: `[guard] action`.
    pub guard_action: Option<GuardAction>,
    /// Tokens per choice the producer may generate at most (for the
    /// tokens-saved metric); `None` when unknown.
    pub max_tokens: Option<usize>,
    pub note: StopNote,
    pub on_stop: OnStop,
    pub on_observe: OnObserve,
}

impl StreamAnalysers {
    /// Built even when `[stream]` is off for every route: a key's own
    /// policy may turn it on for that key's answers.
    pub fn new(
        settings: &StreamSettings,
        pii: Option<Arc<Pii>>,
        defence: Option<&InputDefence>,
        guard: Option<StreamGuard>,
    ) -> Self {
        let guard_action = guard.as_ref().map_or(GuardAction::Off, |g| g.action);
        Self {
            settings: settings.clone(),
            pii: pii.filter(|_| settings.pii),
            rules: defence
                .filter(|_| settings.rules)
                .map(|d| (d.rules().clone(), d.block_threshold())),
            guard: guard.map(|g| {
                let open: Arc<dyn guard::AsyncAnalyser> = Arc::new(guard::OutputGuard::new(
                    g.guard.clone(),
                    g.encoders.clone(),
                    false,
                ));
                let closed: Arc<dyn guard::AsyncAnalyser> =
                    Arc::new(guard::OutputGuard::new(g.guard, g.encoders, true));
                [open, closed]
            }),
            guard_action,
        }
    }

    /// The guard over this answer's windows, if it applies: on for the
    /// route or the key, and the key's guard action is not `off`.
    fn guard_for(
        &self,
        on: bool,
        action: Option<GuardAction>,
    ) -> Option<Arc<dyn guard::AsyncAnalyser>> {
        let [open, closed] = self.guard.as_ref().filter(|_| on)?;
        match action.unwrap_or(self.guard_action) {
            GuardAction::Off => None,
            GuardAction::Flag => Some(open.clone()),
            GuardAction::Block => Some(closed.clone()),
        }
    }

    /// The analysers of one stream.
    fn make(&self) -> Vec<Box<dyn Analyser>> {
        let mut analysers: Vec<Box<dyn Analyser>> = Vec::new();
        if let Some(pii) = &self.pii {
            analysers.push(Box::new(policy::PiiBlock::new(pii.clone())));
        }
        if let Some((rules, threshold)) = &self.rules {
            analysers.push(Box::new(policy::OutputRules::new(
                rules.clone(),
                *threshold,
            )));
        }
        if self.settings.degeneration {
            analysers.push(Box::new(degeneration::Degeneration::default()));
        }
        analysers
    }

    /// Whether an answer of `model` is analysed, as the caller's key
    /// (`key_mode`) or else the route says: what [`Self::wrap`] decides.
    pub fn is_on_for(&self, model: &str, key_mode: Option<StreamMode>) -> bool {
        key_mode.unwrap_or(self.settings.for_model(model).mode) != StreamMode::Off
    }

    /// `answer`, analysed as the caller's key or else the request's route
    /// says (unchanged when the mode is `off`).
    pub fn wrap(&self, answer: BoxAnswer, wrap: Wrap) -> BoxAnswer {
        let route = self.settings.for_model(&wrap.model);
        let mode = wrap.key_mode.unwrap_or(route.mode);
        let framing = match mode {
            StreamMode::Off => return answer,
            StreamMode::HoldBack => WindowFraming::HoldBack,
            StreamMode::StreamFirst => WindowFraming::StreamFirst,
            StreamMode::BufferFull => WindowFraming::BufferFull,
        };
        let streams = (0..answer.num_choices()).map(|_| self.make()).collect();
        let guard = self.guard_for(wrap.key_guard.unwrap_or(route.guard), wrap.guard_action);
        Analysed::wrap(
            answer,
            streams,
            window::Settings {
                framing,
                window_tokens: route.window_tokens,
                overlap_bytes: self.settings.overlap_bytes,
                guard_in_flight: self.settings.guard_in_flight,
            },
            guard,
            wrap,
        )
    }
}

#[cfg(test)]
mod tests;
