//! What the engine tells an observer about its work, for metrics.
//!
//! The engine measures (each request's arrival, first scheduling, first and
//! last token; each step's tokens; preemptions and prefix-cache lookups)
//! and hands the figures to a [`StatsObserver`] once per loop turn, with
//! the load at that moment. It knows no metrics library: the gateway's
//! observer records them under vLLM's names, so a vLLM dashboard reads a
//! Sluice engine. The figures mean what vLLM's `IterationStats` /
//! `FinishedRequestStats` mean:
//!
//! * queue time: arrival to first scheduling (vLLM's WAITING phase);
//! * prefill time: first scheduling to first token;
//! * decode time: first token to last token;
//! * inference time: first scheduling to last token (prefill + decode);
//! * end-to-end: arrival to finish;
//! * time to first token: arrival to first token;
//! * inter-token latency: between two tokens of one request.
//!
//! Design choice: the observer is called on the engine thread, between
//! steps, with a batch of figures (not once per token), so an observer that
//! does a few atomic increments per figure costs the step nothing
//! measurable; one that blocks would stall the engine, hence the trait's
//! contract.

use std::time::Instant;

use crate::load::LoadSnapshot;
use crate::request::StageTimes;

/// Why the engine let go of a request, as vLLM's `finished_reason` label
/// names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishedReason {
    /// EOS, a stop token, a stop string or a finished grammar.
    Stop,
    /// `max_tokens` or the context reached.
    Length,
    /// The client went away (its event stream was dropped).
    Abort,
    /// The request failed (model failure, grammar failure, no room ever,
    /// an engine restart).
    Error,
}

impl FinishedReason {
    /// Every reason, for observers that register their series up front.
    pub const ALL: [Self; 4] = [Self::Stop, Self::Length, Self::Abort, Self::Error];

    /// vLLM's label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
            Self::Error => "error",
        }
    }
}

/// One request the engine let go of, with its phases in seconds. A phase
/// the request never reached is `None` (an aborted request that never ran
/// has no prefill time).
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedRequest {
    pub reason: FinishedReason,
    pub e2e_seconds: f64,
    pub queue_seconds: Option<f64>,
    pub prefill_seconds: Option<f64>,
    pub decode_seconds: Option<f64>,
    pub inference_seconds: Option<f64>,
    /// Decode time over the tokens after the first (vLLM's per-request
    /// time per output token); `None` with fewer than two tokens.
    pub time_per_output_token_seconds: Option<f64>,
    pub prompt_tokens: usize,
    pub generation_tokens: usize,
    /// The request's `max_tokens`.
    pub max_tokens: usize,
}

/// What happened since the observer was last called: usually one step,
/// or none (an idle turn, where only the load and aborts are news).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IterationStats {
    /// Tokens computed by each step run (prefill chunks + decodes).
    pub iteration_tokens: Vec<usize>,
    /// Prompt tokens of the requests whose prefill completed (counted
    /// once per request, at its first token).
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generation_tokens: u64,
    /// Sequences preempted (their blocks freed, to be recomputed).
    pub preemptions: u64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_cache_queries: u64,
    /// Of those, tokens found cached.
    pub prefix_cache_hits: u64,
    /// Seconds from arrival to first token, one per request that got it.
    pub time_to_first_token: Vec<f64>,
    /// Seconds between consecutive tokens of a request.
    pub inter_token_latency: Vec<f64>,
    pub finished: Vec<FinishedRequest>,
}

impl IterationStats {
    fn clear(&mut self) {
        self.iteration_tokens.clear();
        self.prompt_tokens = 0;
        self.generation_tokens = 0;
        self.preemptions = 0;
        self.prefix_cache_queries = 0;
        self.prefix_cache_hits = 0;
        self.time_to_first_token.clear();
        self.inter_token_latency.clear();
        self.finished.clear();
    }
}

/// Receives the engine's figures. Called on the engine thread between
/// steps: it must not block (record and return).
pub trait StatsObserver: Send + Sync {
    fn record(&self, load: &LoadSnapshot, stats: &IterationStats);
}

/// One request's timestamps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestTimes {
    arrived: Instant,
    scheduled: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

