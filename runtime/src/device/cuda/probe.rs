//! The device check's measurements: the two ceilings a decode step is held
//! against (copy bandwidth, cuBLAS bf16 throughput) and a CUDA-event timer.

use half::bf16;
use sluice_kernels::cuda::cudarc::driver::{sys as driver_sys, CudaEvent, CudaSlice};
use sluice_models::ModelError;

use super::{drv, CudaMatrix, CudaOps};
use crate::device::ops::DeviceOps;

/// Time between two points of the stream, measured by CUDA events.
pub struct Timer {
    start: CudaEvent,
}

fn timing_event(ops: &CudaOps) -> Result<CudaEvent, ModelError> {
    ops.gpu()
        .ctx()
        .new_event(Some(driver_sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(drv("creating an event"))
}

impl Timer {
    /// Records the start behind everything queued so far.
    pub fn start(ops: &CudaOps) -> Result<Self, ModelError> {
        let start = timing_event(ops)?;
        start
            .record(ops.gpu().stream())
            .map_err(drv("recording an event"))?;
        Ok(Self { start })
    }

    /// Records the end, waits for it, returns the milliseconds between.
    pub fn stop_ms(self, ops: &CudaOps) -> Result<f64, ModelError> {
        let end = timing_event(ops)?;
        end.record(ops.gpu().stream())
            .map_err(drv("recording an event"))?;
        let ms = self.start.elapsed_ms(&end).map_err(drv("timing"))?;
        Ok(f64::from(ms))
    }
}

/// Device-to-device copy of `bytes`, `iters` times after two warm-ups:
/// GB/s counting the bytes read and written (as the roofline counts them).
pub fn copy_bandwidth_gbs(
    ops: &mut CudaOps,
    bytes: usize,
    iters: usize,
) -> Result<f64, ModelError> {
    let stream = ops.gpu().stream().clone();
    let src: CudaSlice<u8> = stream.alloc_zeros(bytes).map_err(drv("allocating"))?;
    let mut dst: CudaSlice<u8> = stream.alloc_zeros(bytes).map_err(drv("allocating"))?;
    for _ in 0..2 {
        stream.memcpy_dtod(&src, &mut dst).map_err(drv("copying"))?;
    }
    let timer = Timer::start(ops)?;
    for _ in 0..iters {
        stream.memcpy_dtod(&src, &mut dst).map_err(drv("copying"))?;
    }
    let ms = timer.stop_ms(ops)?;
    Ok(2.0 * bytes as f64 * iters as f64 / (ms / 1e3) / 1e9)
}

/// An `n x n x n` bf16 product through the executor's own GEMM path,
/// `iters` times after three warm-ups: TFLOP/s.
pub fn gemm_tflops(ops: &mut CudaOps, n: usize, iters: usize) -> Result<f64, ModelError> {
    let fill = |i: usize, row: &mut [f32]| {
        for (j, v) in row.iter_mut().enumerate() {
            // Varied values: all-zero inputs run faster than real ones.
            *v = (((i * 31 + j * 17) % 97) as f32 - 48.0) / 64.0;
        }
    };
    let w: CudaMatrix = ops.upload_matrix(n, n, &mut { fill })?;
    let x: CudaSlice<bf16> = ops.upload_matrix(n, n, &mut { fill })?.data;
    let mut out = ops.alloc(n * n)?;
    for _ in 0..3 {
        ops.gemm(&x, &w, n, &mut out)?;
    }
    let timer = Timer::start(ops)?;
    for _ in 0..iters {
        ops.gemm(&x, &w, n, &mut out)?;
    }
    let ms = timer.stop_ms(ops)?;
    Ok(2.0 * (n as f64).powi(3) * iters as f64 / (ms / 1e3) / 1e12)
}

/// The card, driver and libraries, for the device check's first section.
pub fn environment(ops: &CudaOps) -> serde_json::Value {
    let mut driver_version = 0i32;
    // SAFETY: writes one int; the driver is loaded (a context exists).
    let _ = unsafe { driver_sys::cuDriverGetVersion(&mut driver_version) };
    let (free, total) = ops.memory().unwrap_or((0, 0));
    let telemetry = sluice_kernels::cuda::GpuTelemetry::read(ops.ordinal());
    serde_json::json!({
        "card": ops.gpu().name(),
        "compute_capability": format!("{}.{}", ops.gpu().compute_capability().0, ops.gpu().compute_capability().1),
        "kernel_image": format!("{:?}", ops.gpu().kernel_image()),
        "cuda": format!("{}.{}", driver_version / 1000, (driver_version % 1000) / 10),
        "driver": format!("CUDA driver API {driver_version}"),
        "memory_free_bytes": free,
        "memory_total_bytes": total,
        "libcublas": std::env::var("SLUICE_CUBLAS").unwrap_or_default(),
        "ld_library_path": std::env::var("LD_LIBRARY_PATH").unwrap_or_default(),
        "telemetry": telemetry.map(|t| serde_json::json!({
            "power_watts": t.power_watts, "sm_clock_mhz": t.sm_clock_mhz,
            "memory_clock_mhz": t.memory_clock_mhz, "memory_used_bytes": t.memory_used_bytes,
        })),
    })
}

/// Every kernel against its CPU twin (the kernels crate's check), as JSON.
pub fn kernel_checks(ops: &CudaOps, seed: u64) -> Result<Vec<serde_json::Value>, ModelError> {
    let checks = sluice_kernels::cuda::check::run_all(ops.gpu(), seed);
    Ok(checks
        .into_iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name, "shape": c.shape, "max_rel_err": c.max_rel_error,
                "pass": c.passed, "error": c.error,
            })
        })
        .collect())
}
