//! The OpenAI HTTP API: the handlers, their response types and the SSE
//! framing of streamed answers. The top layer with [`crate::server`]: the
//! generation handlers are thin adapters of [`crate::chain`]; the request
//! types live in [`crate::wire`], so the validator need not import this.

pub mod chat;
pub mod completions;
pub mod conversations;
pub mod embeddings;
pub mod json;
pub mod logprobs;
pub mod models;
pub mod moderations;
pub mod respond;
pub mod responses;
pub mod sse;
