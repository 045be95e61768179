//! Attribute names of the OpenTelemetry semantic conventions that the spans
//! use (GenAI, HTTP, errors), spelled out here: the `opentelemetry-semantic-
//! conventions` crate marks the GenAI ones deprecated as the conventions
//! move, and one file of strings is cheaper than a crate that changes them
//! under us. Sluice's own attributes carry the `sluice.` prefix.

// GenAI (https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/).
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
/// The current name of the provider attribute.
pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
/// Its older name, still read by most backends: both are set.
pub const GEN_AI_SYSTEM: &str = "gen_ai.system";
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
pub const GEN_AI_REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
pub const GEN_AI_REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
pub const GEN_AI_REQUEST_TOP_P: &str = "gen_ai.request.top_p";
pub const GEN_AI_REQUEST_CHOICE_COUNT: &str = "gen_ai.request.choice.count";
pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
pub const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
/// Opt-in content: the request's messages as JSON.
pub const GEN_AI_INPUT_MESSAGES: &str = "gen_ai.input.messages";
/// Opt-in content: the answer's text per choice as JSON.
pub const GEN_AI_OUTPUT_MESSAGES: &str = "gen_ai.output.messages";

/// `gen_ai.operation.name` values.
pub const OPERATION_CHAT: &str = "chat";
pub const OPERATION_TEXT_COMPLETION: &str = "text_completion";

// HTTP and general.
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
pub const HTTP_ROUTE: &str = "http.route";
pub const URL_PATH: &str = "url.path";
pub const ERROR_TYPE: &str = "error.type";
// Resource.
pub const SERVICE_NAME: &str = "service.name";
pub const SERVICE_VERSION: &str = "service.version";

// Sluice's own.
pub const SLUICE_TENANT: &str = "sluice.tenant";
pub const SLUICE_DEPLOYMENT: &str = "sluice.deployment";
pub const SLUICE_CACHE_RESULT: &str = "sluice.cache.result";
pub const SLUICE_GUARD_FLAGGED: &str = "sluice.guard.flagged";
pub const SLUICE_STREAM_STOP: &str = "sluice.stream.stop";
pub const SLUICE_ENDING: &str = "sluice.ending";

/// Span names of the chain's stages, in the order a request meets them.
pub mod stage {
    pub const AUTH: &str = "sluice.auth";
    pub const LIMITS: &str = "sluice.limits";
    pub const BUDGET: &str = "sluice.budget";
    pub const DEFENCE: &str = "sluice.defence";
    pub const PII: &str = "sluice.pii";
    pub const GUARD: &str = "sluice.guard";
    /// External moderation (L3), for the guard's uncertain band only.
    pub const MODERATION: &str = "sluice.moderation";
    pub const CACHE: &str = "sluice.cache";
    pub const ROUTER: &str = "sluice.router";
    // The provider call is named by GenAI's rule: "{operation} {model}".
    pub const ENGINE_QUEUE: &str = "sluice.engine.queue";
    pub const ENGINE_PREFILL: &str = "sluice.engine.prefill";
    pub const ENGINE_DECODE: &str = "sluice.engine.decode";
    pub const STREAM_ANALYSERS: &str = "sluice.stream_analysers";
    pub const RECORDERS: &str = "sluice.recorders";
}
