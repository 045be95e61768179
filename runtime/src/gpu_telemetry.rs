//! GPU readings (memory, utilisation, power, clocks) as plain numbers, for
//! whoever exports or acts on them. The runtime knows no metrics exporter:
//! the gateway polls a [`GpuTelemetrySource`] and records what it returns.
//!
//! [`Nvml`] reads every card NVML sees through the kernels crate (behind the
//! `cuda` feature); without the feature, a driver or a card it reads
//! nothing, which is not an error: a CPU-only server has no GPU series.
//! The trait is the seam that lets the exporter be tested with a fake card.

/// One card at one moment, in base units (bytes, ratios in `[0, 1]`,
/// watts, hertz), as Prometheus wants them.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    /// NVML's index (the CUDA ordinal unless `CUDA_VISIBLE_DEVICES` reorders).
    pub index: u32,
    /// `GPU-…`; empty when the driver does not say.
    pub uuid: String,
    /// "NVIDIA H100 80GB HBM3".
    pub name: String,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Share of the last sample period a kernel was running.
    pub utilization_ratio: f64,
    /// Share of the last sample period device memory was read or written.
    pub memory_utilization_ratio: f64,
    pub power_watts: f64,
    pub sm_clock_hz: f64,
    pub memory_clock_hz: f64,
}

/// Where GPU readings come from. `read` may block for a few milliseconds
/// (NVML queries the driver): call it off the async executor's threads.
pub trait GpuTelemetrySource: Send + Sync {
    /// One reading per card present now; empty without GPUs.
    fn read(&self) -> Vec<GpuReading>;
}

/// Every card NVML sees.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nvml;

impl Nvml {
    /// The source when this build can read GPUs and a driver with at least
    /// one card is present; `None` otherwise (so no poller needs to run).
    pub fn detect() -> Option<Self> {
        #[cfg(feature = "cuda")]
        {
            (sluice_kernels::cuda::GpuTelemetry::device_count() > 0).then_some(Self)
        }
        #[cfg(not(feature = "cuda"))]
        {
            None
        }
    }
}

impl GpuTelemetrySource for Nvml {
    fn read(&self) -> Vec<GpuReading> {
        #[cfg(feature = "cuda")]
        {
            use sluice_kernels::cuda::GpuTelemetry;
            (0..GpuTelemetry::device_count())
                .filter_map(|index| GpuTelemetry::read(index).map(|t| reading(index, t)))
                .collect()
        }
        #[cfg(not(feature = "cuda"))]
        {
            Vec::new()
        }
    }
}

#[cfg(feature = "cuda")]
fn reading(index: u32, t: sluice_kernels::cuda::GpuTelemetry) -> GpuReading {
    const MHZ: f64 = 1e6;
    GpuReading {
        index,
        uuid: t.uuid,
        name: t.name,
        memory_used_bytes: t.memory_used_bytes,
        memory_total_bytes: t.memory_total_bytes,
        utilization_ratio: f64::from(t.utilization_percent) / 100.0,
        memory_utilization_ratio: f64::from(t.memory_utilization_percent) / 100.0,
        power_watts: t.power_watts,
        sm_clock_hz: f64::from(t.sm_clock_mhz) * MHZ,
        memory_clock_hz: f64::from(t.memory_clock_mhz) * MHZ,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Here (no driver, or no `cuda` feature) there is nothing to read and
    /// nothing fails; with a card, each reading is sane.
    #[test]
    fn nvml_reads_nothing_without_a_gpu_and_sane_values_with_one() {
        let readings = Nvml.read();
        assert_eq!(Nvml::detect().is_some(), !readings.is_empty());
        for r in readings {
            assert!(r.memory_total_bytes > 0, "{r:?}");
            assert!(r.memory_used_bytes <= r.memory_total_bytes, "{r:?}");
            assert!((0.0..=1.0).contains(&r.utilization_ratio), "{r:?}");
        }
    }
}
