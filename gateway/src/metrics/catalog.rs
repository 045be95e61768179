//! Every metric the process exports: name, type, help text, labels and
//! (for histograms) buckets, in one table.
//!
//! The engine's metrics carry vLLM's names (v1, `vllm/v1/metrics/loggers.py`)
//! with `sluice:` in place of `vllm:`, the same type, help text and buckets
//! and the labels `model_name` and `engine`, so a dashboard or alert made
//! for vLLM reads a Sluice engine after one substitution. The gateway's own
//! are `sluice_<area>_<what>[_<unit>][_total]`.
//!
//! The table is what `/metrics` describes (`# HELP`), where the histogram
//! buckets come from, and what the tests hold the scrape to. No label takes
//! a per-request value: each label's values come from the config (model,
//! deployment, rule, sink and entity names) or from a fixed list in code.

use metrics::{describe_counter, describe_gauge, describe_histogram};

/// How a metric is exported (its `# TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    /// Upper bounds of a histogram's buckets (empty for the other kinds).
    pub buckets: &'static [f64],
}

const fn counter(
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        help,
        labels,
        buckets: &[],
    }
}

const fn gauge(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        help,
        labels,
        buckets: &[],
    }
}

const fn histogram(
    name: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        help,
        labels,
        buckets,
    }
}

// --- The engine's, as vLLM names them. ---

pub const NUM_REQUESTS_RUNNING: &str = "sluice:num_requests_running";
pub const NUM_REQUESTS_WAITING: &str = "sluice:num_requests_waiting";
pub const KV_CACHE_USAGE_PERC: &str = "sluice:kv_cache_usage_perc";
pub const PREFIX_CACHE_QUERIES: &str = "sluice:prefix_cache_queries_total";
pub const PREFIX_CACHE_HITS: &str = "sluice:prefix_cache_hits_total";
pub const NUM_PREEMPTIONS: &str = "sluice:num_preemptions_total";
pub const PROMPT_TOKENS: &str = "sluice:prompt_tokens_total";
pub const GENERATION_TOKENS: &str = "sluice:generation_tokens_total";
pub const REQUEST_SUCCESS: &str = "sluice:request_success_total";
pub const REQUEST_PROMPT_TOKENS: &str = "sluice:request_prompt_tokens";
pub const REQUEST_GENERATION_TOKENS: &str = "sluice:request_generation_tokens";
pub const REQUEST_PARAMS_MAX_TOKENS: &str = "sluice:request_params_max_tokens";
pub const ITERATION_TOKENS: &str = "sluice:iteration_tokens_total";
pub const TIME_TO_FIRST_TOKEN: &str = "sluice:time_to_first_token_seconds";
pub const INTER_TOKEN_LATENCY: &str = "sluice:inter_token_latency_seconds";
pub const REQUEST_TIME_PER_OUTPUT_TOKEN: &str = "sluice:request_time_per_output_token_seconds";
pub const E2E_REQUEST_LATENCY: &str = "sluice:e2e_request_latency_seconds";
pub const REQUEST_QUEUE_TIME: &str = "sluice:request_queue_time_seconds";
pub const REQUEST_INFERENCE_TIME: &str = "sluice:request_inference_time_seconds";
pub const REQUEST_PREFILL_TIME: &str = "sluice:request_prefill_time_seconds";
pub const REQUEST_DECODE_TIME: &str = "sluice:request_decode_time_seconds";

// --- The gateway's own, named here where new or read elsewhere. ---

pub const OVERHEAD_SECONDS: &str = "sluice_gateway_overhead_seconds";
pub const DEPLOYMENT_TTFT_SECONDS: &str = "sluice_ttft_seconds";
pub const STREAM_ANALYSIS_SECONDS: &str = "sluice_stream_analysis_seconds";
pub const CIRCUIT_STATE: &str = "sluice_circuit_state";
pub const BUDGET_REFUSALS: &str = "sluice_budget_refusals_total";
pub const LIMIT_REFUSALS: &str = "sluice_limit_refusals_total";
pub const REJECTED: &str = "sluice_rejected_total";
pub const CACHE_REQUESTS: &str = "sluice_cache_requests_total";
pub const GUARD_REQUESTS: &str = "sluice_guard_requests_total";
pub const MODERATION_REQUESTS: &str = "sluice_moderation_requests_total";
pub const MODERATION_ERRORS: &str = "sluice_moderation_errors_total";
pub const MODERATION_SECONDS: &str = "sluice_moderation_seconds";
pub const STREAM_STOPS: &str = "sluice_stream_stops_total";
pub const TELEMETRY_SPANS_EXPORTED: &str = "sluice_telemetry_spans_exported_total";
pub const TELEMETRY_SPANS_DROPPED: &str = "sluice_telemetry_spans_dropped_total";

