//! Fitting a [`GuardHead`] to labelled embeddings: standardise the features,
//! then minimise class-balanced binary cross-entropy with AdamW over
//! shuffled mini-batches.
//!
//! Design decision: the run is deterministic for a given seed and input,
//! whatever the thread count. Shuffling and initialisation come from a
//! seeded SplitMix64 (no `rand` here), and a mini-batch's gradient is summed
//! over fixed-size chunks, computed in parallel but added in chunk order, so
//! float rounding never depends on how rayon split the work. A committed
//! head can therefore be reproduced bit for bit from its command.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{dot, sigmoid, Dense, GuardHead};
use crate::ModelError;

/// How a head is fitted. Stored in the head's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// ReLU units of the hidden layer; 0 fits logistic regression.
    pub hidden_units: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    /// AdamW's decoupled weight decay, applied to weights, not biases.
    pub weight_decay: f32,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            hidden_units: 0,
            epochs: 60,
            batch_size: 128,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            seed: 17,
        }
    }
}

/// Rows per gradient chunk: the unit of parallel work and of summation order.
const CHUNK_ROWS: usize = 32;

/// Labelled embeddings: `features` is row-major `[rows, dim]`.
#[derive(Debug, Clone, Copy)]
pub struct Examples<'a> {
    pub features: &'a [f32],
    pub dim: usize,
    pub positive: &'a [bool],
}

impl Examples<'_> {
    fn rows(&self) -> usize {
        self.positive.len()
    }
    fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }
}

/// Fits a head. Errors name what is wrong with the input.
pub fn fit(examples: Examples<'_>, config: &TrainConfig) -> Result<GuardHead, ModelError> {
    let Examples {
        features,
        dim,
        positive,
    } = examples;
    let rows = positive.len();
    if dim == 0 || features.len() != rows * dim {
        return Err(ModelError::Config(format!(
            "{} feature values do not make {rows} rows of {dim}",
            features.len()
        )));
    }
    let positives = positive.iter().filter(|&&p| p).count();
    if positives == 0 || positives == rows {
        return Err(ModelError::Config(
            "training needs both positive and negative examples".into(),
        ));
    }
    if config.epochs == 0 || config.batch_size == 0 {
        return Err(ModelError::Config(
            "epochs and batch_size must be at least 1".into(),
        ));
    }

    let (mean, inv_std) = standardization(examples);
    let standardized: Vec<f32> = (0..rows)
        .flat_map(|i| {
            examples
                .row(i)
                .iter()
                .zip(mean.iter().zip(&inv_std))
                .map(|(x, (m, s))| (x - m) * s)
                .collect::<Vec<_>>()
        })
        .collect();
    let data = Examples {
        features: &standardized,
        dim,
        positive,
    };
    // Balanced weights: each class carries half the loss, so a 30/70 split
    // does not push the head towards the majority.
    let class_weight = [
        rows as f32 / (2 * (rows - positives)) as f32,
        rows as f32 / (2 * positives) as f32,
    ];

    let shape = Shape {
        dim,
        hidden: config.hidden_units,
    };
    let mut rng = SplitMix64(config.seed);
    let mut params = shape.init(&mut rng);
    let mut adam = AdamW::new(params.len(), config);
    let mut order: Vec<usize> = (0..rows).collect();
    for _ in 0..config.epochs {
        rng.shuffle(&mut order);
        for batch in order.chunks(config.batch_size) {
            let partials: Vec<Vec<f32>> = batch
                .par_chunks(CHUNK_ROWS)
                .map(|chunk| shape.gradient(&params, data, chunk, class_weight))
                .collect();
            let mut grad = vec![0.0f32; params.len()];
            for partial in &partials {
                for (g, p) in grad.iter_mut().zip(partial) {
                    *g += p;
                }
            }
            let scale = 1.0 / batch.len() as f32;
            grad.iter_mut().for_each(|g| *g *= scale);
            adam.step(&mut params, &grad, &shape.decayed());
        }
    }
    Ok(shape.into_head(params, mean, inv_std))
}

