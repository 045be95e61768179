use super::*;
use crate::rng::SeqRng;

fn manager(num_blocks: usize, block_size: usize) -> BlockManager {
    BlockManager::new(BlockManagerConfig {
        num_blocks,
        block_size,
        enable_prefix_caching: true,
    })
}

fn toks(range: std::ops::Range<u32>) -> Vec<u32> {
    range.collect()
}

#[test]
fn fresh_pool_hands_out_blocks_in_id_order() {
    let mut bm = manager(8, 16);
    assert_eq!(bm.allocate(3), Some(vec![0, 1, 2]));
    assert_eq!(bm.allocate(2), Some(vec![3, 4]));
    assert_eq!(bm.num_used_blocks(), 5);
    assert_eq!(bm.num_free_blocks(), 3);
    assert_eq!(bm.num_total_blocks(), 8);
    assert_eq!(bm.allocate(0), Some(vec![]));
}

#[test]
fn allocate_returns_none_when_pool_exhausted() {
    let mut bm = manager(4, 16);
    let a = bm.allocate(3).unwrap();
    assert_eq!(bm.allocate(2), None);
    // No side effects: the one free block is still there, and is the
    // one handed out next.
    assert_eq!(bm.num_free_blocks(), 1);
    assert_eq!(bm.num_used_blocks(), 3);
    assert_eq!(bm.allocate(1), Some(vec![3]));
    assert_eq!(bm.allocate(1), None);
    bm.release(&a);
    bm.check_invariants().unwrap();
}

#[test]
fn released_blocks_are_reused() {
    let mut bm = manager(4, 16);
    let a = bm.allocate(2).unwrap();
    let b = bm.allocate(2).unwrap();
    assert_eq!((a.clone(), b), (vec![0, 1], vec![2, 3]));
    bm.release(&a);
    assert_eq!(bm.num_free_blocks(), 2);
    // Uncached blocks return to the front, in table order.
    assert_eq!(bm.allocate(2), Some(vec![0, 1]));
    assert_eq!(bm.num_free_blocks(), 0);
}

#[test]
fn two_sequences_share_a_common_prefix_with_refcounts() {
    let mut bm = manager(10, 16);
    // 40-token common prefix: two full blocks (32 tokens) are shareable.
    let common = toks(0..40);
    let mut a_tokens = common.clone();
    a_tokens.extend(100..110);
    let mut b_tokens = common.clone();
    b_tokens.extend(200..230);

    // Sequence A: nothing cached yet.
    assert_eq!(bm.acquire_cached_prefix(&a_tokens), (vec![], 0));
    let a_table = bm.allocate(4).unwrap(); // 50 tokens -> 4 blocks
    assert_eq!(a_table, vec![0, 1, 2, 3]);
    bm.register_full_blocks(&a_table, &a_tokens, 3);
    assert_eq!(bm.num_cached_blocks(), 3);

    // Sequence B shares exactly blocks 0 and 1 (block 2 differs after
    // token 40).
    let (prefix, hit) = bm.acquire_cached_prefix(&b_tokens);
    assert_eq!((prefix.clone(), hit), (vec![0, 1], 32));
    let rest = bm.allocate(3).unwrap(); // 70 tokens -> 5 blocks
    assert_eq!(rest, vec![4, 5, 6]);
    let b_table: Vec<BlockId> = prefix.iter().chain(&rest).copied().collect();
    assert_eq!(b_table, vec![0, 1, 4, 5, 6]);
    assert_eq!(bm.num_used_blocks(), 7);
    assert_eq!(bm.prefix_cache_hit_tokens(), 32);
    assert_eq!(bm.prefix_cache_query_tokens(), 50 + 70);

    // A finishes: the shared blocks stay used by B.
    bm.release(&a_table);
    assert_eq!(bm.num_used_blocks(), 5);
    assert_eq!(bm.num_evictable(&[0, 1, 2, 3]), 2);
    bm.release(&b_table);
    assert_eq!(bm.num_used_blocks(), 0);
    assert_eq!(bm.num_free_blocks(), 10);
    // Still cached: a third sequence hits blocks 0, 1, 2.
    let (prefix, hit) = bm.acquire_cached_prefix(&a_tokens);
    assert_eq!((prefix.clone(), hit), (vec![0, 1, 2], 48));
    bm.release(&prefix);
    bm.check_invariants().unwrap();
}

