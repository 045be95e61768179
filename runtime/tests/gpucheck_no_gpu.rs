//! `sluice-gpucheck` on a machine without a GPU (CI, the build machines):
//! it must say so plainly, write that into its JSON and exit 3, never panic
//! in the CUDA libraries it cannot find. On a GPU machine this test is not
//! the check; `scripts/gpu-check.sh run` is.

#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn the_device_check_says_no_gpu_and_exits_3_without_one() {
    // SAFETY: only tries to dlopen the driver library.
    if unsafe { sluice_kernels::cuda::cudarc::driver::sys::is_culib_present() } {
        eprintln!("skipped: this machine has a CUDA driver");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("check.json");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-gpucheck"))
        .args(["--json", json.to_str().unwrap(), "--deadline-s", "30"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.starts_with("no GPU: "), "{stdout}");
    assert!(stdout.contains("libcuda.so.1"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["gpu"], false);
}
