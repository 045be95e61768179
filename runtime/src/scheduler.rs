//! Iteration-level continuous batching: who runs in the next step, and how
//! many tokens each computes.
//!
//! A synchronous state machine in the mould of vLLM v1's `scheduler.py`
//! (STYLE habits 7–9): [`Scheduler::schedule`] returns a plain
//! [`SchedulerOutput`], the engine runs the model on it, and
//! [`Scheduler::update`] records what was computed and sampled. No async, no
//! tensors, no clock, so every policy here is tested without a model.
//!
//! There are no prefill and decode phases, only a token budget: each sequence
//! has `tokens` (prompt + generated) and `num_computed` (how many have KV in
//! the cache), and a step gives each scheduled sequence a chunk of its
//! uncomputed tokens. A decode is a chunk of one; a long prompt is prefilled
//! over several steps (chunked prefill) while other sequences keep decoding;
//! a preempted sequence simply goes back to `num_computed = 0`.
//!
//! Policy, in order, each step:
//! 1. Running sequences, oldest admission first, each takes its next chunk
//!    within the remaining budget. When the block pool cannot grow one, the
//!    newest running sequence is preempted (blocks released, pushed to the
//!    front of the queue to recompute later) until it fits — or, when the
//!    one being grown is itself the newest, it is the one preempted.
//! 2. Only if nobody was preempted (admitting new work would just thrash):
//!    waiting sequences are admitted in FIFO order while the sequence cap, the
//!    budget and the pool allow. Each first reuses its cached prefix. The
//!    head of the queue that does not fit blocks those behind it (no
//!    skipping, so a long prompt is not starved by short ones).
//!
//! A sequence that could never run — more blocks than the pool has, more
//! positions than the model has, or nothing to compute — is removed and
//! reported through [`Scheduler::take_unservable`] instead of waiting forever.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::block_manager::{BlockId, BlockManager, BlockManagerConfig};

/// The engine's handle on a sequence.
pub type SeqId = u64;

/// Limits of one scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences admitted (running) at once.
    pub max_num_seqs: usize,
    /// Tokens computed in one step, over all sequences.
    pub max_num_batched_tokens: usize,
    /// Positions the model supports: a sequence never grows past it.
    pub max_model_len: usize,
    pub block: BlockManagerConfig,
}

/// One sequence's work in a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: SeqId,
    /// Position of `tokens[0]`.
    pub start_pos: usize,
    /// Token ids to compute, at positions `start_pos..start_pos + tokens.len()`.
    pub tokens: Vec<u32>,
    /// The sequence's whole block table, long enough for
    /// `start_pos + tokens.len()` positions.
    pub block_table: Vec<BlockId>,
    /// This chunk reaches the end of the known tokens: the engine samples the
    /// next token from the last position's logits.
    pub sample: bool,
}

/// What to run in one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    pub seqs: Vec<ScheduledSeq>,
    /// Sequences preempted this step: their blocks are freed and they will
    /// recompute from the start (their tokens are kept).
    pub preempted: Vec<SeqId>,
    pub num_batched_tokens: usize,
}

impl SchedulerOutput {
    /// Nothing to run this step.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

#[derive(Debug)]
struct Sequence {
    /// Prompt followed by the generated tokens.
    tokens: Vec<u32>,
    /// Leading tokens whose KV is in the blocks of `block_table`.
    num_computed: usize,
    block_table: Vec<BlockId>,
    /// Prompt tokens served by the prefix cache at the first admission
    /// (usage reporting); `None` until then.
    cached_prompt_tokens: Option<usize>,
    prompt_len: usize,
}

/// The continuous-batching scheduler. See the module docs.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    blocks: BlockManager,
    seqs: HashMap<SeqId, Sequence>,
    /// Not admitted (new, or preempted: those go to the front).
    waiting: VecDeque<SeqId>,
    /// Admitted, in admission order: the last one is the newest, the first
    /// preempted when blocks run out.
    running: Vec<SeqId>,
    unservable: Vec<SeqId>,
    num_preemptions: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Self {
        Self {
            cfg,
            blocks: BlockManager::new(cfg.block),
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            unservable: Vec::new(),
            num_preemptions: 0,
        }
    }

