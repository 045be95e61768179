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
//! With the guard on ([`super::guard`]), a window that passed the inline
//! analysers is released only once the guard passed it too (and every
//! earlier window of its choice). The producer is read on while the guard
//! runs, so the engine goes on decoding; with `guard_in_flight` windows
//! awaiting it, the producer is read no further until one returns. In
//! `stream_first` the guard scores what was already forwarded, for the
//! record.
//!
//! A stop drops the wrapped answer (the engine frees the sequence before
//! its next step; a provider's connection closes), discards what is held,
//! finishes every open choice with the stop's finish reason, notes the
//! stop for the renderers and the cache, and freezes the usage at what was
//! generated.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, FuturesOrdered};
use futures_util::{FutureExt, Stream, StreamExt};
use sluice_runtime::Usage;

use super::guard::AsyncAnalyser;
use super::{Analyser, OnObserve, OnStop, Stop, StopKind, Wrap};
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
    /// Windows awaiting the async analyser at most before the producer is
    /// read no further.
    pub guard_in_flight: usize,
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
    /// The producer finished this choice (or the answer was stopped).
    finished: bool,
    /// Its `Finished` step went out: nothing more is sent for it.
    closed: bool,
    /// `stream_first`: the guard's hit was recorded. Once per choice: its
    /// windows overlap, so one value would otherwise be recorded twice (its
    /// verdicts come after the next window was formed, too late to drop
    /// the tail as the inline analysers do).
    guard_observed: bool,
    /// Steps put into `held` and taken out of it since the start: a
    /// window's release point is a count of steps, stable while later
    /// steps are added behind it.
    pushed: u64,
    released: u64,
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
            closed: false,
            guard_observed: false,
            pushed: 0,
            released: 0,
        }
    }

    fn hold(&mut self, step: Step) {
        self.held_bytes += step_bytes(&step);
        self.held.push_back(step);
        self.pushed += 1;
    }

    /// The release point that keeps the last `overlap` bytes held.
    fn release_point(&self, overlap: usize) -> u64 {
        let mut bytes = self.held_bytes;
        let mut n = 0u64;
        for step in &self.held {
            let len = step_bytes(step);
            if bytes - len < overlap {
                break;
            }
            bytes -= len;
            n += 1;
        }
        self.released + n
    }

    /// Releases held steps up to the point `to` into `out`.
    fn release_to(&mut self, to: u64, out: &mut VecDeque<Step>) {
        while self.released < to {
            let Some(step) = self.held.pop_front() else {
                break;
            };
            self.held_bytes -= step_bytes(&step);
            self.released += 1;
            if matches!(step, Step::Finished { .. }) {
                self.closed = true;
            }
            out.push_back(step);
        }
    }
}

/// One window's guard verdict, and what it releases once it passed.
struct Checked {
    choice: usize,
    /// `None`: nothing waits on it (`stream_first`, or a `buffer_full`
    /// window before the end).
    release_to: Option<u64>,
    stop: Option<Stop>,
}

/// The producer, read as a stream: a read can be set aside (the guard's
/// verdict came first) and resumed with nothing lost, which a plain
/// `Answer::next` future does not promise. Its usage is copied out after
/// every step.
type Pump = Pin<Box<dyn Stream<Item = Step> + Send>>;

fn pump(inner: BoxAnswer, usage: Arc<Mutex<Usage>>) -> Pump {
    Box::pin(stream::unfold(Some(inner), move |inner| {
        let usage = usage.clone();
        async move {
            let mut inner = inner?;
            let step = inner.next().await;
            if let Ok(mut u) = usage.lock() {
                *u = inner.usage();
            }
            // At the end the producer is dropped here, with the stream.
            step.map(|step| (step, Some(inner)))
        }
    }))
}

/// The analysed answer.
pub struct Analysed {
    /// `None` once stopped or ended: dropping it is what frees the
    /// producer's resources.
    inner: Option<Pump>,
    /// The producer's usage as of its last step.
    usage: Arc<Mutex<Usage>>,
    choices: Vec<ChoiceStream>,
    settings: Settings,
    /// The guard over each window; `None`: off for this answer.
    guard: Option<Arc<dyn AsyncAnalyser>>,
    /// Its checks in flight, verdicts taken in window order.
    checks: FuturesOrdered<BoxFuture<'static, Checked>>,
    out: VecDeque<Step>,
    /// The usage when `inner` was let go.
    frozen: Usage,
    max_tokens: Option<usize>,
    note: StopNote,
    on_stop: Option<OnStop>,
    on_observe: OnObserve,
}