/// vLLM's labels on every engine metric.
const ENGINE: &[&str] = &["model_name", "engine"];
const DEPLOYMENT: &[&str] = &["model", "deployment"];

/// vLLM's `time_to_first_token_seconds` buckets.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's `inter_token_latency_seconds` (and per-request TPOT) buckets.
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's `request_latency_buckets` (end-to-end, queue, prefill, decode, inference).
const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// vLLM's `iteration_tokens_total` buckets.
const ITERATION_TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
/// vLLM's `build_1_2_5_buckets(max_model_len)` for token counts. vLLM
/// sizes them to the served model's context; the exporter's buckets are
/// fixed before any model loads, so they are sized for a 128k context (a
/// smaller model just leaves the top buckets at its `+Inf` count).
const TOKEN_COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0,
    50000.0, 100000.0,
];

/// The gateway's own latency: from 50 µs, since the figures that matter
/// (the benchmark's added latency) are well under a millisecond.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];
/// A deployment's first token as the gateway sees it (network included).
const DEPLOYMENT_TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Stream analysis per chunk: microseconds.
const STREAM_ANALYSIS_BUCKETS: &[f64] = &[
    0.000_001, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
    0.002_5, 0.005,
];
/// A guard or defence layer: rules take microseconds, a classifier
/// milliseconds, an external moderation call up to seconds.
const SCREEN_BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// Every metric, engine first.
pub const ALL: &[Metric] = &[
    gauge(NUM_REQUESTS_RUNNING, ENGINE, "Number of requests in model execution batches."),
    gauge(NUM_REQUESTS_WAITING, ENGINE, "Number of requests waiting to be processed."),
    gauge(KV_CACHE_USAGE_PERC, ENGINE, "KV-cache usage. 1 means 100 percent usage."),
    counter(
        PREFIX_CACHE_QUERIES,
        ENGINE,
        "Prefix cache queries, in terms of number of queried tokens.",
    ),
    counter(
        PREFIX_CACHE_HITS,
        ENGINE,
        "Prefix cache hits, in terms of number of cached tokens.",
    ),
    counter(NUM_PREEMPTIONS, ENGINE, "Cumulative number of preemption from the engine."),
    counter(PROMPT_TOKENS, ENGINE, "Number of prefill tokens processed."),
    counter(GENERATION_TOKENS, ENGINE, "Number of generation tokens processed."),
    counter(
        REQUEST_SUCCESS,
        &["model_name", "engine", "finished_reason"],
        "Count of successfully processed requests.",
    ),
    histogram(
        REQUEST_PROMPT_TOKENS,
        ENGINE,
        TOKEN_COUNT_BUCKETS,
        "Number of prefill tokens processed.",
    ),
    histogram(
        REQUEST_GENERATION_TOKENS,
        ENGINE,
        TOKEN_COUNT_BUCKETS,
        "Number of generation tokens processed.",
    ),
    histogram(
        REQUEST_PARAMS_MAX_TOKENS,
        ENGINE,
        TOKEN_COUNT_BUCKETS,
        "Histogram of the max_tokens request parameter.",
    ),
    histogram(
        ITERATION_TOKENS,
        ENGINE,
        ITERATION_TOKEN_BUCKETS,
        "Histogram of number of tokens per engine_step.",
    ),
    histogram(
        TIME_TO_FIRST_TOKEN,
        ENGINE,
        TTFT_BUCKETS,
        "Histogram of time to first token in seconds.",
    ),
    histogram(
        INTER_TOKEN_LATENCY,
        ENGINE,
        ITL_BUCKETS,
        "Histogram of inter-token latency in seconds.",
    ),
    histogram(
        REQUEST_TIME_PER_OUTPUT_TOKEN,
        ENGINE,
        ITL_BUCKETS,
        "Histogram of time_per_output_token_seconds per request.",
    ),
    histogram(
        E2E_REQUEST_LATENCY,
        ENGINE,
        REQUEST_LATENCY_BUCKETS,
        "Histogram of e2e request latency in seconds.",
    ),
    histogram(
        REQUEST_QUEUE_TIME,
        ENGINE,
        REQUEST_LATENCY_BUCKETS,
        "Histogram of time spent in WAITING phase for request.",
    ),
    histogram(
        REQUEST_INFERENCE_TIME,
        ENGINE,
        REQUEST_LATENCY_BUCKETS,
        "Histogram of time spent in RUNNING phase for request.",
    ),
    histogram(
        REQUEST_PREFILL_TIME,
        ENGINE,
        REQUEST_LATENCY_BUCKETS,
        "Histogram of time spent in PREFILL phase for request.",
    ),
    histogram(
        REQUEST_DECODE_TIME,
        ENGINE,
        REQUEST_LATENCY_BUCKETS,
        "Histogram of time spent in DECODE phase for request.",
    ),
    // Requests and routing.
    counter(
        "sluice_requests_total",
        &["model", "deployment", "outcome"],
        "Answers by route and deployment; outcome: success, failure, cancelled.",
    ),
    counter(
        "sluice_failovers_total",
        DEPLOYMENT,
        "Attempts that failed before the first byte and passed the request to the next deployment.",
    ),
    counter(
        "sluice_saturated_skips_total",
        DEPLOYMENT,
        "Deployments skipped because they were at their concurrency cap or saturated.",
    ),
    histogram(
        DEPLOYMENT_TTFT_SECONDS,
        DEPLOYMENT,
        DEPLOYMENT_TTFT_BUCKETS,
        "Time to first token per deployment as the gateway sees it (network included), in seconds.",
    ),
    gauge(
        "sluice_cost_usd",
        DEPLOYMENT,
        "Cost of the answers served, in USD, since start (only grows; a gauge because the amount is fractional).",
    ),
    gauge(
        CIRCUIT_STATE,
        DEPLOYMENT,
        "A provider deployment's circuit breaker: 0 closed, 1 half-open, 2 open.",
    ),
    histogram(
        OVERHEAD_SECONDS,
        &[],
        OVERHEAD_BUCKETS,
        "Gateway's own time per request (total minus the time waiting on the deployment), in seconds.",
    ),
    counter(
        REJECTED,
        &["reason"],
        "Requests refused before any work because the server was full.",
    ),
    // Limits and budgets.
    counter(
        LIMIT_REFUSALS,
        &["scope", "dimension"],
        "Requests refused by a rate limit (429).",
    ),
    gauge(
        "sluice_limits_degraded",
        &[],
        "1 while the shared limit counters (Redis) are unreachable and local limits apply.",
    ),
    counter(
        "sluice_limit_settle_failures_total",
        &[],
        "Limit settlements (actual usage, lease releases) that did not reach the counters.",
    ),
    counter(
        "sluice_limit_leases_abandoned_total",
        &[],
        "Limit leases left to lapse at their expiry because their release could not be retried.",
    ),
    counter(
        BUDGET_REFUSALS,
        &["scope", "period"],
        "Requests refused because a budget could not cover them (429 budget_exceeded).",
    ),
    // Cache.
    counter(
        CACHE_REQUESTS,
        &["outcome"],
        "Cache lookups by tier: exact, semantic (a hit) or miss.",
    ),
    counter(
        "sluice_cache_verifier_rejections_total",
        &["reason"],
        "Semantic candidates the verifier refused.",
    ),
    counter(
        "sluice_cache_embed_timeouts_total",
        &[],
        "Cache lookups that skipped the semantic tier because embedding took too long.",
    ),
    counter("sluice_cache_redis_errors_total", &[], "Redis errors of the shared cache."),
    counter(
        "sluice_cache_corrupt_records_total",
        &[],
        "Cache records that could not be read back (ignored).",
    ),
    // Guard, defence, PII.
    counter(
        GUARD_REQUESTS,
        &["outcome"],
        "Guard verdicts: clean, uncertain, flagged, blocked or error.",
    ),
    histogram(
        "sluice_guard_seconds",
        &[],
        SCREEN_BUCKETS,
        "Time the guard took per screened request, in seconds.",
    ),
    counter(
        MODERATION_REQUESTS,
        &["provider", "outcome"],
        "External moderation of the guard's uncertain band: clean, flagged, error_allowed, \
         error_blocked or skipped_sensitive.",
    ),
    counter(
        MODERATION_ERRORS,
        &["provider", "error"],
        "External moderation calls with no verdict: timeout, status, malformed, transport or \
         too_long.",
    ),
    histogram(
        MODERATION_SECONDS,
        &["provider"],
        SCREEN_BUCKETS,
        "Time the external moderation service took per reviewed request, in seconds.",
    ),
    counter(
        "sluice_defence_requests_total",
        &["outcome"],
        "Prompt-injection defence outcomes per request.",
    ),
    counter(
        "sluice_defence_decisions_total",
        &["outcome", "layer", "rule"],
        "Defence decisions by the layer and configured rule that decided.",
    ),
    counter(
        "sluice_defence_rule_hits_total",
        &["rule", "category"],
        "Defence rule matches by configured rule.",
    ),
    histogram(
        "sluice_defence_seconds",
        &[],
        SCREEN_BUCKETS,
        "Time the defence layers took per request, in seconds.",
    ),
    counter(
        "sluice_pii_detections_total",
        &["entity", "action", "direction"],
        "PII found, by entity, action taken and direction (input or output).",
    ),
    // Stream analysers.
    counter(
        STREAM_STOPS,
        &["analyser"],
        "Answers stopped early by a stream analyser or the budget cap.",
    ),
    counter(
        "sluice_stream_observed_total",
        &["analyser"],
        "Findings of analysers in observe-only mode (no stop).",
    ),
    counter(
        "sluice_stream_tokens_saved_total",
        &["reason"],
        "max_tokens not generated because an answer was stopped early.",
    ),
    histogram(
        STREAM_ANALYSIS_SECONDS,
        &[],
        STREAM_ANALYSIS_BUCKETS,
        "Stream analysers' time per chunk, in seconds.",
    ),
    // Records kept after the answer.
    counter("sluice_audit_records_total", &["sink"], "Audit records delivered, by sink."),
    counter(
        "sluice_audit_lost_total",
        &["sink"],
        "Audit records lost (queue full or spool unwritable), by sink.",
    ),
    counter(
        "sluice_audit_delivery_errors_total",
        &["sink"],
        "Failed deliveries to an audit sink (retried from the spool).",
    ),
    counter(
        "sluice_audit_spool_errors_total",
        &["sink"],
        "Errors writing an audit sink's spool file.",
    ),
    counter(
        "sluice_audit_spool_corrupt_total",
        &[],
        "Unreadable lines skipped in audit spool files.",
    ),
    counter(
        "sluice_audit_refused_total",
        &[],
        "Audit records refused while a sink was unavailable (fail_closed then refuses the request).",
    ),
    counter("sluice_spend_rows_total", &[], "Spend rows written to the store."),
    counter("sluice_spend_lost_total", &[], "Spend rows lost after the store refused them."),
    counter(
        "sluice_spend_queue_full_total",
        &[],
        "Spend rows dropped because the writer's queue was full.",
    ),
    counter(
        "sluice_sessions_redis_errors_total",
        &[],
        "Redis errors of the hot session store.",
    ),
    counter(
        "sluice_sessions_purged_total",
        &[],
        "Sessions deleted by the retention policy.",
    ),    // Traces (telemetry/export.rs), while `[telemetry] endpoint` is set.
    counter(
        TELEMETRY_SPANS_EXPORTED,
        &[],
        "Spans the OTLP collector acknowledged.",
    ),
    counter(
        TELEMETRY_SPANS_DROPPED,
        &["reason"],
        "Spans not exported: queue_full (the collector is slow or down; requests never wait) or export_failed.",
    ),
    // GPUs, polled from NVML every 5 s (gpu_metrics.rs).
    gauge(
        "sluice_gpu_memory_used_bytes",
        &["gpu", "uuid", "name"],
        "GPU memory in use, in bytes (NVML; only with a GPU).",
    ),
    gauge(
        "sluice_gpu_memory_total_bytes",
        &["gpu", "uuid", "name"],
        "GPU memory in total, in bytes (NVML; only with a GPU).",
    ),
    gauge(
        "sluice_gpu_utilization_ratio",
        &["gpu", "uuid", "name"],
        "Share of the last sample period a kernel ran on the GPU (NVML).",
    ),
    gauge(
        "sluice_gpu_memory_utilization_ratio",
        &["gpu", "uuid", "name"],
        "Share of the last sample period GPU memory was read or written (NVML).",
    ),
    gauge(
        "sluice_gpu_power_watts",
        &["gpu", "uuid", "name"],
        "GPU power draw in watts (NVML).",
    ),
    gauge(
        "sluice_gpu_sm_clock_hz",
        &["gpu", "uuid", "name"],
        "GPU streaming multiprocessor clock in hertz (NVML).",
    ),
    gauge(
        "sluice_gpu_memory_clock_hz",
        &["gpu", "uuid", "name"],
        "GPU memory clock in hertz (NVML).",
    ),
];

