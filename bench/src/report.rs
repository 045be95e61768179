//! What a run measured, in one shape for every side of a comparison: the
//! per-sequence timings each side collects, the summaries made from them, and
//! the markdown table and JSON they are written as (the machine they ran on
//! is `machine.rs`'s).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::machine::Machine;
use crate::stats::{cell, median, Summary};

/// When one sequence's events arrived, seen from the client.
#[derive(Debug, Clone)]
pub struct SeqTiming {
    pub submitted: Instant,
    /// When each token (or streamed chunk) arrived.
    pub token_times: Vec<Instant>,
    /// Tokens generated (the server's count when it reports one).
    pub tokens: usize,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Prompt tokens the server says it computed (llama.cpp's `timings.prompt_n`).
    pub computed_prompt_tokens: Option<usize>,
    /// The server's own prompt rate for this request (llama.cpp's timings).
    pub self_prompt_tok_s: Option<f64>,
    /// The server's own generation rate for this request (llama.cpp's timings).
    pub self_decode_tok_s: Option<f64>,
}

impl SeqTiming {
    pub fn new(submitted: Instant) -> Self {
        Self {
            submitted,
            token_times: Vec::new(),
            tokens: 0,
            error: None,
            computed_prompt_tokens: None,
            self_prompt_tok_s: None,
            self_decode_tok_s: None,
        }
    }

    /// Records one token chunk's arrival.
    pub fn on_token(&mut self, at: Instant) {
        self.token_times.push(at);
    }

    pub fn first_token(&self) -> Option<Instant> {
        self.token_times.first().copied()
    }

    pub fn last_token(&self) -> Option<Instant> {
        self.token_times.last().copied()
    }

