//! DeBERTa-v2's `config.json`, resolved with HF's defaults, and the
//! relative-position geometry it implies: the log buckets of
//! `make_log_bucket_position` and the table of which relative-embedding row
//! each distance reads.
//!
//! Design decision: every knob the Sluice encoder does not implement
//! (`conv_kernel_size`, `embedding_size` ≠ `hidden_size`, `p2p`, other
//! activations) is refused here by name, so a checkpoint either loads and
//! runs the architecture its config describes or fails at load with the
//! reason — never silently runs a different model.

use crate::encoder::bert::required_usize;
use crate::encoder::PoolerActivation;
use crate::ModelError;

/// `config.json` of a `deberta-v2` model, resolved (HF defaults filled in).
#[derive(Debug, Clone)]
pub struct DebertaConfig {
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// Longest input in tokens.
    pub max_position_embeddings: usize,
    /// 0: no token-type embedding (DeBERTa-v3).
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    /// Whether absolute position embeddings are added to the input (false in v3).
    pub position_biased_input: bool,
    /// Whether attention has the relative-position (c2p/p2c) terms at all.
    pub relative_attention: bool,
    /// `pos_att_type` contains "c2p".
    pub c2p: bool,
    /// `pos_att_type` contains "p2c".
    pub p2c: bool,
    /// Log buckets of relative distance; 0 means plain clamped distances.
    pub position_buckets: usize,
    /// `max_relative_positions`, with HF's `< 1 → max_position_embeddings`.
    pub max_relative_positions: usize,
    /// Positions are projected with the content `query_proj`/`key_proj`
    /// (true in v3); otherwise with `pos_query_proj`/`pos_key_proj`.
    pub share_att_key: bool,
    /// `norm_rel_ebd` contains "layer_norm": the encoder's LayerNorm is
    /// applied to the relative embeddings.
    pub norm_rel_embeddings: bool,
    /// `pooler_hidden_act` of the classification head's `ContextPooler`.
    pub pooler_activation: PoolerActivation,
}

impl DebertaConfig {
    pub fn from_json(v: &serde_json::Value) -> Result<Self, ModelError> {
        let get = |key: &str| required_usize(v, key);
        let int_or = |key: &str, default: i64| -> i64 {
            v.get(key)
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(default)
        };
        let bool_or = |key: &str, default: bool| -> bool {
            v.get(key)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(default)
        };
        let str_or = |key: &str, default: &'static str| -> String {
            v.get(key)
                .and_then(serde_json::Value::as_str)
                .unwrap_or(default)
                .to_string()
        };

