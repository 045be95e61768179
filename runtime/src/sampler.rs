//! Picks the next token from one position's logits.
//!
//! Order of operations (each step only when its parameter is on):
//! 1. penalties, in place: repetition over prompt + output (HF / llama.cpp:
//!    positive logits divided, negative multiplied), then frequency and
//!    presence over the output only (OpenAI); then `logit_bias`, added;
//! 2. log-probabilities: log-softmax of the penalised and biased logits
//!    (and, for a constrained sequence, masked by its grammar before this
//!    function is called), before temperature and truncation: the
//!    distribution the token is drawn from, untempered;
//! 3. greedy argmax when `temperature == 0`, otherwise temperature, top-k,
//!    top-p, min-p, then one uniform draw from the request's own generator.
//!
//! Vocabularies are 50k–150k entries and this runs once per sequence per
//! step, so nothing sorts the whole vocabulary unless it must: top-k and
//! top-n logprobs use a bounded selection, top-p without top-k first tries the
//! few hundred best tokens, and penalties touch only tokens that occurred.

use std::cmp::Ordering;

use sluice_kernels::cuda_twin::RowSampling;

use crate::request::SamplingParams;
use crate::rng::SeqRng;

/// The chosen token and its log-probability (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub id: u32,
    /// The chosen token's log-probability when `params.logprobs` is `Some`;
    /// NaN otherwise (computing it costs a pass over the vocabulary).
    pub logprob: f32,
    /// The `n` most likely tokens, best first, when `params.logprobs` is
    /// `Some(n)`; empty otherwise.
    pub top: Vec<(u32, f32)>,
}

/// Temperatures below this are greedy (as in vLLM): dividing by them would
/// overflow, and the result is argmax anyway.
const GREEDY_BELOW: f32 = 1e-5;

/// Up to this many best tokens are kept with an insertion buffer (one pass,
/// no allocation proportional to the vocabulary); beyond it, a selection
/// over an index array is cheaper.
const SMALL_SELECTION: usize = 64;

/// First candidate count tried for top-p without top-k; grows 8× per miss.
const TOP_P_FIRST_TRY: usize = 256;

/// Applies `params` to `logits` and picks a token. See the module docs.
/// `logits` is left penalised (and with NaN read as -inf); `rng` is drawn
/// from once, and only when not greedy.
pub fn sample(
    logits: &mut [f32],
    params: &SamplingParams,
    prompt: &[u32],
    output: &[u32],
    rng: &mut SeqRng,
) -> SampledToken {
    // A NaN would poison every comparison and sum below; treat it as "never"
    // (and an infinite logit as merely very large) rather than fail a request.
    for l in logits.iter_mut() {
        if l.is_nan() {
            *l = f32::NEG_INFINITY;
        } else if *l == f32::INFINITY {
            *l = f32::MAX;
        }
    }
    apply_penalties(logits, params, prompt, output);
    for &(id, bias) in &params.logit_bias {
        if let Some(l) = logits.get_mut(id as usize) {
            *l += bias;
        }
    }

    let Some((best, max)) = argmax(logits) else {
        return SampledToken {
            id: 0,
            logprob: f32::NEG_INFINITY,
            top: Vec::new(),
        };
    };
    // The normaliser is a pass over the whole vocabulary: skip it unless
    // log-probabilities were asked for (about 4% of a decode step otherwise).
    let lse = if params.logprobs.is_some() {
        log_sum_exp(logits, max)
    } else {
        f32::NAN
    };
    let greedy = is_greedy(params);
    let id = if greedy {
        best
    } else {
        draw(logits, params, max, rng).unwrap_or(best)
    };
    let logprob_of = |l: f32| {
        if lse.is_nan() {
            f32::NAN
        } else if lse == f32::NEG_INFINITY {
            f32::NEG_INFINITY
        } else {
            l - lse
        }
    };
    let top = match params.logprobs {
        Some(n) if n > 0 => top_n(logits, n)
            .into_iter()
            .map(|i| (i as u32, logprob_of(logits[i])))
            .collect(),
        _ => Vec::new(),
    };
    SampledToken {
        id: id as u32,
        logprob: logprob_of(logits[id]),
        top,
    }
}

