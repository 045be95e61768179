//! The `[[models]]` sections (and `[models.engine]` in each): a model's
//! id, its weights' path and the engine it runs on, checked value by value.

use std::path::Path;
use std::time::Duration;

use sluice_runtime::device::sizing::KvDType;
use sluice_runtime::{Device, EngineConfig};

use super::file::{EngineSection, ModelSection};
use super::resolve::resolve_path;
use super::{invalid, ConfigError, ModelConfig, DEFAULT_MAX_TOKENS};

/// A model id from its path: the file name without extension, or the folder name.
pub(super) fn id_from_path(path: &Path) -> String {
    let stem = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    stem.map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_else(|| "model".into())
}

pub(super) fn resolve_model(
    i: usize,
    m: ModelSection,
    base_dir: &Path,
) -> Result<ModelConfig, ConfigError> {
    let ModelSection {
        id,
        path,
        default_max_tokens,
        requantize,
        activation_dtype,
        engine,
        defaults,
        tool_parser,
    } = m;
    let at = |field: &str| format!("models[{i}].{field}");
    let id_ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if !id_ok {
        return Err(invalid(
            at("id"),
            format!("`{id}` must be 1-128 characters of A-Z a-z 0-9 - _ . : /"),
        ));
    }
    let default_max_tokens = default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    if default_max_tokens == 0 {
        return Err(invalid(at("default_max_tokens"), "must be at least 1"));
    }
    let requantize = match requantize.as_deref() {
        None => None,
        Some("q8_0") => Some(sluice_models::WeightDType::Q8_0),
        Some("q4_0") => Some(sluice_models::WeightDType::Q4_0),
        Some("f16") => Some(sluice_models::WeightDType::F16),
        Some("f32") => Some(sluice_models::WeightDType::F32),
        Some(other) => {
            return Err(invalid(
                at("requantize"),
                format!("`{other}` is not one of q8_0, q4_0, f16, f32"),
            ))
        }
    };
    let activations = match activation_dtype.as_deref() {
        None | Some("int8") => sluice_models::ActivationPrecision::Int8,
        Some("f32") => sluice_models::ActivationPrecision::F32,
        Some(other) => {
            return Err(invalid(
                at("activation_dtype"),
                format!("`{other}` is not one of int8, f32"),
            ))
        }
    };
    let tool_parser = match tool_parser.as_deref() {
        None => None,
        Some(name) => Some(sluice_models::ToolFormat::from_name(name).ok_or_else(|| {
            invalid(
                at("tool_parser"),
                format!("`{name}` is not one of hermes, qwen, smollm2, llama3, mistral"),
            )
        })?),
    };
    let path = resolve_path(base_dir, &path);
    let defaults = super::defaults::resolve_defaults(&format!("models[{i}]"), defaults, &path)?;
    Ok(ModelConfig {
        id,
        path,
        default_max_tokens,
        requantize,
        activations,
        engine: resolve_engine(&at("engine"), engine)?,
        defaults,
        tool_parser,
    })
}

fn resolve_engine(at: &str, e: EngineSection) -> Result<EngineConfig, ConfigError> {
    let EngineSection {
        block_size,
        kv_cache_bytes,
        num_kv_blocks,
        max_num_seqs,
        max_num_batched_tokens,
        max_waiting,
        threads,
        enable_prefix_caching,
        max_model_len,
        device,
        kv_dtype,
        session_keep_warm_secs,
        session_warm_max_blocks,
    } = e;
    let d = EngineConfig::default();
    let positive = |field: &str, v: Option<usize>, default: usize, max: usize| {
        let v = v.unwrap_or(default);
        if v == 0 || v > max {
            Err(invalid(
                format!("{at}.{field}"),
                format!("{v} is outside 1..={max}"),
            ))
        } else {
            Ok(v)
        }
    };
    let optional = |field: &str, v: Option<usize>, max: usize| match v {
        Some(n) if n == 0 || n > max => Err(invalid(
            format!("{at}.{field}"),
            format!("{n} is outside 1..={max}"),
        )),
        other => Ok(other),
    };
    let block_size = positive("block_size", block_size, d.block_size, 1024)?;
    let kv_cache_bytes = kv_cache_bytes.map_or(d.kv_cache_bytes, |b| b.0);
    if kv_cache_bytes < (1 << 20) {
        return Err(invalid(
            format!("{at}.kv_cache_bytes"),
            format!("{kv_cache_bytes} is less than 1MiB"),
        ));
    }
    let device = match device {
        None => d.device,
        Some(text) => {
            let device: Device = text
                .parse()
                .map_err(|m| invalid(format!("{at}.device"), m))?;
            // Refused here, before any weights load, when this build cannot
            // run on it at all.
            sluice_runtime::device::check_supported(device)
                .map_err(|m| invalid(format!("{at}.device"), m))?;
            device
        }
    };
    let kv_dtype = match kv_dtype {
        None => d.kv_dtype,
        Some(text) => {
            let dtype = KvDType::parse(&text).ok_or_else(|| {
                invalid(
                    format!("{at}.kv_dtype"),
                    format!("\"{text}\" is not one of \"bf16\", \"f16\", \"fp8_e4m3\""),
                )
            })?;
            sluice_runtime::device::check_kv_dtype(device, dtype)
                .map_err(|m| invalid(format!("{at}.kv_dtype"), m))?;
            dtype
        }
    };
    Ok(EngineConfig {
        device,
        kv_dtype,
        block_size,
        kv_cache_bytes,
        num_kv_blocks: optional("num_kv_blocks", num_kv_blocks, 1 << 24)?,
        max_num_seqs: positive("max_num_seqs", max_num_seqs, d.max_num_seqs, 4096)?,
        max_num_batched_tokens: positive(
            "max_num_batched_tokens",
            max_num_batched_tokens,
            d.max_num_batched_tokens,
            1 << 20,
        )?,
        // Zero waiting is legitimate: only the running sequences are accepted.
        max_waiting: match max_waiting.unwrap_or(d.max_waiting) {
            n if n > 1 << 20 => {
                return Err(invalid(
                    format!("{at}.max_waiting"),
                    format!("{n} is more than {}", 1 << 20),
                ))
            }
            n => n,
        },
        threads: optional("threads", threads, 1024)?,
        enable_prefix_caching: enable_prefix_caching.unwrap_or(d.enable_prefix_caching),
        max_model_len: optional("max_model_len", max_model_len, 1 << 24)?,
        session_keep_warm: match session_keep_warm_secs {
            Some(secs) if secs > 86_400 => {
                return Err(invalid(
                    format!("{at}.session_keep_warm_secs"),
                    format!("{secs} is more than a day (86400)"),
                ))
            }
            Some(secs) => Duration::from_secs(secs),
            None => d.session_keep_warm,
        },
        session_warm_max_blocks: optional(
            "session_warm_max_blocks",
            session_warm_max_blocks,
            1 << 24,
        )?,
        clock: d.clock,
    })
}