#[test]
fn acquire_never_covers_the_whole_prompt() {
    let mut bm = manager(8, 4);
    let tokens = toks(0..8); // exactly two full blocks
    let table = bm.allocate(2).unwrap();
    bm.register_full_blocks(&table, &tokens, 2);
    // Both blocks are cached, but the last token must be computed: only
    // the first block is returned.
    let (prefix, hit) = bm.acquire_cached_prefix(&tokens);
    assert_eq!((prefix.clone(), hit), (vec![0], 4));
    bm.release(&prefix);
    // One more token: now both blocks can be used.
    let tokens9 = toks(0..9);
    let (prefix9, hit9) = bm.acquire_cached_prefix(&tokens9);
    assert_eq!((prefix9.clone(), hit9), (vec![0, 1], 8));
    // Shorter than one block: nothing.
    assert_eq!(bm.acquire_cached_prefix(&toks(0..4)), (vec![], 0));
    assert_eq!(bm.acquire_cached_prefix(&[]), (vec![], 0));
    bm.release(&prefix9);
    bm.release(&table);
    bm.check_invariants().unwrap();
}

#[test]
fn cached_free_blocks_are_evicted_least_recently_freed_first() {
    let mut bm = manager(6, 2);
    // Three single-block sequences, all cached, freed in the order
    // 1, 0, 2.
    let seqs = [vec![1, 1, 9], vec![2, 2, 9], vec![3, 3, 9]];
    let mut tables = Vec::new();
    for s in &seqs {
        let t = bm.allocate(1).unwrap();
        bm.register_full_blocks(&t, s, 1);
        tables.push(t);
    }
    assert_eq!(tables, vec![vec![0], vec![1], vec![2]]);
    bm.release(&tables[1]);
    bm.release(&tables[0]);
    bm.release(&tables[2]);
    // Uncached blocks 3, 4, 5 go first, then cached ones in free order.
    assert_eq!(bm.allocate(3), Some(vec![3, 4, 5]));
    assert_eq!(bm.allocate(1), Some(vec![1]));
    // Block 1's prefix is gone, the others still hit.
    assert_eq!(bm.acquire_cached_prefix(&seqs[1]), (vec![], 0));
    assert_eq!(bm.acquire_cached_prefix(&seqs[0]), (vec![0], 2));
    // Touching block 0 took it out of the free list: 2 is next.
    assert_eq!(bm.allocate(1), Some(vec![2]));
    assert_eq!(bm.allocate(1), None);
    bm.check_invariants().unwrap();
}

#[test]
fn release_frees_tail_blocks_first_so_they_are_evicted_first() {
    let mut bm = manager(3, 2);
    let tokens = vec![1, 2, 3, 4, 5, 6, 7];
    let table = bm.allocate(3).unwrap();
    bm.register_full_blocks(&table, &tokens, 3);
    bm.release(&table);
    assert_eq!(bm.allocate(1), Some(vec![2]));
    assert_eq!(bm.allocate(1), Some(vec![1]));
    // The head of the prefix survives longest.
    assert_eq!(bm.acquire_cached_prefix(&tokens), (vec![0], 2));
}

#[test]
fn duplicate_block_keeps_the_existing_mapping() {
    let mut bm = manager(6, 2);
    let tokens = vec![5, 6, 7, 8, 9];
    let a = bm.allocate(2).unwrap();
    let b = bm.allocate(2).unwrap();
    bm.register_full_blocks(&a, &tokens, 2);
    bm.register_full_blocks(&b, &tokens, 2);
    // Idempotent.
    bm.register_full_blocks(&a, &tokens, 2);
    assert_eq!(bm.num_cached_blocks(), 2);
    bm.check_invariants().unwrap();
    let (prefix, _) = bm.acquire_cached_prefix(&tokens);
    assert_eq!(prefix, vec![0, 1]);
    bm.release(&prefix);
    // The duplicate goes back to the front uncached; the original is
    // still cached after both owners release it.
    bm.release(&b);
    bm.release(&a);
    assert_eq!(bm.num_cached_blocks(), 2);
    assert_eq!(bm.allocate(2), Some(vec![2, 3]));
    bm.check_invariants().unwrap();
}

#[test]
fn registration_extends_incrementally_as_blocks_fill() {
    let mut bm = manager(8, 2);
    let mut tokens = vec![1, 2, 3];
    let table = bm.allocate(3).unwrap();
    bm.register_full_blocks(&table, &tokens, 1);
    tokens.extend([4, 5, 6]);
    bm.register_full_blocks(&table, &tokens, 3);
    assert_eq!(bm.num_cached_blocks(), 3);
    tokens.push(7);
    let (prefix, hit) = bm.acquire_cached_prefix(&tokens);
    assert_eq!((prefix, hit), (vec![0, 1, 2], 6));
}

