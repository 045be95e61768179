//! Small statistics over samples: percentiles and medians.

use serde::Serialize;

/// The `p`-th percentile (0..=100) with linear interpolation between closest
/// ranks (numpy's default), or `None` for no samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = (p.clamp(0.0, 100.0) / 100.0) * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let (a, b) = (sorted[lo], sorted[hi.min(sorted.len() - 1)]);
    Some(a + (b - a) * (rank - lo as f64))
}

pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

/// p50/p90/p99/max of a set of samples, in the samples' unit.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Summary {
    pub count: usize,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Self {
        let count = samples.len();
        let mean = (count > 0).then(|| samples.iter().sum::<f64>() / count as f64);
        Self {
            count,
            mean,
            p50: percentile(samples, 50.0),
            p90: percentile(samples, 90.0),
            p99: percentile(samples, 99.0),
            max: percentile(samples, 100.0),
        }
    }
}

/// Formats an optional number for a table cell.
pub fn cell(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "—".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_between_ranks() {
        let xs = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&xs, 0.0), Some(1.0));
        assert_eq!(percentile(&xs, 100.0), Some(4.0));
        assert_eq!(percentile(&xs, 50.0), Some(2.5));
        assert!((percentile(&xs, 90.0).unwrap() - 3.7).abs() < 1e-12);
    }

    #[test]
    fn percentile_of_nothing_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(Summary::of(&[]).p99, None);
    }
}
