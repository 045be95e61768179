//! The pool's two free lists (cold, then warm: the eviction order), kept
//! as intrusive doubly-linked lists through the blocks themselves, so a
//! cached block a new prompt hits leaves its list in O(1).

use super::{BlockId, BlockManager, NIL};

/// One intrusive doubly-linked list of free blocks (links live in [`Block`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct FreeList {
    /// Front = next to be handed out by `allocate`.
    pub(super) head: BlockId,
    pub(super) tail: BlockId,
    pub(super) len: usize,
}

impl FreeList {
    pub(super) const EMPTY: Self = Self {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

/// Which free list a free block sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tier {
    /// Evicted first: uncached blocks at the front, cached ones in the
    /// order they were freed.
    Cold,
    /// Cached blocks some warm session holds: evicted once `Cold` is empty.
    Warm,
}

impl BlockManager {
    /// The list free block `id` belongs in (by its warm holds).
    pub(super) fn tier_of(&self, id: BlockId) -> Tier {
        if self.blocks[id as usize].warm_holds > 0 {
            Tier::Warm
        } else {
            Tier::Cold
        }
    }

    pub(super) fn list(&self, tier: Tier) -> &FreeList {
        match tier {
            Tier::Cold => &self.cold,
            Tier::Warm => &self.warm,
        }
    }

    pub(super) fn list_mut(&mut self, tier: Tier) -> &mut FreeList {
        match tier {
            Tier::Cold => &mut self.cold,
            Tier::Warm => &mut self.warm,
        }
    }

    /// Removes free block `id` from its free list (the one its warm holds
    /// say: change them only while the block is unlinked).
    pub(super) fn unlink(&mut self, id: BlockId) {
        let tier = self.tier_of(id);
        let (prev, next) = {
            let b = &self.blocks[id as usize];
            (b.prev, b.next)
        };
        match prev {
            NIL => self.list_mut(tier).head = next,
            p => self.blocks[p as usize].next = next,
        }
        match next {
            NIL => self.list_mut(tier).tail = prev,
            n => self.blocks[n as usize].prev = prev,
        }
        let b = &mut self.blocks[id as usize];
        b.prev = NIL;
        b.next = NIL;
        self.list_mut(tier).len -= 1;
    }

    pub(super) fn push_back(&mut self, id: BlockId) {
        let tier = self.tier_of(id);
        let tail = self.list(tier).tail;
        {
            let b = &mut self.blocks[id as usize];
            b.prev = tail;
            b.next = NIL;
        }
        match tail {
            NIL => self.list_mut(tier).head = id,
            t => self.blocks[t as usize].next = id,
        }
        let list = self.list_mut(tier);
        list.tail = id;
        list.len += 1;
    }

    pub(super) fn push_front(&mut self, id: BlockId) {
        let tier = self.tier_of(id);
        let head = self.list(tier).head;
        {
            let b = &mut self.blocks[id as usize];
            b.prev = NIL;
            b.next = head;
        }
        match head {
            NIL => self.list_mut(tier).tail = id,
            h => self.blocks[h as usize].prev = id,
        }
        let list = self.list_mut(tier);
        list.head = id;
        list.len += 1;
    }
}
