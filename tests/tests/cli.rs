//! The command line: config checking, refusals at start, model listing, and
//! the shutdown path (SIGTERM lets an in-flight stream finish, then exit 0).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::time::Duration;

use serde_json::json;
use sluice_tests::{demo_model_path, run_cli, Server, DEMO_MODEL_ID};

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn check_config_prints_the_effective_config_without_secrets() {
    let model = demo_model_path();
    let f = config_file(&format!(
        r#"
        [server]
        listen = "127.0.0.1:9999"
        [[auth.keys]]
        tenant = "team-a"
        key_env = "SLUICE_TEST_KEY_A"
        [[models]]
        id = "demo"
        path = "{}"
        [models.engine]
        kv_cache_bytes = "64MiB"
        [[providers]]
        kind = "openai"
        name = "up"
        base_url = "https://api.example.com/v1"
        api_key_env = "SLUICE_TEST_UPSTREAM_KEY"
        [[routes]]
        model = "chat"
        [[routes.deployments]]
        name = "up"
        provider = "up"
        upstream_model = "gpt-x"
        [admin]
        key_env = "SLUICE_TEST_ADMIN_KEY"
        "#,
        model.display()
    ));
    let path = f.path().to_str().unwrap();
    let secrets = [
        ("SLUICE_TEST_KEY_A", "super-secret-value"),
        ("SLUICE_TEST_UPSTREAM_KEY", "upstream-secret-value"),
        ("SLUICE_TEST_ADMIN_KEY", "admin-secret-value-0123"),
    ];
    let (code, out, err) = run_cli(&["check-config", path], &secrets);
    assert_eq!(code, 0, "{out}\n{err}");
    for section in [
        "[[providers]]",
        "[[routes]]",
        "[[routes.deployments]]",
        "[admin]",
    ] {
        assert!(out.contains(section), "no {section} in:\n{out}");
    }
    assert!(
        out.contains("<redacted: env SLUICE_TEST_ADMIN_KEY>"),
        "{out}"
    );
    for (_, secret) in secrets {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{out}\n{err}"
        );
    }
    assert!(out.contains("listen = \"127.0.0.1:9999\""), "{out}");
    assert!(out.contains("kv_cache_bytes = 67108864"), "{out}");
    assert!(out.contains("team-a") && out.contains("redacted"), "{out}");
    assert!(!out.contains("super-secret-value") && !err.contains("super-secret-value"));
}

#[test]
fn a_typo_in_the_config_fails_naming_the_key() {
    let f = config_file("[server]\nlistn = \"127.0.0.1:1\"\n");
    let (code, _, err) = run_cli(&["check-config", f.path().to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("listn"), "{err}");
    let f = config_file(
        "[[models]]\nid = \"m\"\npath = \"x.gguf\"\n[models.engine]\nmax_num_seqs = 0\n",
    );
    let (code, _, err) = run_cli(&["check-config", f.path().to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("models[0].engine.max_num_seqs"), "{err}");
}

#[test]
fn an_inline_key_is_refused() {
    let f = config_file("[[auth.keys]]\ntenant = \"a\"\nkey = \"sk-inline\"\n");
    let (code, _, err) = run_cli(&["check-config", f.path().to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("auth.keys[0].key") && !err.contains("sk-inline"),
        "{err}"
    );
}

#[test]
fn serving_beyond_loopback_without_keys_is_refused() {
    let (code, _, err) = run_cli(&["serve", "--listen", "0.0.0.0:0"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--allow-unauthenticated"), "{err}");
}

#[test]
fn a_missing_demo_model_names_the_fetch_command() {
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = run_cli(
        &["serve"],
        &[("SLUICE_MODELS_DIR", empty.path().to_str().unwrap())],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sluice fetch-models"), "{err}");
}

#[test]
fn models_list_shows_the_demo_model() {
    let (code, out, _) = run_cli(&["models", "list"], &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains(DEMO_MODEL_ID) && out.contains("present"),
        "{out}"
    );
}

#[tokio::test]
async fn sigterm_lets_a_stream_finish_then_exits_zero() {
    let mut server = Server::start_default();
    let mut stream = common::http_client()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .header("content-type", "application/json")
        .body(
            json!({
                "model": DEMO_MODEL_ID,
                "messages": [{"role": "user", "content": "Tell me a story."}],
                "max_tokens": 24, "ignore_eos": true, "stream": true,
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let first = stream.chunk().await.unwrap().unwrap();
    let mut body = String::from_utf8_lossy(&first).into_owned();

    server.sigterm();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events = common::sse_events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    let code = server.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", server.logs());
    assert!(server.logs().contains("SIGTERM received"));
}

#[test]
fn fetch_models_runs_the_embedded_script() {
    // The demo weights are already fetched (the harness needs them), so the
    // script only checks their sha256 and says so.
    demo_model_path();
    let (code, out, err) = run_cli(&["fetch-models", "chat"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("smollm2: present"), "{out}");
}

#[test]
fn closing_stdin_shuts_the_server_down_cleanly() {
    // What the harness relies on so that a dead test process leaves no server behind.
    let server = Server::start_default();
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_cuda_device_in_a_build_without_cuda_is_refused_with_what_to_do() {
    let f = config_file(
        "[[models]]\nid = \"m\"\npath = \"x.gguf\"\n[models.engine]\ndevice = \"cuda:0\"\n",
    );
    let (code, _, err) = run_cli(&["check-config", f.path().to_str().unwrap()], &[]);
    // The test binary is the default (CPU-only) build that scripts/test.sh makes.
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("models[0].engine.device"), "{err}");
    assert!(err.contains("--features cuda"), "{err}");
    assert!(err.contains("device = \"cpu\""), "{err}");
}
