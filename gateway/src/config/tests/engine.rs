//! `[models.engine]`: the device and the KV cache's dtype.

use super::*;

#[test]
fn the_engine_device_is_cpu_by_default_and_parsed_by_name() {
    let cfg = load_str("[[models]]\nid = \"m\"\npath = \"p\"\n", &[]).unwrap();
    assert_eq!(cfg.models[0].engine.device, sluice_runtime::Device::Cpu);
    let e = err_of(
        "[[models]]\nid = \"m\"\npath = \"p\"\n[models.engine]\ndevice = \"gpu0\"\n",
        &[],
    );
    assert!(e.starts_with("models[0].engine.device"), "{e}");
    assert!(e.contains("\"cuda:N\""), "{e}");
}

#[test]
fn a_cuda_device_is_refused_at_load_by_a_build_without_cuda() {
    let text = "[[models]]\nid = \"m\"\npath = \"p\"\n[models.engine]\ndevice = \"cuda:0\"\n";
    match load_str(text, &[]) {
        Ok(cfg) => {
            let supported =
                sluice_runtime::device::check_supported(sluice_runtime::Device::Cuda(0));
            assert!(supported.is_ok(), "a CPU-only build accepted cuda:0");
            assert_eq!(cfg.models[0].engine.device, sluice_runtime::Device::Cuda(0));
        }
        Err(e) => {
            let e = e.to_string();
            assert!(e.starts_with("models[0].engine.device"), "{e}");
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}

#[test]
fn the_kv_dtype_is_parsed_by_name_and_refused_for_the_cpu_engine() {
    let engine =
        |body: &str| format!("[[models]]\nid = \"m\"\npath = \"p\"\n[models.engine]\n{body}\n");
    let cfg = load_str(&engine(""), &[]).unwrap();
    assert_eq!(
        cfg.models[0].engine.kv_dtype,
        sluice_runtime::device::sizing::KvDType::Bf16
    );
    let e = err_of(&engine("device = \"cpu\"\nkv_dtype = \"fp8\""), &[]);
    assert!(e.starts_with("models[0].engine.kv_dtype"), "{e}");
    assert!(e.contains("\"fp8_e4m3\""), "{e}");
    // Not silently ignored: the CPU engine's cache is f32.
    let e = err_of(&engine("kv_dtype = \"fp8_e4m3\""), &[]);
    assert!(e.starts_with("models[0].engine.kv_dtype"), "{e}");
    assert!(e.contains("needs device = \"cuda:N\""), "{e}");
    match load_str(&engine("device = \"cuda:0\"\nkv_dtype = \"f16\""), &[]) {
        Ok(cfg) => assert_eq!(
            cfg.models[0].engine.kv_dtype,
            sluice_runtime::device::sizing::KvDType::F16
        ),
        // A build without `cuda` refuses the device first.
        Err(e) => assert!(e.to_string().contains("--features cuda"), "{e}"),
    }
}
