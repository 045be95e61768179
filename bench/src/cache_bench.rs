//! `sluice-bench cache` and `sluice-bench cache-pairs`: the response cache's
//! latency and memory, and the semantic tier's precision/recall over
//! labelled question pairs.
//!
//! `cache` drives the gateway's cache module in process (no HTTP, no model):
//! a miss is a lookup that finds nothing plus recording and storing a
//! generated answer; an exact hit is a lookup plus replaying the stored
//! answer; a semantic hit adds embedding the question and ranking the
//! scope's vectors. Design choice: measure the stage itself, so the numbers
//! are the cache's cost and not the model's; a miss's generation time is
//! whatever the provider takes on top.
//!
//! `cache-pairs` takes the embedder as a parameter ([`Embedder`]): on this
//! branch only the hashed test embedder exists; the real encoder plugs in
//! at the same seam.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_gateway::answer::{collect, BoxAnswer};
use sluice_gateway::cache::embed::cosine;
use sluice_gateway::cache::replay::Replay;
use sluice_gateway::cache::testing::HashedEmbedder;
use sluice_gateway::cache::verify::verify;
use sluice_gateway::cache::{
    Backend, Cache, CacheSettings, Embedder, Outcome, Request, StoredAnswer, StoredChoice,
};
use sluice_gateway::validate::ValidRequest;
use sluice_models::SentenceEncoder;
use sluice_runtime::{EncoderHandle, EncoderPool, EncoderPoolConfig};
use sluice_runtime::{FinishReason, Usage};

use crate::stats::Summary;

#[derive(Args, Debug)]
pub struct CacheArgs {
    /// memory, redis or both
    #[arg(long, default_value = "both")]
    backend: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Entries stored before measuring, all in one semantic scope (the
    /// brute-force search's worst case).
    #[arg(long, default_value_t = 1000)]
    entries: usize,
    /// Measured lookups per kind.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// `hashed` (the test double) or `minilm[=<folder>]` (the real encoder
    /// through an encoder pool, as `sluice serve` runs it).
    #[arg(long, default_value = "hashed")]
    embedder: String,
    /// The semantic tier's similarity threshold.
    #[arg(long, default_value_t = 0.8)]
    threshold: f32,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct BackendReport {
    backend: String,
    entries: usize,
    /// Milliseconds.
    miss: Summary,
    exact_hit: Summary,
    semantic_hit: Summary,
    /// Bytes the store accounts per entry (in process) or Redis's
    /// `used_memory` growth per entry.
    bytes_per_entry: f64,
    /// Resident-set growth per entry (in process only).
    rss_bytes_per_entry: Option<f64>,
    semantic_hit_rate: f64,
}

fn code(i: usize) -> String {
    // Letters only: digits would be "numbers" to the verifier.
    let mut s = String::new();
    let mut n = i + 26 * 27;
    while n > 0 {
        s.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
    }
    s
}

/// Questions differ in one name; the verifier (entities) is what keeps
/// their near-identical embeddings apart, so every lookup pays for it.
fn stored_question(i: usize) -> String {
    format!(
        "please explain the project {} in simple words for a beginner",
        name(i)
    )
}

fn paraphrase(i: usize) -> String {
    format!(
        "explain the project {} in simple words for a beginner",
        name(i)
    )
}

fn name(i: usize) -> String {
    let c = code(i);
    let mut chars = c.chars();
    chars
        .next()
        .map(|f| f.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn request(q: &str) -> Result<ValidRequest> {
    let body = json!({"model": "bench", "temperature": 0, "max_tokens": 128, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": q}
    ]});
    sluice_gateway::validate::chat(serde_json::from_value(body)?)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn generated() -> BoxAnswer {
    let text = "A cached answer of about the length a chat model gives to a short question: \
                a few sentences, some eighty words, which the replay sends in chunks so that \
                a streamed hit looks like a streamed generation to the client. "
        .repeat(2);
    Box::new(Replay::new(&StoredAnswer {
        choices: vec![StoredChoice {
            text,
            finish_reason: FinishReason::Stop,
            stop_sequence: None,
            tool_calls: Vec::new(),
        }],
        usage: Usage {
            prompt_tokens: 40,
            completion_tokens: 80,
            cached_prompt_tokens: 0,
        },
    }))
}

/// One request through the cache stage; the outcome and the milliseconds.
async fn once(cache: &Arc<Cache>, q: &str) -> Result<(Outcome, f64)> {
    let r = request(q)?;
    let h = HeaderMap::new();
    let started = Instant::now();
    let mut d = cache
        .lookup(
            Request {
                tenant: "bench",
                model: &r.model,
                job: &r.job,
                headers: &h,
                sensitive: false,
                regulated: false,
                may_carry_pii: false,
            },
            None,
        )
        .await;
    let mut a = match d.take_hit() {
        Some(hit) => hit,
        None => d.record(generated()),
    };
    collect(a.as_mut())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((d.outcome, started.elapsed().as_secs_f64() * 1e3))
}

fn rss_bytes() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0)
}

async fn redis_used_memory(url: &str) -> Result<f64> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

async fn redis_clear(url: &str, prefix: &str) -> Result<()> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut c).await?;
    }
    Ok(())
}

