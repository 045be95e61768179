//! The guard head: a small classifier over a sentence encoder's pooled
//! embedding that scores how likely a text is a prompt injection, with the
//! code that trains it ([`train`]) and judges it ([`metrics`]).
//!
//! A head is two files: `<name>.safetensors` (f32 tensors `input.mean`,
//! `input.inv_std`, optionally `hidden.weight` `[h, d]` and `hidden.bias`
//! `[h]`, then `output.weight` `[h or d]` and `output.bias` `[1]`) and
//! `<name>.json` ([`GuardHeadMeta`]: labels, threshold, the encoder it was
//! trained on, the data's sha256, the command, the validation figures).
//!
//! Design decision: the head takes the embedding, never text. The gateway
//! computes one embedding per request and hands the same buffer to the
//! semantic cache and to the guard, so guarding costs a few thousand
//! multiply-adds on top of the encoder pass the cache already pays for.

pub mod metrics;
pub mod train;

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// The one category the project's head scores.
pub const PROMPT_INJECTION: &str = "prompt_injection";
/// The `format` value of a head's metadata this code reads.
pub const HEAD_FORMAT: &str = "sluice-guard-head/1";

/// A fitted guard head: standardisation, an optional ReLU hidden layer, one
/// logistic output.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardHead {
    /// Per-feature mean and 1/std, applied before the first layer.
    pub(crate) mean: Vec<f32>,
    pub(crate) inv_std: Vec<f32>,
    /// `None` is logistic regression.
    pub(crate) hidden: Option<Dense>,
    /// Weights over the hidden units (or the features when there are none).
    pub(crate) output_weight: Vec<f32>,
    pub(crate) output_bias: f32,
}

/// A fully connected layer, row-major `[out, in]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Dense {
    pub(crate) weight: Vec<f32>,
    pub(crate) bias: Vec<f32>,
    pub(crate) inputs: usize,
}

impl Dense {
    pub(crate) fn outputs(&self) -> usize {
        self.bias.len()
    }

    /// ReLU(W x + b) into `out`.
    pub(crate) fn relu_into(&self, x: &[f32], out: &mut [f32]) {
        for ((o, row), b) in out
            .iter_mut()
            .zip(self.weight.chunks_exact(self.inputs))
            .zip(&self.bias)
        {
            *o = (dot(row, x) + b).max(0.0);
        }
    }
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl GuardHead {
    /// The embedding width the head expects.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Hidden units; 0 for a logistic-regression head.
    pub fn hidden_units(&self) -> usize {
        self.hidden.as_ref().map_or(0, Dense::outputs)
    }

    /// The probability (0..1) that the embedded text is a prompt injection.
    pub fn score(&self, embedding: &[f32]) -> Result<f32, ModelError> {
        Ok(sigmoid(self.raw_logit(embedding)?))
    }

    /// The score before the sigmoid; calibration is fitted on these, where
    /// f32 still tells 0.9999999 from 0.99999999.
    pub fn raw_logit(&self, embedding: &[f32]) -> Result<f32, ModelError> {
        if embedding.len() != self.dim() {
            return Err(ModelError::Config(format!(
                "the guard head expects {}-dimensional embeddings, got {}",
                self.dim(),
                embedding.len()
            )));
        }
        Ok(self.logit(&self.standardize(embedding)))
    }

    /// The head whose score is `sigmoid(scale * logit + shift)` (Platt
    /// scaling, folded into the output layer so the file format and the
    /// serving code stay as they are). `scale` must be positive: the order
    /// of scores, and so every threshold's recall, is kept.
    pub fn calibrated(mut self, scale: f32, shift: f32) -> Result<Self, ModelError> {
        if !(scale > 0.0 && scale.is_finite() && shift.is_finite()) {
            return Err(ModelError::Config(format!(
                "calibration scale {scale} / shift {shift}: the scale must be positive and both finite"
            )));
        }
        for w in &mut self.output_weight {
            *w *= scale;
        }
        self.output_bias = self.output_bias * scale + shift;
        Ok(self)
    }

    pub(crate) fn standardize(&self, embedding: &[f32]) -> Vec<f32> {
        embedding
            .iter()
            .zip(self.mean.iter().zip(&self.inv_std))
            .map(|(x, (m, s))| (x - m) * s)
            .collect()
    }

    pub(crate) fn logit(&self, standardized: &[f32]) -> f32 {
        match &self.hidden {
            Some(layer) => {
                let mut h = vec![0.0; layer.outputs()];
                layer.relu_into(standardized, &mut h);
                dot(&self.output_weight, &h) + self.output_bias
            }
            None => dot(&self.output_weight, standardized) + self.output_bias,
        }
    }

    /// Reads a head written by [`GuardHead::save`].
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a head's safetensors bytes; `path` only names them in errors
    /// (the gateway builds the committed head into the binary).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        let tensor = |name: &str| -> Result<(Vec<usize>, Vec<f32>), ModelError> {
            let view = st
                .tensor(name)
                .map_err(|_| ModelError::MissingTensor(format!("{name} in {}", path.display())))?;
            if view.dtype() != Dtype::F32 {
                return Err(ModelError::Format(format!(
                    "{name} in {} is {:?}; guard heads are f32",
                    path.display(),
                    view.dtype()
                )));
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((view.shape().to_vec(), values))
        };
        let bad_shape = |name: &str, shape: &[usize], want: String| {
            ModelError::Format(format!(
                "{name} in {} has shape {shape:?}, expected {want}",
                path.display()
            ))
        };
        let (_, mean) = tensor("input.mean")?;
        let dim = mean.len();
        let (shape, inv_std) = tensor("input.inv_std")?;
        if inv_std.len() != dim {
            return Err(bad_shape("input.inv_std", &shape, format!("[{dim}]")));
        }
        let has_hidden = st.names().contains(&"hidden.weight");
        let hidden = if has_hidden {
            let (shape, weight) = tensor("hidden.weight")?;
            let [units, inputs] = shape[..] else {
                return Err(bad_shape("hidden.weight", &shape, format!("[h, {dim}]")));
            };
            if inputs != dim {
                return Err(bad_shape("hidden.weight", &shape, format!("[h, {dim}]")));
            }
            let (shape, bias) = tensor("hidden.bias")?;
            if bias.len() != units {
                return Err(bad_shape("hidden.bias", &shape, format!("[{units}]")));
            }
            Some(Dense {
                weight,
                bias,
                inputs,
            })
        } else {
            None
        };
        let width = hidden.as_ref().map_or(dim, Dense::outputs);
        let (shape, output_weight) = tensor("output.weight")?;
        if output_weight.len() != width {
            return Err(bad_shape("output.weight", &shape, format!("[{width}]")));
        }
        let (shape, output_bias) = tensor("output.bias")?;
        let [output_bias] = output_bias[..] else {
            return Err(bad_shape("output.bias", &shape, "[1]".into()));
        };
        Ok(Self {
            mean,
            inv_std,
            hidden,
            output_weight,
            output_bias,
        })
    }

