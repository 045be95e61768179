//! How a guard's scores are judged and where its threshold goes: ROC AUC,
//! recall and false-positive rate at a threshold, and the threshold that
//! maximises recall under a false-positive bound.
//!
//! Design decision: the chosen threshold sits halfway between the lowest
//! validation score that stays flagged and the next score below it, not on
//! a validation score itself. On validation the two give the same figures;
//! on new texts the midpoint does not favour either side of the gap.

/// A threshold and what it achieves on the scores it was chosen on.
/// A text is flagged when its score is `>= threshold`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThresholdChoice {
    pub threshold: f32,
    /// Flagged positives / positives.
    pub recall: f64,
    /// Flagged negatives / negatives.
    pub false_positive_rate: f64,
}

/// Recall and false-positive rate of "flag when `score >= threshold`".
/// A class with no members gives 0 for its rate.
pub fn rates_at(scores: &[f32], positive: &[bool], threshold: f32) -> (f64, f64) {
    let (mut tp, mut fp, mut pos, mut neg) = (0usize, 0usize, 0usize, 0usize);
    for (&s, &p) in scores.iter().zip(positive) {
        let flagged = s >= threshold;
        if p {
            pos += 1;
            tp += usize::from(flagged);
        } else {
            neg += 1;
            fp += usize::from(flagged);
        }
    }
    (ratio(tp, pos), ratio(fp, neg))
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Area under the ROC curve: the probability that a random positive scores
/// above a random negative, ties counting one half (Mann-Whitney U with
/// average ranks). `None` when either class is empty.
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let n = scores.len().min(positive.len());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum_pos, mut pos) = (0.0f64, 0usize);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // Ranks are 1-based; a tie group shares the mean of its ranks.
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if positive[k] {
                rank_sum_pos += mean_rank;
                pos += 1;
            }
        }
        i = j + 1;
    }
    let neg = n - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let u = rank_sum_pos - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos as f64 * neg as f64))
}

/// The threshold with the highest recall whose false-positive rate is at
/// most `max_false_positive_rate`. `None` when either class is empty.
/// When even the top score lets too many negatives through, the threshold
/// sits above every score (recall 0, rate 0).
pub fn choose_threshold(
    scores: &[f32],
    positive: &[bool],
    max_false_positive_rate: f64,
) -> Option<ThresholdChoice> {
    let n = scores.len().min(positive.len());
    let pos = positive[..n].iter().filter(|&&p| p).count();
    let neg = n - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    // The small epsilon keeps 0.05 * 2000 = 100 from rounding down to 99.
    let allowed_false_positives = (max_false_positive_rate * neg as f64 + 1e-9).floor() as usize;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));

    // Walk groups of equal scores from the top; recall only grows as the
    // threshold falls, so the last group that keeps within the bound wins.
    let mut best: Option<(usize, usize, usize)> = None; // (group end, tp, fp)
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        for &k in &order[i..=j] {
            if positive[k] {
                tp += 1;
            } else {
                fp += 1;
            }
        }
        if fp > allowed_false_positives {
            break;
        }
        best = Some((j, tp, fp));
        i = j + 1;
    }
    let Some((end, tp, fp)) = best else {
        let top = scores[order[0]];
        return Some(ThresholdChoice {
            threshold: above(top),
            recall: 0.0,
            false_positive_rate: 0.0,
        });
    };
    let lowest_flagged = scores[order[end]];
    let threshold = match order.get(end + 1) {
        Some(&next) => midpoint_above(scores[next], lowest_flagged),
        None => lowest_flagged,
    };
    Some(ThresholdChoice {
        threshold,
        recall: tp as f64 / pos as f64,
        false_positive_rate: fp as f64 / neg as f64,
    })
}

