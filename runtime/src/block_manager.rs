//! The paged KV-cache block pool, with prefix caching.
//!
//! The KV cache is cut into `num_blocks` blocks of `block_size` token slots; a
//! sequence owns a *block table* (block ids in position order). This module
//! only does the bookkeeping — which block is free, who references it, which
//! full blocks hold which token prefix — and never touches tensors. It follows
//! vLLM v1's `block_pool.py` + `kv_cache_manager.py`:
//!
//! * **Refcounts.** A block is *used* while some sequence references it
//!   (`ref_cnt > 0`) and *free* otherwise. Blocks holding a shared prefix have
//!   one reference per sequence.
//! * **Prefix cache.** A full, computed block is registered under a chain
//!   hash: the hash of block *i* covers the hash of block *i − 1* and the token
//!   ids of block *i*, so equal hashes mean equal whole prefixes. A later
//!   prompt walks its own chain and reuses the longest run of cached blocks.
//! * **Free list = eviction order.** A freed block that carries a hash stays
//!   cached but evictable; free blocks sit in one intrusive doubly-linked list
//!   that `allocate` pops from the front. Freed cached blocks go to the back
//!   (least recently freed is evicted first); freed blocks without a hash go
//!   to the front, since nothing is lost by reusing them. A cached block that
//!   a new prompt hits is unlinked in O(1).
//! * **Warm sessions, evicted last.** A conversation's finished turn may
//!   put a *warm hold* on its cached blocks ([`BlockManager::hold_warm`]): a
//!   free block with a hold sits in a second free list, which `allocate`
//!   empties only once the first one is, so the next turn of the
//!   conversation finds its prefix even after other traffic cycled the pool.
//!   Held blocks stay free (counted in `num_free_blocks`): a running or
//!   waiting sequence can always take them, so warmth never starves work.
//!   Each hold remembers the block's *epoch* (bumped whenever `allocate`
//!   hands the block out), so a hold on a block evicted meanwhile is stale
//!   and dropping it touches nothing.
//! * **No fit, no preemption.** `allocate` answers `None` without side
//!   effects when the pool is short; deciding whom to preempt is the
//!   scheduler's job (STYLE habit 9).
//!
//! Hashes are 128 bits built from two SipHash instances with per-manager
//! random keys: a collision would silently serve another prompt's KV, so the
//! hash must be both wide (≈2⁻⁸⁸ collision odds at a million blocks) and
//! unpredictable (a client cannot craft a prompt that collides with another
//! tenant's prefix).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

mod free_list;
mod invariants;

use free_list::{FreeList, Tier};

/// Index of a block in the KV cache.
pub type BlockId = u32;

/// Marks "no neighbour" in the intrusive free list.
const NIL: BlockId = BlockId::MAX;

/// Warm holds taken on a sequence's cached blocks by
/// [`BlockManager::hold_warm`]: give them back with
/// [`BlockManager::release_warm`] (dropping it without does no harm to the
/// pool's invariants, but keeps its blocks evicted last until they are).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WarmHold {
    /// (block, its epoch when held), in block-table order.
    blocks: Vec<(BlockId, u32)>,
}

impl WarmHold {
    /// Blocks held (some may have been evicted since).
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// Size of the pool and whether full blocks are shared between prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockManagerConfig {
    /// Blocks in the pool (at most `u32::MAX - 1`; more is clamped).
    pub num_blocks: usize,
    /// Token slots per block (0 is treated as 1).
    pub block_size: usize,
    pub enable_prefix_caching: bool,
}

/// Chain hash of a full block: identifies the block's tokens *and* every
/// token before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(u128);

#[derive(Debug, Clone)]
struct Block {
    /// Sequences referencing this block; 0 means it is in the free list.
    ref_cnt: u32,
    /// The chain hash of the block's content once it is full and computed.
    /// The block is *cached* (findable by other prompts) only when the map
    /// points back at it; otherwise it is a duplicate of a cached block and
    /// the hash just spares its owner from re-hashing the chain.
    hash: Option<BlockHash>,
    /// Free-list neighbours; meaningful only while `ref_cnt == 0`.
    prev: BlockId,
    next: BlockId,
    /// Warm sessions holding this block; only a cached block is held. A free
    /// block sits in the warm list exactly when this is positive.
    warm_holds: u32,
    /// Bumped each time `allocate` hands the block out: a [`WarmHold`] taken
    /// before then no longer refers to this content.
    epoch: u32,
}

