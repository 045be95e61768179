//! The request path, written out once, in the order a request passes it.
//!
//! Before the model:
//! 0. **in-flight limit**: [`crate::inflight`], an axum layer outside auth:
//!    the server-wide cap on requests in flight (a full server answers 429
//!    with `Retry-After` before it reads a key or a body).
//! 1. **auth**: [`crate::auth::require_key`], an axum layer on every `/v1`
//!    route (so it runs before the body is read): a config key, a virtual
//!    key ([`crate::keys`]) or an OIDC token becomes a
//!    [`crate::auth::Principal`], which the [`Caller`] extractor hands to
//!    the chain.
//! 2. **validate**: the wire API's [`Validate`] impl turns its request into
//!    the one internal [`ValidRequest`]; an unknown model is a 404 here, a
//!    model the caller may not use a 403, and a known one's sampling
//!    defaults fill what the request left out.
//! 3. **rate limits**: [`crate::limits`]: requests and tokens per minute
//!    and requests in parallel, per key, team and model, checked together
//!    across instances (429 `rate_limit_exceeded`); tokens are reserved
//!    here and the unused ones given back when the answer ends.
//! 4. **budget**: [`crate::budget`]: the worst case is reserved against
//!    every budget of the caller at once (429 `budget_exceeded`), settled to
//!    the actual cost once the answer ends, which it caps.
//! 5. **input defence**: [`InputDefence::screen`] normalises every text
//!    of the request (L0) and scans its views with the rules (L1); a
//!    request over the thresholds is refused, or answered and marked.
//! 6. **PII**: [`Pii::redact_request`] masks or hashes personal data in
//!    the messages (so the guard, the cache key and the router see
//!    redacted text), refuses kinds set to `block`, and leaves values to
//!    pseudonymize for the router to replace for cloud deployments only;
//!    such a request bypasses the cache. Answers are redacted on the way
//!    back ([`crate::pii::output`]).
//! 7. **input guard**: [`InputGuard::screen`] scores every message's text;
//!    a flagged request is refused, or answered and marked. Then
//!    **external moderation**: [`Moderation::review`] asks the
//!    `[moderation]` service about a request the guard called uncertain
//!    (only such a one, and never a sensitive one unless the service is
//!    `on_prem`); its verdict decides as the guard's would have.
//! 8. **cache lookup**: [`Cache::lookup`], with the embedding the guard
//!    already computed, so the shared encoder runs once.
//! 9. **router**: [`Router::dispatch`] picks the deployment (local engine
//!    or upstream) and starts the answer.
//!
//! On the way back, the answer stream is wrapped, innermost first:
//! 10. **stream analysers**: [`StreamAnalysers::wrap`] (`[stream]`) reads
//!    every answer (generated or replayed from the cache) as it streams:
//!    PII of a blocked kind, the output rules, repetition loops; it holds
//!    text back until it passed and stops the producer early (the engine
//!    frees the sequence, a provider's connection closes). Then PII
//!    redaction of the answer ([`crate::pii::output`]).
//! 11. **recorders**: the cache insert ([`Decision::record`]; never of an
//!    answer stopped early), the request's `max_cost` and the budget's cap
//!    (early stops too: the lower one ends the answer).
//! 12. **settles**: told once how the answer ended ([`settle`]), completed,
//!    failed or abandoned by the client: the limits' refund, the budget's
//!    charge, the spend log's row ([`spend`]).
//!
//! Defence and guard decisions (flagged, blocked) go to the audit log; in
//! `fail_closed` mode an audit log that cannot be written refuses the
//! request (503) before any stage runs. A regulated caller's request is
//! audited fail-closed whatever the mode, and is itself an audit record
//! (`regulated.request`, after the cache lookup: no text).
//!
//! Adding a stage is one line in [`Chain::answer`] plus its module; a stage
//! gets only what it needs (never the server's state) and returns a typed
//! decision: continue, answer now (a cache hit) or refuse (an error).
//! Every wire API that generates (chat, completions, and the APIs still to
//! come) is a thin adapter: a [`Validate`] request in, an [`Answered`] out.
//! `/v1/embeddings` and `/v1/moderations` pass auth and their own
//! validation only: no stage after it applies to them.
//!
//! Design choice: a cache hit skips routing altogether (no deployment is
//! chosen, charged or told of an outcome), so its response carries
//! `x-sluice-cache` but no `x-sluice-deployment` / `x-sluice-cost`.

