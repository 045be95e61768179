#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sluice_kernels::rope::RopeStyle;
use sluice_kernels::WeightDType;
use sluice_models::config::Architecture;
use sluice_models::testing::{write_tiny_gguf, TinySpec, TINY_VOCAB};
use sluice_models::{load_llm, LlamaConfig, LoadKnobs, SeqBatch};

use super::compare::{agreement, compare_executors, greedy_run, GreedyRun};
use super::plan::{decode_bucket, PlanError, PlanLimits, StepPlan, DECODE_BUCKETS};
use super::sizing::{
    kv_block_bytes, plan_memory, BufferPlan, KvDType, MemoryBudget, ModelShape, SizingError,
};
use super::*;
use crate::executor::{CpuExecutor, Executor};

const GIB: usize = 1 << 30;

fn limits(block_size: usize, num_blocks: usize) -> PlanLimits {
    PlanLimits {
        max_tokens: 64,
        max_seqs: 64,
        max_blocks_per_seq: 8,
        block_size,
        num_blocks,
    }
}

fn decode(tokens: &[u32], start_pos: usize, table: &[u32]) -> SeqBatch<'static> {
    // Tests only: leak the small slices so the batch outlives the helper.
    SeqBatch {
        tokens: Vec::leak(tokens.to_vec()),
        start_pos,
        block_table: Vec::leak(table.to_vec()),
        want_logits: true,
    }
}

#[test]
fn decode_buckets_are_exact_to_eight_then_powers_of_two() {
    let got: Vec<_> = (1..=64).map(|n| decode_bucket(n).unwrap()).collect();
    for (n, b) in (1..=64).zip(&got) {
        let expected = match n {
            1..=8 => n,
            9..=16 => 16,
            17..=32 => 32,
            _ => 64,
        };
        assert_eq!(*b, expected, "batch {n}");
    }
    assert_eq!(decode_bucket(65), None);
    assert_eq!(DECODE_BUCKETS.len(), 11);
}

#[test]
fn a_decode_batch_of_eleven_runs_in_sixteen_with_padding_that_writes_nowhere() {
    let seqs: Vec<_> = (0..11u32)
        .map(|i| decode(&[100 + i], 5 + (i % 3) as usize, &[2 * i, 2 * i + 1]))
        .collect();
    let plan = StepPlan::pack(&seqs, &limits(4, 64), true).unwrap();
    assert_eq!(plan.graph_bucket, Some(16));
    assert_eq!((plan.rows(), plan.seqs()), (16, 16));
    assert_eq!((plan.real_tokens, plan.real_seqs), (11, 11));
    // Sequence 4 decodes position 6: block 1 of its table (id 9), offset 2.
    assert_eq!(plan.tokens[4], 104);
    assert_eq!(plan.positions[4], 6);
    assert_eq!(plan.slot_mapping[4], 9 * 4 + 2);
    assert_eq!(plan.seq_lens[4], 7);
    // Padding: token 0 at position 0, no slot, no keys, never read out.
    assert_eq!(&plan.slot_mapping[11..], &[-1; 5]);
    assert_eq!(&plan.seq_lens[11..], &[0; 5]);
    assert_eq!(&plan.tokens[11..], &[0; 5]);
    assert_eq!(plan.logits_rows, (0..11).collect::<Vec<i32>>());
    assert_eq!(plan.query_start, (0..=16).collect::<Vec<i32>>());
    // Block tables keep their fixed width; a padding row is all zeros.
    assert_eq!(plan.block_tables.len(), 16 * 8);
    assert_eq!(&plan.block_tables[4 * 8..4 * 8 + 3], &[8, 9, 0]);
    assert!(plan.block_tables[11 * 8..].iter().all(|&b| b == 0));
}

#[test]
fn without_graphs_a_decode_batch_is_not_padded() {
    let seqs: Vec<_> = (0..11u32).map(|i| decode(&[i], 0, &[i])).collect();
    let plan = StepPlan::pack(&seqs, &limits(4, 64), false).unwrap();
    assert_eq!(plan.graph_bucket, None);
    assert_eq!(plan.rows(), 11);
}