impl RequestTimes {
    pub fn arrived_at(arrived: Instant) -> Self {
        Self {
            arrived,
            scheduled: None,
            first_token: None,
            last_token: None,
        }
    }

    /// The stage bounds a trace shows for a request that finished at
    /// `finished`. A stage it never reached takes no time: with no token
    /// the first token is the finish, and a request never scheduled (none
    /// finishes that way today) is scheduled at its first token.
    pub fn stage_times(&self, finished: Instant) -> StageTimes {
        let first_token = self.first_token.unwrap_or(finished);
        StageTimes {
            arrived: self.arrived,
            scheduled: self.scheduled.unwrap_or(first_token),
            first_token,
            finished,
        }
    }
}

/// Cumulative counters read from the scheduler, turned into deltas.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    preemptions: u64,
    prefix_queries: u64,
    prefix_hits: u64,
}

/// The engine's side: collects figures as they happen and hands them over
/// in one batch.
#[derive(Debug, Default)]
pub(crate) struct StatsCollector {
    pending: IterationStats,
    seen: Totals,
}

impl StatsCollector {
    /// A request is in this step's batch: the first time, its queue time ends.
    pub fn scheduled(&mut self, times: &mut RequestTimes, now: Instant) {
        times.scheduled.get_or_insert(now);
    }

    /// A step computed `tokens` tokens.
    pub fn step(&mut self, tokens: usize) {
        self.pending.iteration_tokens.push(tokens);
    }

    /// A request got a token at `now`.
    pub fn token(&mut self, times: &mut RequestTimes, prompt_tokens: usize, now: Instant) {
        self.pending.generation_tokens += 1;
        match times.last_token {
            None => {
                self.pending.prompt_tokens += prompt_tokens as u64;
                self.pending
                    .time_to_first_token
                    .push(seconds(times.arrived, now));
                times.first_token = Some(now);
            }
            Some(last) => self.pending.inter_token_latency.push(seconds(last, now)),
        }
        times.last_token = Some(now);
    }

    /// A request left the engine at `now`.
    pub fn finished(
        &mut self,
        times: &RequestTimes,
        reason: FinishedReason,
        tokens: (usize, usize, usize),
        now: Instant,
    ) {
        let (prompt_tokens, generation_tokens, max_tokens) = tokens;
        let between = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(seconds(a, b)),
            _ => None,
        };
        let decode = between(times.first_token, times.last_token);
        self.pending.finished.push(FinishedRequest {
            reason,
            e2e_seconds: seconds(times.arrived, now),
            queue_seconds: times.scheduled.map(|s| seconds(times.arrived, s)),
            prefill_seconds: between(times.scheduled, times.first_token),
            decode_seconds: decode,
            inference_seconds: between(times.scheduled, times.last_token),
            time_per_output_token_seconds: decode
                .filter(|_| generation_tokens > 1)
                .map(|d| d / (generation_tokens - 1) as f64),
            prompt_tokens,
            generation_tokens,
            max_tokens,
        });
    }

    /// The scheduler's cumulative counters now; a value below the last one
    /// seen means a new scheduler (an engine restart) counting from zero.
    pub fn totals(&mut self, preemptions: u64, prefix_queries: u64, prefix_hits: u64) {
        let delta = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
        self.pending.preemptions += delta(preemptions, self.seen.preemptions);
        self.pending.prefix_cache_queries += delta(prefix_queries, self.seen.prefix_queries);
        self.pending.prefix_cache_hits += delta(prefix_hits, self.seen.prefix_hits);
        self.seen = Totals {
            preemptions,
            prefix_queries,
            prefix_hits,
        };
    }

    /// Hands the figures gathered since the last call to `observer`.
    pub fn flush(&mut self, observer: Option<&dyn StatsObserver>, load: &LoadSnapshot) {
        if let Some(observer) = observer {
            observer.record(load, &self.pending);
        }
        self.pending.clear();
    }
}

