//! The `kv` section: the CUDA executor with an f16 and an fp8 e4m3 KV cache
//! against the same executor with a bf16 cache (the kernels' f16/fp8
//! variants on the request path): the logits difference, top-1 agreement at
//! the same contexts, and greedy texts, on the tiny model and, when given,
//! the demo model. The targets are those the CPU twins meet
//! (`device::kv_dtype_tests`).

use serde_json::{json, Value};
use sluice_models::{load_llm, ActivationPrecision, LoadKnobs, ModelError};

use super::super::compare::compare_executors;
use super::super::cuda::CudaOps;
use super::super::plan::PlanLimits;
use super::super::sizing::KvDType;
use super::super::{DeviceExecutor, DeviceExecutorConfig, DeviceModel};
use super::{load_tiny, tiny_prompts, PROMPTS};
use crate::executor::Executor;

fn executor(
    ops: &CudaOps,
    model: &sluice_models::Llama,
    kv: KvDType,
) -> Result<DeviceExecutor<CudaOps>, ModelError> {
    let (block_size, num_blocks) = (16, 64);
    let mut ops = ops.clone().with_kv_dtype(kv);
    let weights = DeviceModel::upload(&mut ops, model)?;
    let limits = PlanLimits::for_engine(512, 8, num_blocks * block_size, block_size, num_blocks);
    DeviceExecutor::new(
        ops,
        weights,
        DeviceExecutorConfig {
            limits,
            graphs: true,
        },
    )
}

/// f16 and fp8 against bf16 on one model.
fn against_bf16(
    ops: &CudaOps,
    model: &sluice_models::Llama,
    prompts: &[Vec<u32>],
) -> Result<Value, ModelError> {
    let mut reference = executor(ops, model, KvDType::Bf16)?;
    let mut out = serde_json::Map::new();
    let mut pass = true;
    for (kv, min_top1) in [(KvDType::F16, 0.95), (KvDType::Fp8E4m3, 0.8)] {
        let mut other = executor(ops, model, kv)?;
        reference.reset()?;
        let (_, _, a) = compare_executors(&mut reference, &mut other, prompts, 64, 32)?;
        let ok = a.top1 >= min_top1;
        pass &= ok;
        out.insert(
            kv.as_str().into(),
            json!({
                "max_logit_diff": a.max_logit_diff, "top1": a.top1,
                "same_text": a.same_text, "prompts": a.prompts,
                "min_top1": min_top1, "pass": ok,
            }),
        );
    }
    out.insert("pass".into(), json!(pass));
    Ok(Value::Object(out))
}

pub fn kv_dtypes(ops: &mut CudaOps, demo: Option<&std::path::Path>) -> Result<Value, ModelError> {
    let tiny = against_bf16(ops, &load_tiny()?, &tiny_prompts())?;
    let mut pass = tiny.get("pass").and_then(Value::as_bool).unwrap_or(false);
    let demo = match demo {
        None => json!({ "skipped": "no demo model in this call" }),
        Some(path) => {
            let knobs = LoadKnobs {
                activations: ActivationPrecision::F32,
                ..LoadKnobs::default()
            };
            let loaded = load_llm(path, knobs, &mut |_, _| {})?;
            let prompts = PROMPTS
                .iter()
                .map(|p| loaded.tokenizer.encode(p, false))
                .collect::<Result<Vec<_>, _>>()?;
            let v = against_bf16(ops, &loaded.model, &prompts)?;
            pass &= v.get("pass").and_then(Value::as_bool).unwrap_or(false);
            v
        }
    };
    Ok(json!({ "tiny": tiny, "demo": demo, "pass": pass }))
}