/// Platt scaling: the `(scale, shift)` that minimise the log loss of
/// `sigmoid(scale * logit + shift)` against the labels, with Platt's
/// smoothed targets (`(n+ + 1) / (n+ + 2)` and `1 / (n- + 2)`) so a
/// separable validation set does not push the scale to infinity. Newton's
/// method on the two parameters. `None` when either class is empty or the
/// fit gives a scale that is not positive (the logits rank backwards).
pub fn platt_scaling(logits: &[f32], positive: &[bool]) -> Option<(f32, f32)> {
    let n = logits.len().min(positive.len());
    let pos = positive[..n].iter().filter(|&&p| p).count();
    let neg = n - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let hi = (pos as f64 + 1.0) / (pos as f64 + 2.0);
    let lo = 1.0 / (neg as f64 + 2.0);
    let pairs: Vec<(f64, f64)> = logits[..n]
        .iter()
        .zip(&positive[..n])
        .map(|(&z, &p)| (f64::from(z), if p { hi } else { lo }))
        .collect();
    // Cross-entropy in a form that does not overflow for large margins.
    let softplus = |x: f64| if x > 30.0 { x } else { x.exp().ln_1p() };
    let loss = |a: f64, b: f64| -> f64 {
        pairs
            .iter()
            .map(|&(z, t)| {
                let m = a * z + b;
                t * softplus(-m) + (1.0 - t) * softplus(m)
            })
            .sum()
    };
    // Start from a scale that maps the logits' spread to about 1: an
    // over-fitted head's logits run to the hundreds, where Newton's method
    // from scale 1 sees saturated, flat curvature and jumps away.
    let spread = pairs.iter().map(|(z, _)| z.abs()).fold(0.0f64, f64::max);
    let (mut a, mut b) = (1.0 / spread.max(1.0), 0.0f64);
    let mut current = loss(a, b);
    for _ in 0..200 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &(z, t) in &pairs {
            let q = 1.0 / (1.0 + (-(a * z + b)).exp());
            let w = (q * (1.0 - q)).max(1e-12);
            ga += (q - t) * z;
            gb += q - t;
            haa += w * z * z;
            hab += w * z;
            hbb += w;
        }
        // A small ridge keeps the 2x2 system solvable when every logit is
        // the same.
        let (haa, hbb) = (haa + 1e-9, hbb + 1e-9);
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-18 {
            break;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        // Backtracking: a Newton step is taken only as far as it lowers
        // the loss.
        let mut step = 1.0;
        let mut next = loss(a - da, b - db);
        let worse = |next: f64| next.is_nan() || next > current;
        while worse(next) && step > 1e-10 {
            step /= 2.0;
            next = loss(a - step * da, b - step * db);
        }
        if worse(next) {
            break;
        }
        a -= step * da;
        b -= step * db;
        let improved = current - next;
        current = next;
        if improved < 1e-12 * current.max(1.0) {
            break;
        }
    }
    (a > 0.0 && a.is_finite() && b.is_finite()).then_some((a as f32, b as f32))
}

/// The smallest f32 strictly greater than `x` (for finite `x`).
fn above(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return f32::INFINITY;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let bits = x.to_bits();
    if x > 0.0 {
        f32::from_bits(bits + 1)
    } else {
        f32::from_bits(bits - 1)
    }
}

