//! `sluice-bench stream`: what the stream analysers cost and what their
//! early stops save, in this process, with the gateway's own analysers
//! (`sluice_gateway::analyse`) and the demo model's engine.
//!
//! 1. **Per-chunk analysis**: an answer of `--chunk-tokens` pieces of
//!    business prose (with token ids) passes `hold_back` with every
//!    analyser on (PII with every kind masked, so it never stops; the
//!    built-in rules; degeneration). Each inner step's handling is timed
//!    (the steps that close a window scan `window + overlap` bytes): p50,
//!    p99, max.
//! 2. **Decode throughput at `--sequences` streams, chain on vs off**: the
//!    sequences' event streams are read as the gateway reads them (one
//!    async task each), raw or through the analysers; in the "on" runs the
//!    analysers only count their verdicts, so both runs do the same work.
//!    The two kinds of run are interleaved `--repeats` times (medians):
//!    the machine's own speed drifts, a ratio of neighbours does not.
//! 3. **Early stop**: the same batch with `--looping` of its sequences
//!    forced into a loop (a +100 logit bias on one token); with the
//!    analysers acting, the loops stop at the detector's 48th copy and
//!    their sequences are dropped (the engine frees them before its next
//!    step), without they run to `--max-tokens`. Tokens generated and wall
//!    time per run, interleaved too.
//!
//! With `--guard`, the guard on answer windows too (the built-in head over
//! the demo MiniLM, `sluice serve`'s pool settings): part 1 also times one
//! guard verdict per window of the prose (window + overlap bytes, one at a
//! time: the latency a `hold_back` window waits), and the per-chunk run
//! again with the guard scoring every window, the pieces arriving at a
//! decoding sequence's pace (`--pace-ms`): a step that has to wait for a
//! verdict (the `guard_in_flight` bound reached) shows in its p99. Part 2
//! adds a third kind of run, "guard", where every window of every sequence
//! also goes to the guard (verdicts counted, not acted on), interleaved
//! with the others. The guard's pieces live in [`crate::stream_guard_bench`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use futures_util::future::BoxFuture;
use serde_json::json;
use sluice_gateway::analyse::degeneration::Degeneration;
use sluice_gateway::analyse::guard::{AsyncAnalyser, OutputGuard};
use sluice_gateway::analyse::policy::{OutputRules, PiiBlock};
use sluice_gateway::analyse::window::{Analysed, Framing, Settings};
use sluice_gateway::analyse::{Analyser, Stop, Wrap};
use sluice_gateway::answer::{Answer, BoxAnswer, Step, StopNote};
use sluice_gateway::config::PiiSettings;
use sluice_gateway::defence::rules::RuleSet;
use sluice_gateway::error::ApiError;
use sluice_gateway::pii::Pii;
use sluice_models::{load_llm, LoadKnobs};
use sluice_runtime::{
    Engine, EngineConfig, EngineEvent, EngineHandle, EventStream, FinishReason, GenerateRequest,
    SamplingParams, Usage,
};

use crate::stats::{cell, Summary};
use crate::stream_guard_bench::{per_guard_window, served_guard, ObserveGuard, ServedGuard};

#[derive(Args, Debug)]
pub struct StreamArgs {
    /// A GGUF file or a Hugging Face folder [default: the demo SmolLM2-135M GGUF]
    #[arg(long)]
    model: Option<PathBuf>,
    /// Compute threads [default: one per core]
    #[arg(long)]
    threads: Option<usize>,
    /// Steps of the answer timed in part 1
    #[arg(long, default_value_t = 20_000)]
    chunk_tokens: usize,
    /// `hold_back` window, in tokens
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Sequences decoding at once (parts 2 and 3)
    #[arg(long, default_value_t = 8)]
    sequences: usize,
    /// Of which forced into a loop in part 3
    #[arg(long, default_value_t = 2)]
    looping: usize,
    /// Tokens each sequence may generate
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Runs of each kind (interleaved; medians reported)
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Skip parts 2 and 3 (no model needed)
    #[arg(long)]
    chunks_only: bool,
    /// Also measure the guard on windows (needs the demo MiniLM)
    #[arg(long)]
    guard: bool,
    /// Guard verdicts timed in part 1 (with `--guard`)
    #[arg(long, default_value_t = 200)]
    guard_windows: usize,
    /// Steps of the per-chunk run with the guard on (with `--guard`)
    #[arg(long, default_value_t = 2_000)]
    guard_chunk_tokens: usize,
    /// Milliseconds between pieces in that run: one sequence's decode pace
    /// (8 streams at ~540 tok/s is ~15 ms a token each)
    #[arg(long, default_value_t = 15.0)]
    pace_ms: f64,
    /// Also write the results as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
}

