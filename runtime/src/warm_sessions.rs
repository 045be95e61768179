//! Which conversations' KV blocks stay warm after a turn, and until when.
//!
//! When a turn of a session (a [`SessionKey`] on its request) finishes, its
//! cached blocks (prompt + answer, the full ones) get a warm hold in the
//! block pool ([`BlockManager::hold_warm`]) for `keep_warm`; the next turn's
//! prompt starts with the same tokens, so its prefix lookup finds them even
//! if other traffic has cycled the pool meanwhile. A session's newer turn
//! replaces its older hold (taken first, so the shared prefix never loses
//! its hold in between).
//!
//! Bounded twice: held blocks are still free, so a sequence that needs them
//! evicts them (last, after every unheld block); and holds cover at most
//! `max_blocks` blocks, so warm sessions cannot crowd out the prefix cache
//! of everyone else: over the bound, the sessions closest to expiry are
//! released first.
//!
//! No clock inside (as the scheduler): callers pass `now`, so tests step
//! time by hand.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::block_manager::{BlockId, BlockManager, WarmHold};
use crate::request::SessionKey;

/// How long and how much to keep warm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmConfig {
    /// How long a finished turn's blocks are held; zero turns warmth off.
    pub keep_warm: Duration,
    /// Blocks held over all sessions at most.
    pub max_blocks: usize,
}

impl WarmConfig {
    /// No session is ever kept warm.
    pub const OFF: Self = Self {
        keep_warm: Duration::ZERO,
        max_blocks: 0,
    };

    pub fn is_off(&self) -> bool {
        self.keep_warm.is_zero() || self.max_blocks == 0
    }
}

#[derive(Debug)]
struct Entry {
    hold: WarmHold,
    /// Matches the queue entry that is this hold's; older queue entries of
    /// the same session are stale.
    generation: u64,
}

/// The warm sessions of one block pool. See the module docs.
#[derive(Debug)]
pub struct WarmSessions {
    cfg: WarmConfig,
    sessions: HashMap<SessionKey, Entry>,
    /// Expiry order. Every hold lives `keep_warm`, so holds expire in the
    /// order they were taken: a queue, with stale entries (a session that
    /// took a newer hold) skipped when they reach the front.
    queue: VecDeque<(Instant, SessionKey, u64)>,
    next_generation: u64,
    /// Blocks over all live holds (some may have been evicted since).
    held_blocks: usize,
}

impl WarmSessions {
    pub fn new(cfg: WarmConfig) -> Self {
        Self {
            cfg,
            sessions: HashMap::new(),
            queue: VecDeque::new(),
            next_generation: 0,
            held_blocks: 0,
        }
    }

    /// A turn of `session` finished with `block_table` (still referenced by
    /// the caller, who releases it next): hold its cached blocks until
    /// `now + keep_warm`, replacing the session's previous hold.
    pub fn keep(
        &mut self,
        blocks: &mut BlockManager,
        session: SessionKey,
        block_table: &[BlockId],
        now: Instant,
    ) {
        if self.cfg.is_off() {
            return;
        }
        let hold = blocks.hold_warm(block_table);
        if let Some(old) = self.sessions.remove(&session) {
            self.held_blocks -= old.hold.len();
            blocks.release_warm(old.hold);
        }
        if hold.is_empty() {
            return;
        }
        let expires = now + self.cfg.keep_warm;
        let generation = self.next_generation;
        self.next_generation += 1;
        self.held_blocks += hold.len();
        self.queue.push_back((expires, session.clone(), generation));
        self.sessions.insert(session, Entry { hold, generation });
        // Over the bound: the oldest holds go first (possibly this one, when
        // it alone is larger than the bound).
        while self.held_blocks > self.cfg.max_blocks {
            if !self.release_front(blocks) {
                break;
            }
        }
    }

    /// Releases every hold that expired by `now`.
    pub fn expire(&mut self, blocks: &mut BlockManager, now: Instant) {
        while let Some((expires, _, _)) = self.queue.front() {
            if *expires > now {
                break;
            }
            self.release_front(blocks);
        }
    }

    /// Releases every hold (the pool is about to be dropped or reset).
    pub fn clear(&mut self, blocks: &mut BlockManager) {
        while self.release_front(blocks) {}
    }

    /// Sessions held warm.
    pub fn num_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Blocks over all holds, counted when they were taken.
    pub fn num_held_blocks(&self) -> usize {
        self.held_blocks
    }

    /// Pops the queue's front; releases its hold unless it is stale. False
    /// when the queue is empty.
    fn release_front(&mut self, blocks: &mut BlockManager) -> bool {
        let Some((_, session, generation)) = self.queue.pop_front() else {
            return false;
        };
        let current = self
            .sessions
            .get(&session)
            .is_some_and(|e| e.generation == generation);
        if current {
            if let Some(entry) = self.sessions.remove(&session) {
                self.held_blocks -= entry.hold.len();
                blocks.release_warm(entry.hold);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;