#[test]
fn a_step_with_a_prefill_chunk_is_packed_unpadded_with_its_query_offsets() {
    let mut seqs = vec![
        decode(&[1, 2, 3, 4, 5], 6, &[9, 3, 4]),
        decode(&[7], 2, &[5]),
        decode(&[8, 9], 0, &[1]),
    ];
    seqs[2].want_logits = false;
    let plan = StepPlan::pack(&seqs, &limits(4, 16), true).unwrap();
    assert_eq!(plan.graph_bucket, None);
    assert_eq!(plan.query_start, vec![0, 5, 6, 8]);
    assert_eq!(plan.seq_lens, vec![11, 3, 2]);
    assert_eq!(plan.positions, vec![6, 7, 8, 9, 10, 2, 0, 1]);
    // Positions 6, 7 sit in block 3 (offsets 2, 3); 8..10 in block 4.
    assert_eq!(plan.slot_mapping, vec![14, 15, 16, 17, 18, 22, 4, 5]);
    // Only the last row of each sequence that wants logits.
    assert_eq!(plan.logits_rows, vec![4, 5]);
    assert_eq!((plan.max_query_len, plan.max_seq_len), (5, 11));
}

#[test]
fn packing_refuses_steps_the_buffers_cannot_hold() {
    let l = limits(4, 16);
    let long: Vec<u32> = (0..65).collect();
    let table: Vec<u32> = (0..8).collect();
    assert!(matches!(
        StepPlan::pack(&[decode(&long, 0, &table)], &l, true),
        Err(PlanError::TooManyTokens {
            tokens: 65,
            max: 64
        })
    ));
    assert_eq!(
        StepPlan::pack(&[decode(&[1], 8, &[0, 1])], &l, true),
        Err(PlanError::TableTooShort {
            seq: 0,
            needed: 3,
            given: 2
        })
    );
    assert_eq!(
        StepPlan::pack(&[decode(&[1], 40, &table)], &l, true),
        Err(PlanError::ContextTooLong {
            seq: 0,
            needed: 11,
            max: 8
        })
    );
    assert_eq!(
        StepPlan::pack(&[decode(&[1], 0, &[16])], &l, true),
        Err(PlanError::BlockOutOfRange {
            seq: 0,
            block: 16,
            num_blocks: 16
        })
    );
    assert_eq!(
        StepPlan::pack(&[decode(&[], 0, &[1])], &l, true),
        Err(PlanError::EmptySequence { seq: 0 })
    );
}

#[test]
fn limits_leave_room_for_the_largest_bucket_the_sequence_cap_allows() {
    let l = PlanLimits::for_engine(512, 11, 1000, 16, 100);
    assert_eq!((l.max_tokens, l.max_seqs), (512, 16));
    assert_eq!(l.max_blocks_per_seq, 63);
    let small = PlanLimits::for_engine(8, 32, 64, 16, 100);
    assert_eq!((small.max_tokens, small.max_seqs), (32, 32));
}

#[test]
fn device_names_parse_and_print() {
    assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
    assert_eq!("cuda:1".parse::<Device>(), Ok(Device::Cuda(1)));
    assert_eq!(" CUDA ".parse::<Device>(), Ok(Device::Cuda(0)));
    assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
    let err = "gpu0".parse::<Device>().unwrap_err();
    assert!(err.contains("\"cpu\" or \"cuda:N\""), "{err}");
    assert!("cuda:-1".parse::<Device>().is_err());
}

#[test]
fn a_cuda_device_in_a_build_without_cuda_is_refused_with_what_to_do() {
    let result = check_supported(Device::Cuda(0));
    if cfg!(feature = "cuda") {
        assert!(result.is_ok());
    } else {
        let err = result.unwrap_err();
        assert!(err.contains("--features cuda"), "{err}");
        assert!(err.contains("device = \"cpu\""), "{err}");
    }
    assert!(check_supported(Device::Cpu).is_ok());
}