const PROSE: &[&str] = &[
    "Добрый день! Направляем счёт на оплату поставки оборудования по договору. ",
    "Please confirm the delivery window for the second batch and the invoice currency. ",
    "Контактное лицо: Иванова Мария, e-mail m.ivanova@example-supplier.ru, тел. +7 (912) 345-67-89. ",
    "The staging host answers on port 8443; the report is attached as a PDF file. ",
    "We reviewed 12 open items, 4 of them blocking, and agreed to meet again on the 14th. ",
];

/// The analysers a server with `[stream]` and `[pii]` on builds, never stopping.
struct Kit {
    pii: Arc<Pii>,
    rules: Arc<RuleSet>,
    /// The guard over windows, with `--guard`.
    guard: Option<Arc<dyn AsyncAnalyser>>,
}

impl Kit {
    fn new() -> Result<Self> {
        let pii = Pii::new(&PiiSettings {
            enabled: true,
            ..PiiSettings::default()
        })
        .map_err(|e| anyhow!("the PII detector: {e}"))?
        .ok_or_else(|| anyhow!("[pii] is off"))?;
        let rules = RuleSet::load(None).map_err(|e| anyhow!("the rules: {e}"))?;
        Ok(Self {
            pii: Arc::new(pii),
            rules: Arc::new(rules),
            guard: None,
        })
    }

    /// The served guard (`sluice serve`'s default), failing open.
    fn with_guard(mut self) -> Result<Self> {
        let ServedGuard { guard, encoders } = served_guard()?;
        self.guard = Some(Arc::new(OutputGuard::new(guard, encoders, false)));
        Ok(self)
    }

    fn analysers(&self) -> Vec<Box<dyn Analyser>> {
        vec![
            Box::new(PiiBlock::new(self.pii.clone())),
            Box::new(OutputRules::new(self.rules.clone(), 0.8)),
            Box::new(Degeneration::default()),
        ]
    }
}

pub(crate) fn settings(window: usize) -> Settings {
    Settings {
        framing: Framing::HoldBack,
        window_tokens: window,
        overlap_bytes: 128,
        guard_in_flight: 2,
    }
}

pub(crate) fn wrap_of(note: StopNote) -> Wrap {
    Wrap {
        model: "bench".into(),
        key_mode: None,
        key_guard: None,
        guard_action: None,
        max_tokens: None,
        note,
        on_stop: Box::new(|_: &Stop| {}),
        on_observe: Box::new(|_: &Stop| {}),
    }
}

/// Prose cut into 4-character pieces with made-up token ids. Each read
/// notes how long the caller took since the previous read returned: the
/// analysers' time on the previous step.
struct Prose {
    pieces: Vec<String>,
    next: usize,
    returned: Option<Instant>,
    samples: Vec<f64>,
    /// Piece `i` is due `i × pace` after `started` (a decoding sequence's
    /// pace); `None`: every piece at once.
    pace: Option<Duration>,
    started: Instant,
}

