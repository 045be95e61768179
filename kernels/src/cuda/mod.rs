//! The CUDA kernels on a device (the `cuda` feature): [`Gpu::open`] finds
//! the driver, makes a context and a stream, and loads the kernels that
//! `build.rs` compiled ahead of time; one typed launch method per kernel
//! ([`launch`]) takes the shape structs of [`crate::cuda_twin`] and device
//! buffers. [`telemetry`] reads NVML; [`check`] compares every kernel with
//! its CPU twin on the device.
//!
//! Everything loads at run time (cudarc's `dynamic-loading`): the binary
//! links only libc and runs on machines without CUDA. cudarc panics when it
//! first touches a missing libcuda, so [`Gpu::open`] asks whether the
//! library is there before anything else and returns
//! [`GpuError::NoDriver`] with what to do instead.
//!
//! One stream per `Gpu`, not the legacy default stream, because CUDA graphs
//! can only be captured on a real stream; and cudarc's per-buffer event
//! tracking is switched off, because with one stream it only adds event
//! records, which would also end up inside captured graphs.

pub mod check;
mod launch;
pub mod telemetry;

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DriverError};
use cudarc::nvrtc::Ptx;

pub use cudarc;
pub use launch::{AttentionBuffers, DeviceKv, In, Out, RopeKvBuffers};
pub use telemetry::GpuTelemetry;

use crate::cuda_twin::KvDType;
use crate::KernelError;

include!(concat!(env!("OUT_DIR"), "/cuda_modules.rs"));

/// One `.cu` file compiled by `build.rs`.
pub(crate) struct EmbeddedModule {
    pub(crate) name: &'static str,
    pub(crate) cubin: &'static [u8],
    pub(crate) ptx: &'static str,
}

/// Why a GPU could not be opened or a kernel not launched.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "no GPU: the CUDA driver library (libcuda.so.1) is not on this machine; \
         install the NVIDIA driver (580 or newer for CUDA 13.0) or use device = \"cpu\""
    )]
    NoDriver,
    #[error("no CUDA device {ordinal}: the driver sees {count}")]
    NoSuchDevice { ordinal: usize, count: usize },
    #[error(
        "{name} has compute capability {major}.{minor}; Sluice's kernels are built \
         for 9.0 (H100/H200) and newer"
    )]
    TooOld {
        name: String,
        major: i32,
        minor: i32,
    },
    #[error("CUDA driver call failed while {what}: {source}")]
    Driver {
        what: &'static str,
        #[source]
        source: DriverError,
    },
    #[error("kernel module {0} is not embedded in this build")]
    MissingKernel(&'static str),
    #[error("the CUDA driver panicked while {0} (an unusable or too old libcuda?)")]
    DriverPanicked(&'static str),
    #[error(transparent)]
    Shape(#[from] KernelError),
}

/// `map_err` for driver calls: says what was being done.
pub(crate) fn driver(what: &'static str) -> impl FnOnce(DriverError) -> GpuError {
    move |source| GpuError::Driver { what, source }
}

/// Which image the kernels were loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelImage {
    /// The `sm_90a` cubin, as compiled (H100/H200).
    Cubin,
    /// The `compute_90` PTX, compiled by the driver at load (newer cards).
    Ptx,
}

/// The loaded kernel functions.
pub(crate) struct Kernels {
    pub(crate) embedding_gather: CudaFunction,
    pub(crate) residual_add: CudaFunction,
    pub(crate) silu_mul: CudaFunction,
    pub(crate) rms_norm: CudaFunction,
    pub(crate) add_rms_norm: CudaFunction,
    pub(crate) rope_kv_write: KvVariants,
    pub(crate) paged_attention: KvVariants,
    pub(crate) sample: CudaFunction,
    pub(crate) gemv_q8_0: CudaFunction,
}

/// One kernel's variants, one per KV cache element type.
pub(crate) struct KvVariants {
    bf16: CudaFunction,
    f16: CudaFunction,
    fp8_e4m3: CudaFunction,
}

impl KvVariants {
    pub(crate) fn get(&self, dtype: KvDType) -> &CudaFunction {
        match dtype {
            KvDType::Bf16 => &self.bf16,
            KvDType::F16 => &self.f16,
            KvDType::Fp8E4m3 => &self.fp8_e4m3,
        }
    }
}

/// One CUDA device with its context, a stream and the kernels loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pub(crate) kernels: Kernels,
    name: String,
    compute_capability: (i32, i32),
    image: KernelImage,
}

