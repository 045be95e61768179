//! The `[[encoders]]` array: in-process embedding models and classifiers,
//! each served by its own batching pool.
//!
//! Design decision: with no `encoders` key at all the demo embedding model
//! (`all-minilm-l6-v2`) is served when its files are present, and nothing
//! when they are not, so a fresh clone without the embed fetch still starts;
//! `encoders = []` turns even that off. An explicitly configured encoder
//! whose files are missing is an error at start, like a chat model.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sluice_runtime::EncoderPoolConfig;

use super::{invalid, ConfigError};

/// The id under which the demo embedding model is served.
pub const DEMO_EMBEDDING_ID: &str = "all-minilm-l6-v2";
/// Longest `max_wait_us` accepted: a batch held longer than this is a
/// latency bug, not a tuning choice.
const MAX_WAIT_US_LIMIT: u64 = 1_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderSection {
    pub id: String,
    /// "embedding" or "classifier".
    pub kind: String,
    pub path: PathBuf,
    pub max_batch_size: Option<usize>,
    pub max_wait_us: Option<u64>,
    pub queue_capacity: Option<usize>,
    pub threads: Option<usize>,
}

/// What an encoder produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    /// A sentence-transformers model: `/v1/embeddings`, the semantic cache, the guard head.
    Embedding,
    /// A Hugging Face sequence classifier: label probabilities (the guard).
    Classifier,
}

impl EncoderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embedding => "embedding",
            Self::Classifier => "classifier",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EncoderConfig {
    pub id: String,
    pub kind: EncoderKind,
    /// The model folder.
    pub path: PathBuf,
    pub pool: EncoderPoolConfig,
}

fn demo_encoder() -> EncoderConfig {
    EncoderConfig {
        id: DEMO_EMBEDDING_ID.into(),
        kind: EncoderKind::Embedding,
        path: sluice_models::demo_embedding_model_dir(),
        pool: EncoderPoolConfig::default(),
    }
}