impl Answer for Prose {
    fn num_choices(&self) -> usize {
        1
    }
    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        if let Some(returned) = self.returned.take() {
            self.samples.push(returned.elapsed().as_secs_f64() * 1e6);
        }
        let i = self.next;
        self.next += 1;
        let step = match self.pieces.get(i) {
            Some(text) => Some(Step::Token {
                choice: 0,
                text: text.clone(),
                logprob: None,
                // Ids that never loop (the prose's own repeats are at 400+ pieces).
                token: Some((i % 30_000) as u32),
            }),
            None if i == self.pieces.len() => Some(Step::Finished {
                choice: 0,
                reason: FinishReason::Stop,
                text: String::new(),
                stop_sequence: None,
            }),
            None => None,
        };
        let due = self
            .pace
            .map(|pace| self.started + pace.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX)));
        Box::pin(async move {
            if let Some(due) = due {
                tokio::time::sleep_until(due.into()).await;
            }
            // The caller's time starts when the piece is handed over.
            self.returned = Some(Instant::now());
            step
        })
    }
    fn usage(&self) -> Usage {
        Usage::default()
    }
}

impl Drop for Prose {
    fn drop(&mut self) {
        if let Ok(mut out) = SAMPLES.lock() {
            out.append(&mut self.samples);
        }
    }
}

/// Where a dropped [`Prose`] leaves its samples.
static SAMPLES: std::sync::Mutex<Vec<f64>> = std::sync::Mutex::new(Vec::new());

/// Part 1: microseconds per inner step of `steps` pieces; with `guard`,
/// the guard scores every window too (verdicts counted, not acted on) and
/// the pieces come at `pace`, as a decoding sequence's do.
fn per_chunk(
    args: &StreamArgs,
    kit: &Kit,
    steps: usize,
    guard: Option<Arc<dyn AsyncAnalyser>>,
    pace: Option<Duration>,
) -> Result<Summary> {
    let mut text = String::new();
    let mut i = 0;
    while text.chars().count() < steps * 4 {
        text.push_str(PROSE[i % PROSE.len()]);
        i += 1;
    }
    let chars: Vec<char> = text.chars().collect();
    let pieces: Vec<String> = chars
        .chunks(4)
        .take(steps)
        .map(|c| c.iter().collect())
        .collect();
    let inner = Prose {
        pieces,
        next: 0,
        returned: None,
        samples: Vec::with_capacity(steps + 1),
        pace,
        started: Instant::now(),
    };
    let note = StopNote::default();
    let mut answer = Analysed::wrap(
        Box::new(inner),
        vec![kit.analysers()],
        settings(args.window),
        guard,
        wrap_of(note.clone()),
    );
    // Timers on: the pace, and the guard bounds each verdict by its timeout.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async { while answer.next().await.is_some() {} });
    // The analysed answer let go of the prose at its end: its samples are in.
    drop(answer);
    let samples = std::mem::take(&mut *SAMPLES.lock().map_err(|_| anyhow!("poisoned"))?);
    if let Some(stop) = note.get() {
        bail!(
            "the prose was stopped by {}: the benchmark text trips an analyser",
            stop.reason
        );
    }
    Ok(Summary::of(&samples))
}

/// An engine sequence as the gateway's answer (token ids included).
struct Events {
    events: EventStream,
    generated: Arc<AtomicUsize>,
    done: bool,
}

impl Answer for Events {
    fn num_choices(&self) -> usize {
        1
    }
    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        Box::pin(async move {
            if self.done {
                return None;
            }
            Some(match self.events.recv().await {
                Some(EngineEvent::Token { id, text, logprob }) => {
                    self.generated.fetch_add(1, Ordering::Relaxed);
                    Step::Token {
                        choice: 0,
                        text,
                        logprob,
                        token: Some(id),
                    }
                }
                Some(EngineEvent::Finished { reason, text, .. }) => {
                    self.done = true;
                    Step::Finished {
                        choice: 0,
                        reason,
                        text,
                        stop_sequence: None,
                    }
                }
                Some(EngineEvent::Error(e)) => {
                    self.done = true;
                    Step::Failed(ApiError::Internal(e))
                }
                None => {
                    self.done = true;
                    Step::Failed(ApiError::Internal("the engine dropped the sequence".into()))
                }
            })
        })
    }
    fn usage(&self) -> Usage {
        Usage::default()
    }
}

