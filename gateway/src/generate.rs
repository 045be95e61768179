//! From a validated [`Job`] to the engine's events: tokenise (chat template or
//! plain text, with the request's tools), resolve `max_tokens` against the
//! context, submit one engine sequence per choice, and merge their event
//! streams into one [`Generation`], read for tool calls ([`ToolCalls`]).
//!
//! Dropping a [`Generation`] drops every engine stream in it, which cancels
//! the sequences: a client that disconnects frees its KV blocks within a step.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, SelectAll, StreamExt};
use sluice_models::{ModelError, ToolFormat};
use sluice_runtime::{EngineEvent, EngineHandle, EventStream, GenerateRequest, Usage};
use tokio::time::Instant;

use crate::answer::{Answer, Step};
use crate::error::ApiError;
use crate::registry::ReadyModel;
use crate::telemetry::Trace;
use crate::tool_calls::{call_grammar, ToolCalls};
use crate::validate::{Constraint, Input, Job, ToolChoice, Tools};

/// The tokenised choices of one request.
#[derive(Debug)]
struct Plan {
    requests: Vec<GenerateRequest>,
    /// Prompt index of each choice.
    prompt_of: Vec<usize>,
    /// Token count of each prompt.
    prompt_tokens: Vec<usize>,
}

/// The merged event streams of a request's choices.
pub struct Generation {
    events: SelectAll<BoxStream<'static, (usize, EngineEvent)>>,
    deadline: Instant,
    timeout: Duration,
    prompt_of: Vec<usize>,
    prompt_tokens: Vec<usize>,
    usage: Vec<Option<Usage>>,
    failed: bool,
    /// The call's inference span: the engine's stages of each choice hang
    /// under it once the choice finishes.
    trace: Trace,
}

/// Tokenises `job` for `model` and submits every choice. A refusal (queue
/// full, context too long) cancels the choices already submitted.
pub async fn start(
    model: &ReadyModel,
    job: Job,
    timeout: Duration,
    trace: Trace,
) -> Result<ToolCalls<Generation>, ApiError> {
    let engine = model.engine.clone();
    let default_max_tokens = model.slot.config.default_max_tokens;
    let format = tool_format(model);
    let tools = job.tools.clone();
    // Rendering and BPE are CPU work proportional to the prompt: off the
    // async workers, so a long prompt does not stall other connections.
    let plan = tokio::task::spawn_blocking(move || plan(&engine, default_max_tokens, job, format))
        .await
        .map_err(|e| ApiError::Internal(format!("tokenising failed: {e}")))??;
    let retry_after = retry_after(&model.engine);
    let mut streams = Vec::with_capacity(plan.requests.len());
    for request in plan.requests {
        // On error the streams submitted so far drop here, cancelling them.
        let events = model
            .engine
            .submit(request)
            .map_err(|e| ApiError::from_engine(e, retry_after))?;
        streams.push(events);
    }
    let usage = vec![None; streams.len()];
    let events = stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(choice, events)| choice_events(choice, events)),
    );
    let generation = Generation {
        events,
        deadline: Instant::now() + timeout,
        timeout,
        prompt_of: plan.prompt_of,
        prompt_tokens: plan.prompt_tokens,
        usage,
        failed: false,
        trace,
    };
    Ok(ToolCalls::new(generation, tools.as_ref(), format))
}

/// The prompt tokens of `job` on `model`: its chat template's rendering
/// (tools included) tokenised, exactly what the engine would be given.
pub async fn count_prompt_tokens(model: &ReadyModel, job: Job) -> Result<usize, ApiError> {
    let engine = model.engine.clone();
    let format = tool_format(model);
    tokio::task::spawn_blocking(move || {
        let Job { input, tools, .. } = job;
        let (prompts, _) = tokenize(&engine, input, tools.as_ref(), format)?;
        let total: usize = prompts.iter().map(Vec::len).sum();
        Ok::<usize, ApiError>(total)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("tokenising failed: {e}")))?
}

/// How the model writes tool calls: its config's `tool_parser`, else what
/// its chat template shows.
fn tool_format(model: &ReadyModel) -> ToolFormat {
    model
        .slot
        .config
        .tool_parser
        .or_else(|| model.engine.chat_template().map(|t| t.tool_format()))
        .unwrap_or(ToolFormat::Hermes)
}

/// One choice's events, tagged with its index. An engine stream that ends
/// without `Finished` or `Error` becomes an `Error`, so a lost sequence is
/// never mistaken for a finished one.
fn choice_events(choice: usize, events: EventStream) -> BoxStream<'static, (usize, EngineEvent)> {
    stream::unfold(Some(events), move |state| async move {
        let mut events = state?;
        match events.recv().await {
            Some(ev @ (EngineEvent::Finished { .. } | EngineEvent::Error(_))) => {
                Some(((choice, ev), None))
            }
            Some(ev) => Some(((choice, ev), Some(events))),
            None => Some((
                (
                    choice,
                    EngineEvent::Error("the engine dropped the request".into()),
                ),
                None,
            )),
        }
    })
    .boxed()
}

