//! Sluice's gateway: the OpenAI-compatible HTTP face of the local models and
//! upstream providers, its configuration and its command line (the `sluice`
//! binary is a thin `main` over this library, so tests can use every piece).
//!
//! A request goes [`auth`] (API keys → a tenant and its policy) →
//! [`openai`] (the wire types and handlers; the JSON extractor names the
//! field at fault) → [`validate`] (the wire request becomes a
//! [`validate::ValidRequest`], which only the validator can build) →
//! [`sensitivity`] → [`pipeline`]: the [`cache`] (exact, then semantic
//! through the [`encoders`]' pool), and on a miss the [`router`], which picks
//! a deployment: the local engine ([`generate`]: chat template, `max_tokens`
//! against the context, one engine sequence per choice) or an upstream of
//! [`providers`] (with retries, timeouts and a circuit breaker) → back out as
//! JSON or as SSE ([`openai::sse`]). The handlers render any
//! [`answer::Answer`] (the local engine's generation, an upstream's stream, a
//! cached replay) the same way. Beside the chat path: `/v1/embeddings` over
//! the [`encoders`], `/v1/moderations` over the [`guard`], `/metrics`
//! ([`metrics`]). [`registry`] loads the configured models in the
//! background, [`server`] owns the HTTP router and the one shutdown path,
//! and [`error`] is the only place that maps an error to an HTTP status.
//!
//! Design choice: the validator and the engine never see HTTP, and the
//! handlers never check a value's range; each stage trusts the type the
//! previous one built. This crate must not be depended on by `runtime/`,
//! `models/` or `kernels/`: dependencies point from here down.

pub mod answer;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod encoders;
pub mod error;
pub mod generate;
pub mod guard;
pub mod inflight;
pub mod metrics;
pub mod openai;
pub mod pipeline;
pub mod providers;
pub mod registry;
pub mod router;
pub mod sensitivity;
pub mod server;
pub mod validate;