/// Registers at zero the series whose label values are fixed in code: a
/// refusal panel then reads 0 rather than "no data", and `increase(...) >
/// 0` alerts fire on the first event (a series born at its first increment
/// has no earlier sample to increase from).
pub fn register_known_series() {
    let zero = |name: &'static str, labels: &[(&'static str, &'static str)]| {
        metrics::counter!(name, labels).absolute(0);
    };
    for outcome in ["exact", "semantic", "miss"] {
        zero(CACHE_REQUESTS, &[("outcome", outcome)]);
    }
    for outcome in ["clean", "uncertain", "flagged", "blocked", "error"] {
        zero(GUARD_REQUESTS, &[("outcome", outcome)]);
    }
    for scope in ["key", "team", "model"] {
        for dimension in ["rpm", "tpm", "max_parallel"] {
            zero(
                LIMIT_REFUSALS,
                &[("scope", scope), ("dimension", dimension)],
            );
        }
    }
    for scope in ["key", "team", "tenant"] {
        for period in ["day", "month", "calendar_month"] {
            zero(BUDGET_REFUSALS, &[("scope", scope), ("period", period)]);
        }
    }
    for analyser in ["degeneration", "pii", "rules", "budget"] {
        zero(STREAM_STOPS, &[("analyser", analyser)]);
    }
    zero(REJECTED, &[("reason", "server_in_flight")]);
}

