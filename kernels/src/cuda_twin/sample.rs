//! Twin of `kernels/cuda/sample.cu`, and [`sample_reference`]: the CPU
//! sampler's rules (`runtime/src/sampler.rs`, after penalties) written
//! plainly, which the twin is tested against.
//!
//! Thread `t` of the block owns the vocabulary run `[t*chunk, (t+1)*chunk)`;
//! f64 sums are per thread in index order, then over threads in thread
//! order. The top candidates are a set fixed by a total order (logit
//! descending, id ascending), so how the kernel finds them (radix select,
//! bitonic sort) needs no replaying: the twin sorts.

use std::cmp::Ordering;

use super::{SampleShape, SAMPLE_MAX_CANDIDATES, SAMPLE_THREADS};
use crate::KernelError;

/// One row's sampling parameters, laid out as the kernel's `RowSampling`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[repr(C)]
pub struct RowSampling {
    /// Below 1e-5 (or NaN): greedy.
    pub temperature: f32,
    /// 1.0 = off.
    pub top_p: f32,
    /// Relative to the best token's weight; 0 = off.
    pub min_p: f32,
    /// The row's uniform random number in `[0, 1)`.
    pub uniform: f32,
    /// 0 = off.
    pub top_k: i32,
}

/// What `out_ids` holds for a row the device leaves to the host: top_k above
/// [`SAMPLE_MAX_CANDIDATES`], or a top-p nucleus larger than that.
pub const HOST_SAMPLES: i32 = -1;

/// Temperatures below this are greedy, as in the CPU sampler.
const GREEDY_BELOW: f32 = 1e-5;

/// NaN never wins; +inf is merely very large.
fn clean(l: f32) -> f32 {
    if l.is_nan() {
        f32::NEG_INFINITY
    } else if l == f32::INFINITY {
        f32::MAX
    } else {
        l
    }
}

/// Best first: larger logit (total order), then lower id.
fn better(a: (f32, usize), b: (f32, usize)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Lowest id among the largest cleaned logits (id 0 when all are -inf).
fn argmax(logits: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        let l = clean(l);
        if i == 0 || l > best.1 {
            best = (i, l);
        }
    }
    best
}

/// Samples every row: `out_ids[r]` is the token, or [`HOST_SAMPLES`].
pub fn sample(
    shape: &SampleShape,
    logits: &[f32],
    params: &[RowSampling],
    out_ids: &mut [i32],
) -> Result<(), KernelError> {
    shape.validate(logits.len(), params.len(), out_ids.len())?;
    for ((row, p), out) in logits
        .chunks_exact(shape.vocab)
        .zip(params)
        .zip(out_ids.iter_mut())
    {
        *out = sample_row(row, p);
    }
    Ok(())
}

fn sample_row(lg: &[f32], p: &RowSampling) -> i32 {
    let vocab = lg.len();
    let chunk = vocab.div_ceil(SAMPLE_THREADS);
    let (best, max) = argmax(lg);
    let id = |i: usize| i32::try_from(i).unwrap_or(HOST_SAMPLES);
    if p.temperature.is_nan() || p.temperature < GREEDY_BELOW || max == f32::NEG_INFINITY {
        return id(best);
    }
    let inv_t = 1.0 / p.temperature;
    let weight = |i: usize| ((clean(lg[i]) - max) * inv_t).exp();
    let min_p = p.min_p.max(0.0);
    let top_k_on = p.top_k > 0 && (p.top_k as usize) < vocab;
    let top_p_on = p.top_p < 1.0;
    let u = p.uniform as f64;
    let runs = (0..SAMPLE_THREADS).map(|t| (t * chunk).min(vocab)..((t + 1) * chunk).min(vocab));

    if !top_k_on && !top_p_on {
        let w_min = |i: usize| {
            let w = weight(i);
            if w < min_p {
                0.0
            } else {
                w
            }
        };
        let sums: Vec<f64> = runs.map(|r| r.map(|i| w_min(i) as f64).sum()).collect();
        let total: f64 = sums.iter().sum();
        if total.is_nan() || total <= 0.0 {
            return id(best);
        }
        let target = u * total;
        let mut cum = 0.0f64;
        let mut c = 0;
        while c < SAMPLE_THREADS && target >= cum + sums[c] {
            cum += sums[c];
            c += 1;
        }
        if c == SAMPLE_THREADS {
            return id((0..vocab).rev().find(|&i| w_min(i) > 0.0).unwrap_or(best));
        }
        let mut last = None;
        for i in (c * chunk).min(vocab)..vocab {
            let w = w_min(i);
            if w <= 0.0 {
                continue;
            }
            cum += w as f64;
            last = Some(i);
            if target < cum {
                break;
            }
        }
        return id(last.unwrap_or(best));
    }

    if top_k_on && p.top_k as usize > SAMPLE_MAX_CANDIDATES {
        return HOST_SAMPLES;
    }
    let want = if top_k_on {
        p.top_k as usize
    } else {
        SAMPLE_MAX_CANDIDATES.min(vocab)
    };
    let mut order: Vec<usize> = (0..vocab).collect();
    let cmp = |a: &usize, b: &usize| better((clean(lg[*a]), *a), (clean(lg[*b]), *b));
    if want < vocab {
        order.select_nth_unstable_by(want - 1, cmp);
        order.truncate(want);
    }
    order.sort_unstable_by(cmp);

    let mut keep = want;
    if top_p_on {
        let total: f64 = if top_k_on {
            order.iter().map(|&i| weight(i) as f64).sum()
        } else {
            runs.map(|r| r.map(|i| weight(i) as f64).sum::<f64>()).sum()
        };
        let target = p.top_p as f64 * total;
        let mut cum = 0.0f64;
        for (j, &i) in order.iter().enumerate() {
            cum += weight(i) as f64;
            if cum >= target {
                keep = j + 1;
                break;
            }
        }
        if !top_k_on && keep == want && want < vocab {
            return HOST_SAMPLES;
        }
    }
    let kept = &order[..keep];
    let total: f64 = kept
        .iter()
        .map(|&i| weight(i))
        .filter(|&w| w >= min_p)
        .map(f64::from)
        .sum();
    if total.is_nan() || total <= 0.0 {
        return id(best);
    }
    let target = u * total;
    let mut cum = 0.0f64;
    let mut last = best;
    for &i in kept {
        let w = weight(i);
        if w < min_p || w <= 0.0 {
            continue;
        }
        cum += w as f64;
        last = i;
        if target < cum {
            break;
        }
    }
    id(last)
}

