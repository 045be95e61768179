//! The Grafana dashboard (`deploy/grafana/sluice.json`) and the alert rules
//! (`deploy/prometheus/alerts.yml`) against a real Prometheus (Debian's
//! package, fetched once by `scripts/prometheus.sh`) scraping the real
//! `sluice` binary every second under a short load: every panel query and
//! every alert's signal (its expression without the threshold comparison)
//! returns data with at least one finite value, so no panel is silently
//! empty; the rules pass `promtool check rules` and evaluate without error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{get, http_client};
use serde_json::{json, Value};
use sluice_tests::fakes::{self, FakeServer};
use sluice_tests::{local_and_cloud_config, Server, ServerOptions, DEMO_MODEL_ID};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `scripts/prometheus.sh`: the Prometheus binary, fetched on first use.
fn prometheus_bin() -> PathBuf {
    let out = Command::new(repo_root().join("scripts/prometheus.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/prometheus.sh");
    assert!(out.status.success(), "scripts/prometheus.sh failed");
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(path.exists(), "{} does not exist", path.display());
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus process, killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` every second and evaluates `rules` every second.
    async fn start(bin: &Path, target: &str, rules: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start prometheus");
        let prometheus = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            let ready = http_client()
                .get(format!("{}/-/ready", prometheus.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return prometheus;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "prometheus did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
            .collect();
        let resp = http_client()
            .get(format!("{}{path}?{}", self.base, query.join("&")))
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], "success", "{path} {params:?}: {body}");
        body["data"].clone()
    }

    /// An instant query's result vector.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api("/api/v1/query", &[("query", expr)]).await;
        assert_eq!(data["resultType"], "vector", "{expr}: {data}");
        data["result"].as_array().unwrap().clone()
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters (reqwest's
/// `query` feature is not in the build).
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether some element of a result vector has a finite value (NaN is
/// what a quantile or ratio of nothing gives: a panel showing no data).
fn has_finite(result: &[Value]) -> bool {
    result.iter().any(|r| {
        r["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

/// An alert expression without its threshold: the left side of its last
/// comparison outside any parentheses, braces, brackets or quotes.
fn signal_of(expr: &str) -> &str {
    let bytes = expr.as_bytes();
    let (mut depth, mut quoted, mut cut) = (0i32, false, None);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'(' | b'{' | b'[' if !quoted => depth += 1,
            b')' | b'}' | b']' if !quoted => depth -= 1,
            b'>' | b'<' | b'=' | b'!' if !quoted && depth == 0 => {
                // The first character of the operator (`>=`, `==`, `!=`).
                let prev = i.checked_sub(1).map(|p| bytes[p]);
                if !matches!(prev, Some(b'>' | b'<' | b'=' | b'!')) {
                    cut = Some(i);
                }
            }
            _ => {}
        }
    }
    match cut {
        Some(i) => expr[..i].trim(),
        None => expr,
    }
}

async fn start_sluice(upstream: &FakeServer, metrics_port: u16) -> Server {
    Server::spawn(ServerOptions {
        config: Some(local_and_cloud_config(
            &format!("[server]\nmetrics_listen = \"127.0.0.1:{metrics_port}\""),
            &upstream.base_url(),
        )),
        ..ServerOptions::default()
    })
    .await
}

/// Local and cloud answers, whole and streamed, some repeated (cache hits).
async fn load(server: &Server, rounds: usize) {
    for n in 0..rounds {
        let mut pending = Vec::new();
        for (model, stream) in [
            (DEMO_MODEL_ID, false),
            (DEMO_MODEL_ID, true),
            ("cloud", false),
            ("cloud", true),
        ] {
            // Every other round repeats the previous one's prompts.
            let body = json!({
                "model": model,
                "messages": [{"role": "user", "content": format!("Round {}: name a fruit.", n / 2)}],
                "max_tokens": 4,
                "stream": stream,
                // Deterministic, so the cache may serve and store it.
                "temperature": 0,
            });
            let url = format!("{}/v1/chat/completions", server.base_url());
            pending.push(async move {
                http_client()
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            });
        }
        for status in futures_util::future::join_all(pending).await {
            assert_eq!(status, 200);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_and_alert_returns_data_from_a_real_prometheus() {
    let bin = prometheus_bin();
    let rules = repo_root().join("deploy/prometheus/alerts.yml");
    let promtool = bin.with_file_name("promtool");
    if promtool.exists() {
        let out = Command::new(&promtool)
            .arg("check")
            .arg("rules")
            .arg(&rules)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check rules:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let upstream = fakes::openai::start(None).await;
    let metrics_port = free_port();
    let server = start_sluice(&upstream, metrics_port).await;
    let prometheus = Prometheus::start(&bin, &format!("127.0.0.1:{metrics_port}"), &rules).await;

    // A first scrape before the load, so every rate has a baseline.
    let started = Instant::now();
    while prometheus
        .query(r#"up{job="sluice"} == 1"#)
        .await
        .is_empty()
    {
        assert!(started.elapsed() < Duration::from_secs(30), "never scraped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    load(&server, 16).await;
    // Let a few scrapes and rule evaluations see the end of the load.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(get(&server, "/health", None).await.status, 200);

    // The dashboard's model variable lists the demo model.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/grafana/sluice.json")).unwrap(),
    )
    .unwrap();
    let models = prometheus
        .api(
            "/api/v1/label/model_name/values",
            &[("match[]", "sluice:num_requests_running")],
        )
        .await;
    assert!(
        models
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == DEMO_MODEL_ID),
        "{models}"
    );

    // Every panel's every query, with Grafana's variables as a user would
    // have them (all models, a rate window covering the load).
    let mut checked = 0;
    let mut empty = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let Some(targets) = panel["targets"].as_array() else {
            continue;
        };
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let concrete = expr
                .replace("$model_name", ".*")
                .replace("$__rate_interval", "1m");
            let result = prometheus.query(&concrete).await;
            if !has_finite(&result) {
                empty.push(format!("{}: {concrete} -> {result:?}", panel["title"]));
            }
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} queries in the dashboard");
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );

    // Every alert rule, as Prometheus loaded it: evaluated without error,
    // and its signal returns series.
    let alerts_in_file = std::fs::read_to_string(&rules)
        .unwrap()
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let groups = prometheus.api("/api/v1/rules", &[]).await;
    let rules_loaded: Vec<Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect();
    assert_eq!(rules_loaded.len(), alerts_in_file, "{groups}");
    let mut silent = Vec::new();
    for rule in &rules_loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
        let expr = rule["query"].as_str().unwrap();
        let signal = signal_of(expr);
        assert_ne!(
            signal, expr,
            "{}: no threshold found in {expr}",
            rule["name"]
        );
        let result = prometheus.query(signal).await;
        if !has_finite(&result) {
            silent.push(format!("{}: {signal} -> {result:?}", rule["name"]));
        }
    }
    assert!(
        silent.is_empty(),
        "alert signals without data:\n{}",
        silent.join("\n")
    );
}

#[test]
fn the_threshold_is_cut_at_the_last_top_level_comparison() {
    assert_eq!(
        signal_of("max by (m) (x{a=\"b\"}) > 8"),
        "max by (m) (x{a=\"b\"})"
    );
    assert_eq!(signal_of("up{job=\"sluice\"} == 0"), "up{job=\"sluice\"}");
    assert_eq!(
        signal_of("sum(rate(a{o=\"f\"}[5m])) / sum(rate(a[5m])) >= 0.1"),
        "sum(rate(a{o=\"f\"}[5m])) / sum(rate(a[5m]))"
    );
    assert_eq!(signal_of("x != 1"), "x");
    assert_eq!(signal_of("absent(x)"), "absent(x)");
}