/// Whether `sample` picks the argmax without drawing from the generator.
pub fn is_greedy(params: &SamplingParams) -> bool {
    params.temperature.is_nan() || params.temperature < GREEDY_BELOW
}

/// `params` as rules an executor can apply where the logits are (step 3 of
/// the module docs only), or `None` when the row needs steps 1–2, which
/// only the host does: a penalty, a `logit_bias`, log-probabilities. A
/// grammar is the caller's to check. `rng` is not advanced: the uniform in
/// the rules is the draw `sample` would take next, peeked from a copy, so
/// the caller advances `rng` once only if the executor used it.
pub fn off_host_rules(params: &SamplingParams, rng: &SeqRng) -> Option<RowSampling> {
    let rp = params.repetition_penalty;
    let penalised = (rp != 1.0 && rp > 0.0)
        || params.frequency_penalty != 0.0
        || params.presence_penalty != 0.0;
    if penalised || !params.logit_bias.is_empty() || params.logprobs.is_some() {
        return None;
    }
    let uniform = if is_greedy(params) {
        0.0
    } else {
        rng.clone().next_f32()
    };
    Some(RowSampling {
        temperature: params.temperature,
        top_p: params.top_p,
        min_p: params.min_p,
        uniform,
        // Beyond the kernel's candidate limit the device hands the row back.
        top_k: i32::try_from(params.top_k).unwrap_or(i32::MAX),
    })
}

fn apply_penalties(logits: &mut [f32], params: &SamplingParams, prompt: &[u32], output: &[u32]) {
    let vocab = logits.len();
    let rp = params.repetition_penalty;
    if rp != 1.0 && rp > 0.0 {
        // Each distinct token is penalised once, however often it occurred;
        // a bitset over the vocabulary is 20 KB at 150k tokens.
        let mut seen = vec![0u64; vocab.div_ceil(64)];
        for &t in prompt.iter().chain(output) {
            let t = t as usize;
            if t >= vocab {
                continue;
            }
            let (word, bit) = (t / 64, 1u64 << (t % 64));
            if seen[word] & bit != 0 {
                continue;
            }
            seen[word] |= bit;
            let l = &mut logits[t];
            *l = if *l > 0.0 { *l / rp } else { *l * rp };
        }
    }
    if params.frequency_penalty != 0.0 || params.presence_penalty != 0.0 {
        let mut sorted = output.to_vec();
        sorted.sort_unstable();
        for run in sorted.chunk_by(|a, b| a == b) {
            let Some(&t) = run.first() else { continue };
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= params.frequency_penalty * run.len() as f32 + params.presence_penalty;
            }
        }
    }
}

/// Index and value of the largest logit, lowest index on ties.
fn argmax(logits: &[f32]) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        match best {
            Some((_, b)) if l <= b => {}
            _ => best = Some((i, l)),
        }
    }
    best
}

fn log_sum_exp(logits: &[f32], max: f32) -> f32 {
    if max == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    let sum: f64 = logits.iter().map(|&l| ((l - max).exp()) as f64).sum();
    max + (sum.ln() as f32)
}

/// Orders by logit descending, then id ascending (so ties favour low ids).
fn better(a: (f32, usize), b: (f32, usize)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The indices of the `n` largest logits, best first, ties by lowest id.
fn top_n(logits: &[f32], n: usize) -> Vec<usize> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    if n <= SMALL_SELECTION {
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(n + 1);
        for (i, &l) in logits.iter().enumerate() {
            if best.len() == n
                && best
                    .last()
                    .is_some_and(|&last| better((l, i), last) != Ordering::Less)
            {
                continue;
            }
            let pos = best.partition_point(|&e| better(e, (l, i)) == Ordering::Less);
            best.insert(pos, (l, i));
            best.truncate(n);
        }
        return best.into_iter().map(|(_, i)| i).collect();
    }
    let cmp = |a: &usize, b: &usize| better((logits[*a], *a), (logits[*b], *b));
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, cmp);
        idx.truncate(n);
    }
    idx.sort_unstable_by(cmp);
    idx
}