mod caller;
mod screens;
pub mod settle;
mod spend;
mod traced;

use std::sync::Arc;

use axum::http::HeaderMap;
use sluice_models::Tokenizer;
use sluice_runtime::Usage;

use crate::analyse::{Stop, StreamAnalysers, Wrap};
use crate::answer::{BoxAnswer, StopNote};
use crate::audit::{actions, Audit, AuditEvent, AuditOutcome};
use crate::budget::{self, Budgets};
use crate::cache::{self, Cache, Decision};
use crate::defence::{DefenceStamp, InputDefence};
use crate::error::ApiError;
use crate::guard::screen::{InputGuard, Screening};
use crate::limits::{Limits, RateHeaders};
use crate::moderation::{Moderation, ModerationStamp};
use crate::pii::{Pii, PiiReport};
use crate::router::{Dispatch, Provenance, Routed, Router};
use crate::telemetry::{genai, semconv, Attribute, Stage, Trace};
use crate::validate::{ValidRequest, Validate};

pub use caller::Caller;

/// The stages of a generation request, built once at start.
pub struct Chain {
    /// Normalisation and rules; `None` when `[defence] mode = "off"`.
    pub defence: Option<InputDefence>,
    /// `None` when the guard is disabled (or has no encoder to read).
    pub guard: Option<InputGuard>,
    /// The external service for the guard's uncertain band; `None`: no
    /// `[moderation]` section.
    pub moderation: Option<Moderation>,
    pub cache: Arc<Cache>,
    pub router: Arc<Router>,
    /// Requests/tokens per minute and in parallel, per key, team and model.
    pub limits: Arc<Limits>,
    /// Spend caps per key, team and tenant; `None`: none enforced.
    pub budgets: Option<Arc<Budgets>>,
    /// Guard decisions go here; in `fail_closed` mode a log that cannot be
    /// written refuses the request first.
    pub audit: Audit,
    /// One row per request once its answer ends; `None`: not recorded.
    pub spend: Option<crate::spend::SpendLog>,
    /// Personal data found and redacted (`[pii]`); `None`: off.
    pub pii: Option<Arc<Pii>>,
    /// The analysers on every answer stream (`[stream]`); `None`: off.
    pub stream: Option<Arc<StreamAnalysers>>,
}

/// The request's answer and where it came from.
pub struct Answered {
    pub answer: BoxAnswer,
    /// The local model's tokenizer, only when the request asked for
    /// log-probabilities (a cache hit or a provider has none to render).
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub stamp: Stamp,
}

/// The response headers that say what the chain did with a request.
pub struct Stamp {
    defence: DefenceStamp,
    guard: Screening,
    /// Set when the moderation stage reviewed the request; its header
    /// replaces the guard's.
    moderation: ModerationStamp,
    cache: Decision,
    /// `x-ratelimit-*` of the tightest scopes.
    limits: RateHeaders,
    /// `None` for a cache hit.
    provenance: Option<Provenance>,
    /// What the PII stage found.
    pii: PiiReport,
    /// Set when the answer was stopped early (`x-sluice-stop-reason`).
    pub stop: StopNote,
}

/// The request's fields the handlers still need once its job is dispatched.
pub struct Head {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
}