/// The KV block pool. See the module docs.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    enable_prefix_caching: bool,
    blocks: Vec<Block>,
    /// Free blocks nobody holds warm; `allocate` takes from here first.
    cold: FreeList,
    /// Free cached blocks held by warm sessions, least recently freed first.
    warm: FreeList,
    /// Cached full blocks by chain hash.
    cached: HashMap<BlockHash, BlockId>,
    /// Two independently keyed SipHash builders: their outputs form the
    /// 128-bit block hash.
    hash_keys: (RandomState, RandomState),
    queries: u64,
    query_tokens: u64,
    hit_tokens: u64,
    /// Releases of a block nobody referenced (a caller bug); reported by
    /// `check_invariants` instead of panicking on a request path.
    refcount_underflows: u64,
}

impl BlockManager {
    pub fn new(cfg: BlockManagerConfig) -> Self {
        let num_blocks = cfg.num_blocks.min(NIL as usize);
        let blocks = (0..num_blocks)
            .map(|i| Block {
                ref_cnt: 0,
                hash: None,
                prev: if i == 0 { NIL } else { i as BlockId - 1 },
                next: if i + 1 == num_blocks {
                    NIL
                } else {
                    i as BlockId + 1
                },
                warm_holds: 0,
                epoch: 0,
            })
            .collect();
        let cold = match num_blocks {
            0 => FreeList::EMPTY,
            n => FreeList {
                head: 0,
                tail: n as BlockId - 1,
                len: n,
            },
        };
        Self {
            block_size: cfg.block_size.max(1),
            enable_prefix_caching: cfg.enable_prefix_caching,
            blocks,
            cold,
            warm: FreeList::EMPTY,
            cached: HashMap::new(),
            hash_keys: (RandomState::new(), RandomState::new()),
            queries: 0,
            query_tokens: 0,
            hit_tokens: 0,
            refcount_underflows: 0,
        }
    }

    /// Longest run of leading full blocks of `tokens` already cached, and the
    /// number of tokens they cover; takes a reference on each. Never covers
    /// the whole of `tokens`: at least one token is left to compute, so the
    /// last position's logits exist.
    pub fn acquire_cached_prefix(&mut self, tokens: &[u32]) -> (Vec<BlockId>, usize) {
        let (blocks, num_tokens) = self.find_cached_prefix(tokens);
        self.acquire_blocks(&blocks, tokens.len());
        (blocks, num_tokens)
    }

