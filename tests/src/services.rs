//! Real services of a test's own: a `redis-server` on a port of its own
//! (the shared one on 6379 is never touched, so a test may kill it), and
//! a fresh schema in the shared PostgreSQL (`test` database on
//! 127.0.0.1:5432), as a store URL.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local_addr")
        .port()
}

/// A `redis-server` without persistence; killed and waited for on drop.
pub struct OwnRedis {
    child: Child,
    pub port: u16,
}

impl OwnRedis {
    /// On a free port.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// On `port` (a restart on the port a killed one had).
    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is needed by this test");
        // Owned (and so killed on drop) before any panic below.
        let redis = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9`: no chance to write anything out.
    pub fn kill_9(&mut self) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -9 {pid} failed");
        self.child.wait().expect("wait for redis-server");
    }

    /// Stops it; the port, for a restart with [`OwnRedis::start_on`].
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A name no other test run uses: `{prefix}_{pid}_{nanos}`.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// A new schema named after `test` in the test PostgreSQL, and the store
/// URL whose connections use it.
pub fn fresh_postgres_schema(test: &str) -> String {
    let base = std::env::var("SLUICE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = unique(test);
    let out = Command::new("psql")
        .args([&base, "-qc", &format!("CREATE SCHEMA {schema}")])
        .output()
        .expect("psql is needed by this test (PostgreSQL at 127.0.0.1:5432, database `test`)");
    assert!(
        out.status.success(),
        "cannot create schema {schema}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{base}?options=-c%20search_path%3D{schema}")
}

/// Deletes the shared Redis's keys that match a pattern when dropped, so
/// a test leaves none behind however it ends.
pub struct RedisKeys {
    pattern: String,
}

impl RedisKeys {
    /// The keys under `prefix:`.
    pub fn under(prefix: &str) -> Self {
        Self::matching(format!("{prefix}:*"))
    }

    /// The keys a `SCAN` pattern matches.
    pub fn matching(pattern: String) -> Self {
        Self { pattern }
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let Ok(out) = Command::new("redis-cli")
            .args(["--scan", "--pattern", &self.pattern])
            .output()
        else {
            return;
        };
        let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        if !keys.is_empty() {
            let _ = Command::new("redis-cli").arg("del").args(keys).output();
        }
    }
}