/// What `next` waited for.
enum Event {
    Step(Option<Step>),
    Checked(Checked),
}

impl Analysed {
    /// Wraps `inner`; `streams` holds each choice's analysers, `guard`
    /// the async one over every window (`None`: none).
    pub fn wrap(
        inner: BoxAnswer,
        streams: Vec<Vec<Box<dyn Analyser>>>,
        settings: Settings,
        guard: Option<Arc<dyn AsyncAnalyser>>,
        wrap: Wrap,
    ) -> BoxAnswer {
        let Wrap {
            model: _,
            key_mode: _,
            key_guard: _,
            guard_action: _,
            max_tokens,
            note,
            on_stop,
            on_observe,
        } = wrap;
        let usage = Arc::new(Mutex::new(inner.usage()));
        Box::new(Self {
            inner: Some(pump(inner, usage.clone())),
            usage,
            choices: streams.into_iter().map(ChoiceStream::new).collect(),
            settings,
            guard,
            checks: FuturesOrdered::new(),
            out: VecDeque::new(),
            frozen: Usage::default(),
            max_tokens,
            note,
            on_stop: Some(on_stop),
            on_observe,
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
                stop_sequence,
            } => {
                let Some(cs) = self.choices.get_mut(choice) else {
                    self.out.push_back(Step::Finished {
                        choice,
                        reason,
                        text,
                        stop_sequence,
                    });
                    return;
                };
                cs.fresh.push_str(&text);
                let checked = match self.window(choice) {
                    Ok(checked) => checked,
                    Err(stop) => {
                        self.stop(stop);
                        return;
                    }
                };
                let stream_first = self.settings.framing == Framing::StreamFirst;
                let cs = &mut self.choices[choice];
                cs.finished = true;
                cs.hold(Step::Finished {
                    choice,
                    reason,
                    text,
                    stop_sequence,
                });
                // Everything, the finish included, once the last window passed;
                // in `stream_first` the checks release nothing.
                let to = cs.pushed;
                if stream_first {
                    cs.release_to(to, &mut self.out);
                    self.passed(choice, None, checked);
                } else {
                    self.passed(choice, Some(to), checked);
                }
            }
            Step::Failed(err) => {
                for cs in &mut self.choices {
                    cs.held.clear();
                    cs.held_bytes = 0;
                    cs.released = cs.pushed;
                }
                self.checks = FuturesOrdered::new();
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
            Framing::HoldBack | Framing::BufferFull => cs.hold(step),
        }
        if cs.since_window < self.settings.window_tokens {
            return;
        }
        let checked = match self.window(choice) {
            Ok(checked) => checked,
            Err(stop) => {
                self.stop(stop);
                return;
            }
        };
        let to = match framing {
            Framing::HoldBack => {
                Some(self.choices[choice].release_point(self.settings.overlap_bytes))
            }
            Framing::StreamFirst | Framing::BufferFull => None,
        };
        self.passed(choice, to, checked);
    }

    /// A window passed the inline analysers: with the guard on, it is
    /// scored and what it releases waits for the verdict (and for every
    /// earlier window's); without, it is released now.
    fn passed(&mut self, choice: usize, release_to: Option<u64>, text: Option<String>) {
        match (&self.guard, text) {
            (Some(guard), Some(text)) => {
                let check = guard.check(text);
                self.checks.push_back(
                    async move {
                        Checked {
                            choice,
                            release_to,
                            stop: check.await,
                        }
                    }
                    .boxed(),
                );
            }
            _ => {
                if let (Some(to), Some(cs)) = (release_to, self.choices.get_mut(choice)) {
                    cs.release_to(to, &mut self.out);
                }
            }
        }
    }

    /// A guard verdict, in window order.
    fn on_checked(&mut self, checked: Checked) {
        let Checked {
            choice,
            release_to,
            stop,
        } = checked;
        match stop {
            Some(stop) if self.settings.framing == Framing::StreamFirst => {
                let first = self
                    .choices
                    .get_mut(choice)
                    .is_some_and(|cs| !std::mem::replace(&mut cs.guard_observed, true));
                if first {
                    self.observe(&stop);
                }
            }
            Some(stop) => self.stop(stop),
            None => {
                if let (Some(to), Some(cs)) = (release_to, self.choices.get_mut(choice)) {
                    cs.release_to(to, &mut self.out);
                }
            }
        }
    }

    /// A policy hit on text already sent (`stream_first`): recorded only.
    fn observe(&self, stop: &Stop) {
        metrics::counter!("sluice_stream_observed_total", "analyser" => stop.analyser).increment(1);
        tracing::warn!(
            analyser = stop.analyser,
            detail = %stop.detail,
            "stream analyser: policy hit on text already sent (stream_first)"
        );
        (self.on_observe)(stop);
    }

    /// Runs the window checks over the choice's tail and fresh text; a
    /// policy stop in `stream_first` is recorded and passed over. Passed:
    /// the window's text for the guard (`None` when it is off, or when a
    /// hit was recorded: the guard need not score that window again).
    fn window(&mut self, choice: usize) -> Result<Option<String>, Stop> {
        let overlap = self.settings.overlap_bytes;
        let framing = self.settings.framing;
        let guarded = self.guard.is_some();
        let Some(cs) = self.choices.get_mut(choice) else {
            return Ok(None);
        };
        let mut text = std::mem::take(&mut cs.tail);
        text.push_str(&cs.fresh);
        cs.fresh.clear();
        cs.since_window = 0;
        let mut observed = Vec::new();
        for analyser in &mut cs.analysers {
            match analyser.on_window(&text) {
                Some(stop) if stop.kind == StopKind::Policy && framing == Framing::StreamFirst => {
                    observed.push(stop);
                }
                Some(stop) => return Err(stop),
                None => {}
            }
        }
        let for_guard = (guarded && observed.is_empty()).then(|| text.clone());
        // A hit recorded in `stream_first` is not carried into the next
        // window, where the tail would show it again.
        if observed.is_empty() {
            let keep = floor_char(&text, text.len().saturating_sub(overlap));
            cs.tail = text.split_off(keep);
        }
        for stop in &observed {
            self.observe(stop);
        }
        Ok(for_guard)
    }

    /// Ends the answer early: see the module's doc.
    fn stop(&mut self, stop: Stop) {
        let finish = stop.kind.finish();
        self.let_go();
        self.checks = FuturesOrdered::new();
        let generated: usize = self.choices.iter().map(|c| c.tokens).sum();
        self.frozen.completion_tokens = self.frozen.completion_tokens.max(generated);
        let mut saved = 0usize;
        for (choice, cs) in self.choices.iter_mut().enumerate() {
            if cs.closed {
                continue;
            }
            cs.finished = true;
            cs.closed = true;
            cs.held.clear();
            cs.held_bytes = 0;
            cs.released = cs.pushed;
            if let Some(max) = self.max_tokens {
                saved += max.saturating_sub(cs.tokens);
            }
            self.out.push_back(Step::Finished {
                choice,
                reason: finish,
                text: String::new(),
                stop_sequence: None,
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
        if self.inner.take().is_some() {
            self.frozen = self.producer_usage();
        }
    }

    fn producer_usage(&self) -> Usage {
        self.usage.lock().map(|u| *u).unwrap_or_default()
    }

    /// The producer ended without finishing some choices: their last
    /// window is analysed, then what they hold is released.
    fn release_unfinished(&mut self) {
        for choice in 0..self.choices.len() {
            if self.choices[choice].finished {
                continue;
            }
            let checked = match self.window(choice) {
                Ok(checked) => checked,
                Err(stop) => {
                    self.stop(stop);
                    return;
                }
            };
            let to = self.choices[choice].pushed;
            let to = (self.settings.framing != Framing::StreamFirst).then_some(to);
            self.passed(choice, to, checked);
        }
    }

    /// The next thing to act on: a step of the producer or a guard
    /// verdict, whichever comes first; only a verdict once the producer
    /// ended or `guard_in_flight` windows await one. `None`: neither is left.
    async fn event(&mut self) -> Option<Event> {
        let full = self.checks.len() >= self.settings.guard_in_flight;
        match self.inner.as_mut() {
            None => self.checks.next().await.map(Event::Checked),
            Some(_) if full => self.checks.next().await.map(Event::Checked),
            Some(pump) if self.checks.is_empty() => Some(Event::Step(pump.next().await)),
            Some(pump) => {
                let checks = &mut self.checks;
                // Both are safe to set aside: the pump keeps a read in
                // progress, `FuturesOrdered` its checks.
                tokio::select! {
                    biased;
                    Some(checked) = checks.next() => Some(Event::Checked(checked)),
                    step = pump.next() => Some(Event::Step(step)),
                }
            }
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
                match self.event().await? {
                    Event::Step(Some(step)) => self.on_step(step),
                    Event::Step(None) => {
                        self.let_go();
                        self.release_unfinished();
                    }
                    Event::Checked(checked) => self.on_checked(checked),
                }
            }
        })
    }

    fn usage(&self) -> Usage {
        match &self.inner {
            Some(_) => self.producer_usage(),
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