    /// Queues a new sequence at the back of the FIFO. `max_tokens` is its
    /// generation budget; admission does not reserve blocks for it (as in
    /// vLLM v1): a sequence takes blocks as it grows, the engine stops it at
    /// `max_tokens`, and running out of blocks is handled by preemption.
    /// Re-adding a known id replaces the old sequence (its blocks are freed).
    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>, max_tokens: usize) {
        let _ = max_tokens;
        self.remove(id);
        let prompt_len = prompt.len();
        self.seqs.insert(
            id,
            Sequence {
                tokens: prompt,
                num_computed: 0,
                block_table: Vec::new(),
                cached_prompt_tokens: None,
                prompt_len,
            },
        );
        self.waiting.push_back(id);
    }

    /// Removes a sequence wherever it is and frees its blocks now. Unknown
    /// ids are ignored.
    pub fn abort(&mut self, id: SeqId) {
        self.remove(id);
    }

    /// The engine is done with the sequence (stop, length, cancel): frees its
    /// blocks and forgets it.
    pub fn finish(&mut self, id: SeqId) {
        self.remove(id);
    }

    /// Plans one step. See the module docs for the policy.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        self.schedule_running(&mut budget, &mut out);
        if out.preempted.is_empty() {
            self.schedule_waiting(&mut budget, &mut out);
        }
        out.num_batched_tokens = self.cfg.max_num_batched_tokens - budget;
        out
    }

    /// Records a step that ran: each scheduled chunk is now computed, newly
    /// full blocks enter the prefix cache, and each sampled token is appended
    /// to its sequence (only for chunks that had `sample` set; others are
    /// ignored). The appended token is computed by the next step's decode.
    pub fn update(&mut self, output: &SchedulerOutput, sampled: &[(SeqId, u32)]) {
        let bs = self.blocks.block_size();
        let mut may_sample = HashSet::new();
        for chunk in &output.seqs {
            let Some(seq) = self.seqs.get_mut(&chunk.id) else {
                // Finished or aborted while the step ran.
                continue;
            };
            let end = chunk.start_pos + chunk.tokens.len();
            // A chunk that no longer lines up with the sequence (it was
            // removed and re-added meanwhile) must not advance it.
            if seq.num_computed != chunk.start_pos || seq.block_table.len() * bs < end {
                continue;
            }
            seq.num_computed = end;
            self.blocks
                .register_full_blocks(&seq.block_table, &seq.tokens, end / bs);
            if chunk.sample && end == seq.tokens.len() {
                may_sample.insert(chunk.id);
            }
        }
        for &(id, token) in sampled {
            // `remove` also makes a duplicate (id, token) pair a no-op.
            if !may_sample.remove(&id) {
                continue;
            }
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.tokens.push(token);
            }
        }
    }

    /// Sequences removed because they can never run (see the module docs);
    /// the engine fails them. Each id is reported once.
    pub fn take_unservable(&mut self) -> Vec<SeqId> {
        std::mem::take(&mut self.unservable)
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Some sequence is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn block_manager(&self) -> &BlockManager {
        &self.blocks
    }

    /// Prompt + generated tokens of a known sequence.
    pub fn tokens(&self, id: SeqId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| s.tokens.as_slice())
    }

    /// Prompt tokens served by the prefix cache at the sequence's first
    /// admission (0 if unknown or not yet admitted).
    pub fn cached_prompt_tokens(&self, id: SeqId) -> usize {
        self.seqs
            .get(&id)
            .and_then(|s| s.cached_prompt_tokens)
            .unwrap_or(0)
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Preemptions since the scheduler was created.
    pub fn num_preemptions(&self) -> u64 {
        self.num_preemptions
    }

    /// Step part 1: grow every running sequence by its next chunk.
    fn schedule_running(&mut self, budget: &mut usize, out: &mut SchedulerOutput) {
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let id = self.running[i];
            let Some(seq) = self.seqs.get(&id) else {
                // Unreachable while `remove` keeps both in step; heal anyway.
                self.running.remove(i);
                continue;
            };
            if !self.can_ever_run(seq) {
                self.drop_unservable(id);
                continue;
            }
            let start = seq.num_computed;
            let num_new = (seq.tokens.len() - start).min(*budget);
            if num_new == 0 {
                // The engine has not appended the token sampled last step
                // (it is about to finish this sequence): nothing to compute.
                i += 1;
                continue;
            }
            let needed = self
                .blocks_for(start + num_new)
                .saturating_sub(seq.block_table.len());
            if !self.allocate_or_preempt(id, needed, out) {
                // `id` preempted itself: it was the last running sequence,
                // so the loop ends here.
                continue;
            }
            out.seqs.push(self.chunk(id, start, num_new));
            *budget -= num_new;
            i += 1;
        }
    }

    /// Gives running sequence `id` `needed` more blocks, preempting the newest
    /// running sequences until they fit. False when `id` itself had to be
    /// preempted.
    fn allocate_or_preempt(&mut self, id: SeqId, needed: usize, out: &mut SchedulerOutput) -> bool {
        loop {
            if let Some(new_blocks) = self.blocks.allocate(needed) {
                if let Some(seq) = self.seqs.get_mut(&id) {
                    seq.block_table.extend(new_blocks);
                }
                return true;
            }
            let Some(&victim) = self.running.last() else {
                return false;
            };
            self.preempt(victim);
            out.preempted.push(victim);
            if victim == id {
                return false;
            }
        }
    }

    /// Step part 2: admit waiting sequences FIFO.
    fn schedule_waiting(&mut self, budget: &mut usize, out: &mut SchedulerOutput) {
        while let Some(&id) = self.waiting.front() {
            if self.running.len() >= self.cfg.max_num_seqs || *budget == 0 {
                break;
            }
            let Some(seq) = self.seqs.get(&id) else {
                self.waiting.pop_front();
                continue;
            };
            if !self.can_ever_run(seq) {
                self.drop_unservable(id);
                continue;
            }
            // Look before taking anything, so a sequence that does not fit
            // leaves the pool (and its LRU order) untouched.
            let (prefix, num_cached) = self.blocks.find_cached_prefix(&seq.tokens);
            let num_new = (seq.tokens.len() - num_cached).min(*budget);
            let needed = self
                .blocks_for(num_cached + num_new)
                .saturating_sub(prefix.len());
            // Reusing a cached block that sits in the free pool takes it out
            // of the pool, so it cannot also serve as a fresh block.
            let available = self
                .blocks
                .num_free_blocks()
                .saturating_sub(self.blocks.num_evictable(&prefix));
            if needed > available {
                break;
            }
            let query_tokens = seq.tokens.len();
            self.blocks.acquire_blocks(&prefix, query_tokens);
            let Some(new_blocks) = self.blocks.allocate(needed) else {
                // Cannot happen after the check above; undo and wait.
                self.blocks.release(&prefix);
                break;
            };
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.block_table = prefix;
                seq.block_table.extend(new_blocks);
                seq.num_computed = num_cached;
                if seq.cached_prompt_tokens.is_none() {
                    seq.cached_prompt_tokens = Some(num_cached.min(seq.prompt_len));
                }
            }
            self.waiting.pop_front();
            self.running.push(id);
            out.seqs.push(self.chunk(id, num_cached, num_new));
            *budget -= num_new;
        }
    }

    /// The work item for `num_new` tokens of `id` from `start`.
    fn chunk(&self, id: SeqId, start: usize, num_new: usize) -> ScheduledSeq {
        let (tokens, block_table, total) = match self.seqs.get(&id) {
            Some(seq) => (
                seq.tokens[start..start + num_new].to_vec(),
                seq.block_table.clone(),
                seq.tokens.len(),
            ),
            None => (Vec::new(), Vec::new(), 0),
        };
        ScheduledSeq {
            id,
            start_pos: start,
            tokens,
            block_table,
            sample: start + num_new == total,
        }
    }

    /// Whether the sequence could run if it had the whole pool: all its
    /// positions fit the model and all its blocks fit the pool.
    fn can_ever_run(&self, seq: &Sequence) -> bool {
        let len = seq.tokens.len();
        len > 0
            && len <= self.cfg.max_model_len
            && self.blocks_for(len) <= self.blocks.num_total_blocks()
    }

    fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.blocks.block_size())
    }

    /// Frees a running sequence's blocks and queues it, first, to recompute.
    fn preempt(&mut self, id: SeqId) {
        if let Some(pos) = self.running.iter().rposition(|&r| r == id) {
            self.running.remove(pos);
        }
        if let Some(seq) = self.seqs.get_mut(&id) {
            self.blocks.release(&seq.block_table);
            seq.block_table.clear();
            seq.num_computed = 0;
        }
        self.waiting.push_front(id);
        self.num_preemptions += 1;
    }

    fn drop_unservable(&mut self, id: SeqId) {
        if self.remove(id) {
            self.unservable.push(id);
        }
    }

    /// Forgets a sequence and frees its blocks; false if it was unknown.
    fn remove(&mut self, id: SeqId) -> bool {
        let Some(seq) = self.seqs.remove(&id) else {
            return false;
        };
        self.blocks.release(&seq.block_table);
        self.waiting.retain(|&w| w != id);
        self.running.retain(|&r| r != id);
        true
    }
}

#[cfg(test)]
mod tests {
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
}