    pub fn ttft(&self) -> Option<Duration> {
        self.first_token().map(|t| t.duration_since(self.submitted))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PrefillRun {
    /// Submit to first token, seconds.
    pub seconds: f64,
    /// Prompt tokens / `seconds`.
    pub tok_s: f64,
    pub computed_prompt_tokens: Option<usize>,
    pub self_reported_tok_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrefillReport {
    pub prompt_tokens: usize,
    pub runs: Vec<PrefillRun>,
    pub tok_s_median: Option<f64>,
    pub tok_s_best: Option<f64>,
    pub self_reported_tok_s_median: Option<f64>,
}

impl PrefillReport {
    pub fn new(prompt_tokens: usize, runs: Vec<PrefillRun>) -> Self {
        let rates: Vec<f64> = runs.iter().map(|r| r.tok_s).collect();
        let own: Vec<f64> = runs.iter().filter_map(|r| r.self_reported_tok_s).collect();
        Self {
            prompt_tokens,
            tok_s_median: median(&rates),
            tok_s_best: rates.iter().copied().reduce(f64::max),
            self_reported_tok_s_median: median(&own),
            runs,
        }
    }
}

/// One decode run: `concurrency` sequences submitted together, each
/// generating `max_tokens` tokens.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeReport {
    pub concurrency: usize,
    pub max_tokens: usize,
    pub prompt_tokens: usize,
    pub sequences_ok: usize,
    pub errors: Vec<String>,
    pub generated_tokens: usize,
    /// While every sequence was decoding: from the latest first token to the
    /// earliest last token, seconds. No prefill falls inside it.
    pub steady_window_s: f64,
    /// Tokens of all sequences that arrived inside the steady window, per
    /// second: the batch's generation rate. The headline decode number.
    pub decode_tok_s: Option<f64>,
    /// From the earliest first token to the latest last token, seconds.
    pub decode_window_s: f64,
    /// Tokens after each sequence's first over `decode_window_s`; lower than
    /// `decode_tok_s` when sequences start or end at different times (a
    /// server that prefills newcomers one by one, a ragged finish).
    pub first_to_last_tok_s: Option<f64>,
    /// From the first submit to the last token, seconds.
    pub total_s: f64,
    /// All generated tokens over `total_s` (prefill included).
    pub total_tok_s: Option<f64>,
    /// Time to first token, milliseconds.
    pub ttft_ms: Summary,
    /// Mean over sequences of each one's own rate, first to last token.
    pub per_seq_tok_s_mean: Option<f64>,
    /// Sum of the server's own per-request generation rates (llama.cpp).
    pub self_reported_tok_s_sum: Option<f64>,
}

impl DecodeReport {
    pub fn from_timings(
        concurrency: usize,
        max_tokens: usize,
        prompt_tokens: usize,
        seqs: &[SeqTiming],
    ) -> Self {
        let ok: Vec<&SeqTiming> = seqs.iter().filter(|s| s.error.is_none()).collect();
        let errors: Vec<String> = seqs.iter().filter_map(|s| s.error.clone()).collect();
        let first = ok.iter().filter_map(|s| s.first_token()).min();
        let last = ok.iter().filter_map(|s| s.last_token()).max();
        // The steady window: every sequence has its first token and none has
        // its last yet.
        let all_started = ok.iter().filter_map(|s| s.first_token()).max();
        let first_done = ok.iter().filter_map(|s| s.last_token()).min();
        let submitted = seqs.iter().map(|s| s.submitted).min();
        let generated: usize = ok.iter().map(|s| s.tokens).sum();
        let after_first: usize = ok.iter().map(|s| s.tokens.saturating_sub(1)).sum();
        let secs = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let rate = |n: usize, s: f64| (s > 0.0 && n > 0).then(|| n as f64 / s);
        let decode_window_s = secs(first, last);
        let steady_window_s = secs(all_started, first_done);
        let steady_tokens: usize = match (all_started, first_done) {
            (Some(a), Some(b)) => ok
                .iter()
                .map(|s| s.token_times.iter().filter(|&&t| t > a && t <= b).count())
                .sum(),
            _ => 0,
        };
        let total_s = secs(submitted, last);
        let ttfts: Vec<f64> = ok
            .iter()
            .filter_map(|s| s.ttft())
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        let per_seq: Vec<f64> = ok
            .iter()
            .filter_map(|s| {
                rate(
                    s.tokens.saturating_sub(1),
                    secs(s.first_token(), s.last_token()),
                )
            })
            .collect();
        let own: Vec<f64> = ok.iter().filter_map(|s| s.self_decode_tok_s).collect();
        Self {
            concurrency,
            max_tokens,
            prompt_tokens,
            sequences_ok: ok.len(),
            errors,
            generated_tokens: generated,
            steady_window_s,
            decode_tok_s: rate(steady_tokens, steady_window_s),
            decode_window_s,
            first_to_last_tok_s: rate(after_first, decode_window_s),
            total_s,
            total_tok_s: rate(generated, total_s),
            ttft_ms: Summary::of(&ttfts),
            per_seq_tok_s_mean: (!per_seq.is_empty())
                .then(|| per_seq.iter().sum::<f64>() / per_seq.len() as f64),
            self_reported_tok_s_sum: (!own.is_empty()).then(|| own.iter().sum()),
        }
    }
}

/// One column of the comparison: an engine with its weights and settings.
#[derive(Debug, Clone, Serialize)]
pub struct SideReport {
    /// Column title.
    pub name: String,
    pub engine: String,
    pub weights: String,
    pub threads: usize,
    /// Engine config or server command line, as run.
    pub settings: serde_json::Value,
    pub load_s: Option<f64>,
    pub prefill: Option<PrefillReport>,
    pub decode: Vec<DecodeReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    pub model: String,
    pub prefill_prompt_tokens: usize,
    pub prefill_repeats: usize,
    pub decode_prompt_tokens: usize,
    pub decode_max_tokens: usize,
    pub concurrency: Vec<usize>,
    pub sampling: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub tool: &'static str,
    pub command: String,
    pub machine: Machine,
    /// CPU share other processes used during the run; above a few percent
    /// the numbers are not worth publishing.
    pub cpu_busy_by_others_pct: Option<f64>,
    pub workload: WorkloadReport,
    pub sides: Vec<SideReport>,
    pub notes: Vec<String>,
}

impl BenchReport {
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }

    /// The comparison as a markdown table: one row per measure, one column
    /// per side, plus a ratio column per Sluice side when llama.cpp ran.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        out.push_str(&format!(
            "Machine: {} ({} cores, {}; {:.0} GiB RAM; Sluice int8 kernels: {}, packed f32: {}); load average at start {:.2}, CPU busy {} in the second before.\n",
            m.cpu_model,
            m.cores,
            m.simd,
            m.mem_total_gib,
            m.int8_kernels,
            m.f32_packed_kernels,
            m.loadavg_start[0],
            m.cpu_busy_pct_before
                .map_or_else(|| "unknown".to_string(), |p| format!("{p:.0}%")),
        ));
        out.push_str(&format!(
            "Other processes used {} of the CPU during the run{}.\n",
            self.cpu_busy_by_others_pct
                .map_or_else(|| "an unknown share".to_string(), |p| format!("{p:.0}%")),
            if self.cpu_busy_by_others_pct.is_some_and(|p| p > 5.0) {
                " — PRELIMINARY: the machine was busy, rerun on a quiet one"
            } else {
                ""
            }
        ));
        let w = &self.workload;
        out.push_str(&format!(
            "Workload: prefill {} tokens, max_tokens 1, median of {}; decode {} tokens per sequence \
             (ignore_eos, greedy) after {}-token distinct prompts; threads: {}.\n\n",
            w.prefill_prompt_tokens,
            w.prefill_repeats,
            w.decode_max_tokens,
            w.decode_prompt_tokens,
            self.sides
                .iter()
                .map(|s| format!("{} = {}", s.name, s.threads))
                .collect::<Vec<_>>()
                .join(", "),
        ));
        let llama = self.sides.iter().position(|s| s.engine == "llama.cpp");
        let ratio_cols: Vec<usize> = match llama {
            Some(l) => (0..self.sides.len()).filter(|&i| i != l).collect(),
            None => Vec::new(),
        };
        out.push_str("| measure |");
        for s in &self.sides {
            out.push_str(&format!(" {} |", s.name));
        }
        for &i in &ratio_cols {
            out.push_str(&format!(" {} ÷ llama.cpp |", self.sides[i].name));
        }
        out.push_str("\n|---|");
        for _ in 0..self.sides.len() + ratio_cols.len() {
            out.push_str("---:|");
        }
        out.push('\n');

