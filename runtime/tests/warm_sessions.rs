//! Session KV warmth end to end on a tiny random model: a finished turn of a
//! session keeps its blocks through traffic that would otherwise evict them,
//! gives them up under pressure and after its time, and the pool returns to
//! all-free, unheld blocks. Time is a [`ManualClock`]: nothing here depends
//! on how fast the machine is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use sluice_kernels::WeightDType;
use sluice_models::testing::{write_tiny_gguf, TinySpec};
use sluice_models::{load_llm, LoadKnobs};
use sluice_runtime::{
    Clock, Engine, EngineConfig, EngineEvent, EngineHandle, GenerateRequest, LoadSnapshot,
    ManualClock, SamplingParams, SessionKey,
};

const KEEP_WARM: Duration = Duration::from_secs(60);
/// Blocks in the pool; 16 tokens each.
const POOL: usize = 24;

fn engine(keep_warm: Duration, clock: &Arc<ManualClock>) -> (tempfile::TempDir, EngineHandle) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &TinySpec::default(), WeightDType::Q8_0).unwrap();
    let loaded = load_llm(&path, LoadKnobs::default(), &mut |_, _| {}).unwrap();
    let cfg = EngineConfig {
        num_kv_blocks: Some(POOL),
        max_num_seqs: 4,
        threads: Some(1),
        session_keep_warm: keep_warm,
        session_warm_max_blocks: Some(12),
        clock: Clock::manual(clock.clone()),
        ..EngineConfig::default()
    };
    (dir, Engine::start(loaded, cfg).unwrap())
}

fn prompt(i: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|j| ((i * 31 + j * 7 + j * j) % 256) as u32)
        .collect()
}

