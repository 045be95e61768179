//! Anthropic's Messages API: `POST /v1/messages` (streamed or not) and
//! `POST /v1/messages/count_tokens`, for clients that speak it (coding
//! agents, the Anthropic SDKs).
//!
//! A thin adapter of the request chain, as the OpenAI APIs are: the wire
//! request ([`request::MessagesRequest`]) becomes the one internal
//! [`crate::validate::ValidRequest`] and goes through every stage
//! ([`Chain::answer`]: auth, limits, budget, defence, PII, guard, cache,
//! router, spend, audit); the [`crate::answer::Answer`] that comes back is
//! rendered as a Message ([`response`]) or its event stream ([`stream`]).
//! Every error of these routes is shaped as Anthropic's ([`error`]).
//!
//! The key may come as `x-api-key` (as the SDKs send it) or as
//! `Authorization: Bearer`; `?beta=true` and the `anthropic-version` /
//! `anthropic-beta` headers are accepted and change nothing.
//!
//! Design choice: a request with `metadata.user_id` is a session (that
//! user, under that system prompt): the engine keeps its KV blocks warm
//! between turns (`[models.engine] session_keep_warm_secs`), so an agent's
//! next turn reuses its prefix; `usage.cache_read_input_tokens` shows it.

pub mod error;
pub mod request;
pub mod response;
pub mod stream;

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::answer;
use crate::chain::{Answered, Caller, Chain, Head};
use crate::error::ApiError;
use crate::openai::json::ApiJson;
use crate::state::AppState;
use crate::util::new_id;
use crate::validate::Validate;
use request::{Endpoint, MessagesCall, MessagesRequest};
use response::{blocks, stop_reason, Message, UsageWire};

/// `POST /v1/messages`.
pub async fn create(
    State(chain): State<Arc<Chain>>,
    caller: Caller,
    ApiJson(body): ApiJson<MessagesRequest>,
) -> Result<Response, ApiError> {
    tracing::debug!(
        model = body.model.as_deref(),
        stream = body.stream,
        "messages"
    );
    let call = MessagesCall {
        request: body,
        tenant: caller.tenant.0.to_string(),
        endpoint: Endpoint::Create,
    };
    let (head, answered) = chain.answer(&caller, call).await?;
    let Head { model, stream, .. } = head;
    let Answered {
        answer: mut generation,
        tokenizer: _,
        stamp,
    } = answered;
    let id = message_id();
    if stream {
        let mut response = stream::respond(generation, id, model, stamp.stop.clone());
        stamp.apply(response.headers_mut(), None);
        return Ok(response);
    }
    let outputs = answer::collect(generation.as_mut()).await?;
    let usage = generation.usage();
    let mut output = outputs.into_iter().next().unwrap_or_default();
    let (reason, stop_sequence) = match output.finish_reason {
        Some(finish) => {
            let (reason, sequence) = stop_reason(finish, output.stop_sequence.take());
            (Some(reason), sequence)
        }
        None => (None, None),
    };
    let message = Message {
        id: &id,
        kind: "message",
        role: "assistant",
        model: &model,
        content: blocks(output),
        stop_reason: reason,
        stop_sequence,
        usage: UsageWire::from(usage),
    };
    let mut response = Json(message).into_response();
    stamp.apply(response.headers_mut(), Some(&usage));
    Ok(response)
}

/// `POST /v1/messages/count_tokens`: the prompt tokens the model would be
/// given, counted exactly (its chat template's rendering, tools included,
/// tokenised by its tokenizer). Needs a route with a local model: a
/// provider's count is its own business.
pub async fn count_tokens(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<MessagesRequest>,
) -> Result<Response, ApiError> {
    let call = MessagesCall {
        request: body,
        tenant: caller.tenant.0.to_string(),
        endpoint: Endpoint::CountTokens,
    };
    let req = call.validate()?;
    if !state.router.has_route(&req.model) {
        return Err(ApiError::ModelNotFound(req.model));
    }
    crate::keys::allow_model(&caller.principal, &req.model)?;
    let Some(local) = state.router.local_model(&req.model) else {
        return Err(ApiError::invalid(
            "model",
            format!(
                "model: '{}' is served by upstream providers only; counting its tokens needs \
                 a local model's tokenizer",
                req.model
            ),
        ));
    };
    let ready = state.registry.ready(local)?;
    let input_tokens = crate::generate::count_prompt_tokens(&ready, req.job).await?;
    Ok(Json(json!({ "input_tokens": input_tokens })).into_response())
}

/// `msg_` and 24 random hex digits, as Anthropic's ids look.
fn message_id() -> String {
    let id = new_id("msg");
    match id.split_once('-') {
        Some((prefix, rest)) => format!("{prefix}_{rest}"),
        None => id,
    }
}
