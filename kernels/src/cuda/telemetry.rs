//! GPU telemetry from NVML (memory, utilisation, power, clocks), for the
//! runtime's load signals and metrics. NVML is loaded at run time
//! (`libnvidia-ml.so.1`, shipped with the driver): without a driver every
//! read is `None`, never an error a server has to handle.

use std::sync::OnceLock;

use nvml_wrapper::enum_wrappers::device::Clock;
use nvml_wrapper::Nvml;

/// One reading of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuTelemetry {
    pub name: String,
    /// NVML's stable identity of the card (`GPU-…`), which survives
    /// reordering by `CUDA_VISIBLE_DEVICES`; empty when NVML does not say.
    pub uuid: String,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Percent of the last sample period a kernel was running.
    pub utilization_percent: u32,
    /// Percent of the last sample period device memory was read or written.
    pub memory_utilization_percent: u32,
    pub power_watts: f64,
    pub sm_clock_mhz: u32,
    pub memory_clock_mhz: u32,
}

/// NVML, initialised once per process (it takes milliseconds and holds the
/// library open); `None` when there is no driver.
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| {
        // The versioned name first: only it is installed without the
        // development package; the plain name is nvml-wrapper's default.
        Nvml::builder()
            .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
            .init()
            .or_else(|_| Nvml::init())
            .ok()
    })
    .as_ref()
}

impl GpuTelemetry {
    /// Reads device `index` (NVML's numbering, which is the CUDA ordinal
    /// unless `CUDA_VISIBLE_DEVICES` reorders devices); `None` without a
    /// driver or such a device. A field NVML does not report reads as 0.
    pub fn read(index: u32) -> Option<Self> {
        let device = nvml()?.device_by_index(index).ok()?;
        let memory = device.memory_info().ok()?;
        let utilization = device.utilization_rates().ok();
        Some(Self {
            name: device.name().unwrap_or_default(),
            uuid: device.uuid().unwrap_or_default(),
            memory_used_bytes: memory.used,
            memory_total_bytes: memory.total,
            utilization_percent: utilization.as_ref().map_or(0, |u| u.gpu),
            memory_utilization_percent: utilization.as_ref().map_or(0, |u| u.memory),
            power_watts: device
                .power_usage()
                .map_or(0.0, |mw| f64::from(mw) / 1000.0),
            sm_clock_mhz: device.clock_info(Clock::SM).unwrap_or(0),
            memory_clock_mhz: device.clock_info(Clock::Memory).unwrap_or(0),
        })
    }

    /// How many devices NVML sees; 0 without a driver.
    pub fn device_count() -> u32 {
        nvml().and_then(|n| n.device_count().ok()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver (here, CI) a read is `None`; with one, it reports
    /// a device with some memory.
    #[test]
    fn telemetry_is_none_without_a_driver_and_sane_with_one() {
        // SAFETY: only tries to dlopen the library.
        let driver = unsafe { cudarc::driver::sys::is_culib_present() };
        match GpuTelemetry::read(0) {
            None => assert!(!driver || GpuTelemetry::device_count() == 0),
            Some(t) => {
                assert!(t.memory_total_bytes > 0);
                assert!(t.memory_used_bytes <= t.memory_total_bytes);
            }
        }
        assert!(
            GpuTelemetry::read(u32::MAX).is_none(),
            "no device has that index"
        );
    }
}