/// Seconds to suggest in `Retry-After`: the engine's estimate of the queue
/// ahead, within 1..=60.
fn retry_after(engine: &EngineHandle) -> Duration {
    let ms = engine.load().estimated_queue_wait_ms;
    let secs = if ms.is_finite() {
        (ms / 1000.0).ceil()
    } else {
        1.0
    };
    Duration::from_secs(secs.clamp(1.0, 60.0) as u64)
}

fn plan(
    engine: &EngineHandle,
    default_max_tokens: usize,
    job: Job,
    format: ToolFormat,
) -> Result<Plan, ApiError> {
    let Job {
        input,
        mut sampling,
        n,
        tools,
        session,
        ..
    } = job;
    if let Some(tools) = &tools {
        sampling.constraint = tool_constraint(tools, format, sampling.constraint.take())?;
    }
    let (prompts, prompt_param) = tokenize(engine, input, tools.as_ref(), format)?;
    let info = engine.info();
    if let Some((i, &id)) = sampling
        .stop_token_ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= info.vocab_size)
    {
        return Err(ApiError::invalid(
            format!("stop_token_ids[{i}]"),
            format!(
                "{id} is outside the vocabulary of {} tokens",
                info.vocab_size
            ),
        ));
    }
    if let Some(&(id, _)) = sampling
        .logit_bias
        .iter()
        .find(|(id, _)| *id as usize >= info.vocab_size)
    {
        return Err(ApiError::invalid(
            format!("logit_bias.{id}"),
            format!(
                "{id} is outside the vocabulary of {} tokens",
                info.vocab_size
            ),
        ));
    }
    // Compiled once per (model, grammar): the engine caches it.
    let constraint = sampling
        .constraint
        .as_ref()
        .map(|c| {
            engine.compile_grammar(&c.spec).map_err(|e| {
                ApiError::invalid(
                    c.param,
                    format!("cannot use this '{}' for structured output: {e}", c.param),
                )
            })
        })
        .transpose()?;
    let mut plan = Plan {
        requests: Vec::with_capacity(prompts.len() * n),
        prompt_of: Vec::with_capacity(prompts.len() * n),
        prompt_tokens: prompts.iter().map(Vec::len).collect(),
    };
    for (p, prompt) in prompts.into_iter().enumerate() {
        let max_tokens = resolve_max_tokens(
            prompt.len(),
            sampling.max_tokens,
            default_max_tokens,
            info.max_model_len,
            prompt_param,
        )?;
        for choice in 0..n {
            plan.requests.push(GenerateRequest {
                prompt_tokens: prompt.clone(),
                params: sampling.to_params(max_tokens, choice),
                constraint: constraint.clone(),
                session: session.clone(),
            });
            plan.prompt_of.push(p);
        }
    }
    Ok(plan)
}

/// The constraint of a request with tools: calls forced for `required` and
/// a named function; with `auto`, a JSON `response_format` becomes "a call
/// or that JSON"; with `none`, the `response_format` alone.
fn tool_constraint(
    tools: &Tools,
    format: ToolFormat,
    response_format: Option<Constraint>,
) -> Result<Option<Constraint>, ApiError> {
    let forced = matches!(tools.choice, ToolChoice::Required | ToolChoice::Function(_));
    if forced && response_format.is_some() {
        return Err(ApiError::invalid(
            "response_format",
            "'response_format' cannot be combined with a 'tool_choice' that forces a call \
             (\"required\" or a named function): the answer is the call",
        ));
    }
    let answer = response_format.as_ref().map(|c| &c.spec);
    match call_grammar(format, tools, answer) {
        Some(spec) => Ok(Some(Constraint {
            spec,
            param: if response_format.is_some() {
                "response_format"
            } else {
                "tools"
            },
        })),
        None => Ok(response_format),
    }
}

