//! The stages between a validated request and its answer, shared by the
//! OpenAI handlers: the cache first; on a miss, the router, whose
//! deployment's answer the cache records on its way to the client.
//!
//! Design choice: a cache hit skips routing altogether (no deployment is
//! chosen, charged or told of an outcome), so its response carries
//! `x-sluice-cache` but no `x-sluice-deployment` / `x-sluice-cost`.

use std::sync::Arc;

use axum::http::HeaderMap;
use sluice_models::Tokenizer;
use sluice_runtime::Usage;
use tokio::time::Instant;

use crate::answer::BoxAnswer;
use crate::auth::Tenant;
use crate::cache::{self, Decision};
use crate::error::ApiError;
use crate::router::{Dispatch, Provenance, Routed};
use crate::server::AppState;
use crate::validate::ValidRequest;

/// Who asks, as the auth stage and the headers say.
pub struct Caller<'a> {
    pub tenant: Option<&'a Tenant>,
    pub headers: &'a HeaderMap,
    pub sensitive: bool,
    /// When the handler started (for the gateway-overhead metric).
    pub started: Instant,
}

/// The request's answer and where it came from.
pub struct Answered {
    pub answer: BoxAnswer,
    /// The local model's tokenizer, only when the request asked for
    /// log-probabilities (a cache hit or a provider has none to render).
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub stamp: Stamp,
}

/// The response headers that say where an answer came from.
pub struct Stamp {
    cache: Decision,
    /// `None` for a cache hit.
    provenance: Option<Provenance>,
}

/// The request's fields the handlers still need once its job is dispatched.
pub struct Head {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
}

/// Cache lookup, then routing on a miss.
pub async fn answer(
    state: &AppState,
    caller: Caller<'_>,
    mut req: ValidRequest,
) -> Result<(Head, Answered), ApiError> {
    // Before the cache key: relying on a model's defaults and spelling them
    // out are the same request.
    if let Some(defaults) = state.router.sampling_defaults(&req.model) {
        req.job.apply_defaults(defaults);
    }
    let want_logprobs = req.job.sampling.logprobs.is_some();
    let mut decision =
        cache::lookup_request(state, caller.tenant, caller.headers, caller.sensitive, &req).await;
    let ValidRequest {
        model,
        stream,
        include_usage,
        user: _,
        job,
    } = req;
    let (answer, provenance, tokenizer) = match decision.take_hit() {
        Some(hit) => (hit, None, None),
        None => {
            let how = Dispatch {
                stream,
                sensitive: caller.sensitive,
                started: caller.started,
            };
            let Routed {
                answer,
                provenance,
                tokenizer,
            } = state.router.dispatch(&model, job, how).await?;
            (decision.record(answer), Some(provenance), tokenizer)
        }
    };
    let head = Head {
        model,
        stream,
        include_usage,
    };
    let answered = Answered {
        answer,
        tokenizer: tokenizer.filter(|_| want_logprobs),
        stamp: Stamp {
            cache: decision,
            provenance,
        },
    };
    Ok((head, answered))
}

impl Stamp {
    /// The cache's and the deployment's response headers; `usage` (known
    /// only for a whole answer) adds the cost.
    pub fn apply(&self, headers: &mut HeaderMap, usage: Option<&Usage>) {
        self.cache.set_headers(headers);
        if let Some(provenance) = &self.provenance {
            provenance.stamp(headers, usage);
        }
    }
}