    /// Like [`acquire_cached_prefix`](Self::acquire_cached_prefix) but takes
    /// nothing: lets the scheduler check that the rest of a prompt fits
    /// before committing to anything.
    pub fn find_cached_prefix(&self, tokens: &[u32]) -> (Vec<BlockId>, usize) {
        if !self.enable_prefix_caching {
            return (Vec::new(), 0);
        }
        let max_blocks = tokens.len().saturating_sub(1) / self.block_size;
        let mut found = Vec::new();
        let mut parent = None;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let hash = self.hash_block(parent, chunk);
            match self.cached.get(&hash) {
                Some(&id) => found.push(id),
                None => break,
            }
            parent = Some(hash);
        }
        let num_tokens = found.len() * self.block_size;
        (found, num_tokens)
    }

    /// Takes a reference on each of `blocks` (a prefix returned by
    /// [`find_cached_prefix`](Self::find_cached_prefix)) and records one
    /// prefix-cache query of `query_tokens` tokens.
    pub fn acquire_blocks(&mut self, blocks: &[BlockId], query_tokens: usize) {
        if self.enable_prefix_caching {
            self.queries += 1;
            self.query_tokens += query_tokens as u64;
            self.hit_tokens += (blocks.len() * self.block_size) as u64;
        }
        for &id in blocks {
            let Some(block) = self.blocks.get_mut(id as usize) else {
                continue;
            };
            block.ref_cnt += 1;
            if block.ref_cnt == 1 {
                self.unlink(id);
            }
        }
        self.debug_check();
    }

    /// How many of `blocks` sit in the free pool: acquiring them lowers
    /// [`num_free_blocks`](Self::num_free_blocks) by this much.
    pub fn num_evictable(&self, blocks: &[BlockId]) -> usize {
        blocks
            .iter()
            .filter(|&&id| self.blocks.get(id as usize).is_some_and(|b| b.ref_cnt == 0))
            .count()
    }

    /// Takes `n` fresh blocks: never-cached free ones first, then cached free
    /// ones least recently freed first (dropping their hash entries), then
    /// blocks warm sessions hold, least recently freed first. `None`, with
    /// nothing changed, when fewer than `n` are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free_blocks() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = match self.cold.head {
                NIL => self.warm.head,
                id => id,
            };
            self.unlink(id);
            let block = &mut self.blocks[id as usize];
            block.ref_cnt = 1;
            // Evicting a warm block ends every hold on it (they go stale).
            block.warm_holds = 0;
            block.epoch = block.epoch.wrapping_add(1);
            if let Some(hash) = block.hash.take() {
                if self.cached.get(&hash) == Some(&id) {
                    self.cached.remove(&hash);
                }
            }
            out.push(id);
        }
        self.debug_check();
        Some(out)
    }

    /// Registers the first `num_full_blocks` blocks of a sequence (full and
    /// computed) in the prefix cache. `block_table` and `tokens` are the
    /// sequence's. Already-registered blocks are left alone; a block whose
    /// content is already cached under another id is not registered (the
    /// existing mapping stays, so concurrent identical prompts converge on one
    /// copy as they finish).
    pub fn register_full_blocks(
        &mut self,
        block_table: &[BlockId],
        tokens: &[u32],
        num_full_blocks: usize,
    ) {
        if !self.enable_prefix_caching {
            return;
        }
        let bs = self.block_size;
        let n = num_full_blocks
            .min(block_table.len())
            .min(tokens.len() / bs);
        // A block that already carries a hash carries this sequence's chain
        // hash up to it (a referenced block is never re-hashed), so only the
        // blocks after the last hashed one need hashing: O(new blocks) per
        // call instead of O(sequence).
        let mut start = 0;
        let mut parent = None;
        for i in (0..n).rev() {
            if let Some(hash) = self
                .blocks
                .get(block_table[i] as usize)
                .and_then(|b| b.hash)
            {
                start = i + 1;
                parent = Some(hash);
                break;
            }
        }
        for (i, &id) in block_table.iter().enumerate().take(n).skip(start) {
            let hash = self.hash_block(parent, &tokens[i * bs..(i + 1) * bs]);
            parent = Some(hash);
            let Some(block) = self.blocks.get_mut(id as usize) else {
                continue;
            };
            // Only an owner may register a block: a free block's slots may be
            // handed out and overwritten at any moment.
            debug_assert!(block.ref_cnt > 0, "registering free block {id}");
            if block.ref_cnt == 0 {
                continue;
            }
            block.hash = Some(hash);
            self.cached.entry(hash).or_insert(id);
        }
        self.debug_check();
    }

    /// Drops one reference on each block of `block_table`, tail first (as
    /// vLLM does), so that among cached blocks the tail of a sequence — the
    /// part least likely to be shared — is evicted first.
    pub fn release(&mut self, block_table: &[BlockId]) {
        for &id in block_table.iter().rev() {
            let Some(block) = self.blocks.get_mut(id as usize) else {
                self.refcount_underflows += 1;
                continue;
            };
            if block.ref_cnt == 0 {
                self.refcount_underflows += 1;
                continue;
            }
            block.ref_cnt -= 1;
            if block.ref_cnt > 0 {
                continue;
            }
            let cached = block
                .hash
                .is_some_and(|hash| self.cached.get(&hash) == Some(&id));
            if cached {
                self.push_back(id);
            } else {
                // A duplicate's hash is useless once nobody owns it.
                self.blocks[id as usize].hash = None;
                self.push_front(id);
            }
        }
        self.debug_check();
    }

    /// Puts a warm hold on the cached blocks of `block_table` (the caller
    /// still references them; uncached blocks cannot serve a later prompt
    /// and are skipped). Taken before the sequence releases its blocks, they
    /// go to the warm list when it does.
    pub fn hold_warm(&mut self, block_table: &[BlockId]) -> WarmHold {
        let mut hold = WarmHold::default();
        for &id in block_table {
            if !self.is_cached(id) {
                continue;
            }
            let free = self.blocks[id as usize].ref_cnt == 0;
            if free {
                self.unlink(id);
            }
            let block = &mut self.blocks[id as usize];
            block.warm_holds += 1;
            hold.blocks.push((id, block.epoch));
            if free {
                self.push_back(id);
            }
        }
        self.debug_check();
        hold
    }

    /// Gives back a warm hold: a free block nobody holds any more returns to
    /// the back of the cold list (still cached, evicted in the usual LRU
    /// order). Holds on blocks evicted since are ignored.
    pub fn release_warm(&mut self, hold: WarmHold) {
        // Tail first, as `release`: the tail is evicted first.
        for &(id, epoch) in hold.blocks.iter().rev() {
            let Some(block) = self.blocks.get(id as usize) else {
                continue;
            };
            if block.epoch != epoch || block.warm_holds == 0 {
                continue;
            }
            let free = block.ref_cnt == 0;
            if free {
                self.unlink(id);
            }
            self.blocks[id as usize].warm_holds -= 1;
            if free {
                self.push_back(id);
            }
        }
        self.debug_check();
    }

    /// Free blocks, including cached ones nobody references and the ones
    /// warm sessions hold.
    pub fn num_free_blocks(&self) -> usize {
        self.cold.len + self.warm.len
    }

    /// Free blocks held by warm sessions (the last ones `allocate` evicts).
    pub fn num_warm_blocks(&self) -> usize {
        self.warm.len
    }

    /// Blocks referenced by at least one sequence.
    pub fn num_used_blocks(&self) -> usize {
        self.blocks.len() - self.num_free_blocks()
    }

    pub fn num_total_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Fraction of blocks in use, for load signals.
    pub fn usage(&self) -> f32 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        self.num_used_blocks() as f32 / self.blocks.len() as f32
    }

    /// Blocks currently findable by a prefix lookup.
    pub fn num_cached_blocks(&self) -> usize {
        self.cached.len()
    }

    /// Prompt tokens served from the prefix cache, over all queries.
    pub fn prefix_cache_hit_tokens(&self) -> u64 {
        self.hit_tokens
    }

    /// Prompt tokens looked up in the prefix cache, over all queries.
    pub fn prefix_cache_query_tokens(&self) -> u64 {
        self.query_tokens
    }

    /// Prefix-cache lookups that were acted on.
    pub fn prefix_cache_queries(&self) -> u64 {
        self.queries
    }

    fn hash_block(&self, parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
        let mut a = self.hash_keys.0.build_hasher();
        let mut b = self.hash_keys.1.build_hasher();
        for h in [&mut a, &mut b] {
            match parent {
                Some(BlockHash(p)) => {
                    h.write_u8(1);
                    h.write_u128(p);
                }
                None => h.write_u8(0),
            }
            for &t in tokens {
                h.write_u32(t);
            }
        }
        BlockHash(((a.finish() as u128) << 64) | b.finish() as u128)
    }

    /// Whether `id` is the block a prefix lookup of its hash finds.
    fn is_cached(&self, id: BlockId) -> bool {
        self.blocks
            .get(id as usize)
            .and_then(|b| b.hash)
            .is_some_and(|hash| self.cached.get(&hash) == Some(&id))
    }
}

#[cfg(test)]
mod tests;
