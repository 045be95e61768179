//! [`Analysed`]: an answer whose every choice passes its analysers before
//! the client sees it, and which stops the producer when one says so.
//!
//! Each choice is its own stream. Each step's text is given to the
//! per-token checks at once; every `window_tokens` steps (and at the end)
//! the text since the last window, after the last `overlap_bytes` of what
//! was analysed before, goes to the window checks. How text is released:
//! - `hold_back`: after a window passes, the held steps are released
//!   except the last `overlap_bytes`, which are analysed again with the
//!   next window. A value of up to `overlap_bytes` that starts in a window
//!   and ends in the next is therefore seen whole before any byte of it is
//!   released: the client never receives bytes an analyser blocks.
//! - `stream_first`: every step is released at once; a policy stop is only
//!   recorded (the text has left), a loop still stops the answer.
//! - `buffer_full`: nothing is released before the choice ends.
//!
//! A stop drops the wrapped answer (the engine frees the sequence before
//! its next step; a provider's connection closes), discards what is held,
//! finishes every open choice with the stop's finish reason, notes the
//! stop for the renderers and the cache, and freezes the usage at what was
//! generated.

use std::collections::VecDeque;
use std::time::Instant;

use futures_util::future::BoxFuture;
use sluice_runtime::Usage;

use super::{Analyser, OnStop, Stop, StopKind, Wrap};
use crate::answer::{Answer, BoxAnswer, EarlyStop, Step, StopNote};
use crate::metrics::STREAM_ANALYSIS_SECONDS;

/// How text is released (the resolved [`crate::config::StreamMode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    HoldBack,
    StreamFirst,
    BufferFull,
}

/// The window's settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub framing: Framing,
    pub window_tokens: usize,
    pub overlap_bytes: usize,
}

/// One choice's state.
struct ChoiceStream {
    analysers: Vec<Box<dyn Analyser>>,
    /// Steps not released yet, oldest first.
    held: VecDeque<Step>,
    held_bytes: usize,
    /// The last `overlap_bytes` of the text already analysed.
    tail: String,
    /// Text since the last window.
    fresh: String,
    since_window: usize,
    /// Token and tool-call steps seen.
    tokens: usize,
    finished: bool,
}

impl ChoiceStream {
    fn new(analysers: Vec<Box<dyn Analyser>>) -> Self {
        Self {
            analysers,
            held: VecDeque::new(),
            held_bytes: 0,
            tail: String::new(),
            fresh: String::new(),
            since_window: 0,
            tokens: 0,
            finished: false,
        }
    }
}

/// The analysed answer.
pub struct Analysed {
    /// `None` once stopped or ended: dropping it is what frees the
    /// producer's resources.
    inner: Option<BoxAnswer>,
    choices: Vec<ChoiceStream>,
    settings: Settings,
    out: VecDeque<Step>,
    /// The usage when `inner` was let go.
    frozen: Usage,
    max_tokens: Option<usize>,
    note: StopNote,
    on_stop: Option<OnStop>,
}

impl Analysed {
    /// Wraps `inner`; `streams` holds each choice's analysers.
    pub fn wrap(
        inner: BoxAnswer,
        streams: Vec<Vec<Box<dyn Analyser>>>,
        settings: Settings,
        wrap: Wrap,
    ) -> BoxAnswer {
        let Wrap {
            model: _,
            key_mode: _,
            max_tokens,
            note,
            on_stop,
        } = wrap;
        Box::new(Self {
            inner: Some(inner),
            choices: streams.into_iter().map(ChoiceStream::new).collect(),
            settings,
            out: VecDeque::new(),
            frozen: Usage::default(),
            max_tokens,
            note,
            on_stop: Some(on_stop),
        })
    }

    fn on_step(&mut self, step: Step) {
        let started = Instant::now();
        match step {
            Step::Token { choice, token, .. } => self.on_piece(choice, token, step),
            Step::ToolCall { choice, .. } => self.on_piece(choice, None, step),
            Step::Finished {
                choice,
                reason,
                text,
            } => {
                let Some(cs) = self.choices.get_mut(choice) else {
                    self.out.push_back(Step::Finished {
                        choice,
                        reason,
                        text,
                    });
                    return;
                };
                cs.fresh.push_str(&text);
                if let Some(stop) = self.window(choice) {
                    self.stop(stop);
                    return;
                }
                let cs = &mut self.choices[choice];
                cs.finished = true;
                self.out.extend(cs.held.drain(..));
                cs.held_bytes = 0;
                self.out.push_back(Step::Finished {
                    choice,
                    reason,
                    text,
                });
            }
            Step::Failed(err) => {
                for cs in &mut self.choices {
                    cs.held.clear();
                    cs.held_bytes = 0;
                }
                self.out.push_back(Step::Failed(err));
            }
        }
        metrics::histogram!(STREAM_ANALYSIS_SECONDS).record(started.elapsed().as_secs_f64());
    }

