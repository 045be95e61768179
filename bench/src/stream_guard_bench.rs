//! The guard on answer windows: what it costs (the parts `sluice-bench
//! stream --guard` adds) and how often it flags ordinary answers
//! (`sluice-bench guard-answers`).
//!
//! `guard-answers`: how often the stream guard stops ordinary answers.
//! This reads each held-out ordinary answer of
//! `tests/data/stream/ordinary/` (committed before any stream detector was
//! tuned, never changed since; `--dir tests/data/stream/ordinary-2` for
//! the second set), tokenised by the demo chat model's tokenizer and
//! streamed token by token through `hold_back` as the server streams it,
//! with the served guard scoring every window.
//! Flags are recorded, not acted on, so an answer's later windows are
//! scored too: per answer its windows, the flagged and uncertain ones and
//! the highest score; in total the share of flagged windows and of answers
//! with a flagged window (the answers `hold_back` would have stopped).
//! Each answer is also scored whole, as the input guard scores a prompt
//! (its segments-max rule), for comparison.
//!
//! `--head` picks the head as `[stream] guard_head` does (absent or
//! `answer`: the built-in answer head; `input`: the input guard's, as
//! before the stream guard had one of its own), so one build compares
//! heads; `--csv` reads a `text,label` file instead of a folder (held-out
//! injections), and the report then splits the answers stopped by label:
//! on injections that share is the recall per text.
//!
//! Design choice: the windows come from the gateway's own window code
//! (`analyse::window`), not from a re-implementation here, so the texts
//! scored are exactly those a served stream sends to the guard.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::json;
use sluice_gateway::analyse::guard::AsyncAnalyser;
use sluice_gateway::analyse::window::Analysed;
use sluice_gateway::analyse::Stop;
use sluice_gateway::answer::{Answer, Step, StopNote};
use sluice_gateway::config::{
    EncoderConfig, EncoderKind, GuardConfig, StreamGuardHead, StreamSettings, DEMO_EMBEDDING_ID,
};
use sluice_gateway::encoders::EncoderRegistry;
use sluice_gateway::guard::registry::serving_guard;
use sluice_gateway::guard::{Guard, GuardEncoders, GuardVerdict};
use sluice_models::IncrementalDecoder;
use sluice_runtime::{EncoderPoolConfig, FinishReason, Usage};

use crate::stats::{cell, Summary};
use crate::stream_bench::{settings, wrap_of};

/// The stream guard `sluice serve` builds by default: the built-in answer
/// head over the demo MiniLM, with the default encoder pool.
pub struct ServedGuard {
    pub guard: Arc<Guard>,
    pub encoders: Arc<dyn GuardEncoders>,
}

pub fn served_guard() -> Result<ServedGuard> {
    served_stream_guard(&StreamSettings::default().guard_head)
}

/// The served guard with the stream guard's head `head`.
pub fn served_stream_guard(head: &StreamGuardHead) -> Result<ServedGuard> {
    let encoder = EncoderConfig {
        id: DEMO_EMBEDDING_ID.into(),
        kind: EncoderKind::Embedding,
        path: sluice_models::demo_embedding_model_dir(),
        pool: EncoderPoolConfig::default(),
    };
    let guard = serving_guard(&GuardConfig::default(), std::slice::from_ref(&encoder))
        .map_err(|e| anyhow!("guard: {e}"))?
        .context("the guard is off in its default config")?;
    let guard =
        sluice_gateway::guard::answer::stream_guard(&guard, head).map_err(|e| anyhow!(e))?;
    let registry = Arc::new(EncoderRegistry::new(std::slice::from_ref(&encoder)));
    for slot in registry.slots() {
        slot.load_blocking().map_err(|e| anyhow!(e))?;
    }
    Ok(ServedGuard {
        guard,
        encoders: registry,
    })
}