#[test]
fn disabled_prefix_caching_never_shares() {
    let mut bm = BlockManager::new(BlockManagerConfig {
        num_blocks: 4,
        block_size: 2,
        enable_prefix_caching: false,
    });
    let tokens = vec![1, 2, 3, 4, 5];
    let t = bm.allocate(2).unwrap();
    bm.register_full_blocks(&t, &tokens, 2);
    assert_eq!(bm.acquire_cached_prefix(&tokens), (vec![], 0));
    assert_eq!(bm.num_cached_blocks(), 0);
    assert_eq!(bm.prefix_cache_queries(), 0);
}

#[test]
fn double_release_is_reported_as_underflow() {
    let mut bm = BlockManager::new(BlockManagerConfig {
        num_blocks: 2,
        block_size: 2,
        enable_prefix_caching: false,
    });
    let t = bm.allocate(1).unwrap();
    bm.release(&t);
    // Debug builds catch it in the post-mutation check (a panic); release
    // builds leave it to check_invariants.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bm.release(&t);
        bm.check_invariants()
    }));
    assert!(matches!(outcome, Err(_) | Ok(Err(_))), "{outcome:?}");
}

/// Random alloc / share / register / release / warm-hold sequences; the
/// invariants hold after every step and everything is free and unheld at
/// the end.
#[test]
fn random_operations_keep_invariants_and_end_all_free() {
    for seed in 0..40u64 {
        let mut rng = SeqRng::seeded(seed);
        let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
        let bs = 1 + pick(4);
        let mut bm = manager(8 + pick(24), bs);
        // Token prefixes come from a few families so that sharing happens.
        let families: Vec<Vec<u32>> = (0..3)
            .map(|f| (0..64).map(|i| f * 1000 + i).collect())
            .collect();
        // Live "sequences": (tokens, block table).
        let mut live: Vec<(Vec<u32>, Vec<BlockId>)> = Vec::new();
        let mut holds: Vec<WarmHold> = Vec::new();
        for _ in 0..300 {
            match pick(6) {
                0 | 1 => {
                    let fam = &families[pick(families.len())];
                    let mut tokens = fam[..pick(40)].to_vec();
                    tokens.extend((0..1 + pick(10)).map(|_| pick(5) as u32 + 50_000));
                    let (mut table, hit) = bm.acquire_cached_prefix(&tokens);
                    assert!(hit < tokens.len());
                    assert_eq!(hit, table.len() * bs);
                    let need = tokens.len().div_ceil(bs) - table.len();
                    let free_before = bm.num_free_blocks();
                    match bm.allocate(need) {
                        Some(rest) => {
                            table.extend(rest);
                            live.push((tokens, table));
                        }
                        None => {
                            assert!(need > free_before);
                            assert_eq!(bm.num_free_blocks(), free_before);
                            bm.release(&table);
                        }
                    }
                }
                2 if !live.is_empty() => {
                    let i = pick(live.len());
                    let (tokens, table) = &live[i];
                    let full = pick(tokens.len() / bs + 1);
                    bm.register_full_blocks(table, tokens, full);
                }
                3 if !live.is_empty() => {
                    let (_, table) = &live[pick(live.len())];
                    holds.push(bm.hold_warm(table));
                }
                4 if !holds.is_empty() => {
                    let hold = holds.swap_remove(pick(holds.len()));
                    bm.release_warm(hold);
                }
                _ if !live.is_empty() => {
                    let (_, table) = live.swap_remove(pick(live.len()));
                    bm.release(&table);
                }
                _ => {}
            }
            bm.check_invariants().unwrap();
            let held: usize = live.iter().map(|(_, t)| t.len()).sum();
            assert!(bm.num_used_blocks() <= held);
            assert_eq!(
                bm.num_free_blocks() + bm.num_used_blocks(),
                bm.num_total_blocks()
            );
        }
        for (_, table) in live.drain(..) {
            bm.release(&table);
        }
        for hold in holds.drain(..) {
            bm.release_warm(hold);
        }
        bm.check_invariants().unwrap();
        assert_eq!(bm.num_warm_blocks(), 0);
        assert_eq!(bm.num_used_blocks(), 0);
        assert_eq!(bm.num_free_blocks(), bm.num_total_blocks());
    }
}
