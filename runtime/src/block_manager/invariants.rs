//! The pool's invariants, checked after every mutation in debug builds and
//! by the tests: what the bookkeeping promises, written out once.

use super::{BlockId, BlockManager, Tier, NIL};

impl BlockManager {
    /// Checks the pool's invariants: free + used == total, no refcount
    /// underflow, every free block in the free list exactly once and no
    /// referenced block in it, the hash map and the blocks' hashes agree.
    /// O(num_blocks); run after every mutation in debug builds.
    pub fn check_invariants(&self) -> Result<(), String> {
        let total = self.blocks.len();
        if self.refcount_underflows > 0 {
            return Err(format!(
                "{} releases of unreferenced blocks",
                self.refcount_underflows
            ));
        }
        let mut in_list = vec![false; total];
        let mut count = 0;
        for tier in [Tier::Cold, Tier::Warm] {
            let list = *self.list(tier);
            let mut listed = 0;
            let mut prev = NIL;
            let mut cur = list.head;
            while cur != NIL {
                let Some(block) = self.blocks.get(cur as usize) else {
                    return Err(format!("free list holds out-of-range id {cur}"));
                };
                if in_list[cur as usize] {
                    return Err(format!("free lists visit block {cur} twice"));
                }
                in_list[cur as usize] = true;
                if block.ref_cnt != 0 {
                    return Err(format!(
                        "block {cur} is free-listed with refcount {}",
                        block.ref_cnt
                    ));
                }
                if self.tier_of(cur) != tier {
                    return Err(format!(
                        "block {cur} with {} warm holds is in the {tier:?} list",
                        block.warm_holds
                    ));
                }
                if block.prev != prev {
                    return Err(format!("block {cur} has a stale prev link"));
                }
                listed += 1;
                prev = cur;
                cur = block.next;
            }
            if prev != list.tail {
                return Err(format!(
                    "{tier:?} tail is {} but the list ends at {prev}",
                    list.tail
                ));
            }
            if listed != list.len {
                return Err(format!(
                    "{tier:?} list has {listed} blocks, counter says {}",
                    list.len
                ));
            }
            count += listed;
        }
        for (id, block) in self.blocks.iter().enumerate() {
            if block.warm_holds > 0 && !self.is_cached(id as BlockId) {
                return Err(format!("block {id} is held warm but not cached"));
            }
        }
        let used = self.blocks.iter().filter(|b| b.ref_cnt > 0).count();
        if used + count != total {
            return Err(format!(
                "free {count} + used {used} != total {total}: a block with refcount 0 is not free-listed"
            ));
        }
        for (hash, &id) in &self.cached {
            match self.blocks.get(id as usize) {
                Some(block) if block.hash == Some(*hash) => {}
                _ => return Err(format!("hash map points at block {id}, whose hash differs")),
            }
        }
        for (id, block) in self.blocks.iter().enumerate() {
            if let Some(hash) = block.hash {
                let cached = self.cached.get(&hash) == Some(&(id as BlockId));
                if !cached && block.ref_cnt == 0 {
                    return Err(format!("free block {id} keeps a hash that is not cached"));
                }
            }
        }
        Ok(())
    }

    pub(super) fn debug_check(&self) {
        debug_assert_eq!(self.check_invariants(), Ok(()));
    }
}
