//! What a generated token does to its sequence (text, stop ids, stop
//! strings, grammar, length), and how a sequence leaves the loop: finished,
//! failed, or released.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Worker;
use crate::request::{EngineEvent, FinishReason, Usage};
use crate::scheduler::SeqId;
use crate::stats::FinishedReason;

pub(super) enum Outcome {
    Continue,
    Finished(FinishReason),
    /// The request cannot go on (its grammar failed).
    Failed(String),
}

impl Worker {
    /// Handles one generated token: stop ids, text, stop strings, length.
    pub(super) fn on_token(&mut self, id: SeqId, token: u32) -> Outcome {
        let max_model_len = self.shared.info.max_model_len;
        let tokenizer = self.shared.tokenizer.clone();
        let Some(a) = self.active.get_mut(&id) else {
            return Outcome::Continue;
        };
        a.output.push(token);
        let logprob = a.last_logprob.take();
        if a.stop_ids.contains(&token) {
            return Outcome::Finished(FinishReason::Stop);
        }
        // A grammar that is complete ends the sequence after this token.
        let mut grammar_done = false;
        if let Some(c) = a.constraint.as_mut() {
            if let Err(e) = c.consume(token) {
                return Outcome::Failed(e.to_string());
            }
            grammar_done = c.is_finished();
        }
        let text = match a.decoder.push(&tokenizer, token) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, token, "cannot detokenise");
                String::new()
            }
        };
        let (emit, matched) = a.stop.push(&text);
        if a.events
            .try_send(EngineEvent::Token {
                id: token,
                text: emit,
                logprob,
            })
            .is_err()
        {
            // Receiver gone: drop_cancelled frees it before the next step.
            return Outcome::Continue;
        }
        if matched {
            a.stopped_by_string = true;
            return Outcome::Finished(FinishReason::Stop);
        }
        if grammar_done {
            return Outcome::Finished(FinishReason::Stop);
        }
        let total = a.request.prompt_tokens.len() + a.output.len();
        if a.output.len() >= a.request.params.max_tokens || total >= max_model_len {
            return Outcome::Finished(FinishReason::Length);
        }
        Outcome::Continue
    }

    pub(super) fn finish(&mut self, id: SeqId, reason: FinishReason) {
        let cached = self.scheduler.cached_prompt_tokens(id);
        match self.active.get(&id).and_then(|a| a.request.session.clone()) {
            Some(session) => self
                .scheduler
                .finish_keeping_warm(id, session, self.clock.now()),
            None => self.scheduler.finish(id),
        }
        let tokenizer = self.shared.tokenizer.clone();
        if let Some(mut a) = self.active.remove(&id) {
            let mut text = String::new();
            let mut reason = reason;
            if !a.stopped_by_string {
                // Text held back for a partial character or a possible stop
                // string is real output once nothing can follow it.
                let tail = a.decoder.finish(&tokenizer).unwrap_or_default();
                let (mut emit, matched) = a.stop.push(&tail);
                if matched {
                    // The tail completed a stop string: that, not the
                    // length or EOS, is what ended the text the client gets.
                    reason = FinishReason::Stop;
                } else {
                    emit.push_str(&a.stop.flush());
                }
                text = emit;
            }
            let stop_sequence = a.stop.matched_string().map(str::to_owned);
            let usage = Usage {
                prompt_tokens: a.request.prompt_tokens.len(),
                completion_tokens: a.output.len(),
                cached_prompt_tokens: cached,
            };
            let finished = match reason {
                FinishReason::Length => FinishedReason::Length,
                // The engine makes only `Stop` and `Length`.
                FinishReason::Stop | FinishReason::ContentFilter | FinishReason::ToolCalls => {
                    FinishedReason::Stop
                }
            };
            let now = Instant::now();
            self.stats
                .finished(&a.times, finished, a.token_counts(), now);
            let times = a.times.stage_times(now);
            let _ = a.events.try_send(EngineEvent::Finished {
                reason,
                text,
                usage,
                stop_sequence,
                times,
            });
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub(super) fn fail(&mut self, id: SeqId, message: String) {
        self.scheduler.abort(id);
        if let Some(a) = self.active.get(&id) {
            let _ = a.events.try_send(EngineEvent::Error(message));
        }
        self.release(id, FinishedReason::Error);
    }

    /// Forgets a request that did not finish normally.
    pub(super) fn release(&mut self, id: SeqId, why: FinishedReason) {
        if let Some(a) = self.active.remove(&id) {
            self.stats
                .finished(&a.times, why, a.token_counts(), Instant::now());
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