// ---- sizing ----

fn smollm2_135m() -> LlamaConfig {
    LlamaConfig {
        architecture: Architecture::Llama,
        vocab_size: 49_152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        rope_style: RopeStyle::Interleaved,
        rope_scaling: None,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
    }
}

#[test]
fn llama31_8b_has_eight_billion_weights_and_128_kib_of_kv_per_token() {
    let s = ModelShape::llama31_8b();
    // 32 x 218,103,808 layer matrix values + 2 x 525,336,576 (embedding,
    // head) + 65 norms of 4096.
    assert_eq!(s.layer_matrix_params(), 218_103_808);
    assert_eq!(
        s.params(),
        32 * (218_103_808 + 2 * 4096) + 2 * 525_336_576 + 4096
    );
    assert_eq!(s.params(), 8_030_261_248);
    assert_eq!(s.params_read_per_step(), 7_504_658_432);
    assert_eq!(s.kv_bytes_per_token(KvDType::Bf16), 128 << 10);
    assert_eq!(s.kv_bytes_per_token(KvDType::Fp8E4m3), 64 << 10);
    assert_eq!(kv_block_bytes(&s, 16, KvDType::Bf16), 2 << 20);
}

#[test]
fn the_demo_models_shape_matches_its_published_size() {
    let s = ModelShape::of(&smollm2_135m());
    assert_eq!(s.params(), 134_515_008);
    assert_eq!(s.kv_bytes_per_token(KvDType::Bf16), 2 * 30 * 192 * 2);
}

#[test]
fn the_buffer_plan_for_the_largest_bucket_is_the_sum_of_its_buffers() {
    let s = ModelShape::llama31_8b();
    let plan = BufferPlan::for_step(&s, 64, 64, 32, 2);
    // normed, qkv, q, attn, proj, gate_up, ffn_act
    let bf16_per_row = 4096 + 6144 + 4096 + 4096 + 4096 + 2 * 14_336 + 14_336;
    let expected = 64 * 4096 * 4                 // f32 residual stream
        + 64 * bf16_per_row * 2                  // bf16 activations
        + 64 * 4096 * 2                          // head_normed
        + 64 * 128_256 * 4                       // f32 logits
        + 4 * (3 * 64 + 64 * 32 + 64 + 65 + 64); // i32 ids
    assert_eq!(plan.bytes(), expected);
    assert_eq!(plan.buffers.iter().filter(|b| b.elem_bytes == 4).count(), 9);
}

#[test]
fn an_80_gib_card_holds_the_8b_model_and_about_28_thousand_kv_blocks() {
    let s = ModelShape::llama31_8b();
    let l = PlanLimits::for_engine(2048, 64, 8192, 16, 0);
    let budget = MemoryBudget::for_card(79 * GIB, 80 * GIB);
    let plan = plan_memory(&s, &l, KvDType::Bf16, &budget).unwrap();
    assert_eq!(plan.weight_bytes, 2 * 8_030_261_248);
    // 90% of 80 GiB less the 1 GiB others hold, less weights, buffers and
    // workspace, in 2 MiB blocks.
    let usable = (80.0 * 0.9) as usize * GIB - GIB;
    let expected = (usable - plan.weight_bytes - plan.activation_bytes - (512 << 20)) / (2 << 20);
    assert_eq!(plan.num_blocks, expected);
    assert!(
        (27_500..29_000).contains(&plan.num_blocks),
        "{}",
        plan.num_blocks
    );
    assert!(plan.weight_bytes + plan.activation_bytes + plan.kv_bytes() <= usable);
}

