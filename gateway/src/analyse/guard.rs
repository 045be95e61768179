//! The guard on released windows: the input side's `[guard]` (its head,
//! classifiers and thresholds) scoring each window of an answer before the
//! window is released (`hold_back`, `buffer_full`) or after it was
//! forwarded (`stream_first`, for the record).
//!
//! It is an [`AsyncAnalyser`]: a guard verdict is an encoder pass (tens of
//! milliseconds on a CPU), so it cannot run inline on the stream's task as
//! the other analysers do. The window ([`super::window`]) starts a check
//! per window and keeps reading the producer while checks are in flight,
//! up to `[stream] guard_in_flight` of them; a window is released only once
//! its check and every earlier one passed.
//!
//! Design decision: whole windows, never single tokens. A window is
//! `window_tokens` tokens plus the overlap carried from the last one (so an
//! injection split across two windows is scored whole): one encoder pass
//! per window, batched by the encoder pool with every other request's.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{Stop, StopKind};
use crate::guard::{Guard, GuardEncoders};

/// The name of the guard's stops (`sluice_stop_reason`, metrics, audit).
pub const GUARD: &str = "guard";

/// The time one window's guard check took, from the window's end to its
/// verdict (encoder queue included).
pub const STREAM_GUARD_SECONDS: &str = "sluice_stream_guard_seconds";

/// A check over whole windows that needs to wait on something (an encoder
/// pool). Shared by every stream of every answer it applies to: the state
/// it needs lives in the returned future.
pub trait AsyncAnalyser: Send + Sync {
    /// The verdict on one window of text: the tail of what was analysed
    /// before, then what arrived since (as [`super::Analyser::on_window`]).
    fn check(&self, text: String) -> BoxFuture<'static, Option<Stop>>;
}

/// The serving guard over answer windows.
pub struct OutputGuard {
    guard: Arc<Guard>,
    encoders: Arc<dyn GuardEncoders>,
    /// A guard that cannot score (queue full, timeout) stops the answer
    /// when the key's guard action is `block`; when it only flags, the
    /// window passes unscored, as on the way in.
    fail_closed: bool,
}

impl OutputGuard {
    pub fn new(guard: Arc<Guard>, encoders: Arc<dyn GuardEncoders>, fail_closed: bool) -> Self {
        Self {
            guard,
            encoders,
            fail_closed,
        }
    }
}

impl AsyncAnalyser for OutputGuard {
    fn check(&self, text: String) -> BoxFuture<'static, Option<Stop>> {
        if text.trim().is_empty() {
            return futures_util::future::ready(None).boxed();
        }
        let guard = self.guard.clone();
        let encoders = self.encoders.clone();
        let fail_closed = self.fail_closed;
        async move {
            let started = Instant::now();
            let verdict = guard.verdict(encoders.as_ref(), &text, None).await;
            metrics::histogram!(STREAM_GUARD_SECONDS).record(started.elapsed().as_secs_f64());
            match verdict {
                Ok(v) if v.flagged => {
                    let score = v.categories.values().map(|c| c.score).fold(0.0, f64::max);
                    Some(Stop {
                        analyser: GUARD,
                        kind: StopKind::Policy,
                        detail: format!("guard {} flagged a window (score {score:.2})", guard.id),
                    })
                }
                Ok(_) => None,
                Err(e) if fail_closed => Some(Stop {
                    analyser: GUARD,
                    kind: StopKind::Policy,
                    detail: format!("guard {} could not score a window: {e}", guard.id),
                }),
                Err(e) => {
                    metrics::counter!("sluice_guard_requests_total", "outcome" => "error")
                        .increment(1);
                    tracing::warn!(error = %e, "the guard could not score an answer window; released unscored");
                    None
                }
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests;
