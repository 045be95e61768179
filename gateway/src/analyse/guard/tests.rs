//! The guard stage alone: over scripted answers with a guard whose verdict
//! the test decides (and whose pace it holds), and the real [`Guard`] over
//! a tiny random-weight BERT whose thresholds decide the verdict.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sluice_models::guard::train::{fit, Examples, TrainConfig};
use sluice_models::testing_encoder::{write_tiny_bert, TinyBertHead, TINY_BERT_HIDDEN};
use sluice_models::SentenceEncoder;
use sluice_runtime::{BatchEncoder, EncoderPool, EncoderPoolConfig, FinishReason, Usage};
use tokio::sync::Semaphore;

use super::super::window::{Analysed, Framing, Settings};
use super::super::{Stop, StopKind, Wrap};
use super::*;
use crate::answer::{Answer, BoxAnswer, Step, StopNote};
use crate::config::GuardConfig;
use crate::error::ApiError;
use crate::guard::{GuardEncoder, LoadedHead};

/// A guard that flags any window containing `flag`, records every window
/// it is given, and answers only as `gate` lets it (one permit a verdict).
struct Scripted {
    flag: &'static str,
    gate: Arc<Semaphore>,
    windows: Arc<Mutex<Vec<String>>>,
}

impl AsyncAnalyser for Scripted {
    fn check(&self, text: String) -> BoxFuture<'static, Option<Stop>> {
        let flagged = text.contains(self.flag);
        self.windows.lock().unwrap().push(text);
        let gate = self.gate.clone();
        async move {
            gate.acquire().await.unwrap().forget();
            flagged.then(|| Stop {
                analyser: GUARD,
                kind: StopKind::Policy,
                detail: "scripted".into(),
            })
        }
        .boxed()
    }
}

/// Scripted steps of one choice; counts reads, says when it was dropped.
struct Script {
    steps: VecDeque<Step>,
    read: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

impl Drop for Script {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

impl Answer for Script {
    fn num_choices(&self) -> usize {
        1
    }
    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        self.read.fetch_add(1, Ordering::SeqCst);
        let step = self.steps.pop_front();
        async move { step }.boxed()
    }
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: 5,
            completion_tokens: 0,
            cached_prompt_tokens: 0,
        }
    }
}

struct Run {
    answer: BoxAnswer,
    read: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
    note: StopNote,
    stops: Arc<Mutex<Vec<Stop>>>,
    observed: Arc<Mutex<Vec<Stop>>>,
    windows: Arc<Mutex<Vec<String>>>,
    gate: Arc<Semaphore>,
}

/// `pieces` (then a finish) through the window, `window_tokens` 4 and
/// overlap 8 bytes, with the scripted guard flagging `flag`.
fn run(pieces: &[&str], framing: Framing, flag: &'static str, permits: usize) -> Run {
    let mut steps: VecDeque<Step> = pieces
        .iter()
        .map(|p| Step::Token {
            choice: 0,
            text: (*p).to_string(),
            logprob: None,
            token: None,
        })
        .collect();
    steps.push_back(Step::Finished {
        choice: 0,
        reason: FinishReason::Stop,
        text: String::new(),
        stop_sequence: None,
    });
    let read = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Semaphore::new(permits));
    let windows = Arc::new(Mutex::new(Vec::new()));
    let guard: Arc<dyn AsyncAnalyser> = Arc::new(Scripted {
        flag,
        gate: gate.clone(),
        windows: windows.clone(),
    });
    let note = StopNote::default();
    let stops = Arc::new(Mutex::new(Vec::new()));
    let observed = Arc::new(Mutex::new(Vec::new()));
    let (told, seen) = (stops.clone(), observed.clone());
    let answer = Analysed::wrap(
        Box::new(Script {
            steps,
            read: read.clone(),
            dropped: dropped.clone(),
        }),
        vec![Vec::new()],
        Settings {
            framing,
            window_tokens: 4,
            overlap_bytes: 8,
            guard_in_flight: 2,
        },
        Some(guard),
        Wrap {
            model: "m".into(),
            key_mode: None,
            key_guard: None,
            guard_action: None,
            max_tokens: Some(100),
            note: note.clone(),
            on_stop: Box::new(move |s: &Stop| told.lock().unwrap().push(s.clone())),
            on_observe: Box::new(move |s: &Stop| seen.lock().unwrap().push(s.clone())),
        },
    );
    Run {
        answer,
        read,
        dropped,
        note,
        stops,
        observed,
        windows,
        gate,
    }
}