#[test]
fn memory_others_hold_counts_against_the_utilisation_cap() {
    let s = ModelShape::llama31_8b();
    let l = PlanLimits::for_engine(512, 64, 8192, 16, 0);
    let alone = plan_memory(
        &s,
        &l,
        KvDType::Bf16,
        &MemoryBudget::for_card(80 * GIB, 80 * GIB),
    );
    let shared = plan_memory(
        &s,
        &l,
        KvDType::Bf16,
        &MemoryBudget::for_card(60 * GIB, 80 * GIB),
    );
    let (alone, shared) = (alone.unwrap(), shared.unwrap());
    assert_eq!(alone.num_blocks - shared.num_blocks, 20 * GIB / (2 << 20));
    let f8 = plan_memory(
        &s,
        &l,
        KvDType::Fp8E4m3,
        &MemoryBudget::for_card(80 * GIB, 80 * GIB),
    );
    assert_eq!(f8.unwrap().num_blocks / 2, alone.num_blocks);
}

#[test]
fn a_model_larger_than_the_card_is_refused_with_the_sizes() {
    let s = ModelShape::llama31_8b();
    let l = PlanLimits::for_engine(512, 64, 8192, 16, 0);
    let err = plan_memory(
        &s,
        &l,
        KvDType::Bf16,
        &MemoryBudget::for_card(12 * GIB, 16 * GIB),
    )
    .unwrap_err();
    let SizingError::DoesNotFit { weights_gib, .. } = &err;
    assert!((weights_gib - 14.96).abs() < 0.01, "{weights_gib}");
    let text = err.to_string();
    assert!(text.contains("weights 14.96 GiB"), "{text}");
    assert!(text.contains("12.00 GiB free"), "{text}");
}

#[test]
fn the_demo_model_on_a_small_card_keeps_most_memory_for_kv() {
    let s = ModelShape::of(&smollm2_135m());
    let l = PlanLimits::for_engine(512, 32, 8192, 16, 0);
    let plan = plan_memory(
        &s,
        &l,
        KvDType::Bf16,
        &MemoryBudget::for_card(8 * GIB, 8 * GIB),
    )
    .unwrap();
    let per_block = 16 * 2 * 30 * 192 * 2;
    assert_eq!(plan.kv_block_bytes, per_block);
    assert!(plan.kv_bytes() > 6 * GIB, "{}", plan.kv_bytes());
}

// ---- the device step on the CPU, against the CPU engine ----

fn greedy(exec: &mut dyn Executor, prompts: &[Vec<u32>], chunk: usize, steps: usize) -> GreedyRun {
    greedy_run(exec, prompts, chunk, steps, None).unwrap()
}

fn max_logit_diff(a: &GreedyRun, b: &GreedyRun) -> f32 {
    agreement(a, b, b).max_logit_diff
}

fn device_executor(
    model: &sluice_models::Llama,
    ops: CpuOps,
    num_blocks: usize,
    block_size: usize,
    graphs: bool,
) -> DeviceExecutor<CpuOps> {
    let mut ops = ops;
    let weights = DeviceModel::upload(&mut ops, model).unwrap();
    let limits = PlanLimits::for_engine(64, 8, num_blocks * block_size, block_size, num_blocks);
    DeviceExecutor::new(ops, weights, DeviceExecutorConfig { limits, graphs }).unwrap()
}

fn tiny_prompts() -> Vec<Vec<u32>> {
    (0..5)
        .map(|i| {
            (0..7 + 5 * i)
                .map(|j| ((i * 31 + j * 7 + j * j) % 256) as u32)
                .collect()
        })
        .collect()
}

fn tiny_model(spec: &TinySpec, dtype: WeightDType) -> sluice_models::Llama {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, spec, dtype).unwrap();
    let knobs = LoadKnobs {
        activations: sluice_models::ActivationPrecision::F32,
        ..LoadKnobs::default()
    };
    load_llm(&path, knobs, &mut |_, _| {}).unwrap().model
}