/// The highest score of any category of a verdict.
fn top_score(verdict: &GuardVerdict) -> f64 {
    verdict
        .categories
        .values()
        .map(|c| c.score)
        .fold(0.0, f64::max)
}

/// Milliseconds per guard verdict on windows of `text` as `hold_back`
/// forms them (128 bytes of overlap, then `window` four-character pieces),
/// one at a time after five warm-up windows; and how many were flagged.
pub fn per_guard_window(
    text: &str,
    window: usize,
    windows: usize,
    guard: &dyn AsyncAnalyser,
) -> Result<(Summary, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let pieces: Vec<String> = chars.chunks(4).map(|c| c.iter().collect()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut samples = Vec::with_capacity(windows);
    let mut flagged = 0;
    let mut tail = String::new();
    for w in 0..windows + 5 {
        let start = (w * window) % pieces.len().saturating_sub(window).max(1);
        let mut text = std::mem::take(&mut tail);
        for piece in pieces.iter().skip(start).take(window) {
            text.push_str(piece);
        }
        let mut keep = text.len().saturating_sub(128);
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        tail = text[keep..].to_string();
        let started = Instant::now();
        let verdict = runtime.block_on(guard.check(text));
        // The first few warm the pool and the allocator.
        if w >= 5 {
            samples.push(started.elapsed().as_secs_f64() * 1e3);
            flagged += usize::from(verdict.is_some());
        }
    }
    Ok((Summary::of(&samples), flagged))
}

/// Counts the guard's verdicts and lets everything through.
pub struct ObserveGuard(pub Arc<dyn AsyncAnalyser>, pub Arc<AtomicUsize>);

impl AsyncAnalyser for ObserveGuard {
    fn check(&self, text: String) -> BoxFuture<'static, Option<Stop>> {
        let check = self.0.check(text);
        let verdicts = self.1.clone();
        Box::pin(async move {
            if check.await.is_some() {
                verdicts.fetch_add(1, Ordering::Relaxed);
            }
            None
        })
    }
}

#[derive(Args, Debug)]
pub struct GuardAnswersArgs {
    /// A folder of answers, one per file (`.md`, `.txt`; README.md skipped)
    /// [default: tests/data/stream/ordinary]
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The chat model whose tokenizer cuts the answers into tokens
    /// [default: the demo SmolLM2-135M GGUF]
    #[arg(long)]
    model: Option<PathBuf>,
    /// `hold_back` window, in tokens (the server's default)
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// The head that scores windows, as `[stream] guard_head`: `answer`
    /// (built in), `input` for the input guard's, or a head file written by
    /// `sluice guard train` [default: answer]
    #[arg(long)]
    head: Option<String>,
    /// Read the answers from a `text,label` CSV instead of a folder
    #[arg(long, conflicts_with = "dir")]
    csv: Option<PathBuf>,
    /// Also write the results as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The answers to stream: `(name, text, injection)`.
fn read_answers(
    args: &GuardAnswersArgs,
    dir: &std::path::Path,
) -> Result<Vec<(String, String, bool)>> {
    if let Some(csv) = &args.csv {
        let data =
            sluice_gateway::guard::dataset::read_labelled_csv(csv).map_err(|e| anyhow!(e))?;
        return Ok(data
            .rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| (format!("row {}", i + 1), r.text, r.injection))
            .collect());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str());
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            matches!(ext, Some("md" | "txt")) && !name.eq_ignore_ascii_case("README.md")
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            Ok((name, text, false))
        })
        .collect()
}

/// One window's verdict.
#[derive(Debug, Clone)]
struct WindowScore {
    score: f64,
    flagged: bool,
    uncertain: bool,
    text: String,
}

/// The served guard over windows, keeping every verdict and passing all.
struct Scoring {
    guard: Arc<Guard>,
    encoders: Arc<dyn GuardEncoders>,
    scores: Arc<Mutex<Vec<WindowScore>>>,
    failures: Arc<AtomicUsize>,
}