/// Every step to the end: the text and the finish reason.
async fn drain(answer: &mut dyn Answer) -> (String, Option<FinishReason>) {
    let mut text = String::new();
    let mut finish = None;
    while let Some(step) = answer.next().await {
        match step {
            Step::Token { text: t, .. } => text.push_str(&t),
            Step::Finished {
                reason, text: t, ..
            } => {
                text.push_str(&t);
                finish = Some(reason);
            }
            Step::ToolCall { .. } => panic!("no tool calls here"),
            Step::Failed(e) => panic!("{e}"),
        }
    }
    (text, finish)
}

const WORDS: &[&str] = &[
    "one ",
    "two ",
    "three ",
    "four ",
    "five ",
    "six ",
    "seven ",
    "eight ",
    "nine ",
    "ten ",
    "eleven ",
    "twelve ",
    "thirteen ",
    "fourteen ",
    "fifteen ",
    "sixteen.",
];

#[tokio::test]
async fn hold_back_never_releases_a_window_the_guard_flags_and_drops_the_producer() {
    let mut pieces = WORDS[..6].to_vec();
    pieces.extend(["now EV", "IL text ", "follows "]);
    pieces.extend(&WORDS[6..]);
    let mut r = run(&pieces, Framing::HoldBack, "EVIL", 1000);
    let (text, finish) = drain(r.answer.as_mut()).await;
    assert!(!text.contains("EV"), "released: {text:?}");
    assert!(
        text.starts_with("one two"),
        "the first window passed: {text:?}"
    );
    assert_eq!(finish, Some(FinishReason::ContentFilter));
    assert_eq!(r.note.get().map(|s| s.reason), Some(GUARD));
    assert_eq!(r.stops.lock().unwrap().len(), 1);
    assert!(
        r.dropped.load(Ordering::SeqCst),
        "the producer was not dropped"
    );
    assert!(
        r.read.load(Ordering::SeqCst) < pieces.len(),
        "the producer was read to its end"
    );
    // Scored as whole windows, never token by token; the split word was
    // seen whole in one window.
    let windows = r.windows.lock().unwrap();
    assert!(windows.len() <= pieces.len().div_ceil(4), "{windows:?}");
    assert!(windows.iter().any(|w| w.contains("EVIL")), "{windows:?}");
}

#[tokio::test]
async fn the_producer_is_read_on_while_the_guard_runs_up_to_the_bound() {
    let mut r = run(WORDS, Framing::HoldBack, "never", 0);
    // The guard answers nothing yet: the producer is read for the windows
    // in flight (2 of 4 tokens) and no further; nothing is released.
    assert!(r.answer.next().now_or_never().is_none());
    assert_eq!(r.read.load(Ordering::SeqCst), 8);
    assert_eq!(r.windows.lock().unwrap().len(), 2);
    // One verdict: the first window's text goes out (less the overlap),
    // and one more window is read.
    r.gate.add_permits(1);
    let first = r.answer.next().now_or_never().flatten();
    assert!(
        matches!(&first, Some(Step::Token { text, .. }) if text == "one "),
        "{first:?}"
    );
    r.gate.add_permits(1000);
    let (rest, finish) = drain(r.answer.as_mut()).await;
    assert_eq!(format!("one {rest}"), WORDS.concat());
    assert_eq!(finish, Some(FinishReason::Stop));
    assert!(r.note.get().is_none());
}

