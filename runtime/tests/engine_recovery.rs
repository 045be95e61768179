//! A step that panics, injected on a tiny random model: the requests the
//! engine held get an error event (none is left waiting), the engine says it
//! is not serving while it restarts, then serves again with fresh KV memory
//! and scheduler.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::mpsc;
use std::time::Duration;

use sluice_kernels::WeightDType;
use sluice_models::testing::{write_tiny_gguf, TinySpec};
use sluice_models::{load_llm, LoadKnobs, LoadedLlm};
use sluice_runtime::{
    Engine, EngineConfig, EngineEvent, EngineHandle, EventStream, FinishReason, GenerateRequest,
    SamplingParams, StepFault,
};

fn tiny_model() -> (tempfile::TempDir, LoadedLlm) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &TinySpec::default(), WeightDType::Q8_0).unwrap();
    let loaded = load_llm(&path, LoadKnobs::default(), &mut |_, _| {}).unwrap();
    (dir, loaded)
}

fn config() -> EngineConfig {
    EngineConfig {
        num_kv_blocks: Some(64),
        max_num_seqs: 3,
        threads: Some(1),
        ..EngineConfig::default()
    }
}

fn submit(engine: &EngineHandle, i: usize) -> EventStream {
    let prompt_tokens = (0..12).map(|j| ((i * 37 + j * 11) % 256) as u32).collect();
    engine
        .submit(GenerateRequest {
            prompt_tokens,
            params: SamplingParams {
                max_tokens: 24,
                ignore_eos: true,
                ..SamplingParams::default()
            },
            constraint: None,
            session: None,
        })
        .unwrap()
}

enum End {
    Finished(Vec<u32>),
    Error(String),
}

/// Reads a stream to its last event; a stream that closes without one fails
/// the test (that is the hang this engine must not leave behind).
fn end(mut stream: EventStream) -> End {
    let mut ids = Vec::new();
    while let Some(ev) = stream.blocking_recv() {
        match ev {
            EngineEvent::Token { id, .. } => ids.push(id),
            EngineEvent::Finished { reason, .. } => {
                assert_eq!(reason, FinishReason::Length);
                return End::Finished(ids);
            }
            EngineEvent::Error(message) => return End::Error(message),
        }
    }
    panic!("the stream closed without Finished or Error");
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..500 {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting until {what}");
}

#[test]
fn a_panicking_step_fails_every_held_request_then_the_engine_serves_again() {
    let (_dir, loaded) = tiny_model();
    let (release_first_step, hold_first_step) = mpsc::channel();
    let (release_restart, hold_restart) = mpsc::channel();
    let engine = Engine::start_with_injected_fault(
        loaded,
        config(),
        StepFault {
            panic_at_batch_size: 3,
            hold_first_step: Some(hold_first_step),
            hold_restart: Some(hold_restart),
        },
    )
    .unwrap();
    assert!(engine.is_serving());
    assert_eq!(engine.restarts(), 0);

    // The first step holds while three more requests queue: the next step
    // runs three sequences (max_num_seqs) and panics; the fourth waits in
    // the scheduler.
    let held: Vec<EventStream> = (0..4).map(|i| submit(&engine, i)).collect();
    release_first_step.send(()).unwrap();
    for (i, stream) in held.into_iter().enumerate() {
        match end(stream) {
            End::Error(message) => assert!(message.contains("restarted"), "{message}"),
            End::Finished(_) => panic!("request {i} finished although the engine panicked"),
        }
    }
    assert_eq!(engine.restarts(), 1);
    assert!(
        !engine.is_serving(),
        "not serving while the restart is held"
    );

    // Submitted during the restart: served once it is done.
    let after = submit(&engine, 0);
    release_restart.send(()).unwrap();
    let End::Finished(ids) = end(after) else {
        panic!("the request after the restart failed");
    };
    assert!(engine.is_serving());
    assert_eq!(engine.restarts(), 1);

    // Same tokens as an engine that never failed: nothing of the failed
    // step survives in the KV memory or the scheduler.
    let (_dir2, loaded) = tiny_model();
    let reference = Engine::start(loaded, config()).unwrap();
    let End::Finished(want) = end(submit(&reference, 0)) else {
        panic!("the reference engine failed");
    };
    assert_eq!(ids, want);

    wait_for("the engine holds nothing", || {
        let load = engine.load();
        load.in_flight == 0 && load.running == 0 && load.waiting == 0 && load.kv_blocks_used == 0
    });
}
