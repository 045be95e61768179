//! The GenAI inference span: one per call to a model (the local engine or
//! an upstream), named `"{operation} {model}"` and attributed by the GenAI
//! conventions: what was asked (`gen_ai.request.*`) when it starts, what
//! came back (`gen_ai.response.*`, `gen_ai.usage.*`) when the answer ends.
//! [`InferenceAnswer`] wraps the answer so the span covers its last token.
//!
//! Content (`gen_ai.input.messages`, `gen_ai.output.messages`) only when
//! `[telemetry] record_content = true`; the answer's text is kept up to
//! [`MAX_CONTENT_BYTES`] per choice, so a long answer cannot grow a span
//! without bound.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use opentelemetry::trace::SpanKind;
use opentelemetry::{Array, KeyValue, StringValue, Value};
use sluice_runtime::{StageTimes, Usage};

use super::semconv::{self, stage};
use super::{Trace, WallClock};
use crate::answer::{Answer, BoxAnswer, Step};
use crate::validate::{Input, Job};

/// The most answer text recorded per choice.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// `gen_ai.operation.name` of a job.
pub fn operation(job: &Job) -> &'static str {
    match job.input {
        Input::Chat(_) => semconv::OPERATION_CHAT,
        Input::Text(_) | Input::Tokens(_) => semconv::OPERATION_TEXT_COMPLETION,
    }
}

/// Who serves a call.
pub struct Serving<'a> {
    /// `gen_ai.provider.name`: `"sluice"` for the local engine, else the
    /// upstream's kind (`"openai"`, `"gigachat"`, `"yandex"`).
    pub provider: &'a str,
    /// The model name the caller asked for.
    pub request_model: &'a str,
    /// The model that answers (the upstream's name for it, or the local id).
    pub response_model: &'a str,
    /// The deployment chosen.
    pub deployment: &'a str,
    /// An upstream call crosses the network: a client span.
    pub remote: bool,
}

/// Opens the inference span of one call under `parent`.
pub fn start_call(parent: &Trace, job: &Job, serving: &Serving<'_>) -> Trace {
    if !parent.is_on() {
        return Trace::default();
    }
    let op = operation(job);
    let mut attributes = vec![
        KeyValue::new(semconv::GEN_AI_OPERATION_NAME, op),
        KeyValue::new(semconv::GEN_AI_PROVIDER_NAME, serving.provider.to_string()),
        KeyValue::new(semconv::GEN_AI_SYSTEM, serving.provider.to_string()),
        KeyValue::new(
            semconv::GEN_AI_REQUEST_MODEL,
            serving.request_model.to_string(),
        ),
        KeyValue::new(semconv::SLUICE_DEPLOYMENT, serving.deployment.to_string()),
        KeyValue::new(
            semconv::GEN_AI_REQUEST_TEMPERATURE,
            f64::from(job.sampling.temperature),
        ),
        KeyValue::new(semconv::GEN_AI_REQUEST_TOP_P, f64::from(job.sampling.top_p)),
    ];
    if let Some(max) = job.sampling.max_tokens {
        attributes.push(KeyValue::new(
            semconv::GEN_AI_REQUEST_MAX_TOKENS,
            i64::try_from(max).unwrap_or(i64::MAX),
        ));
    }
    if job.n != 1 {
        attributes.push(KeyValue::new(
            semconv::GEN_AI_REQUEST_CHOICE_COUNT,
            i64::try_from(job.n).unwrap_or(i64::MAX),
        ));
    }
    if parent.records_content() {
        if let Some(messages) = input_messages(&job.input) {
            attributes.push(KeyValue::new(semconv::GEN_AI_INPUT_MESSAGES, messages));
        }
    }
    let kind = if serving.remote {
        SpanKind::Client
    } else {
        SpanKind::Internal
    };
    let call = parent.child(format!("{op} {}", serving.request_model), kind, attributes);
    call.set(KeyValue::new(
        semconv::GEN_AI_RESPONSE_MODEL,
        serving.response_model.to_string(),
    ));
    call
}

/// The request's content as the conventions' JSON: `[{role, parts}]` for
/// chat, the prompts for a completion.
fn input_messages(input: &Input) -> Option<String> {
    let value = match input {
        Input::Chat(messages) => serde_json::Value::Array(
            messages
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "role": m.role,
                        "parts": [{"type": "text", "content": m.content}],
                    })
                })
                .collect(),
        ),
        Input::Text(prompts) => serde_json::Value::Array(
            prompts
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "role": "user",
                        "parts": [{"type": "text", "content": p}],
                    })
                })
                .collect(),
        ),
        // Token ids are no text a reader could use.
        Input::Tokens(_) => return None,
    };
    Some(value.to_string())
}

