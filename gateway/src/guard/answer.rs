//! The stream guard's head: the guard that scores answer windows
//! (`[stream] guard = true`) is the input guard with the head that
//! `[stream] guard_head` names; by default the answer head built into
//! the binary.
//!
//! Why a head of its own: the input head was fitted on prompts, and on
//! ordinary answers it flags list, table and code layout and openers such
//! as "Sure! Here is a summary ..." (every held-out ordinary answer
//! stopped, in both held-out sets under `tests/data/stream/`). The answer
//! head `models/guard/minilm-answer-injection.*` was fitted on windows of
//! model answers, documents, code, data files and verse against windows of
//! injections, cut as `hold_back` cuts them
//! (`scripts/answer-guard-data.sh`; figures in `models/guard/README.md`).
//!
//! Design decision: only the head changes. The stream guard keeps the
//! input guard's id, classifiers, encoder and limits, so it runs the same
//! encoder pool (no second model in memory) and a `mode = "replace"` guard
//! (classifiers only) scores answers as it scores prompts. A head file's
//! thresholds are its own metadata's: `[guard] threshold` and `t_low` were
//! set against the input head's scale and do not carry over.

use std::sync::Arc;

use sluice_models::guard::{GuardHead, GuardHeadMeta};

use super::{check_dims, embedded_head, load_head_file, Guard, LoadedHead};
use crate::config::StreamGuardHead;

/// The answer head committed in `models/guard/`, built in as the input
/// head is, so `guard_head`'s default works wherever the binary is copied.
const ANSWER_HEAD: &[u8] =
    include_bytes!("../../../models/guard/minilm-answer-injection.safetensors");
const ANSWER_META: &str = include_str!("../../../models/guard/minilm-answer-injection.json");
const ANSWER_NAME: &str = "models/guard/minilm-answer-injection.safetensors (built in)";

/// The built-in answer head and its metadata.
pub fn built_in_answer_head() -> Result<(GuardHead, GuardHeadMeta), String> {
    embedded_head(ANSWER_HEAD, ANSWER_META, ANSWER_NAME)
}

/// The guard over answer windows: `input` itself for `"input"`, else
/// `input` with the built-in answer head or the head file's head. Errors
/// (a missing or malformed head file, a head of another width than the
/// input head's encoder gives) stop the server at start and name
/// `stream.guard_head`.
pub fn stream_guard(input: &Arc<Guard>, choice: &StreamGuardHead) -> Result<Arc<Guard>, String> {
    const KEY: &str = "stream.guard_head";
    if *choice == StreamGuardHead::Input {
        return Ok(input.clone());
    }
    let Some(input_head) = input.head() else {
        // Classifiers alone decide: there is no head to replace.
        return Ok(input.clone());
    };
    let (head, meta) = match choice {
        StreamGuardHead::File(path) => load_head_file(path, KEY)?,
        // `Answer` (`Input` returned above).
        _ => built_in_answer_head().map_err(|e| format!("{KEY}: {e}"))?,
    };
    check_dims(&head, &meta, KEY)?;
    if head.dim() != input_head.head.dim() {
        return Err(format!(
            "{KEY}: the head reads {} dimensions but the guard's encoder gives {}",
            head.dim(),
            input_head.head.dim()
        ));
    }
    let threshold = meta.threshold;
    Ok(Arc::new(input.with_head(LoadedHead {
        head: Arc::new(head),
        threshold,
        t_low: meta.t_low().min(threshold),
        encoder: input_head.encoder.clone(),
    })))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use sluice_models::guard::GuardHeadMeta;

    use super::*;
    use crate::config::GuardConfig;

    /// The answer head committed beside the input head.
    fn answer_head_path() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/guard/minilm-answer-injection.safetensors"
        ))
    }

    fn input_guard() -> Arc<Guard> {
        Arc::new(
            super::super::from_config(&GuardConfig::default())
                .unwrap()
                .unwrap(),
        )
    }

    #[test]
    fn the_committed_answer_head_was_fitted_on_answer_windows() {
        let path = answer_head_path();
        let (head, meta) = load_head_file(&path, "test").unwrap();
        check_dims(&head, &meta, "test").unwrap();
        assert!(meta.t_low() <= meta.threshold);
        let names: Vec<&str> = meta.sources.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"answers"), "{names:?}");
        assert!(names.contains(&"injections"), "{names:?}");
        // The held-out sets never went into it.
        assert!(!meta.command.contains("garak"), "{}", meta.command);
        assert!(!meta.command.contains("pyrit"), "{}", meta.command);
        assert!(
            !meta.command.contains("stream/ordinary"),
            "{}",
            meta.command
        );
    }

    #[test]
    fn the_stream_guard_scores_with_the_answer_head_when_named() {
        let input = input_guard();
        let (_, meta) = load_head_file(&answer_head_path(), "test").unwrap();
        let stream = stream_guard(&input, &StreamGuardHead::File(answer_head_path())).unwrap();
        assert!(!Arc::ptr_eq(&stream, &input));
        let head = stream.head().unwrap();
        assert_eq!(head.threshold, meta.threshold);
        assert_eq!(head.t_low, meta.t_low().min(meta.threshold));
        assert_eq!(stream.id, input.id);
        // The input guard keeps its own head.
        let (_, input_meta) = super::super::built_in_head().unwrap();
        assert_eq!(input.head().unwrap().threshold, input_meta.threshold);
    }

    #[test]
    fn an_absent_guard_head_is_the_built_in_answer_head() {
        let input = input_guard();
        let (_, meta) = load_head_file(&answer_head_path(), "test").unwrap();
        let default = crate::config::StreamSettings::default().guard_head;
        assert_eq!(default, StreamGuardHead::Answer);
        let stream = stream_guard(&input, &default).unwrap();
        assert!(!Arc::ptr_eq(&stream, &input));
        let head = stream.head().unwrap();
        assert_eq!(head.threshold, meta.threshold);
        assert_ne!(head.threshold, input.head().unwrap().threshold);
        assert_eq!(stream.id, input.id);
    }

    #[test]
    fn input_keeps_the_input_guard_and_a_file_head_keeps_its_own_thresholds() {
        let input = input_guard();
        let same = stream_guard(&input, &StreamGuardHead::Input).unwrap();
        assert!(Arc::ptr_eq(&same, &input));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("answers.safetensors");
        let (head, mut meta) = load_head_file(&answer_head_path(), "test").unwrap();
        head.save(&path).unwrap();
        meta.threshold = 0.625;
        meta.t_low = Some(0.25);
        meta.save(&GuardHeadMeta::path_for(&path)).unwrap();
        let from_file = stream_guard(&input, &StreamGuardHead::File(path)).unwrap();
        let loaded = from_file.head().unwrap();
        assert_eq!((loaded.threshold, loaded.t_low), (0.625, 0.25));

        let missing = dir.path().join("missing.safetensors");
        let err = stream_guard(&input, &StreamGuardHead::File(missing))
            .err()
            .unwrap();
        assert!(err.starts_with("stream.guard_head:"), "{err}");
    }

    #[test]
    fn a_guard_of_classifiers_alone_has_no_head_to_replace() {
        let config = GuardConfig {
            mode: crate::config::GuardMode::Replace,
            ..GuardConfig::default()
        };
        let input = Arc::new(super::super::from_config(&config).unwrap().unwrap());
        let stream = stream_guard(&input, &StreamGuardHead::File(answer_head_path())).unwrap();
        assert!(Arc::ptr_eq(&stream, &input));
    }
}