#[test]
fn the_device_step_on_cpu_ops_matches_the_cpu_engine_on_a_tiny_model() {
    for qwen2 in [false, true] {
        let spec = TinySpec {
            qwen2,
            ..TinySpec::default()
        };
        let model = tiny_model(&spec, WeightDType::F32);
        let mut device = device_executor(&model, CpuOps::default(), 60, 4, true);
        let mut cpu = CpuExecutor::new(model, 60, 4, 1).unwrap();
        assert_eq!(device.vocab_size(), TINY_VOCAB);
        let prompts = tiny_prompts();
        // Chunks of 3 put prefill chunks and decodes of other sequences in
        // the same steps; 5 decoding sequences pad to bucket 5, then the
        // graph path is taken for every decode step.
        let a = greedy(&mut cpu, &prompts, 3, 12);
        let b = greedy(&mut device, &prompts, 3, 12);
        assert_eq!(a.tokens, b.tokens, "qwen2 = {qwen2}");
        let diff = max_logit_diff(&a, &b);
        assert!(diff < 1e-4, "qwen2 = {qwen2}: logits differ by {diff}");
    }
}

#[test]
fn padding_rows_change_nothing_a_batch_of_three_in_bucket_three_equals_unpadded() {
    let model = tiny_model(&TinySpec::default(), WeightDType::Q8_0);
    let prompts: Vec<Vec<u32>> = tiny_prompts().into_iter().take(3).collect();
    let mut padded = device_executor(&model, CpuOps::default(), 30, 4, true);
    let mut plain = device_executor(&model, CpuOps::default(), 30, 4, false);
    let a = greedy(&mut padded, &prompts, 64, 10);
    let b = greedy(&mut plain, &prompts, 64, 10);
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(max_logit_diff(&a, &b), 0.0);
}

#[test]
fn reset_forgets_every_sequence() {
    let model = tiny_model(&TinySpec::default(), WeightDType::F32);
    let mut device = device_executor(&model, CpuOps::default(), 20, 4, true);
    let prompts = tiny_prompts()[..2].to_vec();
    let first = greedy(&mut device, &prompts, 4, 6);
    device.reset().unwrap();
    assert!(device.state_is_zero_for_tests());
    let second = greedy(&mut device, &prompts, 4, 6);
    assert_eq!(first.tokens, second.tokens);
}

#[test]
fn a_bad_step_is_an_error_not_a_panic() {
    let model = tiny_model(&TinySpec::default(), WeightDType::F32);
    let mut device = device_executor(&model, CpuOps::default(), 8, 4, true);
    let bad_token = [TINY_VOCAB as u32];
    let table = [0u32, 1];
    let err = device
        .execute(&[SeqBatch {
            tokens: &bad_token,
            start_pos: 0,
            block_table: &table,
            want_logits: true,
        }])
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let err = device
        .execute(&[SeqBatch {
            tokens: &[1],
            start_pos: 8,
            block_table: &table,
            want_logits: true,
        }])
        .unwrap_err();
    assert!(err.to_string().contains("needs 3 blocks"), "{err}");
}

#[test]
fn random_weights_of_a_shape_run_and_give_finite_logits() {
    let cfg = LlamaConfig {
        vocab_size: 300,
        hidden_size: 64,
        intermediate_size: 96,
        num_layers: 3,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        tie_word_embeddings: false,
        ..smollm2_135m()
    };
    let mut ops = CpuOps::default();
    let model = DeviceModel::random(&mut ops, &cfg, 11).unwrap();
    let limits = PlanLimits::for_engine(64, 8, 64, 4, 32);
    let mut exec = DeviceExecutor::new(
        ops,
        model,
        DeviceExecutorConfig {
            limits,
            graphs: true,
        },
    )
    .unwrap();
    let run = greedy(&mut exec, &[vec![1, 2, 3], vec![4, 5]], 8, 4);
    assert!(run.logits.iter().flatten().flatten().all(|v| v.is_finite()));
    assert!(run.logits[0][0].iter().any(|&v| v != 0.0));
}