fn standardization(examples: Examples<'_>) -> (Vec<f32>, Vec<f32>) {
    let (rows, dim) = (examples.rows(), examples.dim);
    let mut mean = vec![0.0f64; dim];
    for i in 0..rows {
        for (m, &x) in mean.iter_mut().zip(examples.row(i)) {
            *m += f64::from(x);
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows as f64);
    let mut var = vec![0.0f64; dim];
    for i in 0..rows {
        for ((v, &x), m) in var.iter_mut().zip(examples.row(i)).zip(&mean) {
            *v += (f64::from(x) - m).powi(2);
        }
    }
    // A constant feature would divide by zero; it carries no signal anyway.
    let inv_std = var
        .iter()
        .map(|v| (1.0 / (v / rows as f64).sqrt().max(1e-6)) as f32)
        .collect();
    (mean.iter().map(|&m| m as f32).collect(), inv_std)
}

/// Where each parameter sits in the flat vector: `[W1, b1, w2, b2]` with a
/// hidden layer, `[w, b]` without.
#[derive(Debug, Clone, Copy)]
struct Shape {
    dim: usize,
    hidden: usize,
}

impl Shape {
    fn output_width(&self) -> usize {
        if self.hidden == 0 {
            self.dim
        } else {
            self.hidden
        }
    }
    fn hidden_params(&self) -> usize {
        self.hidden * self.dim + self.hidden
    }
    fn len(&self) -> usize {
        self.hidden_params() + self.output_width() + 1
    }

    fn init(&self, rng: &mut SplitMix64) -> Vec<f32> {
        let mut p = vec![0.0f32; self.len()];
        if self.hidden > 0 {
            // He-uniform for ReLU units; a logistic head starts at zero,
            // where its convex loss has no bad start.
            let a = (6.0 / self.dim as f32).sqrt();
            for w in &mut p[..self.hidden * self.dim] {
                *w = a * (2.0 * rng.next_f32() - 1.0);
            }
            let a = (6.0 / (self.hidden + 1) as f32).sqrt();
            let start = self.hidden_params();
            for w in &mut p[start..start + self.hidden] {
                *w = a * (2.0 * rng.next_f32() - 1.0);
            }
        }
        p
    }

    /// Which parameters weight decay applies to (weights, not biases).
    fn decayed(&self) -> [std::ops::Range<usize>; 2] {
        let out = self.hidden_params();
        if self.hidden == 0 {
            [0..self.dim, 0..0]
        } else {
            [0..self.hidden * self.dim, out..out + self.hidden]
        }
    }

    /// Summed (not averaged) gradient of the weighted loss over `rows`.
    fn gradient(
        &self,
        params: &[f32],
        data: Examples<'_>,
        rows: &[usize],
        class_weight: [f32; 2],
    ) -> Vec<f32> {
        let mut grad = vec![0.0f32; params.len()];
        let out = self.hidden_params();
        let width = self.output_width();
        let mut hidden = vec![0.0f32; self.hidden];
        for &i in rows {
            let x = data.row(i);
            let y = data.positive[i];
            let input: &[f32] = if self.hidden == 0 {
                x
            } else {
                for (u, h) in hidden.iter_mut().enumerate() {
                    let w = &params[u * self.dim..(u + 1) * self.dim];
                    *h = (dot(w, x) + params[self.hidden * self.dim + u]).max(0.0);
                }
                &hidden
            };
            let logit = dot(&params[out..out + width], input) + params[out + width];
            let g = class_weight[usize::from(y)] * (sigmoid(logit) - f32::from(u8::from(y)));
            for (gw, &a) in grad[out..out + width].iter_mut().zip(input) {
                *gw += g * a;
            }
            grad[out + width] += g;
            if self.hidden > 0 {
                for u in 0..self.hidden {
                    if hidden[u] <= 0.0 {
                        continue;
                    }
                    let gu = g * params[out + u];
                    for (gw, &xi) in grad[u * self.dim..(u + 1) * self.dim].iter_mut().zip(x) {
                        *gw += gu * xi;
                    }
                    grad[self.hidden * self.dim + u] += gu;
                }
            }
        }
        grad
    }

    fn into_head(self, params: Vec<f32>, mean: Vec<f32>, inv_std: Vec<f32>) -> GuardHead {
        let out = self.hidden_params();
        let width = self.output_width();
        let hidden = (self.hidden > 0).then(|| Dense {
            weight: params[..self.hidden * self.dim].to_vec(),
            bias: params[self.hidden * self.dim..out].to_vec(),
            inputs: self.dim,
        });
        GuardHead {
            mean,
            inv_std,
            hidden,
            output_weight: params[out..out + width].to_vec(),
            output_bias: params[out + width],
        }
    }
}

/// Adam with decoupled weight decay (Loshchilov & Hutter).
struct AdamW {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
    lr: f32,
    decay: f32,
}

impl AdamW {
    const BETA1: f32 = 0.9;
    const BETA2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    fn new(n: usize, config: &TrainConfig) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            lr: config.learning_rate,
            decay: config.weight_decay,
        }
    }

    fn step(&mut self, params: &mut [f32], grad: &[f32], decayed: &[std::ops::Range<usize>]) {
        self.t += 1;
        let c1 = 1.0 - Self::BETA1.powi(self.t);
        let c2 = 1.0 - Self::BETA2.powi(self.t);
        for range in decayed {
            for p in &mut params[range.clone()] {
                *p -= self.lr * self.decay * *p;
            }
        }
        for ((p, g), (m, v)) in params
            .iter_mut()
            .zip(grad)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            *m = Self::BETA1 * *m + (1.0 - Self::BETA1) * g;
            *v = Self::BETA2 * *v + (1.0 - Self::BETA2) * g * g;
            *p -= self.lr * (*m / c1) / ((*v / c2).sqrt() + Self::EPS);
        }
    }
}