    /// Writes the head's tensors as f32 safetensors.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let to_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let dim = self.dim();
        let mut tensors: Vec<(&str, Vec<usize>, Vec<u8>)> = vec![
            ("input.mean", vec![dim], to_bytes(&self.mean)),
            ("input.inv_std", vec![dim], to_bytes(&self.inv_std)),
        ];
        if let Some(layer) = &self.hidden {
            tensors.push((
                "hidden.weight",
                vec![layer.outputs(), layer.inputs],
                to_bytes(&layer.weight),
            ));
            tensors.push(("hidden.bias", vec![layer.outputs()], to_bytes(&layer.bias)));
        }
        tensors.push((
            "output.weight",
            vec![self.output_weight.len()],
            to_bytes(&self.output_weight),
        ));
        tensors.push(("output.bias", vec![1], to_bytes(&[self.output_bias])));
        let views = tensors
            .iter()
            .map(|(name, shape, data)| {
                TensorView::new(Dtype::F32, shape.clone(), data)
                    .map(|v| (name.to_string(), v))
                    .map_err(|e| ModelError::Format(format!("{name}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize_to_file(views, None, path)
            .map_err(|e| ModelError::Format(format!("writing {}: {e}", path.display())))
    }
}

/// The metadata file next to a head: what it scores, where its threshold
/// sits, what it was trained on and how well it did on validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardHeadMeta {
    /// Always [`HEAD_FORMAT`].
    pub format: String,
    /// The categories the head scores, in output order (`["prompt_injection"]`).
    pub labels: Vec<String>,
    /// Flag (or block) when the score is `>= threshold` (`[guard] t_high`).
    pub threshold: f32,
    /// Below this the text is allowed outright; from it up to `threshold`
    /// it is "uncertain" (`[guard] t_low`). Absent in heads that predate
    /// the band: then it equals `threshold` (no band).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t_low: Option<f32>,
    /// The encoder whose pooled, normalised embedding the head reads.
    pub embedding_model: String,
    pub embedding_dim: usize,
    /// How texts longer than the encoder's window were scored when training
    /// (and must be at serve time): `"chunk-max"` or `"truncate"`.
    pub long_text: String,
    /// The single-source heads' splits (S-Labs train and validation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<DataFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<DataFile>,
    /// A multi-source head's sources: each one's files, split by a hash of
    /// each text into a fitting part and a validation part.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceRecord>,
    /// Extra positives made from the fitting part's positives (leet,
    /// case, zero-width, base64 variants), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augmentation: Option<String>,
    /// Platt scaling `[scale, shift]` folded into the output layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<[f32; 2]>,
    pub trainer: train::TrainConfig,
    /// The command that reproduces the head.
    pub command: String,
    pub figures: ValidationFigures,
    /// Wall-clock seconds of the run: embedding, fitting, choosing.
    pub train_seconds: f64,
}

/// A data split the head saw, pinned by its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFile {
    /// As given on the command line, relative to the models directory when
    /// it lies inside it.
    pub path: String,
    pub sha256: String,
    pub rows: usize,
    pub positives: usize,
}

/// One named source of a multi-source head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRecord {
    pub name: String,
    pub files: Vec<DataFile>,
    /// Rows (after dropping duplicates) that fitted the head / chose its
    /// calibration and thresholds.
    pub fit_rows: usize,
    pub validation_rows: usize,
}

/// The head on the validation split at the chosen threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationFigures {
    pub recall: f64,
    pub false_positive_rate: f64,
    pub auc: f64,
    /// The false-positive bound the threshold was chosen under.
    pub max_false_positive_rate: f64,
}