/// Token ids of each prompt, and the name of the parameter they came from.
/// Tools are shown to the model unless `tool_choice` is `none`.
fn tokenize(
    engine: &EngineHandle,
    input: Input,
    tools: Option<&Tools>,
    format: ToolFormat,
) -> Result<(Vec<Vec<u32>>, &'static str), ApiError> {
    let tokenizer = engine.tokenizer();
    let encode_err = |param: &'static str| {
        move |e: ModelError| ApiError::invalid(param, format!("cannot tokenise the {param}: {e}"))
    };
    match input {
        Input::Chat(messages) => {
            let template = engine.chat_template().ok_or_else(|| {
                ApiError::invalid(
                    "model",
                    "this model has no chat template; use /v1/completions with a plain prompt",
                )
            })?;
            // Special-token text inside a message stays plain text: only the
            // template's own structure yields control ids. The template
            // already writes BOS where the model wants it.
            let offered = match tools {
                Some(t) if t.choice != ToolChoice::None => match t.to_wire() {
                    serde_json::Value::Array(functions) => functions,
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            let ids = template
                .render_tokens_with_tools(tokenizer, &messages, &offered, format, true)
                .map_err(|e| match e {
                    // The template's own complaint (bad role order, say) is the client's to fix.
                    ModelError::Template(message) => ApiError::invalid("messages", message),
                    other => encode_err("messages")(other),
                })?;
            Ok((vec![ids], "messages"))
        }
        Input::Text(prompts) => prompts
            .iter()
            .map(|p| tokenizer.encode(p, true).map_err(encode_err("prompt")))
            .collect::<Result<Vec<_>, _>>()
            .map(|ids| (ids, "prompt")),
        Input::Tokens(prompts) => Ok((prompts, "prompt")),
    }
}

/// The request's `max_tokens`, or the rest of the context up to the model's default.
fn resolve_max_tokens(
    prompt_len: usize,
    requested: Option<usize>,
    default_max_tokens: usize,
    max_model_len: usize,
    prompt_param: &'static str,
) -> Result<usize, ApiError> {
    if prompt_len >= max_model_len {
        return Err(ApiError::InvalidRequest {
            message: format!(
                "This model's maximum context length is {max_model_len} tokens. However, your \
                 {prompt_param} resulted in {prompt_len} tokens, which leaves no room for a \
                 completion. Please reduce the length of the {prompt_param}."
            ),
            param: Some(prompt_param.into()),
            code: Some("context_length_exceeded"),
        });
    }
    let room = max_model_len - prompt_len;
    match requested {
        Some(m) if m > room => Err(ApiError::InvalidRequest {
            message: format!(
                "This model's maximum context length is {max_model_len} tokens. However, you \
                 requested {} tokens ({prompt_len} in the {prompt_param}, {m} in the completion). \
                 Please reduce the length of the {prompt_param} or the completion.",
                prompt_len + m
            ),
            param: Some("max_tokens".into()),
            code: Some("context_length_exceeded"),
        }),
        Some(m) => Ok(m),
        None => Ok(room.min(default_max_tokens)),
    }
}

impl Answer for Generation {
    fn num_choices(&self) -> usize {
        self.usage.len()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        Box::pin(self.next_step())
    }

    fn usage(&self) -> Usage {
        self.total_usage()
    }
}

impl Generation {
    async fn next_step(&mut self) -> Option<Step> {
        if self.failed {
            return None;
        }
        let event = match tokio::time::timeout_at(self.deadline, self.events.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => return None,
            Err(_) => return Some(self.fail(ApiError::Timeout(self.timeout))),
        };
        Some(match event {
            (choice, EngineEvent::Token { id, text, logprob }) => Step::Token {
                choice,
                text,
                logprob,
                token: Some(id),
            },
            (
                choice,
                EngineEvent::Finished {
                    reason,
                    text,
                    usage,
                    stop_sequence,
                    times,
                },
            ) => {
                if let Some(slot) = self.usage.get_mut(choice) {
                    *slot = Some(usage);
                }
                crate::telemetry::genai::engine_stages(&self.trace, choice, &times);
                Step::Finished {
                    choice,
                    reason,
                    text,
                    stop_sequence,
                }
            }
            (_, EngineEvent::Error(message)) => self.fail(ApiError::Internal(message)),
        })
    }

    fn fail(&mut self, err: ApiError) -> Step {
        self.failed = true;
        // Cancel the other choices now rather than when the caller drops us.
        self.events = SelectAll::new();
        Step::Failed(err)
    }

    /// Token counts so far: each prompt counted once however many choices
    /// it has, completions summed over choices.
    fn total_usage(&self) -> Usage {
        let mut total = Usage {
            prompt_tokens: self.prompt_tokens.iter().sum(),
            ..Usage::default()
        };
        let mut cached = vec![0usize; self.prompt_tokens.len()];
        for (choice, usage) in self.usage.iter().enumerate() {
            let Some(u) = usage else { continue };
            total.completion_tokens += u.completion_tokens;
            if let Some(c) = self.prompt_of.get(choice).and_then(|&p| cached.get_mut(p)) {
                *c = (*c).max(u.cached_prompt_tokens);
            }
        }
        total.cached_prompt_tokens = cached.iter().sum();
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_max_tokens_takes_the_rest_of_the_context_up_to_the_default() {
        assert_eq!(
            resolve_max_tokens(10, None, 4096, 100, "prompt").unwrap(),
            90
        );
        assert_eq!(resolve_max_tokens(10, None, 16, 100, "prompt").unwrap(), 16);
    }

    #[test]
    fn max_tokens_beyond_the_context_is_400_on_max_tokens() {
        let err = resolve_max_tokens(10, Some(91), 4096, 100, "messages").unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        let ApiError::InvalidRequest { param, code, .. } = err else {
            panic!()
        };
        assert_eq!(param.as_deref(), Some("max_tokens"));
        assert_eq!(code, Some("context_length_exceeded"));
        assert_eq!(
            resolve_max_tokens(10, Some(90), 4096, 100, "messages").unwrap(),
            90
        );
    }

    #[test]
    fn prompt_filling_the_context_is_400_on_the_prompt() {
        let err = resolve_max_tokens(100, None, 4096, 100, "messages").unwrap_err();
        let ApiError::InvalidRequest { param, .. } = err else {
            panic!()
        };
        assert_eq!(param.as_deref(), Some("messages"));
    }
}