/// The entry for `name`.
pub fn find(name: &str) -> Option<&'static Metric> {
    ALL.iter().find(|m| m.name == name)
}

/// Gives every metric its `# HELP` line (shown once the metric has a series).
pub fn describe_all() {
    for m in ALL {
        match m.kind {
            Kind::Counter => describe_counter!(m.name, m.help),
            Kind::Gauge => describe_gauge!(m.name, m.help),
            Kind::Histogram => describe_histogram!(m.name, m.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_unique_and_follow_the_two_conventions() {
        let mut seen = HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} is listed twice", m.name);
            let engine = m.name.starts_with("sluice:");
            assert!(
                engine || m.name.starts_with("sluice_"),
                "{}: engine metrics are sluice:, the gateway's sluice_",
                m.name
            );
            if engine {
                assert_eq!(m.labels.first(), Some(&"model_name"), "{}", m.name);
            }
            // vLLM's one exception: the histogram iteration_tokens_total.
            if m.kind == Kind::Counter {
                assert!(m.name.ends_with("_total"), "{}", m.name);
            } else {
                assert!(
                    !m.name.ends_with("_total") || m.name == ITERATION_TOKENS,
                    "{}",
                    m.name
                );
            }
            assert_eq!(
                m.kind == Kind::Histogram,
                !m.buckets.is_empty(),
                "{}",
                m.name
            );
            assert!(
                m.buckets.windows(2).all(|w| w[0] < w[1]),
                "{}: buckets must increase",
                m.name
            );
            assert!(!m.help.is_empty(), "{}", m.name);
        }
    }

    #[test]
    fn the_operators_document_lists_every_metric() {
        let doc = include_str!("../../../deploy/METRICS.md");
        for m in ALL {
            let row = format!("| `{}` | {} |", m.name, m.kind.as_str());
            assert!(doc.contains(&row), "deploy/METRICS.md lacks {row}");
        }
    }

    #[test]
    fn the_engine_metrics_the_issue_names_are_listed_with_vllms_types() {
        for (name, kind) in [
            ("sluice:num_requests_running", Kind::Gauge),
            ("sluice:num_requests_waiting", Kind::Gauge),
            ("sluice:kv_cache_usage_perc", Kind::Gauge),
            ("sluice:prefix_cache_queries_total", Kind::Counter),
            ("sluice:prefix_cache_hits_total", Kind::Counter),
            ("sluice:prompt_tokens_total", Kind::Counter),
            ("sluice:generation_tokens_total", Kind::Counter),
            ("sluice:num_preemptions_total", Kind::Counter),
            ("sluice:request_success_total", Kind::Counter),
            ("sluice:time_to_first_token_seconds", Kind::Histogram),
            ("sluice:inter_token_latency_seconds", Kind::Histogram),
            ("sluice:e2e_request_latency_seconds", Kind::Histogram),
            ("sluice:request_queue_time_seconds", Kind::Histogram),
            ("sluice:request_prefill_time_seconds", Kind::Histogram),
            ("sluice:request_decode_time_seconds", Kind::Histogram),
            ("sluice:iteration_tokens_total", Kind::Histogram),
        ] {
            let m = find(name).unwrap_or_else(|| panic!("{name} is not in the catalog"));
            assert_eq!(m.kind, kind, "{name}");
        }
    }
}