/// Temperature, top-k, top-p, min-p, then one draw. `None` only when no
/// token has any weight left (all logits -inf).
fn draw(logits: &[f32], params: &SamplingParams, max: f32, rng: &mut SeqRng) -> Option<usize> {
    let vocab = logits.len();
    let inv_t = 1.0 / params.temperature;
    // Relative to the most likely token, whose weight is exactly 1; min-p
    // compares against it directly, and no normalisation is needed to draw.
    let weight = |l: f32| ((l - max) * inv_t).exp();
    let min_p = params.min_p.max(0.0);
    let top_k = (params.top_k > 0 && params.top_k < vocab).then_some(params.top_k);
    let top_p = (params.top_p < 1.0).then_some(params.top_p);

    if top_k.is_none() && top_p.is_none() {
        let mut total = 0.0f64;
        let weights: Vec<f32> = logits
            .iter()
            .map(|&l| {
                let w = weight(l);
                let w = if w < min_p { 0.0 } else { w };
                total += w as f64;
                w
            })
            .collect();
        return pick_weighted(weights.into_iter().enumerate(), total, rng);
    }

    let mut candidates: Vec<(usize, f32)> = match (top_k, top_p) {
        (Some(k), _) => with_weights(logits, top_n(logits, k), &weight),
        (None, Some(p)) => top_p_candidates(logits, p, &weight),
        (None, None) => Vec::new(), // handled above
    };
    if let (Some(_), Some(p)) = (top_k, top_p) {
        let total: f64 = candidates.iter().map(|&(_, w)| w as f64).sum();
        let keep = nucleus_len(&candidates, p as f64 * total);
        candidates.truncate(keep);
    }
    candidates.retain(|&(_, w)| w >= min_p);
    let total = candidates.iter().map(|&(_, w)| w as f64).sum();
    pick_weighted(candidates.into_iter(), total, rng)
}

fn with_weights(
    logits: &[f32],
    ids: Vec<usize>,
    weight: &impl Fn(f32) -> f32,
) -> Vec<(usize, f32)> {
    ids.into_iter().map(|i| (i, weight(logits[i]))).collect()
}

/// The smallest run of best tokens whose weight reaches `p` of the whole
/// vocabulary's, trying the few hundred best first: on real logits the
/// nucleus is almost always that small, and a full sort of 150k is not.
fn top_p_candidates(logits: &[f32], p: f32, weight: &impl Fn(f32) -> f32) -> Vec<(usize, f32)> {
    let total: f64 = logits.iter().map(|&l| weight(l) as f64).sum();
    let target = p as f64 * total;
    let mut m = TOP_P_FIRST_TRY.min(logits.len());
    loop {
        let mut candidates = with_weights(logits, top_n(logits, m), weight);
        let keep = nucleus_len(&candidates, target);
        if keep < candidates.len() || m == logits.len() {
            candidates.truncate(keep);
            return candidates;
        }
        m = (m * 8).min(logits.len());
    }
}

/// How many leading candidates (best first) it takes for their weight to
/// reach `target`; at least one. Returns `candidates.len()` when it is not
/// reached.
fn nucleus_len(candidates: &[(usize, f32)], target: f64) -> usize {
    let mut cum = 0.0f64;
    for (n, &(_, w)) in candidates.iter().enumerate() {
        cum += w as f64;
        if cum >= target {
            return n + 1;
        }
    }
    candidates.len()
}

/// One draw proportional to the weights. Rounding can leave the scaled
/// uniform just past the running sum; then the last weighted entry wins.
fn pick_weighted(
    weights: impl Iterator<Item = (usize, f32)>,
    total: f64,
    rng: &mut SeqRng,
) -> Option<usize> {
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let u = rng.next_f32() as f64 * total;
    let mut cum = 0.0f64;
    let mut last = None;
    for (i, w) in weights {
        if w <= 0.0 {
            continue;
        }
        cum += w as f64;
        last = Some(i);
        if u < cum {
            return Some(i);
        }
    }
    last
}

#[cfg(test)]
mod tests;
