//! With the `cuda` feature: compiles every `cuda/*.cu` ahead of time to PTX
//! (`compute_90`, the fallback a newer card can JIT) and an `sm_90a` cubin
//! (what an H100/H200 loads as is), and embeds both. Ahead of time because
//! the lent GPU machines have no compiler and no headers; with nvcc from
//! NVIDIA's wheels (`scripts/cuda-toolchain.sh`) it needs no GPU here.
//!
//! A kernel that spills registers to local memory fails the build: a spill
//! in a memory-bound kernel costs more than any tuning gains, and it is
//! invisible unless someone reads ptxas's output. Without the feature this
//! script does nothing, so the default build needs no CUDA at all.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if let Err(message) = build_kernels() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn build_kernels() -> Result<(), String> {
    println!("cargo:rerun-if-env-changed=SLUICE_CUDA_HOME");
    println!("cargo:rerun-if-env-changed=SLUICE_CACHE_DIR");
    let manifest = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env("OUT_DIR")?);
    let src_dir = manifest.join("cuda");
    let nvcc = find_nvcc()?;
    // The folder too, so that a new .cu file is picked up.
    println!("cargo:rerun-if-changed={}", src_dir.display());

    let mut sources = Vec::new();
    let entries = std::fs::read_dir(&src_dir).map_err(|e| format!("{}: {e}", src_dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("cu") => sources.push(path.clone()),
            Some("cuh") => {}
            _ => continue,
        }
        println!("cargo:rerun-if-changed={}", path.display());
    }
    // Sorted, so that the generated module list (and the binary) is stable.
    sources.sort();
    if sources.is_empty() {
        return Err(format!("no .cu files in {}", src_dir.display()));
    }

    let mut generated = String::from("pub(crate) static MODULES: &[EmbeddedModule] = &[\n");
    let mut report = String::new();
    let mut spills = Vec::new();
    for source in &sources {
        let stem = source
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| format!("odd file name {}", source.display()))?;
        let cubin = out_dir.join(format!("{stem}.sm_90a.cubin"));
        let ptx = out_dir.join(format!("{stem}.compute_90.ptx"));
        let ptxas = nvcc_run(
            &nvcc,
            source,
            &["-arch=sm_90a", "-cubin", "-Xptxas", "-v"],
            &cubin,
        )?;
        nvcc_run(&nvcc, source, &["-arch=compute_90", "-ptx"], &ptx)?;
        for line in ptxas.lines().filter(|l| {
            l.contains("Compiling entry")
                || l.contains("spill")
                || l.contains("Used ")
                || l.contains("stack frame")
        }) {
            let line = line.trim();
            writeln!(report, "{line}").map_err(|e| e.to_string())?;
            if spill_bytes(line, "bytes spill stores") + spill_bytes(line, "bytes spill loads") > 0
            {
                spills.push(format!("{stem}.cu: {line}"));
            }
        }
        writeln!(
            generated,
            "    EmbeddedModule {{ name: {stem:?}, cubin: include_bytes!({cubin:?}), ptx: include_str!({ptx:?}) }},"
        )
        .map_err(|e| e.to_string())?;
    }
    generated.push_str("];\n");
    if !spills.is_empty() {
        return Err(format!(
            "register spills (a kernel must not spill; shrink its per-thread state):\n{}\n\nptxas report:\n{report}",
            spills.join("\n")
        ));
    }
    writeln!(
        generated,
        "/// ptxas's register, stack and spill report for every kernel (sm_90a)."
    )
    .map_err(|e| e.to_string())?;
    writeln!(generated, "pub const PTXAS_REPORT: &str = {report:?};").map_err(|e| e.to_string())?;
    let target = out_dir.join("cuda_modules.rs");
    std::fs::write(&target, generated).map_err(|e| format!("{}: {e}", target.display()))?;
    Ok(())
}

/// nvcc from `SLUICE_CUDA_HOME`, else where `scripts/cuda-toolchain.sh` puts it.
fn find_nvcc() -> Result<PathBuf, String> {
    let root = match std::env::var_os("SLUICE_CUDA_HOME") {
        Some(home) => PathBuf::from(home),
        None => {
            let cache = match std::env::var_os("SLUICE_CACHE_DIR") {
                Some(dir) => PathBuf::from(dir),
                None => PathBuf::from(env("HOME")?).join(".cache/sluice"),
            };
            cache.join("cuda-13.0/site/nvidia/cu13")
        }
    };
    let nvcc = root.join("bin/nvcc");
    if nvcc.is_file() {
        Ok(nvcc)
    } else {
        Err(format!(
            "the `cuda` feature needs nvcc, not found at {}: run scripts/cuda-toolchain.sh \
             (and set SLUICE_CUDA_HOME to the folder it prints if you moved it)",
            nvcc.display()
        ))
    }
}

/// Runs nvcc on one source; returns its stderr (ptxas's report goes there).
fn nvcc_run(nvcc: &Path, source: &Path, mode: &[&str], output: &Path) -> Result<String, String> {
    let result = Command::new(nvcc)
        // No --use_fast_math: the twins compare against IEEE expf/sqrtf/division.
        .args(["-O3", "-std=c++17"])
        .args(mode)
        .arg("-o")
        .arg(output)
        .arg(source)
        .output()
        .map_err(|e| format!("could not run {}: {e}", nvcc.display()))?;
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    if !result.status.success() {
        return Err(format!(
            "nvcc failed on {} ({}):\n{stderr}",
            source.display(),
            mode.join(" ")
        ));
    }
    Ok(stderr)
}

/// The number before `what` in a ptxas line ("0 bytes stack frame, 8 bytes
/// spill stores, 8 bytes spill loads"); 0 when absent.
fn spill_bytes(line: &str, what: &str) -> u64 {
    line.split(',')
        .find(|part| part.contains(what))
        .and_then(|part| part.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}