impl GuardHeadMeta {
    /// The lower threshold: `t_low`, or `threshold` when the head has none.
    pub fn t_low(&self) -> f32 {
        self.t_low.unwrap_or(self.threshold).min(self.threshold)
    }

    /// `<head>.json` next to `<head>.safetensors`.
    pub fn path_for(head: &Path) -> PathBuf {
        head.with_extension("json")
    }

    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses metadata text; `path` only names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ModelError> {
        let meta: Self = serde_json::from_str(text)
            .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        if meta.format != HEAD_FORMAT {
            return Err(ModelError::Unsupported(format!(
                "{}: format `{}`; this build reads `{HEAD_FORMAT}`",
                path.display(),
                meta.format
            )));
        }
        Ok(meta)
    }

    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| ModelError::Format(format!("guard metadata: {e}")))?;
        std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_mlp() -> GuardHead {
        GuardHead {
            mean: vec![0.1, -0.2, 0.0],
            inv_std: vec![2.0, 1.0, 0.5],
            hidden: Some(Dense {
                weight: vec![1.0, 0.0, -1.0, 0.5, 0.5, 0.5],
                bias: vec![0.1, -0.1],
                inputs: 3,
            }),
            output_weight: vec![1.5, -2.0],
            output_bias: 0.25,
        }
    }

    #[test]
    fn a_saved_head_loads_back_identical_and_scores_the_same() {
        let dir = tempfile::tempdir().unwrap();
        for head in [
            tiny_mlp(),
            GuardHead {
                hidden: None,
                output_weight: vec![0.3, -0.7, 1.1],
                ..tiny_mlp()
            },
        ] {
            let path = dir.path().join("head.safetensors");
            head.save(&path).unwrap();
            let back = GuardHead::load(&path).unwrap();
            assert_eq!(back, head);
            let x = [0.3, 0.4, -0.5];
            assert_eq!(back.score(&x).unwrap(), head.score(&x).unwrap());
        }
    }

    #[test]
    fn mlp_score_matches_a_hand_computation() {
        let head = tiny_mlp();
        let x = [0.3f32, 0.4, -0.5];
        let z = [(0.3 - 0.1) * 2.0, (0.4 + 0.2) * 1.0, (-0.5 - 0.0) * 0.5];
        let h0 = (z[0] - z[2] + 0.1f32).max(0.0);
        let h1 = (0.5 * (z[0] + z[1] + z[2]) - 0.1f32).max(0.0);
        let want = 1.0 / (1.0 + (-(1.5 * h0 - 2.0 * h1 + 0.25f32)).exp());
        assert!((head.score(&x).unwrap() - want).abs() < 1e-6);
    }

    #[test]
    fn calibration_folds_into_the_output_layer_and_keeps_the_order() {
        let head = tiny_mlp();
        let xs = [[0.3f32, 0.4, -0.5], [1.0, -1.0, 0.2], [-0.4, 0.9, 0.9]];
        let cal = head.clone().calibrated(0.5, -1.25).unwrap();
        for x in &xs {
            let z = head.raw_logit(x).unwrap();
            let want = sigmoid(0.5 * z - 1.25);
            assert!((cal.score(x).unwrap() - want).abs() < 1e-6);
        }
        assert!(head.clone().calibrated(0.0, 1.0).is_err());
        assert!(head.calibrated(-1.0, 1.0).is_err());
    }

    #[test]
    fn wrong_embedding_width_is_an_error_not_a_panic() {
        let err = tiny_mlp().score(&[0.0; 4]).unwrap_err();
        assert!(err.to_string().contains("3-dimensional"), "{err}");
    }
}