        let mut row = |label: String, decimals: usize, get: &dyn Fn(&SideReport) -> Option<f64>| {
            let vals: Vec<Option<f64>> = self.sides.iter().map(get).collect();
            if vals.iter().all(Option::is_none) {
                return;
            }
            out.push_str(&format!("| {label} |"));
            for v in &vals {
                out.push_str(&format!(" {} |", cell(*v, decimals)));
            }
            for &i in &ratio_cols {
                let r = match (vals[i], llama.and_then(|l| vals[l])) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                };
                out.push_str(&format!(" {} |", cell(r, 2)));
            }
            out.push('\n');
        };
        row(
            format!("prefill tok/s ({}-token prompt)", w.prefill_prompt_tokens),
            1,
            &|s| s.prefill.as_ref().and_then(|p| p.tok_s_median),
        );
        for &n in &w.concurrency {
            let label = if n == 1 {
                "decode tok/s, 1 sequence".to_string()
            } else {
                format!("decode tok/s, {n} sequences (total)")
            };
            row(label, 1, &|s| decode_at(s, n).and_then(|d| d.decode_tok_s));
        }
        for &n in &w.concurrency {
            row(
                format!("end-to-end tok/s, {n} seq (prefill included)"),
                1,
                &|s| decode_at(s, n).and_then(|d| d.total_tok_s),
            );
        }
        for &n in &w.concurrency {
            row(format!("TTFT p50 ms, {n} seq (lower is better)"), 0, &|s| {
                decode_at(s, n).and_then(|d| d.ttft_ms.p50)
            });
        }
        row("model load s (lower is better)".to_string(), 2, &|s| {
            s.load_s
        });
        out.push('\n');
        out.push_str(
            "Decode tok/s: tokens of all sequences that arrived while every sequence was decoding \
             (after the last first token, up to the first last token) per second of that window, \
             stamped at the client on both sides; end-to-end: all generated tokens from the first \
             submit to the last token (the short prompts' prefill included). TTFT: submit to first \
             token.\n",
        );
        if let Some(l) = llama {
            let s = &self.sides[l];
            let own: Vec<String> = s
                .decode
                .iter()
                .filter_map(|d| {
                    d.self_reported_tok_s_sum
                        .map(|v| format!("{} seq {v:.1}", d.concurrency))
                })
                .collect();
            let pre = s
                .prefill
                .as_ref()
                .and_then(|p| p.self_reported_tok_s_median);
            out.push_str(&format!(
                "llama.cpp's own timings: prefill {} tok/s; decode (sum of per-request rates) {}.\n",
                cell(pre, 1),
                if own.is_empty() {
                    "—".to_string()
                } else {
                    own.join(", ")
                }
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("\nNote: {note}\n"));
        }
        out
    }
}