/// The CPU sampler's rules written plainly (full sort, sequential sums):
/// the yardstick for the twin. `None` when the device would hand the row to
/// the host (see [`HOST_SAMPLES`]); the CPU sampler itself would then look
/// past the best [`SAMPLE_MAX_CANDIDATES`].
pub fn sample_reference(lg: &[f32], p: &RowSampling) -> Option<usize> {
    let vocab = lg.len();
    let (best, max) = argmax(lg);
    if p.temperature.is_nan() || p.temperature < GREEDY_BELOW || max == f32::NEG_INFINITY {
        return Some(best);
    }
    let weight = |i: usize| ((clean(lg[i]) - max) / p.temperature).exp();
    let min_p = p.min_p.max(0.0);
    let top_k = (p.top_k > 0 && (p.top_k as usize) < vocab).then_some(p.top_k as usize);
    let top_p = (p.top_p < 1.0).then_some(p.top_p as f64);
    let mut order: Vec<usize> = (0..vocab).collect();
    let candidates: Vec<(usize, f32)> = match (top_k, top_p) {
        (None, None) => order
            .iter()
            .map(|&i| (i, weight(i)))
            .map(|(i, w)| (i, if w < min_p { 0.0 } else { w }))
            .collect(),
        (Some(k), _) if k > SAMPLE_MAX_CANDIDATES => return None,
        _ => {
            order.sort_by(|a, b| better((clean(lg[*a]), *a), (clean(lg[*b]), *b)));
            let mut c: Vec<(usize, f32)> = order.iter().map(|&i| (i, weight(i))).collect();
            if let Some(k) = top_k {
                c.truncate(k);
            }
            if let Some(p) = top_p {
                // Top-p alone weighs against the whole vocabulary, in index order.
                let total: f64 = match top_k {
                    Some(_) => c.iter().map(|&(_, w)| w as f64).sum(),
                    None => (0..vocab).map(|i| weight(i) as f64).sum(),
                };
                let mut cum = 0.0;
                let keep = c
                    .iter()
                    .position(|&(_, w)| {
                        cum += w as f64;
                        cum >= p * total
                    })
                    .map_or(c.len(), |j| j + 1);
                if top_k.is_none() && vocab > SAMPLE_MAX_CANDIDATES && keep >= SAMPLE_MAX_CANDIDATES
                {
                    return None;
                }
                c.truncate(keep);
            }
            c.retain(|&(_, w)| w >= min_p);
            c
        }
    };
    let total: f64 = candidates.iter().map(|&(_, w)| w as f64).sum();
    if total.is_nan() || total <= 0.0 {
        return Some(best);
    }
    let target = p.uniform as f64 * total;
    let mut cum = 0.0;
    let mut last = None;
    for (i, w) in candidates {
        if w <= 0.0 {
            continue;
        }
        cum += w as f64;
        last = Some(i);
        if target < cum {
            return Some(i);
        }
    }
    last.or(Some(best))
}