#[tokio::test]
async fn stream_first_forwards_at_once_and_only_records_what_the_guard_flags() {
    let pieces = ["a ", "b ", "EVIL ", "c ", "d ", "e"];
    let mut r = run(&pieces, Framing::StreamFirst, "EVIL", 1000);
    let first = r.answer.next().await;
    assert!(matches!(first, Some(Step::Token { .. })));
    assert_eq!(r.read.load(Ordering::SeqCst), 1, "nothing held");
    let (rest, finish) = drain(r.answer.as_mut()).await;
    assert_eq!(format!("a {rest}"), pieces.concat());
    assert_eq!(finish, Some(FinishReason::Stop));
    assert!(r.note.get().is_none());
    let observed = r.observed.lock().unwrap();
    assert_eq!(observed.len(), 1, "{observed:?}");
    assert_eq!(observed[0].analyser, GUARD);
}

#[tokio::test]
async fn buffer_full_releases_only_once_every_window_passed_the_guard() {
    let mut r = run(WORDS, Framing::BufferFull, "never", 0);
    // Every window is read (nothing is released before the end, so the
    // bound does not hold the producer back), but no text leaves.
    assert!(r.answer.next().now_or_never().is_none());
    assert_eq!(r.read.load(Ordering::SeqCst), 2 * 4);
    r.gate.add_permits(1000);
    let (text, finish) = drain(r.answer.as_mut()).await;
    assert_eq!(text, WORDS.concat());
    assert_eq!(finish, Some(FinishReason::Stop));

    let mut r = run(WORDS, Framing::BufferFull, "sixteen", 1000);
    let (text, finish) = drain(r.answer.as_mut()).await;
    assert_eq!(
        text, "",
        "a flag in the last window withholds the whole answer"
    );
    assert_eq!(finish, Some(FinishReason::ContentFilter));
}

// --- the real guard over a tiny BERT ---

struct Tiny(SentenceEncoder);

impl BatchEncoder for Tiny {
    fn run(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        self.0.embed(batch).map_err(|e| e.to_string())
    }
    fn max_len(&self) -> usize {
        self.0.max_len()
    }
}

struct OneEncoder(Option<GuardEncoder>);

impl GuardEncoders for OneEncoder {
    fn embedding_encoder(&self, _: Option<&str>) -> Result<GuardEncoder, ApiError> {
        self.0
            .clone()
            .ok_or_else(|| ApiError::ModelLoading("tiny".into()))
    }
    fn classifier_encoder(&self, id: &str) -> Result<(GuardEncoder, Arc<[String]>), ApiError> {
        Err(ApiError::ModelNotFound(id.into()))
    }
}

/// The guard over a tiny BERT, flagging from `threshold` up.
fn tiny_guard(threshold: f32, dir: &std::path::Path) -> (Arc<Guard>, Arc<dyn GuardEncoders>) {
    write_tiny_bert(
        dir,
        &TinyBertHead::Sentence {
            cls: false,
            normalize: true,
        },
        7,
    )
    .unwrap();
    let encoder = SentenceEncoder::load(dir).unwrap();
    let tokenizer = encoder.tokenizer().clone();
    let handle = EncoderPool::start(
        Arc::new(Tiny(encoder)),
        EncoderPoolConfig {
            threads: 1,
            ..EncoderPoolConfig::default()
        },
    )
    .unwrap();
    let features: Vec<f32> = (0..8 * TINY_BERT_HIDDEN)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0)
        .collect();
    let positive = [true, false, true, false, true, false, true, false];
    let head = fit(
        Examples {
            features: &features,
            dim: TINY_BERT_HIDDEN,
            positive: &positive,
        },
        &TrainConfig {
            epochs: 3,
            ..TrainConfig::default()
        },
    )
    .unwrap();
    let guard = Guard::new(
        &GuardConfig::default(),
        Some(LoadedHead {
            head: Arc::new(head),
            threshold,
            t_low: threshold,
            encoder: None,
        }),
    );
    let encoders: Arc<dyn GuardEncoders> = Arc::new(OneEncoder(Some(GuardEncoder {
        id: "tiny".into(),
        tokenizer,
        handle,
    })));
    (Arc::new(guard), encoders)
}