    /// A token or a piece of a tool call.
    fn on_piece(&mut self, choice: usize, token: Option<u32>, step: Step) {
        let framing = self.settings.framing;
        let Some(cs) = self.choices.get_mut(choice) else {
            self.out.push_back(step);
            return;
        };
        let text = match &step {
            Step::Token { text, .. } => text.as_str(),
            Step::ToolCall { arguments, .. } => arguments.as_str(),
            Step::Finished { .. } | Step::Failed(_) => "",
        };
        cs.tokens += 1;
        let verdict = cs
            .analysers
            .iter_mut()
            .find_map(|a| a.on_token(token, text));
        if let Some(stop) = verdict {
            self.stop(stop);
            return;
        }
        cs.fresh.push_str(text);
        cs.since_window += 1;
        match framing {
            Framing::StreamFirst => self.out.push_back(step),
            Framing::HoldBack | Framing::BufferFull => {
                cs.held_bytes += text.len();
                cs.held.push_back(step);
            }
        }
        if cs.since_window < self.settings.window_tokens {
            return;
        }
        if let Some(stop) = self.window(choice) {
            self.stop(stop);
            return;
        }
        if framing == Framing::HoldBack {
            self.release(choice);
        }
    }

    /// Runs the window checks over the choice's tail and fresh text; a
    /// policy stop in `stream_first` is recorded and passed over.
    fn window(&mut self, choice: usize) -> Option<Stop> {
        let overlap = self.settings.overlap_bytes;
        let framing = self.settings.framing;
        let cs = self.choices.get_mut(choice)?;
        let mut text = std::mem::take(&mut cs.tail);
        text.push_str(&cs.fresh);
        cs.fresh.clear();
        cs.since_window = 0;
        let mut verdict = None;
        let mut observed = false;
        for analyser in &mut cs.analysers {
            match analyser.on_window(&text) {
                Some(stop) if stop.kind == StopKind::Policy && framing == Framing::StreamFirst => {
                    observed = true;
                    metrics::counter!("sluice_stream_observed_total", "analyser" => stop.analyser)
                        .increment(1);
                    tracing::warn!(
                        analyser = stop.analyser,
                        detail = %stop.detail,
                        "stream analyser: policy hit on text already sent (stream_first)"
                    );
                }
                Some(stop) => {
                    verdict = Some(stop);
                    break;
                }
                None => {}
            }
        }
        // A hit recorded in `stream_first` is not carried into the next
        // window, where the tail would show it again.
        if !observed {
            let keep = floor_char(&text, text.len().saturating_sub(overlap));
            cs.tail = text.split_off(keep);
        }
        verdict
    }

    /// Releases the choice's held steps but the last `overlap_bytes`.
    fn release(&mut self, choice: usize) {
        let overlap = self.settings.overlap_bytes;
        let Some(cs) = self.choices.get_mut(choice) else {
            return;
        };
        while let Some(front) = cs.held.front() {
            let len = step_bytes(front);
            if cs.held_bytes - len < overlap {
                break;
            }
            cs.held_bytes -= len;
            self.out.extend(cs.held.pop_front());
        }
    }

    /// Ends the answer early: see the module's doc.
    fn stop(&mut self, stop: Stop) {
        let finish = stop.kind.finish();
        self.let_go();
        let generated: usize = self.choices.iter().map(|c| c.tokens).sum();
        self.frozen.completion_tokens = self.frozen.completion_tokens.max(generated);
        let mut saved = 0usize;
        for (choice, cs) in self.choices.iter_mut().enumerate() {
            if cs.finished {
                continue;
            }
            cs.finished = true;
            cs.held.clear();
            cs.held_bytes = 0;
            if let Some(max) = self.max_tokens {
                saved += max.saturating_sub(cs.tokens);
            }
            self.out.push_back(Step::Finished {
                choice,
                reason: finish,
                text: String::new(),
            });
        }
        metrics::counter!(crate::metrics::catalog::STREAM_STOPS, "analyser" => stop.analyser)
            .increment(1);
        metrics::counter!("sluice_stream_tokens_saved_total", "reason" => stop.analyser)
            .increment(saved as u64);
        tracing::info!(
            analyser = stop.analyser,
            detail = %stop.detail,
            generated,
            saved,
            "stream analyser stopped the answer"
        );
        self.note.set(EarlyStop {
            finish,
            reason: stop.analyser,
        });
        if let Some(on_stop) = self.on_stop.take() {
            on_stop(&stop);
        }
    }

    /// Drops the producer, keeping its usage.
    fn let_go(&mut self) {
        if let Some(inner) = self.inner.take() {
            self.frozen = inner.usage();
        }
    }

    /// The producer ended without finishing some choices: their last
    /// window is analysed, then what they hold is released.
    fn release_unfinished(&mut self) {
        for choice in 0..self.choices.len() {
            if self.choices[choice].finished {
                continue;
            }
            if let Some(stop) = self.window(choice) {
                self.stop(stop);
                return;
            }
            let cs = &mut self.choices[choice];
            self.out.extend(cs.held.drain(..));
            cs.held_bytes = 0;
        }
    }
}

impl Answer for Analysed {
    fn num_choices(&self) -> usize {
        self.choices.len()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        Box::pin(async move {
            loop {
                if let Some(step) = self.out.pop_front() {
                    return Some(step);
                }
                let inner = self.inner.as_mut()?;
                match inner.next().await {
                    Some(step) => self.on_step(step),
                    None => {
                        self.let_go();
                        self.release_unfinished();
                    }
                }
            }
        })
    }

    fn usage(&self) -> Usage {
        match &self.inner {
            Some(inner) => inner.usage(),
            None => self.frozen,
        }
    }
}

/// The text bytes a step carries.
fn step_bytes(step: &Step) -> usize {
    match step {
        Step::Token { text, .. } | Step::Finished { text, .. } => text.len(),
        Step::ToolCall { arguments, .. } => arguments.len(),
        Step::Failed(_) => 0,
    }
}

/// The largest char boundary at or below `at`.
fn floor_char(s: &str, mut at: usize) -> usize {
    at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}