impl Gpu {
    /// Opens device `ordinal`; never panics on a machine without CUDA.
    pub fn open(ordinal: usize) -> Result<Self, GpuError> {
        // SAFETY: only tries to dlopen the library; no symbol is called.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(GpuError::NoDriver);
        }
        // cudarc panics if libcuda lacks a symbol it binds (a driver older
        // than the CUDA 13.0 API): report that instead of aborting a server.
        let count = std::panic::catch_unwind(CudaContext::device_count)
            .map_err(|_| GpuError::DriverPanicked("counting devices"))?
            .map_err(driver("counting devices"))?;
        let count = usize::try_from(count).unwrap_or(0);
        if ordinal >= count {
            return Err(GpuError::NoSuchDevice { ordinal, count });
        }
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| GpuError::DriverPanicked("creating a context"))?
            .map_err(driver("creating a context"))?;
        let name = ctx.name().map_err(driver("reading the device name"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver("reading the compute capability"))?;
        if major < 9 {
            return Err(GpuError::TooOld { name, major, minor });
        }
        // SAFETY: no stream or buffer exists yet whose events could be in use.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver("creating a stream"))?;
        let (modules, image) = load_modules(&ctx, (major, minor))?;
        let function =
            |module: &'static str, name: &'static str| -> Result<CudaFunction, GpuError> {
                let m = modules
                    .iter()
                    .find(|(n, _)| *n == module)
                    .map(|(_, m)| m)
                    .ok_or(GpuError::MissingKernel(module))?;
                m.load_function(name)
                    .map_err(driver("loading a kernel function"))
            };
        let kernels = Kernels {
            embedding_gather: function("elementwise", "sluice_embedding_gather")?,
            residual_add: function("elementwise", "sluice_residual_add")?,
            silu_mul: function("elementwise", "sluice_silu_mul")?,
            rms_norm: function("norm", "sluice_rms_norm")?,
            add_rms_norm: function("norm", "sluice_add_rms_norm")?,
            rope_kv_write: KvVariants {
                bf16: function("rope_kv", "sluice_rope_kv_write")?,
                f16: function("rope_kv", "sluice_rope_kv_write_f16")?,
                fp8_e4m3: function("rope_kv", "sluice_rope_kv_write_fp8_e4m3")?,
            },
            paged_attention: KvVariants {
                bf16: function("attention", "sluice_paged_attention")?,
                f16: function("attention", "sluice_paged_attention_f16")?,
                fp8_e4m3: function("attention", "sluice_paged_attention_fp8_e4m3")?,
            },
            sample: function("sample", "sluice_sample")?,
            gemv_q8_0: function("gemv_q8_0", "sluice_gemv_q8_0")?,
        };
        Ok(Self {
            ctx,
            stream,
            kernels,
            name,
            compute_capability: (major, minor),
            image,
        })
    }

    /// The context, for cuBLAS handles, allocations and events.
    pub fn ctx(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every launch goes to (capture CUDA graphs on it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// Whether the kernels run from the cubin or from JIT-compiled PTX.
    pub fn kernel_image(&self) -> KernelImage {
        self.image
    }
}

/// A loaded module and the `.cu` file it came from.
type NamedModule = (&'static str, Arc<CudaModule>);

/// Every embedded module, from its cubin on compute capability 9.0 (what it
/// was built for), from PTX otherwise or when the cubin is refused.
fn load_modules(
    ctx: &Arc<CudaContext>,
    capability: (i32, i32),
) -> Result<(Vec<NamedModule>, KernelImage), GpuError> {
    if capability == (9, 0) {
        let cubins: Result<Vec<_>, DriverError> = MODULES
            .iter()
            .map(|m| Ok((m.name, ctx.load_module(Ptx::from_binary(m.cubin.to_vec()))?)))
            .collect();
        if let Ok(modules) = cubins {
            return Ok((modules, KernelImage::Cubin));
        }
    }
    let modules = MODULES
        .iter()
        .map(|m| Ok((m.name, ctx.load_module(Ptx::from_src(m.ptx))?)))
        .collect::<Result<Vec<_>, DriverError>>()
        .map_err(driver("loading the kernels' PTX"))?;
    Ok((modules, KernelImage::Ptx))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Here (and in CI) there is no libcuda: opening says so, without a
    /// panic. On a GPU machine the same test checks that a device opens.
    #[test]
    fn open_says_clearly_when_there_is_no_gpu() {
        // SAFETY: only tries to dlopen the library.
        let present = unsafe { cudarc::driver::sys::is_culib_present() };
        match Gpu::open(0) {
            Err(GpuError::NoDriver) => {
                assert!(!present);
                let message = GpuError::NoDriver.to_string();
                assert!(message.starts_with("no GPU:"), "{message}");
                assert!(message.contains("libcuda.so.1"), "{message}");
            }
            Ok(gpu) => {
                assert!(present);
                assert!(!gpu.name().is_empty());
            }
            Err(other) => assert!(
                present,
                "without libcuda the error must be NoDriver: {other}"
            ),
        }
    }

    /// The executor keeps a `Gpu` in a struct shared across threads.
    #[test]
    fn a_gpu_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Gpu>();
    }

    #[test]
    fn every_kernel_file_is_embedded_with_both_images() {
        let names: Vec<&str> = MODULES.iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            [
                "attention",
                "elementwise",
                "gemv_q8_0",
                "norm",
                "rope_kv",
                "sample"
            ]
        );
        for m in MODULES {
            // An ELF cubin, and PTX text for compute_90.
            assert_eq!(&m.cubin[..4], b"\x7fELF", "{}", m.name);
            assert!(m.ptx.contains(".target sm_90"), "{}", m.name);
            assert!(m.ptx.contains(".entry sluice_"), "{}", m.name);
        }
        assert!(PTXAS_REPORT.contains("sluice_paged_attention"));
        assert!(!PTXAS_REPORT.is_empty());
    }
}