#[tokio::test]
async fn the_output_guard_stops_what_the_guard_flags_and_passes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    // Every score is at least 0 and below 1.5: the threshold decides.
    let (flags_all, encoders) = tiny_guard(0.0, dir.path());
    let stop = OutputGuard::new(flags_all.clone(), encoders.clone(), false)
        .check("the cat sat on the mat".into())
        .await
        .expect("flagged");
    assert_eq!(stop.analyser, GUARD);
    assert_eq!(stop.kind, StopKind::Policy);
    assert!(stop.detail.contains("score"), "{}", stop.detail);
    // Blank text is never scored (nor stopped).
    assert!(OutputGuard::new(flags_all, encoders, false)
        .check("  \n".into())
        .await
        .is_none());

    let dir = tempfile::tempdir().unwrap();
    let (flags_none, encoders) = tiny_guard(1.5, dir.path());
    assert!(OutputGuard::new(flags_none, encoders, true)
        .check("the cat sat on the mat".into())
        .await
        .is_none());
}

/// A guard with a head whose encoder is never there: every verdict errs.
fn guard_without_encoder() -> Arc<Guard> {
    Arc::new(Guard::new(
        &GuardConfig::default(),
        Some(LoadedHead {
            head: Arc::new(
                fit(
                    Examples {
                        features: &[1.0, -1.0],
                        dim: 1,
                        positive: &[true, false],
                    },
                    &TrainConfig::default(),
                )
                .unwrap(),
            ),
            threshold: 0.5,
            t_low: 0.5,
            encoder: None,
        }),
    ))
}

#[tokio::test]
async fn a_guard_that_cannot_score_stops_only_a_blocking_key() {
    let guard = guard_without_encoder();
    let unavailable: Arc<dyn GuardEncoders> = Arc::new(OneEncoder(None));
    let closed = OutputGuard::new(guard.clone(), unavailable.clone(), true)
        .check("anything".into())
        .await
        .expect("fail closed");
    assert!(
        closed.detail.contains("could not score"),
        "{}",
        closed.detail
    );
    assert!(OutputGuard::new(guard, unavailable, false)
        .check("anything".into())
        .await
        .is_none());
}

#[tokio::test]
async fn the_guard_applies_where_the_route_or_key_asks_unless_the_keys_action_is_off() {
    use crate::config::{GuardAction, StreamSettings};
    // An encoder that never answers: a fail-closed guard stops, a
    // fail-open one passes, so the verdict says which one was picked.
    let guard = guard_without_encoder();
    let unavailable: Arc<dyn GuardEncoders> = Arc::new(OneEncoder(None));
    let analysers = |action| {
        super::super::StreamAnalysers::new(
            &StreamSettings::default(),
            None,
            None,
            Some(super::super::StreamGuard {
                guard: guard.clone(),
                encoders: unavailable.clone(),
                action,
            }),
        )
    };
    let flagging = analysers(GuardAction::Flag);
    assert!(
        flagging.guard_for(false, None).is_none(),
        "off unless asked"
    );
    let open = flagging.guard_for(true, None).expect("on");
    assert!(open.check("x".into()).await.is_none(), "flag fails open");
    let closed = flagging
        .guard_for(true, Some(GuardAction::Block))
        .expect("on");
    assert!(
        closed.check("x".into()).await.is_some(),
        "block fails closed"
    );
    assert!(flagging.guard_for(true, Some(GuardAction::Off)).is_none());
    assert!(analysers(GuardAction::Off).guard_for(true, None).is_none());
    let no_guard = super::super::StreamAnalysers::new(&StreamSettings::default(), None, None, None);
    assert!(no_guard.guard_for(true, Some(GuardAction::Block)).is_none());
}
