//! Running steps on a compute device other than the CPU engine: which device
//! a model runs on ([`Device`]), the host side of a device step and its seam.
//!
//! A device step is host work around a fixed list of device operations:
//! [`plan`] packs the engine's batch into flat index arrays and pads decode
//! steps to CUDA-graph buckets; [`sizing`] decides how much memory the
//! weights, step buffers and KV blocks take; [`ops`] is the seam, the
//! operations a step needs; [`DeviceExecutor`] drives them. The seam has two
//! implementations: [`CpuOps`] (always compiled: the tests run whole device
//! steps on the CPU and compare them with [`crate::executor::CpuExecutor`])
//! and, behind the `cuda` feature, `cuda::CudaOps` over the kernels crate's
//! CUDA launch API and cuBLAS.
//!
//! Design choice: the step is written once, against the seam, so everything
//! but the kernels themselves (packing, padding, buffer reuse, which logits
//! rows leave the device) is tested on machines without a GPU.

pub mod compare;
mod cpu_ops;
#[cfg(feature = "cuda")]
pub mod cuda;
mod executor;
#[cfg(feature = "cuda")]
pub mod gpucheck;
#[cfg(test)]
mod kv_dtype_tests;
pub mod ops;
pub mod plan;
#[cfg(test)]
mod sampling_tests;
pub mod sizing;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

pub use cpu_ops::CpuOps;
pub use executor::{DeviceExecutor, DeviceExecutorConfig, DeviceLayer, DeviceModel};

/// Whether `device` can keep its KV cache as `kv_dtype`: a GPU takes any;
/// the CPU engine keeps f32 and takes only the default (which names the
/// GPU's), so a configured f16/fp8 cache is refused rather than ignored.
pub fn check_kv_dtype(device: Device, kv_dtype: sizing::KvDType) -> Result<(), String> {
    match device {
        Device::Cpu if kv_dtype != sizing::KvDType::default() => Err(format!(
            "kv_dtype = \"{}\" needs device = \"cuda:N\": the CPU engine keeps its KV cache in f32",
            kv_dtype.as_str()
        )),
        _ => Ok(()),
    }
}

/// Where a model's steps run: `"cpu"` or `"cuda:N"` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// The GPU with this CUDA ordinal.
    Cuda(u32),
}

impl FromStr for Device {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("cpu") {
            return Ok(Device::Cpu);
        }
        let ordinal = if t.eq_ignore_ascii_case("cuda") {
            Some("0")
        } else {
            t.strip_prefix("cuda:")
        };
        match ordinal.map(str::parse::<u32>) {
            Some(Ok(n)) => Ok(Device::Cuda(n)),
            _ => Err(format!(
                "{text:?} is not a device; write \"cpu\" or \"cuda:N\" (N the GPU's index, e.g. \"cuda:0\")"
            )),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this build can run on `device` at all, before any model is
/// loaded: a CUDA device in a build without the `cuda` feature is refused
/// with what to do. (Whether a GPU is present is known only when the
/// executor opens it.)
pub fn check_supported(device: Device) -> Result<(), String> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(_) if cfg!(feature = "cuda") => Ok(()),
        Device::Cuda(_) => Err(format!(
            "device = \"{device}\" needs a Sluice built with CUDA support, and this binary was \
             built without it; rebuild with `cargo build --release --features cuda` (the GPU \
             machine needs the NVIDIA driver and cuBLAS 13), or set device = \"cpu\""
        )),
    }
}