/// SplitMix64: tiny, seedable, good enough for shuffling and initialisation.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::metrics::{choose_threshold, roc_auc};
    use super::*;

    /// Two Gaussian-ish blobs on the unit sphere around opposite poles of a
    /// random direction, plus an XOR-shaped set a linear head cannot fit.
    fn blobs(n: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<bool>) {
        let mut rng = SplitMix64(seed);
        let mut features = Vec::with_capacity(n * dim);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let positive = i % 3 == 0;
            let mut x: Vec<f32> = (0..dim).map(|_| rng.next_f32() - 0.5).collect();
            x[0] += if positive { 1.0 } else { -1.0 };
            let norm = dot(&x, &x).sqrt();
            features.extend(x.iter().map(|v| v / norm));
            labels.push(positive);
        }
        (features, labels)
    }

    fn xor(n: usize, seed: u64) -> (Vec<f32>, Vec<bool>) {
        let mut rng = SplitMix64(seed);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..n {
            let a = rng.next_f32() * 2.0 - 1.0;
            let b = rng.next_f32() * 2.0 - 1.0;
            features.extend([a, b, rng.next_f32() * 0.1]);
            labels.push((a > 0.0) != (b > 0.0));
        }
        (features, labels)
    }

    fn scores(head: &GuardHead, features: &[f32], dim: usize) -> Vec<f32> {
        features
            .chunks_exact(dim)
            .map(|x| head.score(x).unwrap())
            .collect()
    }

    #[test]
    fn logistic_head_separates_separable_blobs() {
        let (x, y) = blobs(600, 16, 1);
        let head = fit(
            Examples {
                features: &x,
                dim: 16,
                positive: &y,
            },
            &TrainConfig {
                epochs: 100,
                learning_rate: 1e-2,
                ..TrainConfig::default()
            },
        )
        .unwrap();
        assert_eq!(head.hidden_units(), 0);
        let (tx, ty) = blobs(300, 16, 2);
        let s = scores(&head, &tx, 16);
        let auc = roc_auc(&s, &ty).unwrap();
        assert!(auc > 0.99, "AUC {auc}");
        let choice = choose_threshold(&s, &ty, 0.05).unwrap();
        assert!(choice.recall > 0.95, "{choice:?}");
    }

    #[test]
    fn mlp_head_fits_xor_where_a_linear_head_cannot() {
        let (x, y) = xor(800, 3);
        let (tx, ty) = xor(400, 4);
        let data = Examples {
            features: &x,
            dim: 3,
            positive: &y,
        };
        let linear = fit(data, &TrainConfig::default()).unwrap();
        let mlp = fit(
            data,
            &TrainConfig {
                hidden_units: 16,
                epochs: 150,
                batch_size: 32,
                learning_rate: 1e-2,
                ..TrainConfig::default()
            },
        )
        .unwrap();
        let auc_linear = roc_auc(&scores(&linear, &tx, 3), &ty).unwrap();
        let auc_mlp = roc_auc(&scores(&mlp, &tx, 3), &ty).unwrap();
        assert!(auc_linear < 0.7, "linear AUC {auc_linear}");
        assert!(auc_mlp > 0.95, "MLP AUC {auc_mlp}");
    }

    #[test]
    fn fitting_is_deterministic_for_a_seed_and_differs_across_seeds() {
        let (x, y) = blobs(300, 8, 5);
        let data = Examples {
            features: &x,
            dim: 8,
            positive: &y,
        };
        let config = TrainConfig {
            hidden_units: 4,
            epochs: 5,
            ..TrainConfig::default()
        };
        let a = fit(data, &config).unwrap();
        let b = fit(data, &config).unwrap();
        assert_eq!(a, b);
        let c = fit(data, &TrainConfig { seed: 99, ..config }).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn one_class_or_ragged_input_is_refused() {
        let x = vec![0.0f32; 6];
        let all_negative = [false, false, false];
        let data = Examples {
            features: &x,
            dim: 2,
            positive: &all_negative,
        };
        assert!(fit(data, &TrainConfig::default()).is_err());
        let ragged = Examples {
            features: &x[..5],
            dim: 2,
            positive: &[true, false, true],
        };
        assert!(fit(ragged, &TrainConfig::default()).is_err());
    }
}