impl Chain {
    /// Runs a generation request through every stage.
    pub async fn answer(
        &self,
        caller: &Caller,
        request: impl Validate,
    ) -> Result<(Head, Answered), ApiError> {
        self.audit
            .check_for(caller.regulated)
            .map_err(|_| ApiError::StoreUnavailable("The audit log"))?;
        let mut req = self.for_known_model(request.validate()?)?;
        let trace = &caller.trace;
        if trace.is_on() {
            trace.set_all(vec![
                Attribute::new(semconv::GEN_AI_OPERATION_NAME, genai::operation(&req.job)),
                Attribute::new(semconv::GEN_AI_REQUEST_MODEL, req.model.clone()),
            ]);
        }
        crate::keys::allow_model(&caller.principal, &req.model)?;
        let stage = trace.stage(semconv::stage::LIMITS);
        let admission = self
            .limits
            .admit(&caller.principal, &req.model, &req.job)
            .await;
        stage.end_with(&admission);
        let admission = admission?;
        let stage = stage_if(trace, self.budgets.is_some(), semconv::stage::BUDGET);
        let reservation = self.reserve_budget(caller, &req).await;
        stage.end_with(&reservation);
        let reservation = reservation?;
        let stage = stage_if(trace, self.defence.is_some(), semconv::stage::DEFENCE);
        let defence = self.defend(caller, &req).await;
        stage.end_with(&defence);
        let defence = defence?;
        let stage = stage_if(trace, self.pii.is_some(), semconv::stage::PII);
        let pii = self.redact_pii(caller, &mut req);
        stage.end_with(&pii);
        let pii = pii?;
        let screening = match &self.guard {
            Some(guard) => {
                let mut stage = trace.stage(semconv::stage::GUARD);
                let screened = guard.screen(&caller.policy, &req).await;
                let screened = self
                    .audit_guard(caller, &req.model, &screened)
                    .and(screened);
                if let Ok(s) = &screened {
                    stage.set(Attribute::new(
                        semconv::SLUICE_GUARD_FLAGGED,
                        s.flagged() == Some(true),
                    ));
                }
                stage.end_with(&screened);
                screened?
            }
            None => Screening::default(),
        };
        let stage = stage_if(trace, self.moderation.is_some(), semconv::stage::MODERATION);
        let moderation = self.moderate(caller, &req, &screening).await;
        stage.end_with(&moderation);
        let moderation = moderation?;
        let mut stage = trace.stage(semconv::stage::CACHE);
        let mut decision = self.cache_lookup(caller, &req, &screening, &pii).await;
        stage.set(Attribute::new(
            semconv::SLUICE_CACHE_RESULT,
            decision.outcome.as_str(),
        ));
        drop(stage);
        if caller.regulated {
            self.audit_regulated(caller, &req.model, &decision, &pii)?;
        }
        let want_logprobs = req.job.sampling.logprobs.is_some();
        let max_tokens = req.job.sampling.max_tokens;
        let prompt_estimate = budget::estimate_prompt_tokens(&req.job.input);
        let stop = StopNote::default();
        let ValidRequest {
            model,
            stream,
            include_usage,
            user: _,
            mut job,
            max_cost,
        } = req;
        // Stages that reserved something before the model, or record what it
        // cost, settle here once the answer ends.
        let mut settles: Vec<Box<dyn settle::Settle>> = Vec::new();
        settles.extend(
            admission
                .lease
                .map(|l| Box::new(l) as Box<dyn settle::Settle>),
        );
        if let Some(log) = &self.spend {
            settles.push(Box::new(spend::RecordSpend {
                log: log.clone(),
                principal: caller.principal.clone(),
                model: model.clone(),
            }));
        }
        let (answer, provenance, tokenizer) = match decision.take_hit() {
            Some(hit) => {
                let analysed = self.analyse(caller, &model, max_tokens, &stop, hit);
                (self.redact_output(caller, analysed), None, None)
            }
            None => {
                let how = Dispatch {
                    stream,
                    sensitive: caller.sensitive,
                    started: caller.started,
                    pseudonymize: self.pii.clone().filter(|_| pii.keeps_values()),
                    trace: trace.clone(),
                };
                if let Some(r) = &reservation {
                    r.bound(&mut job);
                }
                let mut stage = trace.stage(semconv::stage::ROUTER);
                let routed = self.router.dispatch(&model, job, how).await;
                if let (true, Ok(r)) = (stage.is_on(), &routed) {
                    stage.set(Attribute::new(
                        semconv::SLUICE_DEPLOYMENT,
                        r.provenance.deployment.name.to_string(),
                    ));
                }
                stage.end_with(&routed);
                let Routed {
                    answer,
                    provenance,
                    tokenizer,
                } = match routed {
                    Ok(routed) => routed,
                    Err(err) => {
                        // The spend log records the failure; a limit's lease
                        // and a budget's reservation give back on drop.
                        settle::unanswered(settles, err.status().as_u16(), caller.started);
                        return Err(err);
                    }
                };
                // Analysed and redacted before the cache records it.
                let analysed = self.analyse(caller, &model, max_tokens, &stop, answer);
                let answer =
                    decision.record_unless_stopped(self.redact_output(caller, analysed), &stop);
                // The request's own cap, at the price of the deployment
                // that serves it (a cache hit is free: nothing to cap).
                let answer = match max_cost {
                    Some(amount) => budget::cap::Capped::at_cost(
                        answer,
                        budget::cap::MaxCost {
                            amount,
                            price: provenance.deployment.settings.price,
                            prompt_estimate,
                        },
                        stop.clone(),
                    ),
                    None => answer,
                };
                (answer, Some(provenance), tokenizer)
            }
        };
        let answer = match reservation {
            Some(r) => {
                let capped = r.cap(answer, stop.clone());
                settles.push(Box::new(r));
                capped
            }
            None => answer,
        };
        let answer = settle::Settled::wrap(
            answer,
            settles,
            provenance.clone(),
            caller.started,
            trace.clone(),
        );
        let head = Head {
            model,
            stream,
            include_usage,
        };
        let answered = Answered {
            answer,
            tokenizer: tokenizer.filter(|_| want_logprobs),
            stamp: Stamp {
                defence,
                guard: screening,
                moderation,
                cache: decision,
                limits: admission.headers,
                provenance,
                pii,
                stop,
            },
        };
        Ok((head, answered))
    }

