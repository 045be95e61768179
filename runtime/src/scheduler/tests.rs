use super::*;
use crate::rng::SeqRng;

fn config(
    num_blocks: usize,
    block_size: usize,
    max_num_seqs: usize,
    max_num_batched_tokens: usize,
    enable_prefix_caching: bool,
) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_num_batched_tokens,
        max_model_len: 1 << 20,
        block: BlockManagerConfig {
            num_blocks,
            block_size,
            enable_prefix_caching,
        },
        warm: WarmConfig::OFF,
    }
}

/// (id, start_pos, number of tokens, sample) of each scheduled chunk.
fn plan(out: &SchedulerOutput) -> Vec<(SeqId, usize, usize, bool)> {
    out.seqs
        .iter()
        .map(|s| (s.id, s.start_pos, s.tokens.len(), s.sample))
        .collect()
}

fn table(out: &SchedulerOutput, id: SeqId) -> Vec<BlockId> {
    out.seqs
        .iter()
        .find(|s| s.id == id)
        .map(|s| s.block_table.clone())
        .unwrap()
}

/// Runs `update` as an engine would, sampling `base + position` for
/// every chunk that asks for a sample.
fn finish_step(s: &mut Scheduler, out: &SchedulerOutput, base: u32) {
    let sampled: Vec<(SeqId, u32)> = out
        .seqs
        .iter()
        .filter(|c| c.sample)
        .map(|c| (c.id, base + (c.start_pos + c.tokens.len()) as u32))
        .collect();
    s.update(out, &sampled);
}

#[test]
fn chunked_prefill_respects_token_budget_and_seq_cap() {
    let mut s = Scheduler::new(config(64, 4, 2, 8, false));
    s.add(1, (0..20).collect(), 10);
    s.add(2, (100..103).collect(), 10);
    s.add(3, (200..202).collect(), 10);

    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 0, 8, false)]);
    assert_eq!(out.num_batched_tokens, 8);
    assert_eq!(table(&out, 1), vec![0, 1]);
    finish_step(&mut s, &out, 1000);

    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 8, 8, false)]);
    assert_eq!(table(&out, 1), vec![0, 1, 2, 3]);
    finish_step(&mut s, &out, 1000);

    // Sequence 1's last chunk, then sequence 2 in the leftover budget;
    // sequence 3 waits for a running slot.
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 16, 4, true), (2, 0, 3, true)]);
    assert_eq!(out.num_batched_tokens, 7);
    assert_eq!((s.num_running(), s.num_waiting()), (2, 1));
    finish_step(&mut s, &out, 1000);
    assert_eq!(s.tokens(1).unwrap().len(), 21);
    assert_eq!(s.tokens(1).unwrap()[20], 1020);
    assert_eq!(s.tokens(2).unwrap(), &[100, 101, 102, 1003]);

    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 20, 1, true), (2, 3, 1, true)]);
    finish_step(&mut s, &out, 1000);

    s.finish(1);
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(2, 4, 1, true), (3, 0, 2, true)]);
    assert!(out.seqs.len() <= 2);
}

#[test]
fn decode_of_running_sequences_comes_before_a_new_prefill() {
    let mut s = Scheduler::new(config(64, 4, 8, 10, false));
    s.add(1, vec![1, 2, 3, 4], 10);
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 0, 4, true)]);
    finish_step(&mut s, &out, 500);

    // A request joins between steps: it gets what the decode leaves.
    s.add(2, (0..20).collect(), 10);
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 4, 1, true), (2, 0, 9, false)]);
    assert_eq!(out.num_batched_tokens, 10);
    finish_step(&mut s, &out, 500);

    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 5, 1, true), (2, 9, 9, false)]);
}

