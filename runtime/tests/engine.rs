//! The engine end to end on a tiny random model loaded through the real GGUF
//! loader: batch invariance (alone, staggered, under preemption), block
//! accounting under cancellation, prefix reuse, admission errors; and the real
//! demo model answering a question through the runtime API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use sluice_kernels::WeightDType;
use sluice_models::testing::{write_tiny_gguf, TinySpec, TINY_VOCAB};
use sluice_models::{demo_chat_model_path, load_llm, ChatMessage, LoadKnobs};
use sluice_runtime::{
    Engine, EngineConfig, EngineError, EngineEvent, EngineHandle, EventStream, FinishReason,
    GenerateRequest, SamplingParams,
};

fn tiny_engine(cfg: EngineConfig) -> (tempfile::TempDir, EngineHandle) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &TinySpec::default(), WeightDType::Q8_0).unwrap();
    let loaded = load_llm(&path, LoadKnobs::default(), &mut |_, _| {}).unwrap();
    (dir, Engine::start(loaded, cfg).unwrap())
}

fn prompt(i: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|j| ((i * 31 + j * 7 + j * j) % 256) as u32)
        .collect()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

/// Collects a request's token ids, how it finished and its cached prompt tokens.
fn collect(mut stream: EventStream) -> (Vec<u32>, FinishReason, usize) {
    let mut ids = Vec::new();
    while let Some(ev) = stream.blocking_recv() {
        match ev {
            EngineEvent::Token { id, .. } => ids.push(id),
            EngineEvent::Finished { reason, usage, .. } => {
                assert_eq!(usage.completion_tokens, ids.len());
                return (ids, reason, usage.cached_prompt_tokens);
            }
            EngineEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("stream ended without Finished");
}

/// Collects the text of a request and how it finished.
fn collect_text(mut stream: EventStream) -> (String, FinishReason) {
    let mut text = String::new();
    while let Some(ev) = stream.blocking_recv() {
        match ev {
            EngineEvent::Token { text: t, .. } => text.push_str(&t),
            EngineEvent::Finished {
                reason, text: t, ..
            } => {
                text.push_str(&t);
                return (text, reason);
            }
            EngineEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("stream ended without Finished");
}

fn submit(engine: &EngineHandle, prompt_tokens: Vec<u32>, params: SamplingParams) -> EventStream {
    engine
        .submit(GenerateRequest {
            prompt_tokens,
            params,
            constraint: None,
            session: None,
        })
        .unwrap()
}

fn wait_until_idle(engine: &EngineHandle) {
    for _ in 0..200 {
        let load = engine.load();
        if load.in_flight == 0 && load.running == 0 && load.waiting == 0 && load.kv_blocks_used == 0
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("engine did not go idle: {:?}", engine.load());
}

#[test]
fn greedy_outputs_do_not_depend_on_batching_or_preemption() {
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| prompt(i, 5 + i * 9)).collect();
    let max_tokens = 24;

    let (_d, engine) = tiny_engine(EngineConfig::default());
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| collect(submit(&engine, p.clone(), greedy(max_tokens))).0)
        .collect();

    // All together, arriving a little apart so they join a running batch.
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| {
            std::thread::sleep(Duration::from_millis(3));
            submit(&engine, p.clone(), greedy(max_tokens))
        })
        .collect();
    let together: Vec<Vec<u32>> = streams.into_iter().map(|s| collect(s).0).collect();
    assert_eq!(alone, together, "batched greedy output differs");

    // A KV budget far too small for all eight at once forces preemption and
    // recomputation; a small step budget forces chunked prefill.
    let (_d2, small) = tiny_engine(EngineConfig {
        num_kv_blocks: Some(12),
        max_num_batched_tokens: 16,
        enable_prefix_caching: false,
        ..EngineConfig::default()
    });
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| submit(&small, p.clone(), greedy(max_tokens)))
        .collect();
    let preempted: Vec<Vec<u32>> = streams.into_iter().map(|s| collect(s).0).collect();
    assert!(
        small.load().preemptions > 0,
        "the tiny KV budget should have forced preemption"
    );
    assert_eq!(alone, preempted, "greedy output differs under preemption");
    wait_until_idle(&small);
}

#[test]
fn every_block_is_free_after_random_requests_and_cancellations() {
    let (_d, engine) = tiny_engine(EngineConfig {
        num_kv_blocks: Some(40),
        max_num_seqs: 8,
        max_num_batched_tokens: 64,
        ..EngineConfig::default()
    });
    let mut seed = 12345u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut kept = Vec::new();
    for i in 0..200 {
        let len = 1 + next(60) as usize;
        let params = greedy(1 + next(20) as usize);
        let mut stream = submit(&engine, prompt(i, len), params);
        match next(3) {
            0 => drop(stream), // cancelled before it ran
            1 => {
                // cancelled mid-way
                let _ = stream.blocking_recv();
                drop(stream);
            }
            _ => kept.push(stream),
        }
        if kept.len() >= 8 {
            for s in kept.drain(..) {
                collect(s);
            }
        }
    }
    for s in kept {
        collect(s);
    }
    wait_until_idle(&engine);
    let load = engine.load();
    assert_eq!(load.kv_blocks_free, load.kv_blocks_total);
}

#[test]
fn a_shared_system_prompt_reuses_cached_blocks() {
    let (_d, engine) = tiny_engine(EngineConfig::default());
    let system = prompt(99, 80);
    let mut first = system.clone();
    first.extend([1, 2, 3]);
    let mut second = system;
    second.extend([4, 5, 6, 7]);
    let (_, _, cached_first) = collect(submit(&engine, first, greedy(4)));
    let (_, _, cached_second) = collect(submit(&engine, second, greedy(4)));
    assert_eq!(cached_first, 0);
    // 80 shared tokens = 5 full blocks of 16.
    assert_eq!(cached_second, 80);
    assert!(engine.load().prefix_cache_hit_tokens >= 80);
}

#[test]
fn requests_that_cannot_fit_are_refused_at_once() {
    let (_d, engine) = tiny_engine(EngineConfig {
        max_num_seqs: 1,
        max_waiting: 1,
        ..EngineConfig::default()
    });
    let ctx = engine.info().max_model_len;
    let too_long = engine.submit(GenerateRequest {
        prompt_tokens: prompt(0, ctx - 5),
        params: greedy(10),
        constraint: None,
        session: None,
    });
    assert!(matches!(too_long, Err(EngineError::ContextTooLong { .. })));
    let empty = engine.submit(GenerateRequest {
        prompt_tokens: vec![],
        params: greedy(1),
        constraint: None,
        session: None,
    });
    assert!(matches!(empty, Err(EngineError::EmptyPrompt)));
    let bad_token = engine.submit(GenerateRequest {
        prompt_tokens: vec![TINY_VOCAB as u32],
        params: greedy(1),
        constraint: None,
        session: None,
    });
    assert!(matches!(bad_token, Err(EngineError::InvalidToken { .. })));

    let a = submit(&engine, prompt(1, 10), greedy(200));
    let b = submit(&engine, prompt(2, 10), greedy(200));
    let full = engine.submit(GenerateRequest {
        prompt_tokens: prompt(3, 10),
        params: greedy(5),
        constraint: None,
        session: None,
    });
    assert!(matches!(full, Err(EngineError::QueueFull { .. })));
    drop((a, b));
    wait_until_idle(&engine);
    // Capacity comes back once the cancelled requests are gone.
    collect(submit(&engine, prompt(3, 10), greedy(5)));
}

#[test]
fn max_tokens_and_stop_strings_end_generation() {
    let (_d, engine) = tiny_engine(EngineConfig::default());
    let (ids, reason, _) = collect(submit(&engine, prompt(5, 12), greedy(7)));
    assert_eq!((ids.len(), reason), (7, FinishReason::Length));

    // Find the text the model makes, then stop on a piece of it.
    let (text, _) = collect_text(submit(&engine, prompt(6, 12), greedy(30)));
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() > 12, "need some text to cut, got {text:?}");
    let stop: String = chars[8..11].iter().collect();
    let expected = &text[..text.find(&stop).unwrap()];
    let mut params = greedy(30);
    params.stop_strings = vec![stop.clone()];
    let (got, reason) = collect_text(submit(&engine, prompt(6, 12), params));
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(
        got, expected,
        "stop string {stop:?} must end the text before it"
    );
}