fn decode_at(side: &SideReport, concurrency: usize) -> Option<&DecodeReport> {
    side.decode.iter().find(|d| d.concurrency == concurrency)
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value).context("serialising the results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    eprintln!("[bench] wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_leaves_out_a_late_starter_prefill() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // a decodes from 0 to 1000 ms; b starts at 500 ms (its prefill was
        // late) and ends at 1500 ms. Both make a token every 100 ms.
        let mut a = SeqTiming::new(t0);
        let mut b = SeqTiming::new(t0);
        for i in 0..=10 {
            a.on_token(at(100 * i));
            b.on_token(at(500 + 100 * i));
        }
        a.tokens = 11;
        b.tokens = 11;
        let r = DecodeReport::from_timings(2, 11, 8, &[a, b]);
        // Steady window 500..1000 ms: 5 tokens each, 20 tok/s together.
        assert!((r.steady_window_s - 0.5).abs() < 1e-9);
        assert!((r.decode_tok_s.unwrap() - 20.0).abs() < 1e-9);
        // First to last: 20 tokens over 1.5 s.
        assert!((r.first_to_last_tok_s.unwrap() - 20.0 / 1.5).abs() < 1e-9);
    }

    #[test]
    fn decode_rate_counts_tokens_after_the_first_over_the_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut a = SeqTiming::new(t0);
        let mut b = SeqTiming::new(t0);
        for i in 0..11 {
            a.on_token(at(100 + 100 * i));
            b.on_token(at(100 + 100 * i));
        }
        a.tokens = 11;
        b.tokens = 11;
        let bad = SeqTiming {
            error: Some("http 500".into()),
            ..SeqTiming::new(t0)
        };
        let r = DecodeReport::from_timings(3, 11, 8, &[a, b, bad]);
        assert_eq!(r.sequences_ok, 2);
        assert_eq!(r.errors, vec!["http 500".to_string()]);
        assert_eq!(r.generated_tokens, 22);
        assert!((r.decode_tok_s.unwrap() - 20.0).abs() < 1e-9);
        assert!((r.first_to_last_tok_s.unwrap() - 20.0).abs() < 1e-9);
        assert!((r.total_tok_s.unwrap() - 20.0).abs() < 1e-9);
        assert!((r.ttft_ms.p50.unwrap() - 100.0).abs() < 1e-9);
        assert!((r.per_seq_tok_s_mean.unwrap() - 10.0).abs() < 1e-9);
    }
}
