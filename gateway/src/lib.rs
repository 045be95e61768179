//! Sluice's gateway: the OpenAI-compatible HTTP face of the local models and
//! upstream providers, its configuration and its command line (the `sluice`
//! binary is a thin `main` over this library, so tests can use every piece).
//!
//! # The request path
//!
//! [`chain`] writes the path of a generation request out once, in order:
//! auth ([`auth`], an axum layer) → validate ([`validate`]: the wire request
//! becomes a [`validate::ValidRequest`], which only the validator can build)
//! → input guard ([`guard::screen`]) → cache lookup ([`cache`], exact then
//! semantic, with the guard's embedding) → router ([`router`]: the local
//! engine through [`generate`], or an upstream of [`providers`] with
//! retries, timeouts and a circuit breaker); on the way back the recorders
//! (the cache insert). Each wire API that generates ([`openai::chat`],
//! [`openai::completions`], [`openai::responses`]) is a thin adapter: its request implements
//! [`validate::Validate`], and [`openai::respond`] renders any
//! [`answer::Answer`] (the engine's, an upstream's, a cached replay) as JSON
//! or SSE. Beside it: `/v1/embeddings` over the [`encoders`],
//! `/v1/moderations` over the [`guard`], `/metrics` ([`metrics`]).
//!
//! # Layers
//!
//! Modules import one way only; `tests/layering.rs` fails the build on an
//! import that points up and on any cycle.
//! - **0, leaves** (import nothing of the crate): [`config`] (plain data:
//!   domain modules read their section, config knows none of them),
//!   [`error`] (the only place an error becomes an HTTP status), [`wire`]
//!   (the OpenAI request types), [`util`] (ids, the clock).
//! - **1, stages and what they run on**: [`auth`] (who calls: config keys,
//!   virtual keys, OIDC tokens; roles), [`keys`] (virtual keys and teams),
//!   [`limits`] (rate limits), [`budget`] (spend caps), [`pii`] (personal
//!   data found and redacted, in and out), [`sensitivity`],
//!   [`validate`], [`defence`] (input normalisation and rules),
//!   [`guard`], [`moderation`] (the external service asked about the
//!   guard's uncertain band), [`cache`], [`router`], [`providers`],
//!   [`generate`], [`registry`], [`encoders`], [`answer`], [`metrics`] (and
//!   [`gpu_metrics`], the cards' gauges),
//!   [`store`] (the durable store), [`spend`] (the spend log and its
//!   reports), [`audit`] (the audit log and its sinks), [`tool_calls`]
//!   (the local engine's tool calls: parsed per model family, forced by a
//!   grammar), [`sessions`] (stored responses and conversations: the
//!   durable store with a Redis hot layer, write-through), [`sealing`]
//!   (encryption at rest: a data key per tenant wrapped by a master key),
//!   [`telemetry`] (OpenTelemetry spans of every stage, OTLP export, JSON
//!   logs). They
//!   may import each other without a cycle; none sees the server's state.
//! - **2, the chain**: [`chain`], which runs the stages in order.
//! - **3, HTTP and the command line**: [`openai`] (handlers),
//!   [`anthropic`] (the Messages API: its wire types, mapping, rendering
//!   and error shape), [`admin`]
//!   (the admin API), [`console`] (the admin console at `/ui`: embedded
//!   pages, login and its session cookie), [`state`] (what handlers read, sliced per handler
//!   with axum's `FromRef`),
//!   [`server`] (the router, model loading, the one shutdown path), [`cli`].
//!
//! Design choice: the validator and the engine never see HTTP, and the
//! handlers never check a value's range; each stage trusts the type the
//! previous one built. This crate must not be depended on by `runtime/`,
//! `models/` or `kernels/`: dependencies point from here down.

pub mod admin;
pub mod analyse;
pub mod answer;
pub mod anthropic;
pub mod audit;
pub mod auth;
pub mod budget;
pub mod cache;
pub mod chain;
pub mod cli;
pub mod config;
pub mod console;
pub mod defence;
pub mod encoders;
pub mod error;
pub mod generate;
pub mod gpu_metrics;
pub mod guard;
pub mod inflight;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod moderation;
pub mod openai;
pub mod pii;
pub mod providers;
pub mod registry;
pub mod router;
pub mod sealing;
pub mod sensitivity;
pub mod server;
pub mod sessions;
pub mod spend;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tool_calls;
pub mod util;
pub mod validate;
pub mod wire;
