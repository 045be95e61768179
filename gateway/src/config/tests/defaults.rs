//! Model sampling defaults: the demo model's, the config over
//! `generation_config.json`, and bad values named.

use super::*;

#[test]
fn the_demo_model_comes_with_sampling_defaults() {
    let cfg = load_str("", &[]).unwrap();
    let d = &cfg.models[0].defaults;
    assert_eq!(d.temperature, Some(0.0));
    assert_eq!(d.top_p, Some(0.9));
    // A model named in the file gets only what the file (or its
    // generation_config.json) says.
    let cfg = load_str(
        "[[models]]\nid = \"m\"\npath = \"/nonexistent/m.gguf\"\n",
        &[],
    )
    .unwrap();
    assert!(cfg.models[0].defaults.is_empty());
}

#[test]
fn sampling_defaults_come_from_the_config_over_generation_config_json() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("model");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(
        folder.join("generation_config.json"),
        r#"{"bos_token_id": 1, "do_sample": true, "temperature": 0.6, "top_p": 0.95,
            "top_k": 20, "repetition_penalty": 1.1, "max_new_tokens": 256,
            "transformers_version": "4.42.0"}"#,
    )
    .unwrap();
    let gguf = dir.path().join("model.gguf");
    std::fs::write(&gguf, b"").unwrap();
    let text = format!(
        "[[models]]\nid = \"folder\"\npath = \"{}\"\n[models.defaults]\ntemperature = 0.2\nmin_p = 0.05\n\
         [[models]]\nid = \"beside\"\npath = \"{}\"\n",
        folder.display(),
        gguf.display()
    );
    let cfg = load_str(&text, &[]).unwrap();
    let d = &cfg.models[0].defaults;
    assert_eq!(d.temperature, Some(0.2), "the config wins");
    assert_eq!(d.min_p, Some(0.05));
    assert_eq!(d.top_p, Some(0.95), "the rest from generation_config.json");
    assert_eq!(d.top_k, Some(20));
    assert_eq!(d.repetition_penalty, Some(1.1));
    assert_eq!(d.max_tokens, Some(256));
    assert_eq!(d.presence_penalty, None);
    // A single-file model finds nothing beside it here...
    assert!(cfg.models[1].defaults.is_empty());
    // ...and the file beside it once there is one; do_sample = false is greedy.
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"do_sample": false, "temperature": 0.7}"#,
    )
    .unwrap();
    let cfg = load_str(&text, &[]).unwrap();
    assert_eq!(cfg.models[1].defaults.temperature, Some(0.0));
    let shown = cfg.to_redacted_toml();
    assert!(shown.contains("[models.defaults]"), "{shown}");
    assert!(shown.contains("temperature = 0.2"), "{shown}");
}

#[test]
fn bad_sampling_defaults_fail_naming_their_key_or_file() {
    let err = err_of(
        "[[models]]\nid = \"m\"\npath = \"/x/m.gguf\"\n[models.defaults]\ntemperature = 3.0\n",
        &[],
    );
    assert!(err.contains("models[0].defaults.temperature"), "{err}");
    let err = err_of(
        "[[models]]\nid = \"m\"\npath = \"/x/m.gguf\"\n[models.defaults]\ntemprature = 0.5\n",
        &[],
    );
    assert!(err.contains("temprature"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("generation_config.json"), r#"{"top_p": 0}"#).unwrap();
    let err = err_of(
        &format!(
            "[[models]]\nid = \"m\"\npath = \"{}\"\n",
            dir.path().display()
        ),
        &[],
    );
    assert!(
        err.contains("generation_config.json") && err.contains("top_p"),
        "{err}"
    );
}
