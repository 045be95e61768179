//! A streamed Message, framed as Anthropic sends it: named SSE events
//! (`event: <type>` + `data: {"type": <type>, ...}`) in the order
//! `message_start`, `ping`, then per content block `content_block_start`,
//! `content_block_delta`s (`text_delta`, `input_json_delta`),
//! `content_block_stop`, and at the end `message_delta` (the `stop_reason`
//! and the usage) and `message_stop`. A failure mid-stream is one `error`
//! event, and the stream ends. An answer a Sluice stage stopped early
//! (`max_cost`, a budget, an output analyser) says which in the
//! `message_delta`'s `delta.sluice_stop_reason`, as the OpenAI streams' final
//! chunk does (`x-sluice-stop-reason` is sent before the stop is known).
//!
//! The stream owns the answer: a client that goes away drops it, which
//! cancels the engine's sequence or the upstream request.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::{json, Value};
use tracing::Instrument;

use super::error::error_body;
use super::response::{stop_reason, UsageWire};
use crate::answer::{BoxAnswer, Step, StopNote};

/// The open content block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    ToolUse,
}

struct Driver {
    answer: BoxAnswer,
    id: String,
    model: String,
    /// Events ready to send: (event type, data).
    queue: VecDeque<(&'static str, String)>,
    started: bool,
    ended: bool,
    open: Open,
    /// Index of the open block, or of the next one.
    index: usize,
    /// Why the answer ended, once its `Finished` step came; the stream ends
    /// when the answer does (so the chain's settles see it complete).
    stop_reason: Option<&'static str>,
    /// The stop string that ended it, for a `stop_sequence` stop.
    stop_sequence: Option<String>,
    /// Where the chain's stages note an early stop of theirs.
    stop: StopNote,
    /// The noted stop's name, when it is what ended the answer.
    sluice_stop_reason: Option<&'static str>,
    span: tracing::Span,
}

/// The SSE response of a started answer (one choice); `stop` is the chain's
/// note of an early stop.
pub fn respond(answer: BoxAnswer, id: String, model: String, stop: StopNote) -> Response {
    let driver = Driver {
        answer,
        id,
        model,
        queue: VecDeque::new(),
        started: false,
        ended: false,
        open: Open::None,
        index: 0,
        stop_reason: None,
        stop_sequence: None,
        stop,
        sluice_stop_reason: None,
        span: tracing::Span::current(),
    };
    let events = stream::unfold(driver, |mut d| async move {
        let span = d.span.clone();
        let (kind, data) = d.next_event().instrument(span).await?;
        Some((
            Ok::<_, Infallible>(Event::default().event(kind).data(data)),
            d,
        ))
    });
    Sse::new(events).into_response()
}

impl Driver {
    async fn next_event(&mut self) -> Option<(&'static str, String)> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            if !self.started {
                self.started = true;
                self.push_message_start();
                self.push("ping", json!({"type": "ping"}));
                continue;
            }
            match self.answer.next().await {
                Some(step) => self.on_step(step),
                None => self.end(),
            }
        }
    }

    fn push(&mut self, kind: &'static str, data: Value) {
        self.queue.push_back((kind, data.to_string()));
    }

    fn push_message_start(&mut self) {
        // Token counts are known once the answer ends: `message_delta`
        // carries them all (the SDKs take its usage over this one's).
        let usage = UsageWire::from(self.answer.usage());
        let message = json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage,
        });
        self.push(
            "message_start",
            json!({"type": "message_start", "message": message}),
        );
    }

    fn on_step(&mut self, step: Step) {
        match step {
            Step::Token { text, .. } => self.text(&text),
            Step::ToolCall {
                id,
                name,
                arguments,
                ..
            } => {
                if id.is_some() || self.open != Open::ToolUse {
                    self.open_block(
                        Open::ToolUse,
                        json!({
                            "type": "tool_use",
                            "id": id.unwrap_or_default(),
                            "name": name.unwrap_or_default(),
                            "input": {},
                        }),
                    );
                }
                if !arguments.is_empty() {
                    self.push(
                        "content_block_delta",
                        json!({
                            "type": "content_block_delta",
                            "index": self.index,
                            "delta": {"type": "input_json_delta", "partial_json": arguments},
                        }),
                    );
                }
            }
            Step::Finished {
                reason,
                text,
                stop_sequence,
                ..
            } => {
                self.text(&text);
                self.sluice_stop_reason = self
                    .stop
                    .get()
                    .filter(|s| s.finish == reason)
                    .map(|s| s.reason);
                let (reason, sequence) = stop_reason(reason, stop_sequence);
                self.stop_reason = Some(reason);
                self.stop_sequence = sequence;
            }
            Step::Failed(err) => {
                self.close_block();
                let (_, body) = error_body(err.status(), &err.body().error.message);
                self.queue.push_back(("error", body.to_string()));
                self.ended = true;
                tracing::warn!(error = %err, "messages stream failed");
            }
        }
    }

    fn text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if self.open != Open::Text {
            self.open_block(Open::Text, json!({"type": "text", "text": ""}));
        }
        self.push(
            "content_block_delta",
            json!({
                "type": "content_block_delta",
                "index": self.index,
                "delta": {"type": "text_delta", "text": text},
            }),
        );
    }

    fn open_block(&mut self, kind: Open, block: Value) {
        self.close_block();
        self.open = kind;
        self.push(
            "content_block_start",
            json!({"type": "content_block_start", "index": self.index, "content_block": block}),
        );
    }

    fn close_block(&mut self) {
        if self.open == Open::None {
            return;
        }
        self.push(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": self.index}),
        );
        self.open = Open::None;
        self.index += 1;
    }

    fn end(&mut self) {
        self.close_block();
        let reason = self.stop_reason;
        let usage = UsageWire::from(self.answer.usage());
        let mut delta = json!({"stop_reason": reason, "stop_sequence": self.stop_sequence});
        if let Some(stopped_by) = self.sluice_stop_reason {
            delta["sluice_stop_reason"] = stopped_by.into();
        }
        self.push(
            "message_delta",
            json!({"type": "message_delta", "delta": delta, "usage": usage}),
        );
        self.push("message_stop", json!({"type": "message_stop"}));
        self.ended = true;
        tracing::info!(
            input_tokens = usage.input_tokens + usage.cache_read_input_tokens,
            output_tokens = usage.output_tokens,
            "messages stream finished"
        );
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.ended {
            let _entered = self.span.enter();
            tracing::info!("client went away mid-stream; generation cancelled");
        }
    }
}