/// `None` (no `encoders` key): the demo model if it is fetched.
pub(super) fn resolve_encoders(
    sections: Option<Vec<EncoderSection>>,
    base_dir: &Path,
) -> Result<Vec<EncoderConfig>, ConfigError> {
    let Some(sections) = sections else {
        let demo = demo_encoder();
        return Ok(if demo.path.join("model.safetensors").is_file() {
            vec![demo]
        } else {
            Vec::new()
        });
    };
    let mut out: Vec<EncoderConfig> = Vec::with_capacity(sections.len());
    for (i, s) in sections.into_iter().enumerate() {
        let at = |key: &str| format!("encoders[{i}].{key}");
        if s.id.trim().is_empty() {
            return Err(invalid(at("id"), "must not be empty"));
        }
        if out.iter().any(|e| e.id == s.id) {
            return Err(invalid(at("id"), format!("`{}` is used twice", s.id)));
        }
        let kind = match s.kind.as_str() {
            "embedding" => EncoderKind::Embedding,
            "classifier" => EncoderKind::Classifier,
            other => {
                return Err(invalid(
                    at("kind"),
                    format!("`{other}` is not \"embedding\" or \"classifier\""),
                ))
            }
        };
        let defaults = EncoderPoolConfig::default();
        let positive = |key: &str, v: Option<usize>, d: usize| match v {
            Some(0) => Err(invalid(at(key), "must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(d),
        };
        let max_wait_us = s
            .max_wait_us
            .unwrap_or(defaults.max_wait.as_micros() as u64);
        if max_wait_us > MAX_WAIT_US_LIMIT {
            return Err(invalid(
                at("max_wait_us"),
                format!("{max_wait_us} is more than {MAX_WAIT_US_LIMIT} (one second)"),
            ));
        }
        let pool = EncoderPoolConfig {
            max_batch_size: positive("max_batch_size", s.max_batch_size, defaults.max_batch_size)?,
            max_wait: Duration::from_micros(max_wait_us),
            queue_capacity: positive("queue_capacity", s.queue_capacity, defaults.queue_capacity)?,
            threads: positive("threads", s.threads, defaults.threads)?,
        };
        let path = super::resolve::resolve_path(base_dir, &s.path);
        out.push(EncoderConfig {
            id: s.id,
            kind,
            path,
            pool,
        });
    }
    Ok(out)
}

/// Each configured encoder's folder must exist.
pub(super) fn check_encoder_files(encoders: &[EncoderConfig]) -> Result<(), ConfigError> {
    for (i, e) in encoders.iter().enumerate() {
        if !e.path.join("config.json").is_file() {
            return Err(invalid(
                format!("encoders[{i}].path"),
                format!(
                    "{} has no config.json (encoder `{}`); point it at a Hugging Face / \
                     sentence-transformers folder",
                    e.path.display(),
                    e.id
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> Vec<EncoderSection> {
        #[derive(Deserialize)]
        struct Wrap {
            encoders: Vec<EncoderSection>,
        }
        toml::from_str::<Wrap>(toml_text).unwrap().encoders
    }

    #[test]
    fn encoder_sections_resolve_with_defaults_and_relative_paths() {
        let s = section(
            "[[encoders]]\nid = \"e\"\nkind = \"embedding\"\npath = \"m\"\nmax_wait_us = 500\n\
             [[encoders]]\nid = \"c\"\nkind = \"classifier\"\npath = \"/abs\"\nmax_batch_size = 4\n",
        );
        let got = resolve_encoders(Some(s), Path::new("/base")).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].kind, EncoderKind::Embedding);
        assert_eq!(got[0].path, PathBuf::from("/base/m"));
        assert_eq!(got[0].pool.max_wait, Duration::from_micros(500));
        assert_eq!(got[0].pool.max_batch_size, 32);
        assert_eq!(got[1].kind, EncoderKind::Classifier);
        assert_eq!(got[1].path, PathBuf::from("/abs"));
        assert_eq!(got[1].pool.max_batch_size, 4);
    }

    #[test]
    fn the_example_config_serves_the_demo_encoder() {
        let text = include_str!("../../../deploy/sluice.example.toml");
        #[derive(Deserialize)]
        struct Wrap {
            encoders: Vec<EncoderSection>,
        }
        let wrap: Wrap = toml::from_str::<toml::Table>(text)
            .unwrap()
            .try_into()
            .unwrap();
        let got = resolve_encoders(Some(wrap.encoders), Path::new("/etc")).unwrap();
        assert_eq!(got[0].id, DEMO_EMBEDDING_ID);
        assert_eq!(got[0].path, sluice_models::demo_embedding_model_dir());
        assert_eq!(got[0].pool, EncoderPoolConfig::default());
    }

    #[test]
    fn bad_encoder_keys_are_named() {
        let cases = [
            ("kind = \"vision\"", "encoders[0].kind"),
            (
                "kind = \"embedding\"\nmax_batch_size = 0",
                "encoders[0].max_batch_size",
            ),
            (
                "kind = \"embedding\"\nmax_wait_us = 5000000",
                "encoders[0].max_wait_us",
            ),
        ];
        for (extra, key) in cases {
            let s = section(&format!(
                "[[encoders]]\nid = \"e\"\npath = \"m\"\n{extra}\n"
            ));
            match resolve_encoders(Some(s), Path::new(".")) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{extra}: expected an error on {key}, got {other:?}"),
            }
        }
        let twice = section(
            "[[encoders]]\nid = \"e\"\nkind = \"embedding\"\npath = \"m\"\n\
             [[encoders]]\nid = \"e\"\nkind = \"embedding\"\npath = \"n\"\n",
        );
        assert!(resolve_encoders(Some(twice), Path::new(".")).is_err());
    }

    #[test]
    fn an_empty_encoders_list_serves_none() {
        assert!(resolve_encoders(Some(Vec::new()), Path::new("."))
            .unwrap()
            .is_empty());
    }
}
