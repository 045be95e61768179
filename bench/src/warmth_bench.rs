//! `warmth`: the time to first token of a conversation's turn N with its
//! KV blocks kept warm between turns vs not, under competing traffic that
//! cycles the KV pool between turns.
//!
//! One engine, two conversations per repeat, run turn by turn and
//! interleaved: turn t of the warm one (its requests carry a session key,
//! so the engine keeps its blocks after each turn), turn t of the cold one
//! (no key), then the competing traffic (distinct prompts whose blocks add
//! up to more than the pool's unheld part). Both arms see the same
//! machine, the same flood and the same model state, so the difference is
//! the warmth. Turn t's prompt is turn t-1's prompt, its answer and a new
//! `--turn-tokens` user message (token ids of real text), so a warm turn
//! computes only the new message while a cold one computes everything.
//!
//! TTFT is measured from the client's seat: submit → first token event.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::json;
use sluice_models::{load_llm, LoadKnobs};
use sluice_runtime::{
    Engine, EngineConfig, EngineEvent, EngineHandle, GenerateRequest, SamplingParams, SessionKey,
};

#[derive(Args, Debug)]
pub struct WarmthArgs {
    /// A GGUF file or a Hugging Face folder [default: the demo SmolLM2-135M GGUF]
    #[arg(long)]
    model: Option<PathBuf>,
    /// Compute threads [default: one per core]
    #[arg(long)]
    threads: Option<usize>,
    /// Turns per conversation (TTFT is reported for turns 2, 5 and 10 when there)
    #[arg(long, default_value_t = 10)]
    turns: usize,
    /// Tokens of each new user message
    #[arg(long, default_value_t = 200)]
    turn_tokens: usize,
    /// Tokens of each answer
    #[arg(long, default_value_t = 32)]
    answer_tokens: usize,
    /// KV blocks in the pool (16 tokens each)
    #[arg(long, default_value_t = 512)]
    kv_blocks: usize,
    /// Competing prompts between turns, and their length in tokens
    #[arg(long, default_value_t = 5)]
    flood_prompts: usize,
    #[arg(long, default_value_t = 1500)]
    flood_tokens: usize,
    /// Conversation pairs (warm + cold), run one after the other
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Also write the results as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Text the token ids come from: varied enough that no two turns share a
/// block by accident (each piece starts with its own counter).
const TEXT: &str = "The harbour wakes before the town does. Gulls argue over the \
    nets, a ferry coughs its engine awake, and the fishmonger stacks ice in \
    crates that smell of salt and diesel. By seven the cafe on the corner has \
    its chairs out; by eight the first tourists ask the way to the lighthouse, \
    which everyone points to although nobody has climbed it in years. ";

pub fn run(args: WarmthArgs) -> Result<()> {
    let model = args
        .model
        .clone()
        .unwrap_or_else(sluice_models::demo_chat_model_path);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if args.turns < 2 {
        bail!("--turns must be at least 2");
    }
    eprintln!("[warmth] loading {}", model.display());
    let loaded = load_llm(&model, LoadKnobs::default(), &mut |_: usize, _: usize| {})
        .with_context(|| format!("loading {}", model.display()))?;
    let cfg = EngineConfig {
        threads: Some(threads),
        num_kv_blocks: Some(args.kv_blocks),
        session_keep_warm: Duration::from_secs(600),
        // Room for one whole warm conversation; the rest cycles.
        session_warm_max_blocks: Some(args.kv_blocks / 2),
        ..EngineConfig::default()
    };
    let engine = Engine::start(loaded, cfg).context("starting the engine")?;
    let texts = Texts::new(&engine, args.turn_tokens.max(args.flood_tokens))?;
    let conversation_tokens = args.turns * (args.turn_tokens + args.answer_tokens);
    if conversation_tokens > engine.info().max_model_len {
        bail!(
            "{} turns of {} + {} tokens pass the model's context of {}",
            args.turns,
            args.turn_tokens,
            args.answer_tokens,
            engine.info().max_model_len
        );
    }
    // ttft[arm][turn] over repeats, in ms.
    let mut ttft: [Vec<Vec<f64>>; 2] = [vec![Vec::new(); args.turns], vec![Vec::new(); args.turns]];
    let mut cached: [Vec<Vec<usize>>; 2] =
        [vec![Vec::new(); args.turns], vec![Vec::new(); args.turns]];
    let mut flood_id = 0;
    for repeat in 0..args.repeats {
        let mut prompts = [Vec::new(), Vec::new()];
        for turn in 0..args.turns {
            for (arm, prompt) in prompts.iter_mut().enumerate() {
                // Arm 0 warm, arm 1 cold; each repeat and arm its own text.
                let salt = 1 + (repeat * 2 + arm) * 1000 + turn;
                prompt.extend(texts.piece(salt, args.turn_tokens));
                let session = (arm == 0).then(|| SessionKey::new(format!("bench-{repeat}")));
                let turn_result = one_turn(&engine, prompt.clone(), args.answer_tokens, session)?;
                prompt.extend(turn_result.answer);
                ttft[arm][turn].push(turn_result.ttft.as_secs_f64() * 1e3);
                cached[arm][turn].push(turn_result.cached);
            }
            for _ in 0..args.flood_prompts {
                flood_id += 1;
                one_turn(
                    &engine,
                    texts.piece(1_000_000 + flood_id, args.flood_tokens),
                    1,
                    None,
                )?;
            }
            eprintln!(
                "[warmth] repeat {} turn {}: warm {:.1} ms ({} cached), cold {:.1} ms ({} cached)",
                repeat + 1,
                turn + 1,
                ttft[0][turn][repeat],
                cached[0][turn][repeat],
                ttft[1][turn][repeat],
                cached[1][turn][repeat]
            );
        }
    }
    let load = engine.load();
    println!(
        "warmth: {} turns of {} new tokens + {} answer tokens; pool {} blocks; between turns {} \
         competing prompts of {} tokens; {} repeats, arms interleaved; {threads} threads",
        args.turns,
        args.turn_tokens,
        args.answer_tokens,
        args.kv_blocks,
        args.flood_prompts,
        args.flood_tokens,
        args.repeats
    );
    println!("| turn | prompt tokens | TTFT warm p50 (ms) | TTFT cold p50 (ms) | cached warm | cached cold |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for turn in [2usize, 5, 10].into_iter().filter(|&t| t <= args.turns) {
        let i = turn - 1;
        let prompt_tokens = turn * args.turn_tokens + (turn - 1) * args.answer_tokens;
        let (warm, cold) = (median(&ttft[0][i]), median(&ttft[1][i]));
        let (cw, cc) = (median_usize(&cached[0][i]), median_usize(&cached[1][i]));
        println!("| {turn} | {prompt_tokens} | {warm:.1} | {cold:.1} | {cw} | {cc} |");
        rows.push(json!({
            "turn": turn, "prompt_tokens": prompt_tokens,
            "ttft_warm_ms": ttft[0][i], "ttft_cold_ms": ttft[1][i],
            "cached_warm": cached[0][i], "cached_cold": cached[1][i],
        }));
    }
    println!("preemptions during the run: {}", load.preemptions);
    if let Some(path) = &args.json {
        let report = json!({
            "bench": "warmth",
            "model": model.display().to_string(),
            "threads": threads,
            "turns": args.turns, "turn_tokens": args.turn_tokens,
            "answer_tokens": args.answer_tokens, "kv_blocks": args.kv_blocks,
            "flood_prompts": args.flood_prompts, "flood_tokens": args.flood_tokens,
            "repeats": args.repeats, "rows": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Token ids of real text, cut into salted pieces.
struct Texts {
    ids: Vec<u32>,
    /// Encodes each piece's salt prefix.
    tokenizer: std::sync::Arc<sluice_models::Tokenizer>,
}

impl Texts {
    fn new(engine: &EngineHandle, longest: usize) -> Result<Self> {
        let tokenizer = engine.tokenizer().clone();
        let mut ids = Vec::new();
        while ids.len() < longest + 64 {
            ids.extend(
                tokenizer
                    .encode(TEXT, false)
                    .map_err(|e| anyhow!("tokenising: {e}"))?,
            );
        }
        Ok(Self { ids, tokenizer })
    }

    /// `len` token ids: a salt ("[1234]") then the text, so two pieces with
    /// different salts differ from their first block on.
    fn piece(&self, salt: usize, len: usize) -> Vec<u32> {
        let mut out = self
            .tokenizer
            .encode(&format!("[{salt}] "), false)
            .unwrap_or_default();
        let offset = salt % 64;
        out.extend(self.ids[offset..].iter().copied());
        out.truncate(len);
        out
    }
}

struct TurnResult {
    ttft: Duration,
    answer: Vec<u32>,
    cached: usize,
}

fn one_turn(
    engine: &EngineHandle,
    prompt_tokens: Vec<u32>,
    max_tokens: usize,
    session: Option<SessionKey>,
) -> Result<TurnResult> {
    let started = Instant::now();
    let mut events = engine
        .submit(GenerateRequest {
            prompt_tokens,
            params: SamplingParams {
                max_tokens,
                temperature: 0.0,
                ignore_eos: true,
                ..SamplingParams::default()
            },
            constraint: None,
            session,
        })
        .map_err(|e| anyhow!("submit: {e}"))?;
    let mut ttft = None;
    let mut answer = Vec::with_capacity(max_tokens);
    while let Some(ev) = events.blocking_recv() {
        match ev {
            EngineEvent::Token { id, .. } => {
                ttft.get_or_insert_with(|| started.elapsed());
                answer.push(id);
            }
            EngineEvent::Finished { usage, .. } => {
                return Ok(TurnResult {
                    ttft: ttft.unwrap_or_else(|| started.elapsed()),
                    answer,
                    cached: usage.cached_prompt_tokens,
                })
            }
            EngineEvent::Error(e) => bail!("engine error: {e}"),
        }
    }
    bail!("the engine dropped a request")
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn median_usize(xs: &[usize]) -> usize {
    let mut v = xs.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}