impl AsyncAnalyser for Scoring {
    fn check(&self, text: String) -> BoxFuture<'static, Option<Stop>> {
        // As the served `OutputGuard`: a blank window is never scored.
        if text.trim().is_empty() {
            return futures_util::future::ready(None).boxed();
        }
        let (guard, encoders) = (self.guard.clone(), self.encoders.clone());
        let (scores, failures) = (self.scores.clone(), self.failures.clone());
        async move {
            match guard.verdict(encoders.as_ref(), &text, None).await {
                Ok(v) => {
                    let score = WindowScore {
                        score: top_score(&v),
                        flagged: v.flagged,
                        uncertain: v.uncertain,
                        text,
                    };
                    if let Ok(mut all) = scores.lock() {
                        all.push(score);
                    }
                }
                Err(e) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("[guard-answers] a window could not be scored: {e}");
                }
            }
            None
        }
        .boxed()
    }
}

/// An answer as the engine streams it: one step per token, its text as
/// the incremental detokeniser gives it.
struct Tokens {
    pieces: Vec<(u32, String)>,
    next: usize,
}

impl Answer for Tokens {
    fn num_choices(&self) -> usize {
        1
    }
    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        let i = self.next;
        self.next += 1;
        let step = match self.pieces.get(i) {
            Some((id, text)) => Some(Step::Token {
                choice: 0,
                text: text.clone(),
                logprob: None,
                token: Some(*id),
            }),
            None if i == self.pieces.len() => Some(Step::Finished {
                choice: 0,
                reason: FinishReason::Stop,
                text: String::new(),
                stop_sequence: None,
            }),
            None => None,
        };
        Box::pin(async move { step })
    }
    fn usage(&self) -> Usage {
        Usage::default()
    }
}

struct AnswerResult {
    name: String,
    injection: bool,
    tokens: usize,
    windows: Vec<WindowScore>,
    whole: GuardVerdict,
}

pub fn run_answers(args: GuardAnswersArgs) -> Result<()> {
    let dir = answers_dir(&args);
    let (results, failures) = score_answers(&args)?;
    report(&args, &dir, &results, failures)
}

fn answers_dir(args: &GuardAnswersArgs) -> PathBuf {
    args.dir.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/stream/ordinary")
    })
}

/// Every answer streamed through the stream guard's windows: the
/// verdicts, and how many windows could not be scored.
fn score_answers(args: &GuardAnswersArgs) -> Result<(Vec<AnswerResult>, usize)> {
    let dir = answers_dir(args);
    let model = args
        .model
        .clone()
        .unwrap_or_else(sluice_models::demo_chat_model_path);
    let tokenizer = crate::workload::load_tokenizer(&model)?;
    let answers = read_answers(args, &dir)?;
    if answers.is_empty() {
        bail!(
            "no answers in {}",
            args.csv.as_deref().unwrap_or(&dir).display()
        );
    }
    let head = match args.head.as_deref() {
        None => StreamSettings::default().guard_head,
        Some(text) => StreamGuardHead::parse(text, std::path::Path::new("."))
            .map_err(|e| anyhow!("--head: {e}"))?,
    };
    let ServedGuard { guard, encoders } = served_stream_guard(&head)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let failures = Arc::new(AtomicUsize::new(0));
    let mut results = Vec::new();
    for (name, text, injection) in answers {
        let scores = Arc::new(Mutex::new(Vec::new()));
        let scoring: Arc<dyn AsyncAnalyser> = Arc::new(Scoring {
            guard: guard.clone(),
            encoders: encoders.clone(),
            scores: scores.clone(),
            failures: failures.clone(),
        });
        let tokens = stream_windows(&runtime, &tokenizer, &name, &text, args.window, scoring)?;
        let whole = runtime
            .block_on(guard.verdict(encoders.as_ref(), &text, None))
            .map_err(|e| anyhow!("scoring {name} whole: {e}"))?;
        let windows = std::mem::take(&mut *scores.lock().map_err(|_| anyhow!("poisoned"))?);
        results.push(AnswerResult {
            name,
            injection,
            tokens,
            windows,
            whole,
        });
    }
    Ok((results, failures.load(Ordering::Relaxed)))
}