async fn bench_backend(args: &CacheArgs, backend: &str) -> Result<BackendReport> {
    let prefix = format!("sluice-bench:cache:{}", std::process::id());
    let mut settings = CacheSettings {
        enabled: true,
        backend: match backend {
            "memory" => Backend::Memory,
            _ => Backend::Redis {
                url: args.redis_url.clone(),
                prefix: prefix.clone(),
            },
        },
        ttl: Duration::from_secs(600),
        similarity_threshold: args.threshold,
        ..CacheSettings::default()
    };
    settings.bounds.max_entries = settings.bounds.max_entries.max(args.entries);
    settings.bounds.max_per_scope = settings.bounds.max_per_scope.max(args.entries);
    let cache = Cache::new(settings, Some(make_embedder(&args.embedder)?))
        .map_err(|e| anyhow::anyhow!(e))?;
    let redis_before = if backend == "redis" {
        Some(redis_used_memory(&args.redis_url).await?)
    } else {
        None
    };
    let rss_before = rss_bytes();
    let mut miss = Vec::with_capacity(args.entries);
    for i in 0..args.entries {
        let (outcome, ms) = once(&cache, &stored_question(i)).await?;
        if outcome != Outcome::Miss {
            bail!("warm-up request {i} was {outcome:?}, not a miss");
        }
        miss.push(ms);
    }
    let rss_after = rss_bytes();
    let bytes_per_entry = match redis_before {
        Some(before) => (redis_used_memory(&args.redis_url).await? - before) / args.entries as f64,
        None => cache.usage().1 as f64 / cache.usage().0.max(1) as f64,
    };
    let rss_bytes_per_entry = match (backend, rss_before, rss_after) {
        ("memory", Some(a), Some(b)) => Some((b - a) / args.entries as f64),
        _ => None,
    };
    let mut exact = Vec::with_capacity(args.iterations);
    let mut semantic = Vec::with_capacity(args.iterations);
    let mut semantic_hits = 0usize;
    for i in 0..args.iterations {
        let k = i % args.entries;
        let (outcome, ms) = once(&cache, &stored_question(k)).await?;
        if outcome != Outcome::Exact {
            bail!("expected an exact hit, got {outcome:?}");
        }
        exact.push(ms);
        let (outcome, ms) = once(&cache, &paraphrase(k)).await?;
        if let Outcome::Semantic { .. } = outcome {
            semantic_hits += 1;
            semantic.push(ms);
        }
    }
    if backend == "redis" {
        redis_clear(&args.redis_url, &prefix).await?;
    }
    Ok(BackendReport {
        backend: backend.into(),
        entries: args.entries,
        miss: Summary::of(&miss),
        exact_hit: Summary::of(&exact),
        semantic_hit: Summary::of(&semantic),
        bytes_per_entry,
        rss_bytes_per_entry,
        semantic_hit_rate: semantic_hits as f64 / args.iterations.max(1) as f64,
    })
}