    /// The budget stage: the worst case reserved against every budget of
    /// the caller (429 `budget_exceeded` when one cannot cover it).
    async fn reserve_budget(
        &self,
        caller: &Caller,
        req: &ValidRequest,
    ) -> Result<Option<budget::Reservation>, ApiError> {
        match &self.budgets {
            Some(budgets) => {
                let ceiling = self.router.ceiling(&req.model);
                budgets.reserve(&caller.principal, &req.job, ceiling).await
            }
            None => Ok(None),
        }
    }

    /// The stream analysers over an answer, when `[stream]` is on for its
    /// route; a stop is an audit record (the analyser and what it saw,
    /// never the text).
    fn analyse(
        &self,
        caller: &Caller,
        model: &str,
        max_tokens: Option<usize>,
        stop: &StopNote,
        answer: BoxAnswer,
    ) -> BoxAnswer {
        let Some(stream) = &self.stream else {
            return answer;
        };
        // A span only where the analysers read this answer (`off` leaves it
        // as it is: no stage ran).
        let span = stage_if(
            &caller.trace,
            stream.is_on_for(model, caller.policy.stream),
            semconv::stage::STREAM_ANALYSERS,
        );
        let record = |action: &'static str, outcome: AuditOutcome| {
            let audit = self.audit.clone();
            let actor = caller.principal.actor();
            let tenant = caller.principal.tenant.clone();
            let target = model.to_string();
            move |stop: &Stop| {
                let event = AuditEvent::new(action, actor.clone(), outcome)
                    .tenant(&*tenant)
                    .target(target.clone())
                    .detail(format!("{}: {}", stop.analyser, stop.detail));
                if audit.record(event).is_err() {
                    tracing::error!(action, "the audit log refused a stream analyser record");
                }
            }
        };
        let analysed = stream.wrap(
            answer,
            Wrap {
                model: model.to_string(),
                key_mode: caller.policy.stream,
                key_guard: caller.policy.stream_guard,
                guard_action: caller.policy.guard,
                max_tokens,
                note: stop.clone(),
                on_stop: Box::new(record(actions::STREAM_STOP, AuditOutcome::Denied)),
                on_observe: Box::new(record(actions::STREAM_OBSERVED, AuditOutcome::Success)),
            },
        );
        traced::StageAnswer::wrap(analysed, span, stop.clone())
    }

    /// Output redaction over an answer, when `[pii] output` is on.
    fn redact_output(&self, caller: &Caller, answer: BoxAnswer) -> BoxAnswer {
        match &self.pii {
            Some(pii) if pii.redacts_output() => {
                crate::pii::output::redact_answer(answer, pii.clone(), caller.tenant.0.clone())
            }
            _ => answer,
        }
    }

    /// An unknown model is a 404 before any stage spends encoder work on it
    /// (or a cache entry of a model since removed is served); a known one's
    /// sampling defaults fill what the request left out, before the cache
    /// key: relying on them and spelling them out are the same request.
    fn for_known_model(&self, mut req: ValidRequest) -> Result<ValidRequest, ApiError> {
        if !self.router.has_route(&req.model) {
            return Err(ApiError::ModelNotFound(req.model));
        }
        if let Some(defaults) = self.router.sampling_defaults(&req.model) {
            req.job.apply_defaults(defaults);
        }
        Ok(req)
    }

    /// The cache stage. A flagged request is looked up and stored like any
    /// other: `flag` only observes (the head flags many harmless system
    /// prompts, whose answers would otherwise never be cached), entries are
    /// scoped by tenant, and the guard runs again before every hit.
    async fn cache_lookup(
        &self,
        caller: &Caller,
        req: &ValidRequest,
        screening: &Screening,
        pii: &PiiReport,
    ) -> Decision {
        let request = cache::Request {
            tenant: &caller.tenant.0,
            model: &req.model,
            job: &req.job,
            headers: &caller.headers,
            // Values kept for the local engine must not reach a cache key,
            // nor a restored answer another client.
            sensitive: caller.sensitive || pii.keeps_values(),
            regulated: caller.regulated,
            // Without the PII stage nobody looked: a regulated prompt
            // counts as carrying personal data.
            may_carry_pii: self.pii.is_none() || pii.found_any(),
        };
        self.cache
            .lookup(request, screening.embedding().cloned())
            .await
    }
}

