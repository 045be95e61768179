use super::*;
use crate::block_manager::BlockManagerConfig;

const TTL: Duration = Duration::from_secs(300);

fn pool(num_blocks: usize) -> BlockManager {
    BlockManager::new(BlockManagerConfig {
        num_blocks,
        block_size: 4,
        enable_prefix_caching: true,
    })
}

fn warm(max_blocks: usize) -> WarmSessions {
    WarmSessions::new(WarmConfig {
        keep_warm: TTL,
        max_blocks,
    })
}

/// A computed sequence of `len` tokens from `first` on: its block table,
/// every full block registered. The caller releases it.
fn sequence(bm: &mut BlockManager, first: u32, len: usize) -> Vec<BlockId> {
    let tokens: Vec<u32> = (first..first + len as u32).collect();
    let (mut table, _) = bm.acquire_cached_prefix(&tokens);
    let rest = bm.allocate(len.div_ceil(4) - table.len()).unwrap();
    table.extend(rest);
    bm.register_full_blocks(&table, &tokens, len / 4);
    table
}

fn key(s: &str) -> SessionKey {
    SessionKey::new(s)
}

#[test]
fn a_kept_turn_holds_its_full_blocks_until_it_expires() {
    let mut bm = pool(16);
    let mut ws = warm(8);
    let t0 = Instant::now();
    // 10 tokens: two full blocks and a partial one (not cached: not held).
    let table = sequence(&mut bm, 0, 10);
    ws.keep(&mut bm, key("a"), &table, t0);
    bm.release(&table);
    assert_eq!(bm.num_warm_blocks(), 2);
    assert_eq!(bm.num_free_blocks(), 16);
    assert_eq!((ws.num_sessions(), ws.num_held_blocks()), (1, 2));

    ws.expire(&mut bm, t0 + TTL - Duration::from_millis(1));
    assert_eq!(bm.num_warm_blocks(), 2);
    ws.expire(&mut bm, t0 + TTL);
    assert_eq!(bm.num_warm_blocks(), 0);
    assert_eq!((ws.num_sessions(), ws.num_held_blocks()), (0, 0));
    // Still cached, as any freed block.
    assert_eq!(bm.num_cached_blocks(), 2);
    bm.check_invariants().unwrap();
}

#[test]
fn a_newer_turn_replaces_the_older_hold_and_its_expiry() {
    let mut bm = pool(16);
    let mut ws = warm(8);
    let t0 = Instant::now();
    let first = sequence(&mut bm, 0, 8);
    ws.keep(&mut bm, key("a"), &first, t0);
    bm.release(&first);
    // Turn 2 extends turn 1 (same first 8 tokens, then 8 more).
    let second = sequence(&mut bm, 0, 16);
    assert_eq!(&second[..2], &first[..]);
    let t1 = t0 + Duration::from_secs(100);
    ws.keep(&mut bm, key("a"), &second, t1);
    bm.release(&second);
    assert_eq!((ws.num_sessions(), ws.num_held_blocks()), (1, 4));
    assert_eq!(bm.num_warm_blocks(), 4);
    // Turn 1's expiry passes: turn 2's hold is the one that counts.
    ws.expire(&mut bm, t0 + TTL);
    assert_eq!(bm.num_warm_blocks(), 4);
    ws.expire(&mut bm, t1 + TTL);
    assert_eq!(bm.num_warm_blocks(), 0);
    assert_eq!(ws.num_sessions(), 0);
    bm.check_invariants().unwrap();
}

#[test]
fn holds_over_the_bound_release_the_oldest_sessions_first() {
    let mut bm = pool(32);
    let mut ws = warm(5);
    let t0 = Instant::now();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let table = sequence(&mut bm, 1000 * i as u32, 8);
        ws.keep(
            &mut bm,
            key(name),
            &table,
            t0 + Duration::from_secs(i as u64),
        );
        bm.release(&table);
    }
    // 3 sessions × 2 blocks > 5: "a" went.
    assert_eq!((ws.num_sessions(), ws.num_held_blocks()), (2, 4));
    assert_eq!(bm.num_warm_blocks(), 4);
    // A session larger than the bound alone is not held at all.
    let big = sequence(&mut bm, 5000, 24);
    ws.keep(&mut bm, key("big"), &big, t0 + Duration::from_secs(9));
    bm.release(&big);
    assert_eq!(bm.num_warm_blocks(), 0);
    assert_eq!((ws.num_sessions(), ws.num_held_blocks()), (0, 0));
    bm.check_invariants().unwrap();
}

#[test]
fn warm_blocks_are_evicted_only_after_every_cold_block() {
    let mut bm = pool(8);
    let mut ws = warm(8);
    let t0 = Instant::now();
    let kept = sequence(&mut bm, 0, 8);
    ws.keep(&mut bm, key("a"), &kept, t0);
    bm.release(&kept);
    let cold = sequence(&mut bm, 100, 8);
    bm.release(&cold);
    // Six blocks that nobody holds are taken before the two warm ones.
    let six = bm.allocate(6).unwrap();
    assert!(six.iter().all(|id| !kept.contains(id)), "{six:?} {kept:?}");
    assert_eq!(bm.num_warm_blocks(), 2);
    // Under pressure the warm ones go too: warmth never refuses a block.
    let two = bm.allocate(2).unwrap();
    assert_eq!(bm.num_warm_blocks(), 0);
    assert_eq!(bm.num_free_blocks(), 0);
    bm.release(&six);
    bm.release(&two);
    // The evicted blocks' holds are stale: expiring them touches nothing.
    let again = sequence(&mut bm, 0, 8);
    bm.release(&again);
    ws.expire(&mut bm, t0 + TTL);
    assert_eq!(ws.num_sessions(), 0);
    assert_eq!(bm.num_free_blocks(), 8);
    bm.check_invariants().unwrap();
}

#[test]
fn two_sessions_sharing_a_prefix_hold_it_until_both_let_go() {
    let mut bm = pool(16);
    let mut ws = warm(16);
    let t0 = Instant::now();
    let a = sequence(&mut bm, 0, 8);
    ws.keep(&mut bm, key("a"), &a, t0);
    bm.release(&a);
    let b = sequence(&mut bm, 0, 12);
    ws.keep(&mut bm, key("b"), &b, t0 + Duration::from_secs(10));
    bm.release(&b);
    assert_eq!(bm.num_warm_blocks(), 3);
    ws.expire(&mut bm, t0 + TTL);
    // "a" let go; "b" still holds all three.
    assert_eq!(bm.num_warm_blocks(), 3);
    ws.expire(&mut bm, t0 + TTL + Duration::from_secs(10));
    assert_eq!(bm.num_warm_blocks(), 0);
    bm.check_invariants().unwrap();
}

#[test]
fn off_holds_nothing() {
    let mut bm = pool(8);
    let mut ws = WarmSessions::new(WarmConfig::OFF);
    let table = sequence(&mut bm, 0, 8);
    ws.keep(&mut bm, key("a"), &table, Instant::now());
    bm.release(&table);
    assert_eq!(bm.num_warm_blocks(), 0);
    assert_eq!(ws.num_sessions(), 0);
}
