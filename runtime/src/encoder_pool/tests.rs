use std::sync::atomic::AtomicUsize;
use std::sync::{Condvar, Mutex};

use super::*;

/// Answers `[sum of ids, length]` per input and records each batch's size;
/// optionally blocks every batch until the gate opens.
#[derive(Default)]
struct FakeEncoder {
    /// Batches that have started (counted before waiting on the gate).
    started: AtomicUsize,
    batch_sizes: Mutex<Vec<usize>>,
    gate: Option<(Mutex<bool>, Condvar)>,
}

impl FakeEncoder {
    fn gated() -> Self {
        Self {
            gate: Some((Mutex::new(false), Condvar::new())),
            ..Self::default()
        }
    }
    fn open_gate(&self) {
        if let Some((open, cv)) = &self.gate {
            *open.lock().unwrap() = true;
            cv.notify_all();
        }
    }
}

impl BatchEncoder for FakeEncoder {
    fn run(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        self.started.fetch_add(1, Ordering::SeqCst);
        if let Some((open, cv)) = &self.gate {
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
        }
        self.batch_sizes.lock().unwrap().push(batch.len());
        if batch.iter().any(|ids| ids.contains(&u32::MAX)) {
            return Err("poisoned input".into());
        }
        Ok(batch
            .iter()
            .map(|ids| vec![ids.iter().map(|&i| i as f32).sum(), ids.len() as f32])
            .collect())
    }
    fn max_len(&self) -> usize {
        16
    }
}

fn config(max_wait_ms: u64) -> EncoderPoolConfig {
    EncoderPoolConfig {
        max_batch_size: 32,
        max_wait: Duration::from_millis(max_wait_ms),
        queue_capacity: 64,
        threads: 1,
    }
}

#[tokio::test]
async fn each_caller_gets_its_own_inputs_result() {
    let pool = EncoderPool::start(Arc::new(FakeEncoder::default()), config(1)).unwrap();
    let out = pool.encode(vec![1, 2, 3]).await.unwrap();
    assert_eq!(&out[..], &[6.0, 3.0]);
    let many = pool
        .encode_many(vec![vec![5], vec![1, 1, 1, 1], vec![7, 8]])
        .await
        .unwrap();
    let got: Vec<Vec<f32>> = many.iter().map(|v| v.to_vec()).collect();
    assert_eq!(got, vec![vec![5.0, 1.0], vec![4.0, 4.0], vec![15.0, 2.0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_share_batches() {
    let model = Arc::new(FakeEncoder::gated());
    let pool = EncoderPool::start(model.clone(), config(5)).unwrap();
    // The first batch blocks on the gate, so the next 16 callers queue up
    // behind it and must be gathered into far fewer than 16 batches.
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { pool.encode(vec![1]).await }
    });
    while model.started.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let callers: Vec<_> = (0..16u32)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.encode(vec![i, 100]).await })
        })
        .collect();
    while pool.load().queued < 16 {
        tokio::task::yield_now().await;
    }
    model.open_gate();
    assert_eq!(&first.await.unwrap().unwrap()[..], &[1.0, 1.0]);
    for (i, c) in callers.into_iter().enumerate() {
        let out = c.await.unwrap().unwrap();
        assert_eq!(&out[..], &[i as f32 + 100.0, 2.0]);
    }
    let load = pool.load();
    assert_eq!(load.inputs, 17);
    assert_eq!(
        load.batches,
        2,
        "batch sizes {:?}",
        model.batch_sizes.lock().unwrap()
    );
    assert!(load.mean_batch_size > 8.0);
    assert_eq!(load.queued, 0);
}