/// A stage's span when the stage is on; nothing when it is off (a stage
/// that does not run is absent from the trace, not an empty span).
fn stage_if(trace: &Trace, on: bool, name: &'static str) -> Stage {
    if on {
        trace.stage(name)
    } else {
        Stage::default()
    }
}

impl Stamp {
    /// What the PII stage found (`carries_pii`: what regulated mode reads).
    pub fn pii(&self) -> &PiiReport {
        &self.pii
    }

    /// The defence's, the PII stage's, the guard's, the cache's and the
    /// deployment's response headers; `usage` (known only for a whole
    /// answer) adds the cost.
    pub fn apply(&self, headers: &mut HeaderMap, usage: Option<&Usage>) {
        self.defence.set_headers(headers);
        self.guard.set_headers(headers);
        self.moderation.set_headers(headers);
        self.cache.set_headers(headers);
        self.limits.set_headers(headers);
        self.pii.set_headers(headers);
        if let Some(stop) = self.stop.get() {
            headers.insert(
                crate::analyse::STOP_HEADER,
                axum::http::HeaderValue::from_static(stop.reason),
            );
        }
        if let Some(provenance) = &self.provenance {
            provenance.stamp(headers, usage);
        }
    }
}

impl settle::Settle for budget::Reservation {
    fn settle(self: Box<Self>, s: &settle::Settlement<'_>) {
        self.finish(budget::Spent {
            usage: s.usage,
            price: s.provenance.map(|p| p.deployment.settings.price),
        });
    }
}