/// Streams `text` as the engine would, token by token through
/// `hold_back` windows of `window` tokens (and 128 bytes of overlap), with
/// `analyser` on every window; it must pass everything. Returns the number
/// of tokens.
pub(crate) fn stream_windows(
    runtime: &tokio::runtime::Runtime,
    tokenizer: &sluice_models::Tokenizer,
    name: &str,
    text: &str,
    window: usize,
    analyser: Arc<dyn AsyncAnalyser>,
) -> Result<usize> {
    let ids = tokenizer
        .encode(text, false)
        .map_err(|e| anyhow!("tokenizing {name}: {e}"))?;
    let mut decoder = IncrementalDecoder::new();
    let mut pieces = Vec::with_capacity(ids.len());
    for &id in &ids {
        let piece = decoder.push(tokenizer, id).map_err(|e| anyhow!("{e}"))?;
        pieces.push((id, piece));
    }
    if let Some(last) = pieces.last_mut() {
        last.1
            .push_str(&decoder.finish(tokenizer).map_err(|e| anyhow!("{e}"))?);
    }
    let streamed: String = pieces.iter().map(|(_, p)| p.as_str()).collect();
    let note = StopNote::default();
    let mut answer = Analysed::wrap(
        Box::new(Tokens { pieces, next: 0 }),
        vec![Vec::new()],
        settings(window),
        Some(analyser),
        wrap_of(note.clone()),
    );
    let released = runtime.block_on(async {
        let mut released = String::new();
        while let Some(step) = answer.next().await {
            match step {
                Step::Token { text, .. } | Step::Finished { text, .. } => released.push_str(&text),
                Step::Failed(e) => bail!("{name}: {e}"),
                Step::ToolCall { .. } => {}
            }
        }
        Ok(released)
    })?;
    drop(answer);
    // The analyser passes everything: the whole answer must come out.
    if released != streamed || note.get().is_some() {
        bail!("{name}: the answer did not pass whole");
    }
    Ok(ids.len())
}

