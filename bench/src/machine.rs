//! The machine a run happened on and how busy it was: CPU, SIMD, the kernels'
//! int8 path, load and CPU use by other processes, read from `/proc`, so
//! that every result says what produced it and whether it is worth keeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The machine a run happened on, and how busy it was when it started.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    /// The SIMD extensions the kernels may use, as the kernel reports them.
    pub simd: String,
    /// What Sluice's int8 matmul kernels run on here (`avx512-vnni`,
    /// `avx2`, `portable`).
    pub int8_kernels: String,
    /// What the encoders' packed f32 matmul runs on (`avx512`, `avx2`,
    /// `portable`).
    pub f32_packed_kernels: String,
    pub mem_total_gib: f64,
    pub kernel: String,
    pub loadavg_start: [f64; 3],
    /// Share of CPU time not idle during one second before the run.
    pub cpu_busy_pct_before: Option<f64>,
    pub git_commit: Option<String>,
    pub unix_time: u64,
}

impl Machine {
    /// Reads `/proc`; samples CPU use for one second. Missing files give
    /// "unknown" rather than an error: the numbers matter more than the label.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        let cpu_model = field("model name").unwrap_or_else(|| "unknown CPU".into());
        let flags = field("flags").unwrap_or_default();
        let has: Vec<&str> = flags.split_whitespace().collect();
        let simd: Vec<&str> = [
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512_vnni",
            "avx512_bf16",
            "avx_vnni",
        ]
        .into_iter()
        .filter(|f| has.contains(f))
        .collect();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let loadavg = read_loadavg();
        let cpu_busy_pct_before = cpu_busy_pct(Duration::from_secs(1));
        let git_commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        Self {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            simd: if simd.is_empty() {
                "no AVX2".into()
            } else {
                simd.join(" ")
            },
            int8_kernels: sluice_kernels::matmul::int8_kernel_isa().into(),
            f32_packed_kernels: sluice_kernels::matmul::packed_kernel_isa().into(),
            mem_total_gib: mem_kib / (1024.0 * 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            loadavg_start: loadavg,
            cpu_busy_pct_before,
            git_commit,
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Warns on stderr when something else is using the CPU.
    pub fn warn_if_busy(&self) {
        if let Some(p) = self.cpu_busy_pct_before.filter(|&p| p > 10.0) {
            eprintln!(
                "[bench] WARNING: the CPU was {p:.0}% busy before the run (load average {:.2}): \
                 timings will be noisy; llama.cpp's spinning threads suffer most",
                self.loadavg_start[0]
            );
        }
    }
}

fn read_loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// (idle, total) CPU time of the whole machine so far, in clock ticks.
fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    Some((idle, total))
}

/// CPU time of this process and its waited-for children (llama-server), in
/// clock ticks, from `/proc/self/stat`.
fn own_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the numeric fields follow its ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime, stime, cutime, cstime are
    // fields 14 to 17, i.e. indices 11 to 14 here.
    let ticks = fields.get(11..15)?;
    ticks.iter().map(|x| x.parse::<u64>().ok()).sum()
}

/// Busy share of all CPUs over `window`, from `/proc/stat`.
fn cpu_busy_pct(window: Duration) -> Option<f64> {
    let (i0, t0) = machine_cpu_ticks()?;
    std::thread::sleep(window);
    let (i1, t1) = machine_cpu_ticks()?;
    let dt = t1.checked_sub(t0).filter(|&d| d > 0)?;
    let di = i1.saturating_sub(i0);
    Some(100.0 * (1.0 - di as f64 / dt as f64))
}

/// Measures how much CPU other processes took while a run was going: the
/// number that says whether a result is worth keeping.
pub struct CpuMeter {
    machine: Option<(u64, u64)>,
    own: Option<u64>,
}

impl CpuMeter {
    pub fn start() -> Self {
        Self {
            machine: machine_cpu_ticks(),
            own: own_cpu_ticks(),
        }
    }

    /// Share of all CPU time since `start` that was busy outside this
    /// process and its finished children, in percent.
    pub fn others_busy_pct(&self) -> Option<f64> {
        let (i0, t0) = self.machine?;
        let (i1, t1) = machine_cpu_ticks()?;
        let total = t1.checked_sub(t0).filter(|&d| d > 0)?;
        let busy = total.saturating_sub(i1.saturating_sub(i0));
        let own = own_cpu_ticks()?.saturating_sub(self.own?);
        Some(100.0 * busy.saturating_sub(own) as f64 / total as f64)
    }
}