        let hidden_act = str_or("hidden_act", "gelu");
        if hidden_act != "gelu" {
            return Err(ModelError::Unsupported(format!(
                "hidden_act = {hidden_act:?}; the DeBERTa encoder implements \"gelu\""
            )));
        }
        let pooler_act = str_or("pooler_hidden_act", "gelu");
        let pooler_activation = match pooler_act.as_str() {
            "gelu" => PoolerActivation::Gelu,
            "tanh" => PoolerActivation::Tanh,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "pooler_hidden_act = {other:?}; the DeBERTa classifier implements \"gelu\" and \"tanh\""
                )))
            }
        };
        let conv_kernel_size = int_or("conv_kernel_size", 0);
        if conv_kernel_size > 0 {
            return Err(ModelError::Unsupported(format!(
                "conv_kernel_size = {conv_kernel_size} (DeBERTa-v2's ConvLayer after the first layer); \
                 Sluice reads DeBERTa checkpoints without it (conv_kernel_size = 0, as in DeBERTa-v3)"
            )));
        }
        let hidden = get("hidden_size")?;
        let heads = get("num_attention_heads")?;
        if heads == 0 || hidden % heads != 0 {
            return Err(ModelError::Config(format!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            )));
        }
        // The attention output projection is hidden→hidden in HF, so a head
        // size that does not tile hidden_size cannot come from a real checkpoint.
        if let Some(head_size) = v
            .get("attention_head_size")
            .and_then(serde_json::Value::as_u64)
        {
            if head_size as usize * heads != hidden {
                return Err(ModelError::Unsupported(format!(
                    "attention_head_size {head_size} × {heads} heads differs from hidden_size {hidden}"
                )));
            }
        }
        if let Some(embedding_size) = v.get("embedding_size").and_then(serde_json::Value::as_u64) {
            if embedding_size as usize != hidden {
                return Err(ModelError::Unsupported(format!(
                    "embedding_size {embedding_size} differs from hidden_size {hidden} \
                     (an `embed_proj` layer); Sluice reads equal sizes"
                )));
            }
        }
        if let Some(pooler) = v
            .get("pooler_hidden_size")
            .and_then(serde_json::Value::as_u64)
        {
            if pooler as usize != hidden {
                return Err(ModelError::Unsupported(format!(
                    "pooler_hidden_size {pooler} differs from hidden_size {hidden}"
                )));
            }
        }

        // `pos_att_type` is a list in current configs and "p2c|c2p" in old ones.
        let att_types: Vec<String> = match v.get("pos_att_type") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => s
                .split('|')
                .map(|t| t.trim().to_lowercase())
                .filter(|t| !t.is_empty())
                .collect(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .map(|t| {
                    t.as_str().map(str::to_lowercase).ok_or_else(|| {
                        ModelError::Config(format!("pos_att_type entry {t} is not a string"))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(ModelError::Config(format!(
                    "pos_att_type = {other}; expected a list such as [\"p2c\", \"c2p\"]"
                )))
            }
        };
        if let Some(bad) = att_types.iter().find(|t| *t != "c2p" && *t != "p2c") {
            return Err(ModelError::Unsupported(format!(
                "pos_att_type {bad:?}; DeBERTa-v2 attention implements \"c2p\" and \"p2c\""
            )));
        }

        let max_position_embeddings = get("max_position_embeddings")?;
        let max_relative_positions = match int_or("max_relative_positions", -1) {
            n if n < 1 => max_position_embeddings,
            n => n as usize,
        };
        let position_buckets = int_or("position_buckets", -1).max(0) as usize;
        // The log-bucket formula divides by ln((max_relative_positions - 1) / mid).
        if position_buckets > 0
            && (position_buckets < 2 || max_relative_positions <= position_buckets / 2 + 1)
        {
            return Err(ModelError::Config(format!(
                "position_buckets = {position_buckets} needs at least 2 buckets and \
                 max_relative_positions ({max_relative_positions}) above half of them plus one"
            )));
        }
        let norm_rel_embeddings = str_or("norm_rel_ebd", "none")
            .to_lowercase()
            .split('|')
            .any(|t| t.trim() == "layer_norm");
        Ok(Self {
            vocab_size: get("vocab_size")?,
            hidden,
            layers: get("num_hidden_layers")?,
            heads,
            intermediate: get("intermediate_size")?,
            max_position_embeddings,
            type_vocab_size: int_or("type_vocab_size", 0).max(0) as usize,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(serde_json::Value::as_f64)
                .map_or(1e-7, |e| e as f32),
            position_biased_input: bool_or("position_biased_input", true),
            relative_attention: bool_or("relative_attention", false),
            c2p: att_types.iter().any(|t| t == "c2p"),
            p2c: att_types.iter().any(|t| t == "p2c"),
            position_buckets,
            max_relative_positions,
            share_att_key: bool_or("share_att_key", false),
            norm_rel_embeddings,
            pooler_activation,
        })
    }

    /// How many relative-embedding rows each side of zero attention reads
    /// (HF's `pos_ebd_size`, `att_span`).
    pub fn attention_span(&self) -> usize {
        if self.position_buckets > 0 {
            self.position_buckets
        } else {
            self.max_relative_positions
        }
    }

    /// HF's `scale_factor`: the content score and each positional term are
    /// all divided by `sqrt(head_dim * (1 + number of position terms))`.
    pub(super) fn score_scale(&self) -> f32 {
        let terms = 1 + usize::from(self.c2p) + usize::from(self.p2c);
        let head_dim = self.hidden / self.heads;
        1.0 / ((head_dim * terms) as f32).sqrt()
    }
}

/// HF's `make_log_bucket_position`: relative distances inside
/// `±bucket_size / 2` stay as they are; longer ones are squeezed
/// logarithmically so that `±(max_position - 1)` lands on
/// `±(bucket_size - 1)`. Computed in f32 like the PyTorch original, whose
/// ratio is exactly 1 at `max_position - 1` (f64 would agree there too, but
/// f32 keeps the other roundings the same as well).
pub fn log_bucket_position(relative: i64, bucket_size: i64, max_position: i64) -> i64 {
    let mid = bucket_size / 2;
    let abs = if relative < mid && relative > -mid {
        mid - 1
    } else {
        relative.abs()
    };
    if abs <= mid {
        return relative;
    }
    let span = (((max_position - 1) as f64 / mid as f64) as f32).ln();
    let ratio = (abs as f32 / mid as f32).ln() / span;
    let log_pos = (ratio * (mid - 1) as f32).ceil() as i64 + mid;
    log_pos * relative.signum()
}

/// The positional row for every relative distance `d = i - j` with
/// `|d| < max_len`, at index `d + max_len - 1`: HF's
/// `clamp(bucket(d) + span, 0, 2 * span - 1)`. c2p and p2c read the same
/// row because the bucketing is odd (`bucket(-d) = -bucket(d)`): HF's p2c
/// index `-bucket(j - i) + span` is `bucket(i - j) + span`.
pub(super) fn relative_rows(cfg: &DebertaConfig, max_len: usize) -> Vec<usize> {
    let span = cfg.attention_span() as i64;
    let reach = max_len as i64 - 1;
    (-reach..=reach)
        .map(|d| {
            let bucket = if cfg.position_buckets > 0 {
                log_bucket_position(
                    d,
                    cfg.position_buckets as i64,
                    cfg.max_relative_positions as i64,
                )
            } else {
                d
            };
            (bucket + span).clamp(0, 2 * span - 1) as usize
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worked by hand from HF's formula: mid = bucket_size / 2,
    /// log_pos = ceil(ln(|d| / mid) / ln((max - 1) / mid) · (mid - 1)) + mid.
    #[test]
    fn log_bucket_position_matches_hand_worked_values() {
        for (d, buckets, max, want) in [
            // Prompt Guard 2 / DeBERTa-v3: 256 buckets, 512 positions.
            (0, 256, 512, 0),
            (127, 256, 512, 127),
            (128, 256, 512, 128),
            (-128, 256, 512, -128),
            // ln(129/128)/ln(511/128)·127 = 0.714 → 1 → 129
            (129, 256, 512, 129),
            // ln(200/128)/ln(511/128)·127 = 40.94 → 41 → 169
            (200, 256, 512, 169),
            // ln(300/128)/ln(511/128)·127 = 78.14 → 79 → -207
            (-300, 256, 512, -207),
            // the ratio is exactly 1 at max - 1: 127 → 255
            (511, 256, 512, 255),
            (-511, 256, 512, -255),
            // beyond max_position the bucket leaves the table (attention clamps)
            (1000, 256, 512, 317),
            // The tiny tests' geometry: 8 buckets, 16 positions (mid 4).
            (4, 8, 16, 4),
            // ln(5/4)/ln(15/4)·3 = 0.507 → 1 → 5
            (5, 8, 16, 5),
            // ln(6/4)/ln(15/4)·3 = 0.920 → 1 → 5
            (-6, 8, 16, -5),
            // ln(7/4)/ln(15/4)·3 = 1.270 → 2 → 6
            (7, 8, 16, 6),
            // ln(10/4)/ln(15/4)·3 = 2.080 → 3 → 7
            (10, 8, 16, 7),
            (-15, 8, 16, -7),
        ] {
            assert_eq!(
                log_bucket_position(d, buckets, max),
                want,
                "bucket of {d} with {buckets} buckets, max {max}"
            );
        }
    }

    #[test]
    fn bucketing_is_odd_so_c2p_and_p2c_share_rows() {
        for d in 0..600 {
            assert_eq!(
                log_bucket_position(-d, 256, 512),
                -log_bucket_position(d, 256, 512)
            );
        }
    }

    #[test]
    fn config_defaults_follow_hf_and_bad_geometry_is_refused() {
        let base = serde_json::json!({
            "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16,
            "max_position_embeddings": 32,
        });
        let cfg = DebertaConfig::from_json(&base).unwrap();
        assert!(cfg.position_biased_input && !cfg.relative_attention);
        assert_eq!(cfg.max_relative_positions, 32);
        assert_eq!(cfg.attention_span(), 32);

        let mut v3 = base.clone();
        v3["pos_att_type"] = serde_json::json!("p2c|c2p");
        v3["position_buckets"] = serde_json::json!(8);
        let cfg = DebertaConfig::from_json(&v3).unwrap();
        assert!(cfg.c2p && cfg.p2c);
        assert_eq!(cfg.attention_span(), 8);

        let mut conv = base.clone();
        conv["conv_kernel_size"] = serde_json::json!(3);
        let err = DebertaConfig::from_json(&conv).unwrap_err().to_string();
        assert!(err.contains("conv_kernel_size"), "{err}");

        let mut p2p = base.clone();
        p2p["pos_att_type"] = serde_json::json!(["p2p"]);
        assert!(DebertaConfig::from_json(&p2p).is_err());

        let mut tight = base;
        tight["position_buckets"] = serde_json::json!(64);
        assert!(DebertaConfig::from_json(&tight).is_err());
    }
}
