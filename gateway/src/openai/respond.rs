//! What the generation APIs share once the chain has answered: an id, then
//! either SSE through the API's [`Framing`] or the whole answer as the
//! API's JSON body, with the chain's headers either way. Each wire API
//! (chat, completions) says only how its chunks and its body look.

use std::sync::Arc;

use axum::response::Response;
use sluice_models::Tokenizer;
use sluice_runtime::Usage;

use crate::answer::{self, ChoiceOutput};
use crate::chain::{Answered, Caller, Chain, Head};
use crate::error::ApiError;
use crate::openai::sse::{self, Framing};
use crate::util::{new_id, unix_now};
use crate::validate::Validate;

/// A response's identity, shared by every chunk of a stream.
pub struct Identity {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
    /// Present when log-probabilities are to be rendered.
    pub tokenizer: Option<Arc<Tokenizer>>,
}

/// How one wire API renders an answer.
pub trait Render {
    /// The prefix of its response ids (`chatcmpl`, `cmpl`).
    const ID_PREFIX: &'static str;
    type Framing: Framing;
    /// The SSE framing of a streamed answer with `choices` choices.
    fn framing(identity: Identity, choices: usize) -> Self::Framing;
    /// The JSON response of a whole answer.
    fn body(identity: Identity, outputs: Vec<ChoiceOutput>, usage: Usage) -> Response;
}

/// Runs `request` through the chain and renders its answer as `R` does.
pub async fn respond<R: Render>(
    chain: &Chain,
    caller: Caller,
    request: impl Validate,
) -> Result<Response, ApiError> {
    let (head, answered) = chain.answer(&caller, request).await?;
    let Head {
        model,
        stream,
        include_usage,
    } = head;
    let Answered {
        answer: mut generation,
        tokenizer,
        stamp,
    } = answered;
    let identity = Identity {
        id: new_id(R::ID_PREFIX),
        created: unix_now(),
        model,
        include_usage,
        tokenizer,
    };
    if stream {
        let framing = R::framing(identity, generation.num_choices());
        let mut response =
            sse::respond_noted(generation, framing, include_usage, stamp.stop.clone());
        stamp.apply(response.headers_mut(), None);
        return Ok(response);
    }
    let outputs = answer::collect(generation.as_mut()).await?;
    let usage = generation.usage();
    let mut response = R::body(identity, outputs, usage);
    stamp.apply(response.headers_mut(), Some(&usage));
    Ok(response)
}
