//! Runs the same prompts through two executors and measures how far apart
//! they are: the tests compare the device step on CPU ops with the CPU
//! engine this way, and `sluice-gpucheck` the CUDA executor with it.

use sluice_models::{ModelError, SeqBatch};

use crate::executor::Executor;

/// What a greedy run produced: per sequence, the tokens chosen and the
/// logits each was chosen from.
#[derive(Debug, Clone, Default)]
pub struct GreedyRun {
    pub tokens: Vec<Vec<u32>>,
    pub logits: Vec<Vec<Vec<f32>>>,
}

/// How two runs over the same prompts differ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// The largest absolute logit difference at the same context.
    pub max_logit_diff: f32,
    /// The share of steps whose best token is the same at the same context.
    pub top1: f64,
    /// Prompts whose greedy continuations are identical.
    pub same_text: usize,
    pub prompts: usize,
}

/// The index of the largest value (the first on ties, as the sampler does).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &x) in v.iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0 as u32
}

/// Runs `prompts` together: each prefilled in chunks of `chunk` tokens (all
/// sequences share each step, so prefill chunks and decodes mix), then
/// `steps` decode steps of all of them. Each sequence gets an equal share of
/// the executor's blocks. With `forced`, the tokens fed are `forced`'s (so
/// both runs see the same contexts) while the tokens recorded are still
/// this executor's own choices.
pub fn greedy_run(
    exec: &mut dyn Executor,
    prompts: &[Vec<u32>],
    chunk: usize,
    steps: usize,
    forced: Option<&GreedyRun>,
) -> Result<GreedyRun, ModelError> {
    let n = prompts.len();
    if n == 0 {
        return Ok(GreedyRun::default());
    }
    let per_seq = exec.num_kv_blocks() / n;
    let needed = prompts.iter().map(Vec::len).max().unwrap_or(0) + steps;
    if per_seq * exec.block_size() < needed {
        return Err(ModelError::Config(format!(
            "{n} sequences of {needed} tokens need {} blocks each; the executor has {} in all",
            needed.div_ceil(exec.block_size()),
            exec.num_kv_blocks()
        )));
    }
    let tables: Vec<Vec<u32>> = (0..n)
        .map(|i| ((i * per_seq) as u32..((i + 1) * per_seq) as u32).collect())
        .collect();
    let chunk = chunk.max(1);
    let mut pos = vec![0usize; n];
    let mut last = vec![Vec::new(); n];
    while pos.iter().zip(prompts).any(|(p, t)| *p < t.len()) {
        let mut batch = Vec::new();
        let mut who = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            if pos[i] < p.len() {
                let end = (pos[i] + chunk).min(p.len());
                batch.push(SeqBatch {
                    tokens: &p[pos[i]..end],
                    start_pos: pos[i],
                    block_table: &tables[i],
                    want_logits: end == p.len(),
                });
                who.push((i, end));
            }
        }
        let mut out = exec.execute(&batch)?.into_iter();
        for (i, end) in who {
            if end == prompts[i].len() {
                last[i] = out.next().ok_or_else(|| {
                    ModelError::Device("the executor returned fewer logits rows than asked".into())
                })?;
            }
            pos[i] = end;
        }
    }
    let mut run = GreedyRun {
        tokens: vec![Vec::with_capacity(steps); n],
        logits: vec![Vec::with_capacity(steps); n],
    };
    for step in 0..steps {
        let mut feed = Vec::with_capacity(n);
        for (i, l) in last.iter_mut().enumerate() {
            let own = argmax(l);
            run.tokens[i].push(own);
            run.logits[i].push(std::mem::take(l));
            let fed = forced
                .and_then(|f| f.tokens.get(i))
                .and_then(|t| t.get(step))
                .copied()
                .unwrap_or(own);
            feed.push([fed]);
        }
        if step + 1 == steps {
            break;
        }
        let batch: Vec<SeqBatch<'_>> = feed
            .iter()
            .enumerate()
            .map(|(i, t)| SeqBatch {
                tokens: t,
                start_pos: pos[i],
                block_table: &tables[i],
                want_logits: true,
            })
            .collect();
        last = exec.execute(&batch)?;
        if last.len() != n {
            return Err(ModelError::Device(format!(
                "asked for {n} logits rows, got {}",
                last.len()
            )));
        }
        for p in &mut pos {
            *p += 1;
        }
    }
    Ok(run)
}

/// Compares `other` with `reference`: `forced` is `other` run on the
/// reference's tokens (same contexts: logits and top-1 comparable at every
/// step), `free` is `other` choosing its own tokens (the greedy text).
pub fn agreement(reference: &GreedyRun, forced: &GreedyRun, free: &GreedyRun) -> Agreement {
    let mut max_logit_diff = 0.0f32;
    let (mut same, mut total) = (0usize, 0usize);
    for (want_seq, got_seq) in reference.logits.iter().zip(&forced.logits) {
        for (want, got) in want_seq.iter().zip(got_seq) {
            for (a, b) in want.iter().zip(got) {
                let d = (a - b).abs();
                // A NaN is as far apart as it gets.
                max_logit_diff = if d.is_nan() {
                    f32::INFINITY
                } else {
                    max_logit_diff.max(d)
                };
            }
            total += 1;
            same += usize::from(argmax(want) == argmax(got));
        }
    }
    Agreement {
        max_logit_diff,
        top1: if total == 0 {
            1.0
        } else {
            same as f64 / total as f64
        },
        same_text: reference
            .tokens
            .iter()
            .zip(&free.tokens)
            .filter(|(a, b)| a == b)
            .count(),
        prompts: reference.tokens.len(),
    }
}

/// Runs the reference free, `other` forced and free, and compares them.
pub fn compare_executors(
    reference: &mut dyn Executor,
    other: &mut dyn Executor,
    prompts: &[Vec<u32>],
    chunk: usize,
    steps: usize,
) -> Result<(GreedyRun, GreedyRun, Agreement), ModelError> {
    let want = greedy_run(reference, prompts, chunk, steps, None)?;
    // Forgets the first run's KV before the second reuses the same blocks.
    other.reset()?;
    let forced = greedy_run(other, prompts, chunk, steps, Some(&want))?;
    other.reset()?;
    let free = greedy_run(other, prompts, chunk, steps, None)?;
    let agreement = agreement(&want, &forced, &free);
    Ok((want, free, agreement))
}