#[test]
fn newest_running_sequence_is_preempted_and_recomputes_its_tokens() {
    let mut s = Scheduler::new(config(4, 2, 4, 100, false));
    s.add(1, vec![1, 2, 3], 10);
    s.add(2, vec![4, 5, 6], 10);
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 0, 3, true), (2, 0, 3, true)]);
    assert_eq!((table(&out, 1), table(&out, 2)), (vec![0, 1], vec![2, 3]));
    finish_step(&mut s, &out, 10);
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 3, 1, true), (2, 3, 1, true)]);
    finish_step(&mut s, &out, 10);
    assert_eq!(s.tokens(2).unwrap(), &[4, 5, 6, 13, 14]);

    // Sequence 1 needs a third block; the pool is empty, so sequence 2
    // (the newest) is preempted and its first block is reused.
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 4, 1, true)]);
    assert_eq!(out.preempted, vec![2]);
    assert_eq!(table(&out, 1), vec![0, 1, 2]);
    assert_eq!(s.num_preemptions(), 1);
    assert_eq!((s.num_running(), s.num_waiting()), (1, 1));
    assert_eq!(s.tokens(2).unwrap(), &[4, 5, 6, 13, 14]);
    finish_step(&mut s, &out, 10);

    // Sequence 2 needs 3 blocks to recompute; only one is free.
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 5, 1, true)]);
    finish_step(&mut s, &out, 10);

    s.finish(1);
    assert_eq!(s.block_manager().num_used_blocks(), 0);
    let out = s.schedule();
    // It recomputes prompt and generated tokens, then samples the next
    // one: generation continues where it stopped.
    assert_eq!(plan(&out), vec![(2, 0, 5, true)]);
    assert_eq!(out.seqs[0].tokens, vec![4, 5, 6, 13, 14]);
    finish_step(&mut s, &out, 10);
    assert_eq!(s.tokens(2).unwrap(), &[4, 5, 6, 13, 14, 15]);
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(2, 5, 1, true)]);
}

#[test]
fn growing_sequence_preempts_itself_when_it_is_the_newest() {
    let mut s = Scheduler::new(config(4, 2, 4, 100, false));
    s.add(1, vec![1, 2, 3], 10);
    s.add(2, vec![4, 5, 6, 7], 10);
    let out = s.schedule();
    assert_eq!((table(&out, 1), table(&out, 2)), (vec![0, 1], vec![2, 3]));
    finish_step(&mut s, &out, 10);

    // Sequence 1's decode fits its blocks; sequence 2 needs a fifth slot.
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 3, 1, true)]);
    assert_eq!(out.preempted, vec![2]);
    assert_eq!(s.block_manager().num_used_blocks(), 2);
    assert_eq!(s.tokens(2).unwrap(), &[4, 5, 6, 7, 14]);
}

#[test]
fn waiting_head_that_does_not_fit_blocks_the_queue() {
    let mut s = Scheduler::new(config(4, 2, 8, 100, false));
    s.add(1, vec![1; 5], 10); // 3 blocks
    s.add(2, vec![2; 3], 10); // 2 blocks: does not fit behind 1
    s.add(3, vec![3; 1], 10); // 1 block: would fit, but no skipping
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 0, 5, true)]);
    assert_eq!(s.num_waiting(), 2);
    s.finish(1);
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(2, 0, 3, true), (3, 0, 1, true)]);
}

#[test]
fn second_prompt_reuses_the_cached_prefix_blocks() {
    let mut s = Scheduler::new(config(10, 16, 8, 1000, true));
    let common: Vec<u32> = (0..40).collect();
    let mut a = common.clone();
    a.extend(100..110);
    let mut b = common.clone();
    b.extend(200..230);

    s.add(1, a, 10);
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 0, 50, true)]);
    assert_eq!(table(&out, 1), vec![0, 1, 2, 3]);
    finish_step(&mut s, &out, 1000);

    s.add(2, b, 10);
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 50, 1, true), (2, 32, 38, true)]);
    assert_eq!(table(&out, 2), vec![0, 1, 4, 5, 6]);
    assert_eq!(s.cached_prompt_tokens(2), 32);
    assert_eq!(s.cached_prompt_tokens(1), 0);
    assert_eq!(s.block_manager().prefix_cache_hit_tokens(), 32);
    assert_eq!(s.block_manager().num_used_blocks(), 7);
    finish_step(&mut s, &out, 1000);
    s.finish(1);
    s.finish(2);
    assert_eq!(s.block_manager().num_used_blocks(), 0);
}

#[test]
fn abort_frees_blocks_wherever_the_sequence_is() {
    let mut s = Scheduler::new(config(16, 4, 1, 100, true));
    s.add(1, (0..10).collect(), 10);
    s.add(2, (0..10).collect(), 10);
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(1, 0, 10, true)]);
    assert_eq!(s.block_manager().num_used_blocks(), 3);
    s.abort(2); // waiting
    assert_eq!((s.num_running(), s.num_waiting()), (1, 0));
    // Aborted while its step runs: the update is ignored.
    s.abort(1);
    finish_step(&mut s, &out, 0);
    assert_eq!(s.block_manager().num_used_blocks(), 0);
    assert!(s.tokens(1).is_none());
    s.abort(99);
    assert!(!s.has_work());
    assert!(s.schedule().is_empty());
    s.block_manager().check_invariants().unwrap();
}