/// Each token's text, then the finish event's reason and stop string.
fn collect_pieces(mut stream: EventStream) -> (Vec<String>, FinishReason, Option<String>) {
    let mut pieces = Vec::new();
    while let Some(ev) = stream.blocking_recv() {
        match ev {
            EngineEvent::Token { text, .. } => pieces.push(text),
            EngineEvent::Finished {
                reason,
                text,
                stop_sequence,
                ..
            } => {
                pieces.push(text);
                return (pieces, reason, stop_sequence);
            }
            EngineEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("stream ended without Finished");
}

#[test]
fn the_finish_event_names_the_stop_string_that_matched_across_tokens() {
    let (_d, engine) = tiny_engine(EngineConfig::default());
    let (pieces, reason, stop_sequence) =
        collect_pieces(submit(&engine, prompt(6, 12), greedy(30)));
    assert_eq!((reason, stop_sequence), (FinishReason::Length, None));

    // A stop string made of the last character of one token's text and the
    // first of a later one's, so no single token holds it.
    let text: String = pieces.concat();
    let (k, _) = pieces
        .iter()
        .enumerate()
        .skip(2)
        .find(|(k, p)| !p.is_empty() && pieces[k + 1..].iter().any(|q| !q.is_empty()))
        .expect("the tiny model makes text in several tokens");
    let next = pieces[k + 1..].iter().find(|q| !q.is_empty()).unwrap();
    let stop: String = [
        pieces[k].chars().last().unwrap(),
        next.chars().next().unwrap(),
    ]
    .iter()
    .collect();
    let expected = &text[..text.find(&stop).unwrap()];
    let mut params = greedy(30);
    // The first one never occurs: the report must name the one that did.
    params.stop_strings = vec!["\u{1}never".into(), stop.clone()];
    let (got, reason, stop_sequence) = collect_pieces(submit(&engine, prompt(6, 12), params));
    assert_eq!(got.concat(), expected);
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(stop_sequence.as_deref(), Some(stop.as_str()));
}

#[test]
fn seeded_sampling_is_reproducible_whatever_shares_the_batch() {
    let (_d, engine) = tiny_engine(EngineConfig::default());
    let params = SamplingParams {
        max_tokens: 16,
        temperature: 1.0,
        seed: Some(42),
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let alone = collect(submit(&engine, prompt(7, 9), params.clone())).0;
    let noise: Vec<_> = (0..4)
        .map(|i| {
            let mut p = params.clone();
            p.seed = None;
            submit(&engine, prompt(20 + i, 30), p)
        })
        .collect();
    let crowded = collect(submit(&engine, prompt(7, 9), params)).0;
    for s in noise {
        collect(s);
    }
    assert_eq!(alone, crowded);
}

#[test]
fn demo_model_answers_paris_through_the_runtime() {
    let path = demo_chat_model_path();
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    let loaded = load_llm(&path, LoadKnobs::default(), &mut |_, _| {}).unwrap();
    let engine = Engine::start(loaded, EngineConfig::default()).unwrap();
    let template = engine
        .chat_template()
        .expect("the GGUF ships a chat template");
    let ids = template
        .render_tokens(
            engine.tokenizer(),
            &[ChatMessage::text(
                "user",
                "What is the capital of France? Answer in one word.",
            )],
            true,
        )
        .unwrap();
    let params = SamplingParams {
        max_tokens: 24,
        ..SamplingParams::default()
    };
    let (answer, _) = collect_text(submit(&engine, ids, params));
    assert!(answer.contains("Paris"), "answer: {answer:?}");
}

#[test]
fn a_finished_request_reports_its_stage_times_in_order() {
    let (_dir, engine) = tiny_engine(EngineConfig::default());
    // Two at once, so one may wait for the other's step.
    let streams: Vec<EventStream> = (0..2)
        .map(|i| submit(&engine, prompt(i, 12), greedy(5)))
        .collect();
    for mut stream in streams {
        let mut first_token_seen = None;
        let times = loop {
            match stream.blocking_recv().expect("a Finished event") {
                EngineEvent::Token { .. } => {
                    first_token_seen.get_or_insert_with(std::time::Instant::now);
                }
                EngineEvent::Finished { times, usage, .. } => {
                    assert_eq!(usage.completion_tokens, 5);
                    break times;
                }
                EngineEvent::Error(e) => panic!("engine error: {e}"),
            }
        };
        assert!(times.arrived <= times.scheduled, "{times:?}");
        assert!(times.scheduled <= times.first_token, "{times:?}");
        assert!(
            times.first_token < times.finished,
            "five tokens take steps: {times:?}"
        );
        // The engine stamps the first token before it sends it.
        assert!(times.first_token <= first_token_seen.unwrap());
    }
}
