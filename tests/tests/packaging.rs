//! Packaging: the Helm chart renders and validates against the Kubernetes
//! schemas, the config it writes is one the real binary accepts and serves
//! (health, readiness, metrics on the chart's port, a clean SIGTERM drain),
//! the systemd unit verifies and rates "OK" or better in `systemd-analyze
//! security`, and the Dockerfile keeps its promises (multi-stage, non-root).
//!
//! No `helm` can be installed from the registries this project may use, so
//! `deploy/check/check_chart.py` renders the templates itself (the subset of
//! Go templates the chart uses; anything else is an error) and validates with
//! `kubernetes-validate` (strict: unknown fields fail).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sluice_tests::{demo_model_path, get_status, run_cli, Server, ServerOptions};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Renders and validates the chart; the rendered sluice.toml of each case.
fn render_chart() -> Vec<(String, String)> {
    let out = tempfile::tempdir().unwrap();
    let root = repo_root();
    let run = Command::new(python())
        .arg(root.join("deploy/check/check_chart.py"))
        .arg(root.join("deploy/helm/sluice"))
        .arg(out.path())
        .output()
        .expect(
            "a Python with kubernetes-validate is needed (scripts/python-env.sh; SLUICE_PYTHON)",
        );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.status.success(),
        "the chart failed its checks:\n{report}"
    );
    let mut configs: Vec<(String, String)> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let case = path.file_stem().unwrap().to_string_lossy().into_owned();
            (case, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    configs.sort();
    configs
}

/// The chart's config with the demo model's real path in place of the mount.
fn with_demo_model(config: &str) -> String {
    config.replace(
        "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
        &demo_model_path().display().to_string(),
    )
}

#[test]
fn the_chart_renders_valid_manifests_in_every_case() {
    let configs = render_chart();
    let cases: Vec<&str> = configs.iter().map(|(case, _)| case.as_str()).collect();
    assert_eq!(
        cases,
        ["defaults", "values-existing-secret", "values-production"]
    );
}

#[test]
fn every_config_the_chart_writes_passes_check_config() {
    for (case, config) in render_chart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, with_demo_model(&config)).unwrap();
        let env = [
            ("SLUICE_ADMIN_KEY", "admin-key-for-the-packaging-test"),
            ("SLUICE_API_KEY", "client-key-for-the-packaging-test"),
            ("SLUICE_LIMITS_REDIS_URL", "redis://127.0.0.1:6379"),
        ];
        let (code, out, err) = run_cli(&["check-config", path.to_str().unwrap()], &env);
        assert_eq!(code, 0, "{case}: check-config refused:\n{out}\n{err}");
        assert!(
            out.contains("0.0.0.0:8080"),
            "{case}: listen not as the chart set it:\n{out}"
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_charts_default_config_serves_probes_and_metrics_and_drains_on_sigterm() {
    let (_, config) = render_chart()
        .into_iter()
        .find(|(case, _)| case == "defaults")
        .unwrap();
    // Loopback ports in place of the pod's 0.0.0.0 ones, so parallel tests
    // do not collide; everything else is the chart's text.
    let metrics_port = free_port();
    let config = with_demo_model(&config).replace(
        "metrics_listen = \"0.0.0.0:9100\"",
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
    );
    assert!(config.contains(&format!("127.0.0.1:{metrics_port}")));
    let mut server = Server::start(ServerOptions {
        config: Some(config),
        env: vec![
            (
                "SLUICE_ADMIN_KEY".into(),
                "admin-key-for-the-packaging-test".into(),
            ),
            (
                "SLUICE_API_KEY".into(),
                "client-key-for-the-packaging-test".into(),
            ),
        ],
        ..Default::default()
    });
    assert_eq!(get_status(server.addr, "/health"), Some(200));
    assert_eq!(get_status(server.addr, "/ready"), Some(200));
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port));
    assert_eq!(
        get_status(metrics, "/metrics"),
        Some(200),
        "the metrics port the chart's ServiceMonitor scrapes"
    );
    server.sigterm();
    assert_eq!(
        server.wait_exit(Duration::from_secs(40)),
        Some(0),
        "SIGTERM must drain and exit 0 within the chart's grace period:\n{}",
        server.logs()
    );
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(repo_root().join("deploy/systemd/sluice.service")).unwrap();
    // `verify` checks that ExecStart's program exists: point it at the
    // binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.service");
    let bin = sluice_tests::sluice_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/sluice", &bin.display().to_string()),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package) is needed");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify:\n{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // The exposure level, 0 (best) to 10, is compared x10: 2.0 at most.
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(
        security.status.success(),
        "the unit's exposure is above 2.0:\n{report}"
    );
    assert!(report.contains("Overall exposure level"), "{report}");
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_non_root_in_another() {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let stages: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build: {stages:?}");
    let last_stage = text.rsplit_once(stages[stages.len() - 1]).unwrap().1;
    let user = last_stage
        .lines()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("the final stage sets USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric uid");
    assert_ne!(uid, 0, "the final stage must not run as root");
    assert!(last_stage.contains("ENTRYPOINT [\"/usr/local/bin/sluice\"]"));
    assert!(last_stage.contains("SLUICE_DATA_DIR=/var/lib/sluice"));
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with("ADD http")),
        "no downloads at build time without a checksum"
    );
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}