#[test]
fn sequences_that_can_never_run_are_reported_unservable() {
    let mut cfg = config(4, 4, 8, 100, false);
    cfg.max_model_len = 18;
    let mut s = Scheduler::new(cfg);
    s.add(1, vec![7; 17], 10); // 5 blocks > 4 in the pool
    s.add(2, vec![], 10); // nothing to compute, no logits to sample
    s.add(3, vec![7; 16], 10); // exactly the pool
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(3, 0, 16, true)]);
    assert_eq!(s.take_unservable(), vec![1, 2]);
    assert!(s.take_unservable().is_empty());
    finish_step(&mut s, &out, 0);

    // Its next decode needs a fifth block: it can never continue.
    let out = s.schedule();
    assert!(out.is_empty());
    assert!(out.preempted.is_empty());
    assert_eq!(s.take_unservable(), vec![3]);
    assert!(!s.has_work());
    assert_eq!(s.block_manager().num_used_blocks(), 0);

    let mut cfg = config(64, 4, 8, 100, false);
    cfg.max_model_len = 8;
    let mut s = Scheduler::new(cfg);
    s.add(4, vec![1; 9], 10); // longer than the model's context
    s.add(5, vec![1; 8], 10);
    let out = s.schedule();
    assert_eq!(plan(&out), vec![(5, 0, 8, true)]);
    assert_eq!(s.take_unservable(), vec![4]);
}

/// The engine's "model" in the random workload: the token sampled at
/// position `pos` depends only on `pos`, so generated blocks are shared
/// between sequences with a common prompt too.
fn model_token(pos: usize) -> u32 {
    (pos as u32).wrapping_mul(2_654_435_761) >> 22
}

struct Request {
    arrival: usize,
    prompt: Vec<u32>,
    /// Tokens generated before the engine finishes it.
    target: usize,
}