/// Runs one request to the end: (generated ids, cached prompt tokens).
fn run(
    engine: &EngineHandle,
    prompt_tokens: Vec<u32>,
    max_tokens: usize,
    session: Option<&str>,
) -> (Vec<u32>, usize) {
    let mut events = engine
        .submit(GenerateRequest {
            prompt_tokens,
            params: SamplingParams {
                max_tokens,
                ignore_eos: true,
                ..SamplingParams::default()
            },
            constraint: None,
            session: session.map(SessionKey::new),
        })
        .unwrap();
    let mut ids = Vec::new();
    while let Some(ev) = events.blocking_recv() {
        match ev {
            EngineEvent::Token { id, .. } => ids.push(id),
            EngineEvent::Finished { usage, .. } => return (ids, usage.cached_prompt_tokens),
            EngineEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("stream ended without Finished");
}

/// Polls the load until `done` holds (the engine publishes it after the
/// step that finished the last request, or on its next idle tick).
fn wait_for(engine: &EngineHandle, what: &str, done: impl Fn(&LoadSnapshot) -> bool) {
    for _ in 0..500 {
        let load = engine.load();
        if load.in_flight == 0 && done(&load) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("engine never reached: {what}; load {:?}", engine.load());
}

/// Distinct 150-token prompts (10 blocks each, 9 of them cached once
/// computed), enough of them to cycle every unheld block of the pool twice.
fn flood(engine: &EngineHandle) {
    for i in 0..8 {
        run(engine, prompt(100 + i, 150), 1, None);
    }
}

/// Turn 1 (64 prompt tokens + 16 generated: 4 full blocks), the flood, then
/// turn 2 (turn 1's prompt and answer plus a new question): the prompt
/// tokens turn 2 found cached.
fn second_turn_hits(engine: &EngineHandle, session: Option<&str>) -> usize {
    let first = prompt(1, 64);
    let (answer, _) = run(engine, first.clone(), 16, session);
    flood(engine);
    let mut second = first;
    second.extend(answer);
    second.extend(prompt(2, 20));
    run(engine, second, 4, session).1
}

#[test]
fn a_finished_session_turn_keeps_its_blocks_through_other_traffic() {
    let clock = ManualClock::new();
    let (_d, engine) = engine(KEEP_WARM, &clock);
    let hits = second_turn_hits(&engine, Some("tenant\u{1f}messages\u{1f}alice"));
    // The 4 full blocks of turn 1 (prompt 0..64) were held warm.
    assert_eq!(hits, 64, "turn 2 should reuse turn 1's prefix blocks");
    wait_for(&engine, "turn 2 held warm", |l| {
        l.warm_sessions == 1 && l.kv_blocks_used == 0
    });
    // Held blocks are free blocks: nothing is lost to warmth.
    let load = engine.load();
    assert_eq!(load.kv_blocks_free, POOL);
    assert!(load.kv_blocks_warm >= 4, "{load:?}");
}

#[test]
fn without_a_session_the_same_traffic_evicts_the_first_turn() {
    let clock = ManualClock::new();
    let (_d, engine) = engine(KEEP_WARM, &clock);
    // The control arm of the test above: it shows the flood does evict.
    assert_eq!(second_turn_hits(&engine, None), 0);
    wait_for(&engine, "idle", |l| l.kv_blocks_used == 0);
    assert_eq!(engine.load().kv_blocks_warm, 0);
    assert_eq!(engine.load().warm_sessions, 0);
}

#[test]
fn keep_warm_zero_turns_warmth_off() {
    let clock = ManualClock::new();
    let (_d, engine) = engine(Duration::ZERO, &clock);
    assert_eq!(second_turn_hits(&engine, Some("s")), 0);
    wait_for(&engine, "idle", |l| l.kv_blocks_used == 0);
    assert_eq!(engine.load().warm_sessions, 0);
}

#[test]
fn warm_blocks_are_released_when_their_time_is_up() {
    let clock = ManualClock::new();
    let (_d, engine) = engine(KEEP_WARM, &clock);
    run(&engine, prompt(1, 64), 16, Some("s"));
    wait_for(&engine, "turn 1 held warm", |l| l.kv_blocks_warm == 4);
    assert_eq!(engine.load().warm_sessions, 1);

    // Not yet: one second short of the time.
    clock.advance(KEEP_WARM - Duration::from_secs(1));
    run(&engine, prompt(50, 8), 1, None);
    wait_for(&engine, "idle", |l| l.kv_blocks_used == 0);
    assert_eq!(engine.load().kv_blocks_warm, 4);

    clock.advance(Duration::from_secs(2));
    // The idle loop expires holds on its own tick.
    wait_for(&engine, "the hold expired", |l| {
        l.warm_sessions == 0 && l.kv_blocks_warm == 0
    });
    let load = engine.load();
    assert_eq!(load.kv_blocks_free, POOL);
    assert_eq!(load.kv_blocks_used, 0);
    // Expired blocks are ordinary cached blocks again: the flood evicts them.
    flood(&engine);
    let mut second = prompt(1, 64);
    second.extend(prompt(3, 30));
    assert_eq!(run(&engine, second, 1, Some("s")).1, 0);
}

#[test]
fn a_request_that_needs_the_whole_pool_evicts_warm_blocks() {
    let clock = ManualClock::new();
    let (_d, engine) = engine(KEEP_WARM, &clock);
    run(&engine, prompt(1, 64), 16, Some("s"));
    wait_for(&engine, "turn 1 held warm", |l| l.kv_blocks_warm == 4);
    // 370 prompt tokens + 1 generated: 24 blocks, the whole pool, so the
    // warm ones must go (evicted last, but evicted: warmth never starves).
    let (ids, _) = run(&engine, prompt(200, 370), 1, None);
    assert_eq!(ids.len(), 1);
    wait_for(&engine, "the big request finished", |l| {
        l.kv_blocks_used == 0
    });
    let load = engine.load();
    assert_eq!(load.kv_blocks_warm, 0, "{load:?}");
    assert_eq!(load.kv_blocks_free, POOL);
    // The session's stale hold goes at its time; nothing else is held.
    clock.advance(KEEP_WARM + Duration::from_secs(1));
    wait_for(&engine, "the stale hold expired", |l| l.warm_sessions == 0);
    assert_eq!(engine.load().kv_blocks_free, POOL);
}