/// Counts verdicts and lets everything through: the analysers' cost
/// without their effect.
struct Observe(Box<dyn Analyser>, Arc<AtomicUsize>);

impl Analyser for Observe {
    fn on_token(&mut self, token: Option<u32>, text: &str) -> Option<Stop> {
        if self.0.on_token(token, text).is_some() {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
        None
    }
    fn on_window(&mut self, text: &str) -> Option<Stop> {
        if self.0.on_window(text).is_some() {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
        None
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Chain {
    Off,
    Observing,
    /// Observing, the guard on windows included.
    Guarded,
    Acting,
}

impl Chain {
    fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Observing => "on",
            Self::Guarded => "guard",
            Self::Acting => "acting",
        }
    }
}

struct BatchRun {
    seconds: f64,
    tokens: usize,
    stopped: usize,
    verdicts: usize,
}

/// One batch: `sequences` sequences, the first `looping` forced to repeat
/// one token, read through the chain as `chain` says.
fn batch(
    handle: &EngineHandle,
    kit: &Kit,
    args: &StreamArgs,
    prompt: &[u32],
    looping: usize,
    loop_token: u32,
    chain: Chain,
) -> Result<BatchRun> {
    let generated = Arc::new(AtomicUsize::new(0));
    let verdicts = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut answers: Vec<(BoxAnswer, StopNote)> = Vec::with_capacity(args.sequences);
    for i in 0..args.sequences {
        let request = GenerateRequest {
            prompt_tokens: prompt.to_vec(),
            params: SamplingParams {
                max_tokens: args.max_tokens,
                temperature: 0.8,
                seed: Some(i as u64),
                ignore_eos: true,
                logit_bias: if i < looping {
                    vec![(loop_token, 100.0)]
                } else {
                    Vec::new()
                },
                ..SamplingParams::default()
            },
            constraint: None,
            session: None,
        };
        let events = handle.submit(request).context("submitting a request")?;
        let raw: BoxAnswer = Box::new(Events {
            events,
            generated: generated.clone(),
            done: false,
        });
        let note = StopNote::default();
        let answer = match chain {
            Chain::Off => raw,
            Chain::Observing | Chain::Guarded => {
                let analysers = kit
                    .analysers()
                    .into_iter()
                    .map(|a| Box::new(Observe(a, verdicts.clone())) as Box<dyn Analyser>)
                    .collect();
                let guard = kit
                    .guard
                    .clone()
                    .filter(|_| chain == Chain::Guarded)
                    .map(|g| Arc::new(ObserveGuard(g, verdicts.clone())) as Arc<dyn AsyncAnalyser>);
                Analysed::wrap(
                    raw,
                    vec![analysers],
                    settings(args.window),
                    guard,
                    wrap_of(note.clone()),
                )
            }
            Chain::Acting => Analysed::wrap(
                raw,
                vec![kit.analysers()],
                settings(args.window),
                None,
                wrap_of(note.clone()),
            ),
        };
        answers.push((answer, note));
    }
    let stopped = std::thread::scope(|scope| -> Result<usize> {
        let readers: Vec<_> = answers
            .into_iter()
            .map(|(mut answer, note)| {
                scope.spawn(move || -> Result<bool> {
                    // Timers on: the guard bounds each verdict by its timeout.
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async {
                        while let Some(step) = answer.next().await {
                            if let Step::Failed(e) = step {
                                bail!("a sequence failed: {e}");
                            }
                        }
                        Ok(note.get().is_some())
                    })
                })
            })
            .collect();
        let mut stopped = 0;
        for reader in readers {
            if reader.join().map_err(|_| anyhow!("a reader panicked"))?? {
                stopped += 1;
            }
        }
        Ok(stopped)
    })?;
    Ok(BatchRun {
        seconds: started.elapsed().as_secs_f64(),
        tokens: generated.load(Ordering::Relaxed),
        stopped,
        verdicts: verdicts.load(Ordering::Relaxed),
    })
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn run(args: StreamArgs) -> Result<()> {
    let kit = if args.guard {
        Kit::new()?.with_guard()?
    } else {
        Kit::new()?
    };
    let chunks = per_chunk(&args, &kit, args.chunk_tokens, None, None)?;
    println!(
        "per-chunk analysis, hold_back window {} with PII + rules + degeneration, {} steps: \
         p50 {} µs, p99 {} µs, max {} µs",
        args.window,
        chunks.count,
        cell(chunks.p50, 2),
        cell(chunks.p99, 2),
        cell(chunks.max, 1),
    );
    let mut report = json!({
        "tool": "sluice-bench stream",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "per_chunk_micros": {"p50": chunks.p50, "p99": chunks.p99, "max": chunks.max, "count": chunks.count},
    });
    if let Some(guard) = &kit.guard {
        let (windows, flagged) = per_guard_window(
            &PROSE.concat().repeat(4),
            args.window,
            args.guard_windows,
            guard.as_ref(),
        )?;
        println!(
            "guard per window ({} pieces + 128 bytes overlap), {} windows one at a time: \
             p50 {} ms, p99 {} ms, max {} ms; {flagged} flagged",
            args.window,
            windows.count,
            cell(windows.p50, 2),
            cell(windows.p99, 2),
            cell(windows.max, 1),
        );
        report["guard_window_ms"] = json!({"p50": windows.p50, "p99": windows.p99,
            "max": windows.max, "count": windows.count, "flagged": flagged});
        let verdicts = Arc::new(AtomicUsize::new(0));
        let observed: Arc<dyn AsyncAnalyser> =
            Arc::new(ObserveGuard(guard.clone(), verdicts.clone()));
        let pace = Duration::from_secs_f64(args.pace_ms / 1e3);
        let guarded = per_chunk(
            &args,
            &kit,
            args.guard_chunk_tokens,
            Some(observed),
            Some(pace),
        )?;
        let flagged = verdicts.load(Ordering::Relaxed);
        println!(
            "per-chunk analysis with the guard on windows too, pieces every {} ms, {} steps: \
             p50 {} µs, p99 {} µs, max {} µs; {flagged} windows flagged",
            args.pace_ms,
            guarded.count,
            cell(guarded.p50, 2),
            cell(guarded.p99, 2),
            cell(guarded.max, 1),
        );
        report["per_chunk_guarded_micros"] = json!({"p50": guarded.p50, "p99": guarded.p99,
            "max": guarded.max, "count": guarded.count, "pace_ms": args.pace_ms,
            "flagged": flagged});
    }
    if !args.chunks_only {
        decode(&args, &kit, &mut report)?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Parts 2 and 3.
fn decode(args: &StreamArgs, kit: &Kit, report: &mut serde_json::Value) -> Result<()> {
    let model = args
        .model
        .clone()
        .unwrap_or_else(sluice_models::demo_chat_model_path);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    eprintln!("[stream] loading {}", model.display());
    let loaded = load_llm(&model, LoadKnobs::default(), &mut |_: usize, _: usize| {})
        .with_context(|| format!("loading {}", model.display()))?;
    let cfg = EngineConfig {
        threads: Some(threads),
        max_num_seqs: EngineConfig::default().max_num_seqs.max(args.sequences),
        ..EngineConfig::default()
    };
    let handle = Engine::start(loaded, cfg).context("starting the engine")?;
    let tokenizer = handle.tokenizer().clone();
    let prompt = tokenizer
        .encode("Write a long report on the quarter's deliveries:", true)
        .map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
    let loop_token = match tokenizer.encode(" the", false) {
        Ok(ids) if ids.len() == 1 => ids[0],
        _ => bail!("\" the\" is not one token of this model"),
    };
    batch(&handle, kit, args, &prompt, 0, loop_token, Chain::Off)?;
    let (mut off, mut on, mut guarded, mut verdicts) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let (mut free_runs, mut stop_runs) = (Vec::new(), Vec::new());
    let kinds: &[Chain] = if kit.guard.is_some() {
        &[Chain::Off, Chain::Observing, Chain::Guarded]
    } else {
        &[Chain::Off, Chain::Observing]
    };
    for r in 0..args.repeats {
        for &chain in kinds {
            let run = batch(&handle, kit, args, &prompt, 0, loop_token, chain)?;
            let tok_s = run.tokens as f64 / run.seconds;
            eprintln!(
                "[stream] run {} chain {}: {tok_s:.1} tok/s ({} tokens, {:.2} s)",
                r + 1,
                chain.name(),
                run.tokens,
                run.seconds
            );
            verdicts += run.verdicts;
            match chain {
                Chain::Off => off.push(tok_s),
                Chain::Guarded => guarded.push(tok_s),
                _ => on.push(tok_s),
            }
        }
        for chain in [Chain::Off, Chain::Acting] {
            let run = batch(&handle, kit, args, &prompt, args.looping, loop_token, chain)?;
            eprintln!(
                "[stream] run {} with {} looping, chain {}: {} tokens in {:.2} s, {} stopped",
                r + 1,
                args.looping,
                chain.name(),
                run.tokens,
                run.seconds,
                run.stopped
            );
            match chain {
                Chain::Off => free_runs.push(run),
                _ => stop_runs.push(run),
            }
        }
    }
    drop(handle);
    let (off_tok_s, on_tok_s) = (median(&off), median(&on));
    let lower_pct = (1.0 - on_tok_s / off_tok_s) * 100.0;
    let tokens =
        |runs: &[BatchRun]| median(&runs.iter().map(|r| r.tokens as f64).collect::<Vec<_>>());
    let secs = |runs: &[BatchRun]| median(&runs.iter().map(|r| r.seconds).collect::<Vec<_>>());
    let (free_tokens, stop_tokens) = (tokens(&free_runs), tokens(&stop_runs));
    let (free_s, stop_s) = (secs(&free_runs), secs(&stop_runs));
    println!(
        "| measure | value |\n|---|---|\n\
         | decode, {n} streams, chain off (median of {r}) | {off_tok_s:.1} tok/s |\n\
         | decode, {n} streams, chain on, observing (median of {r}) | {on_tok_s:.1} tok/s |\n\
         | throughput lower with the chain on | {lower_pct:.1}% (target < 5%) |\n\
         | verdicts the observing chain counted (all runs) | {verdicts} |\n\
         | {l} of {n} looping, chain off: tokens / wall time (median) | {free_tokens:.0} / {free_s:.2} s |\n\
         | {l} of {n} looping, chain acting: tokens / wall time (median) | {stop_tokens:.0} / {stop_s:.2} s |\n\
         | saved by early stops | {:.0} tokens ({:.1}%), {:.2} s ({:.1}%) |",
        free_tokens - stop_tokens,
        (1.0 - stop_tokens / free_tokens) * 100.0,
        free_s - stop_s,
        (1.0 - stop_s / free_s) * 100.0,
        n = args.sequences,
        r = args.repeats,
        l = args.looping,
    );
    if !guarded.is_empty() {
        let guard_tok_s = median(&guarded);
        println!(
            "| decode, {n} streams, chain on + guard, observing (median of {r}) | {guard_tok_s:.1} tok/s |\n\
             | throughput lower with the guard on (vs chain off) | {:.1}% |",
            (1.0 - guard_tok_s / off_tok_s) * 100.0,
            n = args.sequences,
            r = args.repeats,
        );
    }
    report["decode_tok_s"] = json!({"chain_off": off, "chain_on": on, "chain_on_guard": guarded, "lower_pct": lower_pct});
    report["early_stop"] = json!({
        "looping": args.looping,
        "sequences": args.sequences,
        "max_tokens": args.max_tokens,
        "off": free_runs.iter().map(|r| json!({"tokens": r.tokens, "seconds": r.seconds})).collect::<Vec<_>>(),
        "acting": stop_runs.iter().map(|r| json!({"tokens": r.tokens, "seconds": r.seconds, "stopped": r.stopped})).collect::<Vec<_>>(),
    });
    Ok(())
}
