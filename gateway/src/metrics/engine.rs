//! Records a local engine's figures under vLLM's metric names.
//!
//! The runtime measures and hands its figures to a
//! [`StatsObserver`](sluice_runtime::StatsObserver) (it knows no metrics
//! library); this is the gateway's observer, one per served model. Its
//! handles are registered once, with the model's labels, when the engine
//! starts, so every series exists (at zero) before the first request, as
//! vLLM's do, and recording is an atomic add with no label set built.

use metrics::{Counter, Gauge, Histogram};
use sluice_runtime::{FinishedReason, IterationStats, LoadSnapshot, StatsObserver};

use super::catalog as c;

/// vLLM's `engine` label: Sluice runs one engine per model in a process.
const ENGINE_INDEX: &str = "0";

/// One model's engine metrics.
pub struct EngineMetrics {
    running: Gauge,
    waiting: Gauge,
    kv_usage: Gauge,
    prefix_queries: Counter,
    prefix_hits: Counter,
    preemptions: Counter,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    /// Indexed like [`FinishedReason::ALL`].
    success: [Counter; 4],
    request_prompt_tokens: Histogram,
    request_generation_tokens: Histogram,
    request_max_tokens: Histogram,
    iteration_tokens: Histogram,
    ttft: Histogram,
    itl: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    queue: Histogram,
    inference: Histogram,
    prefill: Histogram,
    decode: Histogram,
}

impl EngineMetrics {
    /// The handles for the model served as `model_name`.
    pub fn new(model_name: &str) -> Self {
        let labels = [
            ("model_name", model_name.to_string()),
            ("engine", ENGINE_INDEX.to_string()),
        ];
        let gauge = |name: &'static str| metrics::gauge!(name, &labels);
        let counter = |name: &'static str| metrics::counter!(name, &labels);
        let histogram = |name: &'static str| metrics::histogram!(name, &labels);
        let success = FinishedReason::ALL.map(|reason| {
            metrics::counter!(c::REQUEST_SUCCESS,
                "model_name" => model_name.to_string(),
                "engine" => ENGINE_INDEX,
                "finished_reason" => reason.as_str())
        });
        Self {
            running: gauge(c::NUM_REQUESTS_RUNNING),
            waiting: gauge(c::NUM_REQUESTS_WAITING),
            kv_usage: gauge(c::KV_CACHE_USAGE_PERC),
            prefix_queries: counter(c::PREFIX_CACHE_QUERIES),
            prefix_hits: counter(c::PREFIX_CACHE_HITS),
            preemptions: counter(c::NUM_PREEMPTIONS),
            prompt_tokens: counter(c::PROMPT_TOKENS),
            generation_tokens: counter(c::GENERATION_TOKENS),
            success,
            request_prompt_tokens: histogram(c::REQUEST_PROMPT_TOKENS),
            request_generation_tokens: histogram(c::REQUEST_GENERATION_TOKENS),
            request_max_tokens: histogram(c::REQUEST_PARAMS_MAX_TOKENS),
            iteration_tokens: histogram(c::ITERATION_TOKENS),
            ttft: histogram(c::TIME_TO_FIRST_TOKEN),
            itl: histogram(c::INTER_TOKEN_LATENCY),
            tpot: histogram(c::REQUEST_TIME_PER_OUTPUT_TOKEN),
            e2e: histogram(c::E2E_REQUEST_LATENCY),
            queue: histogram(c::REQUEST_QUEUE_TIME),
            inference: histogram(c::REQUEST_INFERENCE_TIME),
            prefill: histogram(c::REQUEST_PREFILL_TIME),
            decode: histogram(c::REQUEST_DECODE_TIME),
        }
    }

    fn success(&self, reason: FinishedReason) -> &Counter {
        let i = match reason {
            FinishedReason::Stop => 0,
            FinishedReason::Length => 1,
            FinishedReason::Abort => 2,
            FinishedReason::Error => 3,
        };
        &self.success[i]
    }
}

impl StatsObserver for EngineMetrics {
    fn record(&self, load: &LoadSnapshot, stats: &IterationStats) {
        self.running.set(load.running as f64);
        self.waiting.set(load.waiting as f64);
        let usage = match load.kv_blocks_total {
            0 => 0.0,
            total => load.kv_blocks_used as f64 / total as f64,
        };
        self.kv_usage.set(usage);
        self.prefix_queries.increment(stats.prefix_cache_queries);
        self.prefix_hits.increment(stats.prefix_cache_hits);
        self.preemptions.increment(stats.preemptions);
        self.prompt_tokens.increment(stats.prompt_tokens);
        self.generation_tokens.increment(stats.generation_tokens);
        for &tokens in &stats.iteration_tokens {
            self.iteration_tokens.record(tokens as f64);
        }
        for &ttft in &stats.time_to_first_token {
            self.ttft.record(ttft);
        }
        for &itl in &stats.inter_token_latency {
            self.itl.record(itl);
        }
        for f in &stats.finished {
            self.success(f.reason).increment(1);
            // Latencies and sizes of requests that ran to their end only: an
            // abort's or a failure's would describe the client or the fault.
            if !matches!(f.reason, FinishedReason::Stop | FinishedReason::Length) {
                continue;
            }
            self.e2e.record(f.e2e_seconds);
            for (histogram, value) in [
                (&self.queue, f.queue_seconds),
                (&self.prefill, f.prefill_seconds),
                (&self.decode, f.decode_seconds),
                (&self.inference, f.inference_seconds),
                (&self.tpot, f.time_per_output_token_seconds),
            ] {
                if let Some(v) = value {
                    histogram.record(v);
                }
            }
            self.request_prompt_tokens.record(f.prompt_tokens as f64);
            self.request_generation_tokens
                .record(f.generation_tokens as f64);
            self.request_max_tokens.record(f.max_tokens as f64);
        }
    }
}
