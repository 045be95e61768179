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
//! A finished turn of a session may leave its blocks warm
//! ([`Scheduler::finish_keeping_warm`], [`crate::warm_sessions`]): they stay
//! free, evicted after every other free block, until they expire
//! ([`Scheduler::expire_warm`], with the time passed in).
//!
//! A sequence that could never run — more blocks than the pool has, more
//! positions than the model has, or nothing to compute — is removed and
//! reported through [`Scheduler::take_unservable`] instead of waiting forever.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use crate::block_manager::{BlockId, BlockManager, BlockManagerConfig};
use crate::request::SessionKey;
use crate::warm_sessions::{WarmConfig, WarmSessions};

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
    /// How long and how many blocks finished session turns stay warm.
    pub warm: WarmConfig,
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
    /// Sessions whose finished turns' blocks are evicted last.
    warm: WarmSessions,
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
            warm: WarmSessions::new(cfg.warm),
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

    /// [`finish`](Self::finish) for a turn of `session`: its cached blocks
    /// (the prompt and the computed answer) stay warm until
    /// `now + keep_warm`, replacing the session's earlier turn.
    pub fn finish_keeping_warm(&mut self, id: SeqId, session: SessionKey, now: Instant) {
        if let Some(seq) = self.seqs.get(&id) {
            self.warm
                .keep(&mut self.blocks, session, &seq.block_table, now);
        }
        self.remove(id);
    }

    /// Lets go of the warm sessions that expired by `now`.
    pub fn expire_warm(&mut self, now: Instant) {
        self.warm.expire(&mut self.blocks, now);
    }

    /// Sessions whose blocks are held warm.
    pub fn num_warm_sessions(&self) -> usize {
        self.warm.num_sessions()
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
mod tests;