fn pick(rng: &mut SeqRng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// Hundreds of requests with random lengths and aborts against a
/// simulated KV cache: every chunk finds the right tokens' KV behind it,
/// every finished sequence has exactly its tokens, and every block is
/// free at the end.
#[test]
fn random_workload_ends_all_free_and_every_sequence_gets_its_tokens() {
    // Over all seeds, the paths under test must actually be taken.
    let (mut preemptions, mut hit_tokens, mut unservable_seen) = (0, 0, 0);
    for seed in 0..16u64 {
        let rng = &mut SeqRng::seeded(seed);
        let bs = [1, 2, 4, 16][pick(rng, 4)];
        let num_blocks = (8 + pick(rng, 120)) / bs.min(4) + 2;
        let mut cfg = config(
            num_blocks,
            bs,
            1 + pick(rng, 8),
            1 + pick(rng, 64),
            pick(rng, 4) != 0,
        );
        cfg.max_model_len = 96;
        let mut s = Scheduler::new(cfg);

        let families: Vec<Vec<u32>> = (0..4)
            .map(|f| (0..64).map(|i| 10_000 * (f + 1) + i).collect())
            .collect();
        let mut arrival = 0;
        let requests: Vec<Request> = (0..200)
            .map(|_| {
                arrival += pick(rng, 3);
                let family = &families[pick(rng, families.len())];
                let mut prompt = family[..pick(rng, 48)].to_vec();
                prompt.extend((0..1 + pick(rng, 16)).map(|_| pick(rng, 4) as u32));
                if pick(rng, 50) == 0 {
                    prompt.extend(vec![1; 100]); // past max_model_len
                }
                let room = cfg.max_model_len.saturating_sub(prompt.len()).max(1);
                let target = 1 + pick(rng, 24.min(room));
                Request {
                    arrival,
                    prompt,
                    target,
                }
            })
            .collect();
        let expect_unservable = |r: &Request| {
            r.prompt.len() > cfg.max_model_len
                || (r.prompt.len() + r.target - 1).div_ceil(bs) > num_blocks
        };

        let mut kv = vec![vec![None; bs]; num_blocks];
        let mut generated: HashMap<SeqId, usize> = HashMap::new();
        let mut finished: HashMap<SeqId, Vec<u32>> = HashMap::new();
        let mut gone: HashSet<SeqId> = HashSet::new(); // aborted or unservable
        let mut unservable: HashSet<SeqId> = HashSet::new();
        let mut live: Vec<SeqId> = Vec::new();
        let mut next = 0;
        let mut step = 0;
        loop {
            while next < requests.len() && requests[next].arrival <= step {
                s.add(next as SeqId, requests[next].prompt.clone(), 24);
                live.push(next as SeqId);
                next += 1;
            }
            if !live.is_empty() && pick(rng, 25) == 0 {
                let id = live.swap_remove(pick(rng, live.len()));
                s.abort(id);
                gone.insert(id);
            }

            let out = s.schedule();
            for id in s.take_unservable() {
                assert!(
                    expect_unservable(&requests[id as usize]),
                    "seed {seed}: {id}"
                );
                assert!(unservable.insert(id));
                gone.insert(id);
                live.retain(|&l| l != id);
            }
            let total: usize = out.seqs.iter().map(|c| c.tokens.len()).sum();
            assert_eq!(out.num_batched_tokens, total);
            assert!(total <= cfg.max_num_batched_tokens);
            assert!(s.num_running() <= cfg.max_num_seqs);
            s.block_manager().check_invariants().unwrap();

            let mut written = HashSet::new();
            for c in &out.seqs {
                let tokens = s.tokens(c.id).unwrap();
                let end = c.start_pos + c.tokens.len();
                assert_eq!(c.tokens, tokens[c.start_pos..end]);
                assert_eq!(c.sample, end == tokens.len());
                assert!(c.block_table.len() * bs >= end);
                assert!(end <= cfg.max_model_len);
                for (p, &t) in tokens.iter().enumerate().take(c.start_pos) {
                    let slot = kv[c.block_table[p / bs] as usize][p % bs];
                    assert_eq!(slot, Some(t), "seed {seed} seq {} pos {p}", c.id);
                }
                for (p, &t) in (c.start_pos..end).zip(&c.tokens) {
                    let block = c.block_table[p / bs] as usize;
                    assert!(written.insert((block, p % bs)), "slot written twice");
                    kv[block][p % bs] = Some(t);
                }
            }

            // Sometimes the client goes away while the step runs.
            if !out.seqs.is_empty() && pick(rng, 30) == 0 {
                let id = out.seqs[pick(rng, out.seqs.len())].id;
                s.abort(id);
                gone.insert(id);
                live.retain(|&l| l != id);
            }
            let sampled: Vec<(SeqId, u32)> = out
                .seqs
                .iter()
                .filter(|c| c.sample)
                .map(|c| (c.id, model_token(c.start_pos + c.tokens.len())))
                .collect();
            s.update(&out, &sampled);
            for &(id, _) in &sampled {
                if gone.contains(&id) {
                    continue;
                }
                let n = generated.entry(id).or_insert(0);
                *n += 1;
                if *n == requests[id as usize].target {
                    finished.insert(id, s.tokens(id).unwrap().to_vec());
                    s.finish(id);
                    live.retain(|&l| l != id);
                }
            }

            step += 1;
            if next == requests.len() && !s.has_work() {
                break;
            }
            assert!(step < 100_000, "seed {seed}: no progress");
        }

        let bm = s.block_manager();
        bm.check_invariants().unwrap();
        assert_eq!(bm.num_used_blocks(), 0, "seed {seed}");
        assert_eq!(bm.num_free_blocks(), num_blocks);
        for (i, r) in requests.iter().enumerate() {
            let id = i as SeqId;
            if gone.contains(&id) {
                continue;
            }
            assert!(
                !expect_unservable(r),
                "seed {seed}: {id} should be unservable"
            );
            let mut want = r.prompt.clone();
            want.extend((r.prompt.len()..r.prompt.len() + r.target).map(model_token));
            assert_eq!(finished.get(&id), Some(&want), "seed {seed} seq {id}");
        }
        assert!(!finished.is_empty());
        preemptions += s.num_preemptions();
        hit_tokens += bm.prefix_cache_hit_tokens();
        unservable_seen += unservable.len();
    }
    assert!(preemptions > 0 && hit_tokens > 0 && unservable_seen > 0);
}