pub fn run_cache(args: CacheArgs) -> Result<()> {
    let rt = crate::runtime()?;
    let backends: Vec<&str> = match args.backend.as_str() {
        "both" => vec!["memory", "redis"],
        "memory" => vec!["memory"],
        "redis" => vec!["redis"],
        other => bail!("--backend {other}: use memory, redis or both"),
    };
    let mut reports = Vec::new();
    for b in backends {
        eprintln!(
            "[cache] {b}: {} entries, {} iterations",
            args.entries, args.iterations
        );
        reports.push(rt.block_on(bench_backend(&args, b))?);
    }
    println!("| backend | entries | miss p50/p99 ms | exact hit p50/p99 ms | semantic hit p50/p99 ms | semantic hit rate | bytes/entry | RSS bytes/entry |");
    println!("|---|---|---|---|---|---|---|---|");
    let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.3}"));
    for r in &reports {
        println!(
            "| {} | {} | {} / {} | {} / {} | {} / {} | {:.2} | {:.0} | {} |",
            r.backend,
            r.entries,
            f(r.miss.p50),
            f(r.miss.p99),
            f(r.exact_hit.p50),
            f(r.exact_hit.p99),
            f(r.semantic_hit.p50),
            f(r.semantic_hit.p99),
            r.semantic_hit_rate,
            r.bytes_per_entry,
            r.rss_bytes_per_entry
                .map_or("-".into(), |x| format!("{x:.0}")),
        );
    }
    if let Some(path) = &args.json {
        let out = json!({"command": crate::command_line(), "embedder": args.embedder, "backends": reports});
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct PairsArgs {
    #[arg(long, default_value = "bench/data/cache_pairs.jsonl")]
    pairs: PathBuf,
    /// `hashed` (the test double) or `minilm[=<folder>]` (the real encoder).
    #[arg(long, default_value = "hashed")]
    embedder: String,
    /// Report at this similarity threshold (besides the sweep).
    #[arg(long, default_value_t = 0.8)]
    threshold: f32,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print each pair judged wrongly at the threshold (for the
    /// development set only: reading a test set's errors tunes on it).
    #[arg(long)]
    list_errors: bool,
}

/// One labelled pair: should `b` be served `a`'s answer?
#[derive(Debug, Clone, Deserialize)]
pub struct Pair {
    pub a: String,
    pub b: String,
    pub hit: bool,
    pub kind: String,
    pub lang: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Scores {
    pub threshold: f32,
    pub precision: f64,
    pub recall: f64,
    pub true_hits: usize,
    pub false_hits: usize,
    pub missed: usize,
}

#[derive(Debug, Serialize)]
pub struct PairsReport {
    pub embedder: String,
    pub pairs: usize,
    pub positives: usize,
    pub at_threshold: Scores,
    pub at_threshold_without_verifier: Scores,
    /// The threshold with the best recall among those with precision >= 0.98.
    pub best_at_precision_098: Option<Scores>,
    /// Negatives served at `threshold` (with the verifier), by kind.
    pub false_hits_by_kind: Vec<(String, usize)>,
    /// Every pair judged wrongly at `threshold`: (similarity, verifier's
    /// reason or "-", should hit, a, b).
    #[serde(skip)]
    pub errors: Vec<(f32, String, bool, String, String)>,
}

pub fn load_pairs(path: &Path) -> Result<Vec<Pair>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

fn score(sims: &[(f32, bool, bool)], threshold: f32, use_verifier: bool) -> Scores {
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for &(sim, verified, hit) in sims {
        let predicted = sim >= threshold && (verified || !use_verifier);
        match (predicted, hit) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    Scores {
        threshold,
        precision: if tp + fp == 0 {
            1.0
        } else {
            tp as f64 / (tp + fp) as f64
        },
        recall: if tp + fn_ == 0 {
            0.0
        } else {
            tp as f64 / (tp + fn_) as f64
        },
        true_hits: tp,
        false_hits: fp,
        missed: fn_,
    }
}

/// Precision and recall of the semantic tier (threshold + verifier) over
/// The embedder a `--embedder` value names. Call within a Tokio runtime.
fn make_embedder(name: &str) -> Result<Arc<dyn Embedder>> {
    if name == "hashed" {
        return Ok(Arc::new(HashedEmbedder::default()));
    }
    let Some(rest) = name.strip_prefix("minilm") else {
        bail!("--embedder {name}: use `hashed` or `minilm[=<folder>]`");
    };
    let dir = match rest.strip_prefix('=') {
        Some(path) => PathBuf::from(path),
        None if rest.is_empty() => sluice_models::demo_embedding_model_dir(),
        None => bail!("--embedder {name}: use `hashed` or `minilm[=<folder>]`"),
    };
    eprintln!("[cache] loading the encoder from {}", dir.display());
    let encoder = SentenceEncoder::load(&dir).with_context(|| {
        format!(
            "loading {} (scripts/fetch-models.sh embed fetches it)",
            dir.display()
        )
    })?;
    let tokenizer = encoder.tokenizer().clone();
    let handle = EncoderPool::start(Arc::new(encoder), EncoderPoolConfig::default())?;
    let embedder_id = format!(
        "all-minilm-l6-v2@{}",
        sluice_gateway::encoders::weights_fingerprint(&dir)
    );
    Ok(Arc::new(PoolEmbedder {
        tokenizer,
        handle,
        embedder_id,
    }))
}

/// The real encoder behind its pool, as the server embeds a user message.
struct PoolEmbedder {
    tokenizer: Arc<sluice_models::Tokenizer>,
    handle: EncoderHandle,
    embedder_id: String,
}

impl Embedder for PoolEmbedder {
    fn embed<'a>(
        &'a self,
        text: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Arc<[f32]>, String>> + Send + 'a>>
    {
        Box::pin(async move {
            let ids = self
                .tokenizer
                .encode_with_special_tokens(text)
                .map_err(|e| e.to_string())?;
            self.handle.encode(ids).await.map_err(|e| e.to_string())
        })
    }

    fn model_id(&self) -> &str {
        "all-minilm-l6-v2"
    }

    fn embedder_id(&self) -> &str {
        &self.embedder_id
    }
}

/// `pairs`, with any [`Embedder`].
pub async fn evaluate(
    pairs: &[Pair],
    embedder: &dyn Embedder,
    threshold: f32,
) -> Result<PairsReport> {
    let mut sims = Vec::with_capacity(pairs.len());
    let mut reasons = Vec::with_capacity(pairs.len());
    for p in pairs {
        let a = embedder.embed(&p.a).await.map_err(|e| anyhow::anyhow!(e))?;
        let b = embedder.embed(&p.b).await.map_err(|e| anyhow::anyhow!(e))?;
        let why = verify(&p.b, &p.a);
        sims.push((cosine(&a, &b), why.is_none(), p.hit));
        reasons.push(why.map_or("-", |m| m.as_str()));
    }
    let best = (50..100)
        .map(|t| score(&sims, t as f32 / 100.0, true))
        .filter(|s| s.precision >= 0.98)
        .max_by(|a, b| a.recall.total_cmp(&b.recall));
    let mut by_kind: std::collections::BTreeMap<String, usize> = Default::default();
    for (p, &(sim, verified, hit)) in pairs.iter().zip(&sims) {
        if !hit && sim >= threshold && verified {
            *by_kind.entry(format!("{}/{}", p.kind, p.lang)).or_default() += 1;
        }
    }
    let errors = pairs
        .iter()
        .zip(&sims)
        .zip(&reasons)
        .filter(|((p, &(sim, verified, _)), _)| (sim >= threshold && verified) != p.hit)
        .map(|((p, &(sim, _, _)), why)| (sim, why.to_string(), p.hit, p.a.clone(), p.b.clone()))
        .collect();
    Ok(PairsReport {
        embedder: embedder.model_id().into(),
        pairs: pairs.len(),
        positives: pairs.iter().filter(|p| p.hit).count(),
        at_threshold: score(&sims, threshold, true),
        at_threshold_without_verifier: score(&sims, threshold, false),
        best_at_precision_098: best,
        false_hits_by_kind: by_kind.into_iter().collect(),
        errors,
    })
}

pub fn run_pairs(args: PairsArgs) -> Result<()> {
    let rt = crate::runtime()?;
    let embedder = rt.block_on(async { make_embedder(&args.embedder) })?;
    let pairs = load_pairs(&args.pairs)?;
    let report = rt.block_on(evaluate(&pairs, embedder.as_ref(), args.threshold))?;
    let s = |x: &Scores| {
        format!(
            "threshold {:.2}: precision {:.3}, recall {:.3} ({} right hits, {} wrong hits, {} missed)",
            x.threshold, x.precision, x.recall, x.true_hits, x.false_hits, x.missed
        )
    };
    println!(
        "embedder {}: {} pairs, {} should hit",
        report.embedder, report.pairs, report.positives
    );
    println!("with verifier    {}", s(&report.at_threshold));
    println!(
        "without verifier {}",
        s(&report.at_threshold_without_verifier)
    );
    match &report.best_at_precision_098 {
        Some(b) => println!("best recall at precision >= 0.98: {}", s(b)),
        None => println!("no threshold in 0.50..0.99 reaches precision 0.98"),
    }
    for (kind, n) in &report.false_hits_by_kind {
        println!("  wrong hits at the threshold, {kind}: {n}");
    }
    if args.list_errors {
        for (sim, why, hit, a, b) in &report.errors {
            let what = if *hit { "missed" } else { "wrong hit" };
            println!("  {what} {sim:.3} [{why}] {a} | {b}");
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_count_hits_misses_and_verifier_rejections() {
        // (similarity, verifier passes, should hit)
        let sims = [
            (0.95, true, true),
            (0.95, false, false),
            (0.95, true, false),
            (0.60, true, true),
        ];
        let s = score(&sims, 0.9, true);
        assert_eq!((s.true_hits, s.false_hits, s.missed), (1, 1, 1));
        assert!((s.precision - 0.5).abs() < 1e-9 && (s.recall - 0.5).abs() < 1e-9);
        let s = score(&sims, 0.9, false);
        assert_eq!(s.false_hits, 2);
    }

    #[test]
    fn the_development_pairs_parse_and_the_verifier_only_removes_hits() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cache_pairs.jsonl");
        let pairs = load_pairs(&path).unwrap();
        assert!(pairs.len() >= 200);
        assert!(pairs.iter().any(|p| p.lang == "ru") && pairs.iter().any(|p| !p.hit));
        let report = crate::runtime()
            .unwrap()
            .block_on(evaluate(&pairs, &HashedEmbedder::default(), 0.8))
            .unwrap();
        let (with, without) = (report.at_threshold, report.at_threshold_without_verifier);
        assert!(with.false_hits < without.false_hits);
        assert!(with.true_hits <= without.true_hits);
    }
}
