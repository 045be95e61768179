//! Times `matmul` on SmolLM2-135M's shapes for a range of batch sizes.
//!
//! ```text
//! cargo run -p sluice-kernels --release --example matmul_speed [-- quick]
//! ```
//!
//! For each weight format and shape it prints the time per call, GFLOP/s
//! (2·m·n·k per call) and the cost of one activation row relative to m = 1
//! (`per-row` = t(m) / m / t(1)): the batching gain is how far that falls
//! below 1. The plain reference matmul is timed at m = 1 and 8 beside it;
//! its last column is how many times slower it is than the fast path.
//!
//! Arguments (all optional): `quick` times fewer batch sizes, `noref` skips
//! the reference, `float` adds the f32-path formats (F32, F16, BF16, Q4K,
//! Q6K), a format name (`Q4_1`, `F16`, ...) keeps only the named formats,
//! `m=N` times batch size N only. On Linux a `cpu us` column gives
//! CPU time per call summed over threads (from /proc), which stays
//! meaningful when other processes share the cores. A benchmark, not a test:
//! it asserts nothing.

use std::time::{Duration, Instant};

use sluice_kernels::matmul::matmul_reference;
use sluice_kernels::{matmul, Matrix, WeightDType};

/// xorshift64*, so the example needs no RNG dependency.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// CPU time of this process's threads in ns (Linux: the first field of
/// each thread's schedstat); `None` elsewhere.
fn cpu_ns() -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Wall and CPU seconds per call: the fastest of five batches of at least
/// `min_time / 5` (and at least 2 calls) each, after one warm-up call. The
/// minimum, not the mean, because on a shared machine the noise only ever
/// adds time.
fn time_per_call(min_time: Duration, mut f: impl FnMut()) -> (f64, Option<f64>) {
    f();
    let mut best = (f64::INFINITY, None);
    for _ in 0..5 {
        let (start, cpu0) = (Instant::now(), cpu_ns());
        let mut calls = 0u32;
        while calls < 2 || start.elapsed() < min_time / 5 {
            f();
            calls += 1;
        }
        let wall = start.elapsed().as_secs_f64() / calls as f64;
        let cpu = cpu0
            .zip(cpu_ns())
            .map(|(a, b)| b.saturating_sub(a) as f64 / 1e9 / calls as f64);
        if wall < best.0 {
            best = (wall, cpu);
        }
    }
    best
}

/// K-quants have no quantiser here: random bytes, with every block's f16
/// super-scales (d, and dmin for Q4_K) set to small finite values.
fn random_k_quant(
    rng: &mut Rng,
    dtype: WeightDType,
    n: usize,
    k: usize,
) -> Result<Matrix, sluice_kernels::KernelError> {
    let mut data: Vec<u8> = (0..n * dtype.row_bytes(k))
        .map(|_| (rng.uniform() * 127.0) as i8 as u8)
        .collect();
    let half = 0x2000u16.to_le_bytes(); // 2^-7 as f16
    for block in data.chunks_exact_mut(dtype.block_bytes()) {
        let at: &[usize] = if dtype == WeightDType::Q4K {
            &[0, 2]
        } else {
            &[208]
        };
        for &a in at {
            block[a..a + 2].copy_from_slice(&half);
        }
    }
    Matrix::from_raw(dtype, n, k, data)
}

fn row(
    dtype: WeightDType,
    name: &str,
    shape: (usize, usize, usize),
    t: (f64, Option<f64>),
    last: String,
) {
    let (k, n, m) = shape;
    let gflops = 2.0 * (m * n * k) as f64 / t.0 / 1e9;
    let cpu = t.1.map_or("-".to_string(), |c| format!("{:.1}", c * 1e6));
    println!(
        "{:<5} {:<9} {:>5} {:>6} {:>4} {:>10.1} {:>10} {:>8.1} {:>8}",
        format!("{dtype:?}"),
        name,
        k,
        n,
        m,
        t.0 * 1e6,
        cpu,
        gflops,
        last
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |a: &str| args.iter().any(|x| x == a);
    let only_m: Vec<usize> = args
        .iter()
        .filter_map(|a| a.strip_prefix("m=")?.parse().ok())
        .collect();
    let ms: &[usize] = if !only_m.is_empty() {
        &only_m
    } else if has("quick") {
        &[1, 8, 64]
    } else {
        &[1, 4, 8, 16, 64, 256]
    };
    let formats: Vec<&String> = args
        .iter()
        .filter(|a| a.starts_with('Q') || a.starts_with('F') || a.starts_with("BF"))
        .collect();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut cases = Vec::new();
    for dtype in [WeightDType::Q4_1, WeightDType::Q8_0, WeightDType::Q4_0] {
        for (k, n, name) in [
            (576, 1536, "gate/up"),
            (1536, 576, "down"),
            (576, 576, "q/o proj"),
        ] {
            cases.push((dtype, k, n, name));
        }
    }
    cases.push((WeightDType::Q8_0, 576, 49152, "lm head"));
    if has("float") {
        // The f32 path; K-quants need k % 256 == 0, which only `down` has.
        for dtype in [WeightDType::F32, WeightDType::F16, WeightDType::BF16] {
            cases.push((dtype, 576, 1536, "gate/up"));
        }
        for dtype in [WeightDType::Q4K, WeightDType::Q6K] {
            cases.push((dtype, 1536, 576, "down"));
        }
    }

    println!(
        "threads: {} (rayon; RAYON_NUM_THREADS changes it)",
        rayon::current_num_threads()
    );
    println!(
        "{:<5} {:<9} {:>5} {:>6} {:>4} {:>10} {:>10} {:>8} {:>8}",
        "dtype", "shape", "k", "n", "m", "us/call", "cpu us", "GFLOP/s", "per-row"
    );
    for (dtype, k, n, name) in cases {
        if !formats.is_empty() && !formats.iter().any(|f| **f == format!("{dtype:?}")) {
            continue;
        }
        let values: Vec<f32> = (0..n * k).map(|_| rng.uniform() * 0.05).collect();
        let built = if matches!(dtype, WeightDType::Q4K | WeightDType::Q6K) {
            random_k_quant(&mut rng, dtype, n, k)
        } else {
            Matrix::quantize(dtype, n, k, &values)
        };
        let w = match built {
            Ok(w) => w,
            Err(e) => {
                eprintln!("cannot quantise {dtype:?}: {e}");
                return;
            }
        };
        drop(values);
        let max_m = ms.iter().copied().max().unwrap_or(1);
        let x: Vec<f32> = (0..max_m * k).map(|_| rng.uniform()).collect();
        let mut out = vec![0.0f32; max_m * n];
        let mut fast = Vec::new();
        for &m in ms {
            let t = time_per_call(Duration::from_millis(300), || {
                matmul(&w, &x[..m * k], m, &mut out[..m * n])
            });
            fast.push((m, t.0));
            let per_row = match fast.first() {
                Some(&(1, t1)) => format!("{:.3}", t.0 / m as f64 / t1),
                _ => "-".to_string(),
            };
            row(dtype, name, (k, n, m), t, per_row);
        }
        for m in [1, 8] {
            if has("noref") {
                break;
            }
            let Some(&(_, t_fast)) = fast.iter().find(|(fm, _)| *fm == m) else {
                continue;
            };
            let t = time_per_call(Duration::from_millis(300), || {
                matmul_reference(&w, &x[..m * k], m, &mut out[..m * n])
            });
            let vs_fast = format!("{:.1}x", t.0 / t_fast);
            row(dtype, "reference", (k, n, m), t, vs_fast);
        }
    }
}