fn seconds(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<IterationStats>>);

    impl StatsObserver for Recorded {
        fn record(&self, _load: &LoadSnapshot, stats: &IterationStats) {
            self.0.lock().unwrap().push(stats.clone());
        }
    }

    #[test]
    fn phases_follow_vllms_definitions() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = StatsCollector::default();
        let mut times = RequestTimes::arrived_at(t0);
        c.scheduled(&mut times, at(100));
        // A preempted request scheduled again keeps its first scheduling.
        c.scheduled(&mut times, at(150));
        c.token(&mut times, 7, at(300));
        c.token(&mut times, 7, at(350));
        c.token(&mut times, 7, at(450));
        c.finished(&times, FinishedReason::Length, (7, 3, 3), at(460));
        let observer = Recorded::default();
        c.flush(Some(&observer), &LoadSnapshot::default());
        let got = observer.0.lock().unwrap().pop().unwrap();
        assert_eq!(
            got.prompt_tokens, 7,
            "prompt counted once, at the first token"
        );
        assert_eq!(got.generation_tokens, 3);
        assert_eq!(got.time_to_first_token, vec![0.3]);
        assert_eq!(got.inter_token_latency, vec![0.05, 0.1]);
        let f = &got.finished[0];
        assert_eq!(f.reason.as_str(), "length");
        assert_eq!(f.e2e_seconds, 0.46);
        assert_eq!(f.queue_seconds, Some(0.1));
        assert_eq!(f.prefill_seconds, Some(0.2));
        assert_eq!(f.decode_seconds, Some(0.15));
        assert_eq!(f.inference_seconds, Some(0.35));
        assert_eq!(f.time_per_output_token_seconds, Some(0.075));
    }

    #[test]
    fn stage_times_are_the_recorded_phases_and_a_skipped_one_takes_no_time() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = StatsCollector::default();
        let mut times = RequestTimes::arrived_at(t0);
        c.scheduled(&mut times, at(10));
        c.scheduled(&mut times, at(15));
        c.token(&mut times, 3, at(40));
        c.token(&mut times, 3, at(60));
        let stages = times.stage_times(at(61));
        assert_eq!(
            (
                stages.arrived,
                stages.scheduled,
                stages.first_token,
                stages.finished
            ),
            (t0, at(10), at(40), at(61)),
            "first scheduling and first token, not the last ones"
        );
        // Scheduled but failed before any token: no decode stage.
        let mut times = RequestTimes::arrived_at(t0);
        c.scheduled(&mut times, at(5));
        let stages = times.stage_times(at(9));
        assert_eq!((stages.scheduled, stages.first_token), (at(5), at(9)));
        // Never scheduled: every stage after the queue is empty.
        let stages = RequestTimes::arrived_at(t0).stage_times(at(7));
        assert_eq!((stages.scheduled, stages.first_token), (at(7), at(7)));
    }

    #[test]
    fn a_request_that_never_ran_has_only_its_end_to_end_time() {
        let t0 = Instant::now();
        let mut c = StatsCollector::default();
        let times = RequestTimes::arrived_at(t0);
        c.finished(
            &times,
            FinishedReason::Abort,
            (4, 0, 16),
            t0 + Duration::from_millis(20),
        );
        let observer = Recorded::default();
        c.flush(Some(&observer), &LoadSnapshot::default());
        let f = observer.0.lock().unwrap()[0].finished[0].clone();
        assert_eq!(f.e2e_seconds, 0.02);
        assert_eq!(
            (f.queue_seconds, f.prefill_seconds, f.decode_seconds),
            (None, None, None)
        );
        assert_eq!(f.time_per_output_token_seconds, None);
    }

    #[test]
    fn cumulative_counters_become_deltas_and_survive_a_restart() {
        let mut c = StatsCollector::default();
        let observer = Recorded::default();
        let load = LoadSnapshot::default();
        c.totals(2, 64, 32);
        c.flush(Some(&observer), &load);
        c.totals(3, 80, 32);
        c.flush(Some(&observer), &load);
        // A restarted scheduler counts from zero again.
        c.totals(1, 16, 0);
        c.flush(Some(&observer), &load);
        let got = observer.0.lock().unwrap();
        let triples: Vec<_> = got
            .iter()
            .map(|s| (s.preemptions, s.prefix_cache_queries, s.prefix_cache_hits))
            .collect();
        assert_eq!(triples, vec![(2, 64, 32), (1, 16, 0), (1, 16, 0)]);
        assert!(got[2].finished.is_empty(), "each flush starts empty");
    }
}