fn report(
    args: &GuardAnswersArgs,
    dir: &std::path::Path,
    results: &[AnswerResult],
    failures: usize,
) -> Result<()> {
    let source = args.csv.as_deref().unwrap_or(dir);
    println!(
        "stream guard on {}, hold_back window {} tokens + 128 bytes overlap, the served guard \
         with head {} (all-MiniLM-L6-v2)\n",
        source.display(),
        args.window,
        args.head.as_deref().unwrap_or(StreamGuardHead::ANSWER)
    );
    println!(
        "| answer | tokens | windows scored | flagged | uncertain | highest window score | \
         whole answer: score, flagged |\n|---|---:|---:|---:|---:|---:|---|"
    );
    let (mut windows, mut flagged, mut uncertain, mut stopped, mut whole_flagged) = (0, 0, 0, 0, 0);
    // Answers stopped, and answers, by label (ordinary, injection).
    let mut by_label = [(0, 0); 2];
    let mut all_scores = Vec::new();
    let mut rows = Vec::new();
    for r in results {
        let f = r.windows.iter().filter(|w| w.flagged).count();
        let u = r.windows.iter().filter(|w| w.uncertain).count();
        let top = r.windows.iter().map(|w| w.score).fold(0.0, f64::max);
        let whole_score = top_score(&r.whole);
        println!(
            "| {} | {} | {} | {f} | {u} | {top:.3} | {whole_score:.3}, {} |",
            r.name,
            r.tokens,
            r.windows.len(),
            if r.whole.flagged { "yes" } else { "no" }
        );
        windows += r.windows.len();
        flagged += f;
        uncertain += u;
        stopped += usize::from(f > 0);
        let label = &mut by_label[usize::from(r.injection)];
        label.0 += usize::from(f > 0);
        label.1 += 1;
        whole_flagged += usize::from(r.whole.flagged);
        all_scores.extend(r.windows.iter().map(|w| w.score));
        rows.push(json!({
            "answer": r.name, "injection": r.injection, "tokens": r.tokens, "windows": r.windows.len(),
            "flagged": f, "uncertain": u, "highest_score": top,
            "whole_score": whole_score, "whole_flagged": r.whole.flagged,
            "flagged_windows": r.windows.iter().filter(|w| w.flagged)
                .map(|w| json!({"score": w.score, "text": w.text})).collect::<Vec<_>>(),
        }));
    }
    let scores = Summary::of(&all_scores);
    let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
    println!(
        "\nwindows flagged: {flagged} of {windows} ({:.1}%); uncertain: {uncertain} ({:.1}%); \
         answers hold_back would stop: {stopped} of {} ({:.0}%); answers flagged when scored \
         whole: {whole_flagged}; window scores p50 {} p90 {} max {}; windows not scored \
         (guard errors): {failures}",
        pct(flagged, windows),
        pct(uncertain, windows),
        results.len(),
        pct(stopped, results.len()),
        cell(scores.p50, 3),
        cell(scores.p90, 3),
        cell(scores.max, 3),
    );
    let [(ordinary_stopped, ordinary), (injections_stopped, injections)] = by_label;
    println!(
        "by label: ordinary answers stopped {ordinary_stopped} of {ordinary}; injections stopped \
         {injections_stopped} of {injections} (recall {:.3})",
        injections_stopped as f64 / injections.max(1) as f64
    );
    // The false positives, to read; flagged injections are what is wanted.
    for r in results.iter().filter(|r| !r.injection) {
        for w in r.windows.iter().filter(|w| w.flagged) {
            println!("flagged in {} ({:.3}): {:?}", r.name, w.score, w.text);
        }
    }
    if let Some(path) = &args.json {
        let out = json!({
            "tool": "sluice-bench guard-answers",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "window_tokens": args.window,
            "head": args.head.as_deref().unwrap_or(StreamGuardHead::ANSWER),
            "ordinary_stopped": ordinary_stopped, "ordinary": ordinary,
            "injections_stopped": injections_stopped, "injections": injections,
            "answers": rows,
            "windows": windows, "flagged": flagged, "uncertain": uncertain,
            "answers_stopped": stopped, "whole_flagged": whole_flagged,
            "window_scores": scores, "failures": failures,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both held-out sets, streamed through the served defaults (window
    /// 16 tokens + 128 bytes, the built-in answer head): not one window is
    /// flagged, so `hold_back` stops none of them. The first answer head
    /// stopped 5 of the second set's 21 (NOTES.md, session 13).
    #[test]
    fn the_default_stream_guard_stops_no_held_out_ordinary_answer() {
        let sets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/stream");
        for set in ["ordinary", "ordinary-2"] {
            let args = GuardAnswersArgs {
                dir: Some(sets.join(set)),
                model: None,
                window: 16,
                head: None,
                csv: None,
                json: None,
            };
            let (results, failures) = score_answers(&args).unwrap();
            assert_eq!(failures, 0, "{set}: windows not scored");
            assert!(results.len() >= 9, "{set}: {} answers", results.len());
            for r in &results {
                assert!(
                    r.windows.len() > 5,
                    "{set}/{}: {} windows",
                    r.name,
                    r.windows.len()
                );
                let flagged: Vec<(f64, &str)> = r
                    .windows
                    .iter()
                    .filter(|w| w.flagged)
                    .map(|w| (w.score, w.text.as_str()))
                    .collect();
                assert!(flagged.is_empty(), "{set}/{} stopped: {flagged:?}", r.name);
            }
        }
    }
}