#[tokio::test]
async fn a_full_queue_refuses_at_once() {
    let model = Arc::new(FakeEncoder::gated());
    let pool = EncoderPool::start(
        model.clone(),
        EncoderPoolConfig {
            max_batch_size: 1,
            queue_capacity: 2,
            ..config(0)
        },
    )
    .unwrap();
    // Callers that find room wait (and give up after the timeout); the
    // first that finds the queue full is refused without waiting.
    let mut refused = None;
    for i in 0..10 {
        match tokio::time::timeout(Duration::from_millis(20), pool.encode(vec![i])).await {
            Ok(result) => {
                refused = Some(result);
                break;
            }
            Err(_elapsed) => continue,
        }
    }
    match refused {
        Some(Err(EngineError::EncoderQueueFull { .. })) => {}
        other => panic!("expected queue full, got {other:?}"),
    }
    // Once the model moves again the queue drains and the pool serves.
    model.open_gate();
    let mut served = None;
    for _ in 0..500 {
        match pool.encode(vec![3]).await {
            Ok(v) => {
                served = Some(v);
                break;
            }
            Err(EngineError::EncoderQueueFull { .. }) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(&served.expect("the queue never drained")[..], &[3.0, 1.0]);
}

#[tokio::test]
async fn too_long_and_empty_inputs_are_refused_before_queueing() {
    let pool = EncoderPool::start(Arc::new(FakeEncoder::default()), config(0)).unwrap();
    assert!(matches!(
        pool.encode(vec![1; 17]).await,
        Err(EngineError::EncoderInputTooLong {
            tokens: 17,
            max_len: 16
        })
    ));
    assert!(matches!(
        pool.encode(vec![]).await,
        Err(EngineError::EmptyPrompt)
    ));
    assert_eq!(pool.load().batches, 0);
}

#[tokio::test]
async fn a_failed_batch_fails_its_callers_and_the_pool_keeps_serving() {
    let pool = EncoderPool::start(Arc::new(FakeEncoder::default()), config(0)).unwrap();
    assert!(matches!(
        pool.encode(vec![u32::MAX]).await,
        Err(EngineError::EncoderFailed(_))
    ));
    assert_eq!(&pool.encode(vec![2]).await.unwrap()[..], &[2.0, 1.0]);
}

#[test]
fn zero_sized_knobs_are_refused() {
    let bad = EncoderPoolConfig {
        max_batch_size: 0,
        ..config(0)
    };
    assert!(EncoderPool::start(Arc::new(FakeEncoder::default()), bad).is_err());
}

/// A gated pool that runs one input per batch, and the queue size asked for.
fn one_at_a_time(queue_capacity: usize) -> (Arc<FakeEncoder>, EncoderHandle) {
    let model = Arc::new(FakeEncoder::gated());
    let pool = EncoderPool::start(
        model.clone(),
        EncoderPoolConfig {
            max_batch_size: 1,
            queue_capacity,
            ..config(0)
        },
    )
    .unwrap();
    (model, pool)
}

/// Waits for `done`; a test whose condition never comes fails rather than hangs.
async fn until(mut done: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            Instant::now() < give_up,
            "the pool never reached the state waited for"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_many_serves_more_inputs_than_the_queue_holds() {
    let (model, pool) = one_at_a_time(2);
    let inputs: Vec<Vec<u32>> = (0..20u32).map(|i| vec![i, 1000]).collect();
    let call = tokio::spawn({
        let pool = pool.clone();
        async move { pool.encode_many(inputs).await }
    });
    // The first batch holds the worker, so the queue (2) is all there is
    // while the call submits its 20 inputs.
    until(|| model.started.load(Ordering::SeqCst) > 0).await;
    model.open_gate();
    let out = call.await.unwrap().expect("all 20 inputs served");
    let got: Vec<f32> = out.iter().map(|v| v[0]).collect();
    let want: Vec<f32> = (0..20).map(|i| i as f32 + 1000.0).collect();
    assert_eq!(got, want, "results keep the input order");
    assert_eq!(pool.load().inputs, 20);
    assert_eq!(pool.load().queued, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_call_leaves_room_in_the_queue_for_other_callers() {
    // Window: two batches of one input each, so two inputs in flight.
    let (model, pool) = one_at_a_time(8);
    let large = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.encode_many((1..=10u32).map(|i| vec![i]).collect())
                .await
        }
    });
    // One input in the gated batch, one in the queue, the rest held back.
    until(|| model.started.load(Ordering::SeqCst) > 0 && pool.load().queued == 1).await;
    let other = tokio::spawn({
        let pool = pool.clone();
        async move { pool.encode(vec![77]).await }
    });
    until(|| pool.load().queued == 2).await;
    model.open_gate();
    assert_eq!(&other.await.unwrap().unwrap()[..], &[77.0, 1.0]);
    let sums: Vec<f32> = large.await.unwrap().unwrap().iter().map(|v| v[0]).collect();
    assert_eq!(sums, (1..=10).map(|i| i as f32).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_many_refuses_at_once_when_others_fill_the_queue() {
    let (model, pool) = one_at_a_time(2);
    let spawn = |i: u32| {
        let pool = pool.clone();
        tokio::spawn(async move { pool.encode(vec![i]).await })
    };
    let mut others = vec![spawn(0)];
    until(|| model.started.load(Ordering::SeqCst) > 0).await;
    others.extend([spawn(1), spawn(2)]);
    // One input in the gated batch, two in the queue: full.
    until(|| pool.load().queued == 2).await;
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        pool.encode_many(vec![vec![1], vec![2]]),
    )
    .await
    .expect("a full queue answers without waiting");
    assert!(
        matches!(refused, Err(EngineError::EncoderQueueFull { .. })),
        "{refused:?}"
    );
    model.open_gate();
    for o in others {
        o.await.unwrap().unwrap();
    }
}
