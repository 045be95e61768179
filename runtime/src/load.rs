//! Load signals that the router reads to decide whether the local engine is
//! saturated. Written by the engine thread once per step, read lock-free.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// A point-in-time copy of the engine's load.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadSnapshot {
    /// Requests accepted and not yet finished (running or waiting), counted
    /// at submission, so it is exact at any moment.
    pub in_flight: usize,
    /// Requests accepted but not yet running.
    pub waiting: usize,
    pub running: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_free: usize,
    pub kv_blocks_total: usize,
    /// Free blocks that warm sessions hold (part of `kv_blocks_free`:
    /// evicted last, but evictable).
    pub kv_blocks_warm: usize,
    /// Sessions whose last turn's blocks are held warm.
    pub warm_sessions: usize,
    /// Tokens computed per second (prefill + decode), smoothed over recent steps.
    pub tokens_per_second: f64,
    /// Generated tokens per second, smoothed.
    pub decode_tokens_per_second: f64,
    /// Rough time a new request would wait before its first token: the work
    /// queued ahead of it divided by the recent throughput.
    pub estimated_queue_wait_ms: f64,
    pub preemptions: u64,
    pub prefix_cache_hit_tokens: u64,
    /// Model steps run since the engine started: what "freed within one
    /// step" is counted in.
    pub steps: u64,
}

/// The shared cells behind [`LoadSnapshot`]; f64s are stored as bits.
#[derive(Default)]
pub(crate) struct LoadCells {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_used: AtomicUsize,
    pub kv_free: AtomicUsize,
    pub kv_total: AtomicUsize,
    pub kv_warm: AtomicUsize,
    pub warm_sessions: AtomicUsize,
    pub tps_bits: AtomicU64,
    pub decode_tps_bits: AtomicU64,
    pub wait_ms_bits: AtomicU64,
    pub preemptions: AtomicU64,
    pub prefix_hits: AtomicU64,
    pub steps: AtomicU64,
}

impl LoadCells {
    pub fn snapshot(&self) -> LoadSnapshot {
        LoadSnapshot {
            in_flight: 0,
            waiting: self.waiting.load(Relaxed),
            running: self.running.load(Relaxed),
            kv_blocks_used: self.kv_used.load(Relaxed),
            kv_blocks_free: self.kv_free.load(Relaxed),
            kv_blocks_total: self.kv_total.load(Relaxed),
            kv_blocks_warm: self.kv_warm.load(Relaxed),
            warm_sessions: self.warm_sessions.load(Relaxed),
            tokens_per_second: f64::from_bits(self.tps_bits.load(Relaxed)),
            decode_tokens_per_second: f64::from_bits(self.decode_tps_bits.load(Relaxed)),
            estimated_queue_wait_ms: f64::from_bits(self.wait_ms_bits.load(Relaxed)),
            preemptions: self.preemptions.load(Relaxed),
            prefix_cache_hit_tokens: self.prefix_hits.load(Relaxed),
            steps: self.steps.load(Relaxed),
        }
    }
}

/// Exponentially weighted moving average of a rate.
#[derive(Debug, Default)]
pub(crate) struct RateEwma {
    value: Option<f64>,
}

impl RateEwma {
    pub fn current(&self) -> f64 {
        self.value.unwrap_or(0.0)
    }

    /// Folds in `count` events that took `seconds`.
    pub fn observe(&mut self, count: usize, seconds: f64) -> f64 {
        if seconds <= 0.0 {
            return self.value.unwrap_or(0.0);
        }
        let rate = count as f64 / seconds;
        let v = match self.value {
            None => rate,
            Some(old) => 0.8 * old + 0.2 * rate,
        };
        self.value = Some(v);
        v
    }
}