/// A value in `(low, high]`, halfway where f32 has room: flagging with
/// `>=` keeps `high` flagged and `low` not.
fn midpoint_above(low: f32, high: f32) -> f32 {
    let mid = low + (high - low) / 2.0;
    if mid > low && mid <= high {
        mid
    } else {
        high
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator for test data (no rand in this crate).
    fn lcg(state: &mut u64) -> f32 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Coarse values so ties happen often.
        ((*state >> 40) % 50) as f32 / 50.0
    }

    fn random_case(seed: u64, n: usize) -> (Vec<f32>, Vec<bool>) {
        let mut s = seed;
        let labels: Vec<bool> = (0..n).map(|_| lcg(&mut s) > 0.5).collect();
        let scores: Vec<f32> = labels
            .iter()
            .map(|&p| lcg(&mut s) + if p { 0.3 } else { 0.0 })
            .collect();
        (scores, labels)
    }

    fn brute_force_auc(scores: &[f32], positive: &[bool]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, &pi) in positive.iter().enumerate() {
            for (j, &pj) in positive.iter().enumerate() {
                if pi && !pj {
                    pairs += 1.0;
                    if scores[i] > scores[j] {
                        wins += 1.0;
                    } else if scores[i] == scores[j] {
                        wins += 0.5;
                    }
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn auc_matches_a_brute_force_pairwise_count() {
        for seed in 0..20 {
            let (scores, labels) = random_case(seed, 200);
            let fast = roc_auc(&scores, &labels).unwrap();
            let slow = brute_force_auc(&scores, &labels);
            assert!((fast - slow).abs() < 1e-12, "seed {seed}: {fast} vs {slow}");
        }
    }

    #[test]
    fn auc_of_perfect_reversed_and_one_class_scores() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(roc_auc(&[0.5; 4], &labels), Some(0.5));
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
    }

    /// The best recall any threshold reaches within the bound, by trying
    /// every score as a threshold.
    fn brute_force_best_recall(scores: &[f32], labels: &[bool], max_fpr: f64) -> f64 {
        let mut best = 0.0f64;
        for &t in scores {
            let (recall, fpr) = rates_at(scores, labels, t);
            if fpr <= max_fpr + 1e-12 {
                best = best.max(recall);
            }
        }
        best
    }

    #[test]
    fn chosen_threshold_respects_the_bound_and_matches_the_best_recall() {
        for seed in 0..30 {
            let (scores, labels) = random_case(seed, 300);
            for max_fpr in [0.0, 0.01, 0.05, 0.2] {
                let choice = choose_threshold(&scores, &labels, max_fpr).unwrap();
                let (recall, fpr) = rates_at(&scores, &labels, choice.threshold);
                assert!(fpr <= max_fpr + 1e-12, "seed {seed}: fpr {fpr} > {max_fpr}");
                assert_eq!(recall, choice.recall, "reported recall is the real one");
                assert_eq!(fpr, choice.false_positive_rate);
                let best = brute_force_best_recall(&scores, &labels, max_fpr);
                assert_eq!(recall, best, "seed {seed}, bound {max_fpr}");
            }
        }
    }

    #[test]
    fn threshold_falls_between_the_classes_when_they_separate() {
        let scores = [0.1, 0.2, 0.3, 0.7, 0.8];
        let labels = [false, false, false, true, true];
        let c = choose_threshold(&scores, &labels, 0.0).unwrap();
        assert_eq!(c.recall, 1.0);
        assert_eq!(c.false_positive_rate, 0.0);
        assert!(c.threshold > 0.3 && c.threshold <= 0.7, "{}", c.threshold);
    }

    #[test]
    fn platt_scaling_recovers_a_known_logistic_relation() {
        // Labels drawn from sigmoid(2z - 1): the fit must find about (2, -1).
        let mut s = 7u64;
        let (mut logits, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..20_000 {
            let z = lcg(&mut s) * 6.0 - 3.0;
            let p = 1.0 / (1.0 + (-(2.0 * z - 1.0)).exp());
            let u = (lcg(&mut s) + lcg(&mut s) / 50.0).min(0.9999);
            logits.push(z);
            labels.push(u < p);
        }
        let (a, b) = platt_scaling(&logits, &labels).unwrap();
        assert!((a - 2.0).abs() < 0.2, "scale {a}");
        assert!((b + 1.0).abs() < 0.2, "shift {b}");
        // The same relation behind logits a hundred times larger (an
        // over-fitted head's): the scale comes out a hundred times smaller,
        // not diverging.
        let big: Vec<f32> = logits.iter().map(|z| z * 100.0).collect();
        let (a, b) = platt_scaling(&big, &labels).unwrap();
        assert!((a * 100.0 - 2.0).abs() < 0.2, "scale {a}");
        assert!((b + 1.0).abs() < 0.2, "shift {b}");
        assert_eq!(platt_scaling(&[0.1, 0.2], &[true, true]), None);
        // Logits that rank the classes backwards are refused.
        assert_eq!(
            platt_scaling(&[3.0, 2.0, -2.0, -3.0], &[false, false, true, true]),
            None
        );
    }

    #[test]
    fn threshold_above_everything_when_the_top_score_is_negative() {
        let c = choose_threshold(&[0.9, 0.5], &[false, true], 0.0).unwrap();
        assert!(c.threshold > 0.9);
        assert_eq!(c.recall, 0.0);
    }
}