/// The engine's stages of one choice, as spans under the call.
pub fn engine_stages(call: &Trace, choice: usize, times: &StageTimes) {
    if !call.is_on() {
        return;
    }
    let attributes = || vec![KeyValue::new("sluice.choice", choice as i64)];
    let clock = WallClock::now();
    let (arrived, scheduled, first_token, finished) = (
        clock.at(times.arrived),
        clock.at(times.scheduled),
        clock.at(times.first_token),
        clock.at(times.finished),
    );
    call.span_between(stage::ENGINE_QUEUE, arrived, scheduled, attributes());
    call.span_between(stage::ENGINE_PREFILL, scheduled, first_token, attributes());
    call.span_between(stage::ENGINE_DECODE, first_token, finished, attributes());
}

/// An answer whose inference span ends with it, stamped with what came back.
pub struct InferenceAnswer {
    inner: BoxAnswer,
    call: Trace,
    finish_reasons: Vec<StringValue>,
    /// Per choice, when content is recorded.
    output: Option<Vec<String>>,
    ended: bool,
}

impl InferenceAnswer {
    /// Wraps `inner` when `call` is on; otherwise returns it as it is.
    pub fn wrap(inner: BoxAnswer, call: Trace) -> BoxAnswer {
        if !call.is_on() {
            return inner;
        }
        let output = call
            .records_content()
            .then(|| vec![String::new(); inner.num_choices()]);
        Box::new(Self {
            inner,
            call,
            finish_reasons: Vec::new(),
            output,
            ended: false,
        })
    }

    fn record_text(&mut self, choice: usize, text: &str) {
        let Some(out) = self.output.as_mut().and_then(|o| o.get_mut(choice)) else {
            return;
        };
        let room = MAX_CONTENT_BYTES.saturating_sub(out.len());
        if text.len() <= room {
            out.push_str(text);
        } else {
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push_str(&text[..cut]);
        }
    }

    fn observe(&mut self, step: &Option<Step>) {
        match step {
            Some(Step::Token { choice, text, .. }) => self.record_text(*choice, text),
            Some(Step::Finished {
                choice,
                reason,
                text,
                ..
            }) => {
                self.record_text(*choice, text);
                self.finish_reasons.push(reason.as_str().into());
            }
            Some(Step::ToolCall { .. }) => {}
            Some(Step::Failed(err)) => {
                self.call.fail(err.status().as_str(), err.to_string());
                self.end("failed");
            }
            None => self.end("completed"),
        }
    }

    fn end(&mut self, ending: &'static str) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let Usage {
            prompt_tokens,
            completion_tokens,
            ..
        } = self.inner.usage();
        let mut attributes = vec![
            KeyValue::new(semconv::GEN_AI_USAGE_INPUT_TOKENS, prompt_tokens as i64),
            KeyValue::new(
                semconv::GEN_AI_USAGE_OUTPUT_TOKENS,
                completion_tokens as i64,
            ),
            KeyValue::new(
                semconv::GEN_AI_RESPONSE_FINISH_REASONS,
                Value::Array(Array::String(std::mem::take(&mut self.finish_reasons))),
            ),
            KeyValue::new(semconv::SLUICE_ENDING, ending),
        ];
        if let Some(output) = self.output.take() {
            let messages: Vec<serde_json::Value> = output
                .into_iter()
                .map(|text| {
                    serde_json::json!({
                        "role": "assistant",
                        "parts": [{"type": "text", "content": text}],
                    })
                })
                .collect();
            attributes.push(KeyValue::new(
                semconv::GEN_AI_OUTPUT_MESSAGES,
                serde_json::Value::Array(messages).to_string(),
            ));
        }
        self.call.set_all(attributes);
        self.call.end();
    }
}

impl Answer for InferenceAnswer {
    fn num_choices(&self) -> usize {
        self.inner.num_choices()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        async move {
            let step = self.inner.next().await;
            if !self.ended {
                self.observe(&step);
            }
            step
        }
        .boxed()
    }

    fn usage(&self) -> Usage {
        self.inner.usage()
    }
}

impl Drop for InferenceAnswer {
    fn drop(&mut self) {
        // The client went away first.
        self.end("disconnected");
    }
}