/// The demo model (SmolLM2-135M, Q4_1): the device step over CPU ops gives
/// the CPU engine's greedy text, with f32 weights exactly and with the
/// weights rounded to bf16 as a GPU holds them on at least 4 of 5 prompts
/// (the target for the GPU).
#[test]
fn the_device_step_matches_the_cpu_engine_on_the_demo_model() {
    let path = sluice_models::demo_chat_model_path();
    if !path.exists() {
        eprintln!(
            "skipped: run scripts/fetch-models.sh for {}",
            path.display()
        );
        return;
    }
    let knobs = LoadKnobs {
        activations: sluice_models::ActivationPrecision::F32,
        ..LoadKnobs::default()
    };
    let loaded = load_llm(&path, knobs, &mut |_, _| {}).unwrap();
    let texts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time, a small robot",
        "The three primary colours are",
        "To make a cup of tea, first",
    ];
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| loaded.tokenizer.encode(t, false).unwrap())
        .collect();
    let model = loaded.model;
    let mut exact = device_executor(&model, CpuOps::default(), 40, 16, true);
    let bf16 = CpuOps {
        round_weights_to_bf16: true,
        ..CpuOps::default()
    };
    let mut rounded = device_executor(&model, bf16, 40, 16, true);
    let mut cpu = CpuExecutor::new(model, 40, 16, 2).unwrap();
    let (want, got, exact_agreement) =
        compare_executors(&mut cpu, &mut exact, &prompts, 5, 32).unwrap();
    assert_eq!(want.tokens, got.tokens);
    assert!(exact_agreement.max_logit_diff < 1e-2, "{exact_agreement:?}");
    assert_eq!(exact_agreement.top1, 1.0);
    cpu.reset().unwrap();
    let (_, _, rounded_agreement) =
        compare_executors(&mut cpu, &mut rounded, &prompts, 5, 32).unwrap();
    assert!(
        rounded_agreement.same_text >= 4,
        "bf16 weights: {rounded_agreement:?}"
    );
    assert!(
        rounded_agreement.top1 > 0.9,
        "bf16 weights: {rounded_agreement:?}"
    );
}

#[test]
fn a_forced_run_sees_the_references_contexts_and_scores_its_own_choices() {
    let model = tiny_model(&TinySpec::default(), WeightDType::F32);
    let mut a = device_executor(&model, CpuOps::default(), 40, 4, true);
    let mut cpu = CpuExecutor::new(model, 40, 4, 1).unwrap();
    let prompts = tiny_prompts()[..2].to_vec();
    let (want, free, same) = compare_executors(&mut cpu, &mut a, &prompts, 4, 8).unwrap();
    assert_eq!(same.prompts, 2);
    assert_eq!(same.same_text, 2);
    assert_eq!(same.top1, 1.0);
    assert_eq!(want.tokens, free.tokens);
    // A run forced onto other tokens scores its own choices against them.
    let mut other = want.clone();
    other.tokens[0][0] = (other.tokens[0][0] + 1) % TINY_VOCAB as u32;
    a.reset().unwrap();
    let forced = greedy_run(&mut a, &prompts, 4, 8, Some(&other)).unwrap();
    assert_eq!(forced.tokens[0][0], want.tokens[0][0]);
    assert!(
        forced.logits[0][1] != want.logits[0][1],
        "step 1 saw the forced token"
    );
    assert_eq!(agreement(&want, &forced, &free).same_text, 2);
}

#[test]
fn an_engine_on_a_gpu_this_machine_cannot_use_fails_to_start_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &TinySpec::default(), WeightDType::F32).unwrap();
    let loaded = load_llm(&path, LoadKnobs::default(), &mut |_, _| {}).unwrap();
    let cfg = crate::EngineConfig {
        device: Device::Cuda(0),
        num_kv_blocks: Some(16),
        ..crate::EngineConfig::default()
    };
    match crate::Engine::start(loaded, cfg) {
        Err(crate::EngineError::Config(message)) => {
            if cfg!(feature = "cuda") {
                // Built with CUDA, on a machine without a driver (or with a
                // card the tiny model's head size does not fit).
                assert!(message.starts_with("device = \"cuda:0\": "), "{message}");
            } else {
                assert!(message.contains("--features cuda"), "{message}");
            }
        }
        Err(other) => panic!("unexpected error: {other}"),
        // Only where a usable GPU is present.
        Ok(_) => assert!(check_supported(Device::Cuda(0)).is_ok()),
    }
}
