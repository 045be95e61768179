//! Sluice's gateway: the OpenAI-compatible HTTP face of the local engine, its
//! configuration and its command line (the `sluice` binary is a thin `main`
//! over this library, so tests can use every piece).
//!
//! A request goes [`auth`] (optional API keys → a tenant) → [`openai`] (the
//! wire types and handlers; the JSON extractor names the field at fault) →
//! [`validate`] (the wire request becomes a [`validate::ValidRequest`], which
//! only the validator can build) → [`generate`] (tokenise with the model's
//! chat template, resolve `max_tokens` against the context, one engine
//! sequence per choice) → back out as JSON or as SSE ([`openai::sse`]). The
//! handlers render any [`answer::Answer`] (the local engine's generation, an
//! upstream's stream, a cached replay) the same way.
//! [`registry`] loads the configured models in the background (and
//! [`encoders`] the in-process embedding and classifier models), [`server`]
//! owns the router and the one shutdown path, and [`error`] is the only place
//! that maps an error to an HTTP status.
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
pub mod metrics;
pub mod openai;
pub mod providers;
pub mod registry;
pub mod router;
pub mod sensitivity;
pub mod server;
pub mod validate;
