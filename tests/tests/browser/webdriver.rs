//! A small WebDriver client: headless Chromium driven by chromedriver over
//! its JSON-over-HTTP protocol (W3C WebDriver), with the HTTP client the
//! tests already use. Only what the console's tests need: navigate, find,
//! type, click, read text, run a script, cookies, the browser's console
//! log, screenshots.
//!
//! Chromium and chromedriver are the Debian packages that
//! `scripts/chromium.sh` installs (once) and names.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// The key W3C WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The browser and driver binaries, from `scripts/chromium.sh` (which
/// installs them when missing). A failed install fails the test, with the
/// script's output.
pub fn chromium_paths() -> (PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/chromium.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} could not install Chromium and chromedriver (the browser tests need both):\n{}\n{}",
        script.display(),
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines().map(str::trim).filter(|l| !l.is_empty());
    let browser = PathBuf::from(lines.next().expect("chromium path"));
    let driver = PathBuf::from(lines.next().expect("chromedriver path"));
    (browser, driver)
}

/// A running chromedriver with one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium of `width` x `height`.
    pub async fn start(width: u32, height: u32) -> Self {
        let (browser, driver) = chromium_paths();
        let port = free_port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = client
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .and_then(|r| r.status().is_success().then_some(r));
            if let Some(r) = ready {
                let v: Value = r.json().await.unwrap();
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not become ready on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:loggingPrefs": {"browser": "ALL"},
                "goog:chromeOptions": {
                    "binary": browser,
                    "args": [
                        "--headless=new",
                        // Root in a container: Chromium's sandbox cannot start.
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--no-first-run",
                        "--hide-scrollbars",
                        format!("--window-size={width},{height}"),
                        format!("--user-data-dir={}", profile.path().display()),
                    ],
                },
            }},
        });
        let mut me = Self {
            driver,
            base,
            session: String::new(),
            client,
            _profile: profile,
        };
        let v = me.call("POST", "/session", Some(caps)).await;
        me.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        me
    }

    /// One WebDriver command; its `value`, or a panic naming the error.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.client.get(url),
            "POST" => self.client.post(url),
            "DELETE" => self.client.delete(url),
            other => panic!("method {other}"),
        };
        let req = match body {
            Some(body) => req
                .header("content-type", "application/json")
                .body(body.to_string()),
            None => req,
        };
        let resp = req.send().await.expect("chromedriver answers");
        let status = resp.status();
        let v: Value = resp.json().await.expect("chromedriver answers JSON");
        assert!(
            status.is_success(),
            "WebDriver {method} {path} failed ({status}): {}",
            v["value"]
        );
        v["value"].clone()
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub async fn goto(&self, url: &str) {
        self.call("POST", &self.at("/url"), Some(json!({"url": url})))
            .await;
    }

    pub async fn url(&self) -> String {
        self.call("GET", &self.at("/url"), None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The element `css` selects, waiting up to 20 s for it to exist.
    pub async fn find(&self, css: &str) -> String {
        let started = Instant::now();
        let mut last = Value::Null;
        loop {
            let url = format!("{}{}", self.base, self.at("/element"));
            let resp = self
                .client
                .post(url)
                .header("content-type", "application/json")
                .body(json!({"using": "css selector", "value": css}).to_string())
                .send()
                .await
                .unwrap();
            if resp.status().is_success() {
                let v: Value = resp.json().await.unwrap();
                if let Some(id) = v["value"][ELEMENT].as_str() {
                    return id.to_string();
                }
                last = v;
                // Some drivers answer 200 with an error object while the
                // page is still loading: try again.
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no element `{css}` at {} (last answer: {last})",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.call(
            "POST",
            &self.at(&format!("/element/{el}/clear")),
            Some(json!({})),
        )
        .await;
        self.call(
            "POST",
            &self.at(&format!("/element/{el}/value")),
            Some(json!({"text": text})),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.call(
            "POST",
            &self.at(&format!("/element/{el}/click")),
            Some(json!({})),
        )
        .await;
    }

    pub async fn text(&self, css: &str) -> String {
        let el = self.find(css).await;
        self.call("GET", &self.at(&format!("/element/{el}/text")), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.at("/execute/sync"),
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Polls `script` until it returns `true`, up to `limit`.
    pub async fn wait_for(&self, what: &str, script: &str, limit: Duration) {
        let started = Instant::now();
        loop {
            if self.eval(script, json!([])).await == true {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "timed out waiting for {what} at {}; page text:\n{}",
                self.url().await,
                self.eval("return document.body.innerText", json!([])).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn cookies(&self) -> Vec<Value> {
        self.call("GET", &self.at("/cookie"), None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The browser console's entries since the last call.
    pub async fn console_log(&self) -> Vec<Value> {
        self.call(
            "POST",
            &self.at("/se/log"),
            Some(json!({"type": "browser"})),
        )
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let b64 = self.call("GET", &self.at("/screenshot"), None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Resizes the window (a full-page screenshot of a long page).
    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            &self.at("/window/rect"),
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium outlives a killed chromedriver: end the session first
        // (the driver quits the browser before it answers), with a plain
        // blocking request since a drop cannot await, then the driver.
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://");
        if let Ok(addr) = addr.parse::<std::net::SocketAddr>() {
            if let Ok(mut stream) =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let request = format!(
                    "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                     Content-Length: 0\r\n\r\n",
                    self.session
                );
                if stream.write_all(request.as_bytes()).is_ok() {
                    let mut answer = Vec::new();
                    let _ = stream.read_to_end(&mut answer);
                }
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
