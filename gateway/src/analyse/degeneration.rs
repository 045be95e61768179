//! The degeneration detector: an answer caught in a repetition loop is
//! stopped, so the tokens that would follow are never computed.
//!
//! It reads units: the engine's token ids when the producer is the local
//! engine (never re-tokenised), otherwise words of the text (a provider's
//! deltas and a replay's chunks are cut anywhere, but a loop in the text
//! is a loop in its words).
//!
//! Two signals:
//! - **exact tail cycle**: the last `L` units repeat with a period `p` in
//!   1..=[`MAX_PERIOD`], at least [`MIN_COPIES`] copies covering at least
//!   [`MIN_CYCLE_UNITS`] units. Kept incrementally: `runs[p]` counts the
//!   consecutive latest units equal to the unit `p` before them, so each
//!   unit costs [`MAX_PERIOD`] comparisons and the tail of length
//!   `runs[p] + p` is `p`-periodic.
//! - **low diversity**: over the last [`WINDOW`] units (once full), the
//!   share of distinct 4-grams and an LZ78 compression ratio, both
//!   extreme: a loop with small variations (a counter, a changing word)
//!   that no exact cycle shows.
//!
//! Code, tables, lists and refrains repeat shapes, not whole spans: a
//! table row differs from the next in its cells, a refrain comes back
//! after a verse. The thresholds were checked (not tuned) against the
//! held-out answers in `tests/data/stream/ordinary/`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use super::{Analyser, Stop, StopKind};

/// Longest cycle looked for, in units.
pub const MAX_PERIOD: usize = 128;
/// Copies of the cycle at the tail.
pub const MIN_COPIES: usize = 3;
/// Units the copies must cover together.
pub const MIN_CYCLE_UNITS: usize = 48;
/// The units the diversity signals read (and the longest tail a cycle is
/// looked for in: 3 copies of 128 fit).
pub const WINDOW: usize = 512;
/// Distinct 4-grams over the window below this share...
const MAX_DISTINCT_SHARE: f64 = 0.25;
/// ...and an LZ78 ratio (units per phrase) above this: a near-loop.
const MIN_LZ_RATIO: f64 = 4.0;
/// The diversity signals are recomputed every this many units.
const DIVERSITY_EVERY: usize = 64;
/// A word longer than this is cut (a base64 blob is not a loop).
const MAX_WORD_BYTES: usize = 256;

/// What the detector saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Cycle { period: usize, units: usize },
    LowDiversity,
}

/// The detector's state over one stream of units.
#[derive(Debug)]
pub struct Detector {
    history: VecDeque<u64>,
    /// `runs[p]`: how many latest units equal the unit `p` before them.
    runs: Vec<usize>,
    since_diversity: usize,
}

impl Default for Detector {
    fn default() -> Self {
        Self {
            history: VecDeque::with_capacity(WINDOW + 1),
            runs: vec![0; MAX_PERIOD + 1],
            since_diversity: 0,
        }
    }
}

impl Detector {
    /// Adds one unit; returns the signal when the stream now degenerates.
    pub fn push(&mut self, unit: u64) -> Option<Signal> {
        let n = self.history.len();
        let mut found = None;
        for period in 1..=MAX_PERIOD {
            let run = &mut self.runs[period];
            if period <= n && self.history[n - period] == unit {
                *run += 1;
                let units = *run + period;
                if found.is_none() && *run >= (MIN_COPIES - 1) * period && units >= MIN_CYCLE_UNITS
                {
                    found = Some(Signal::Cycle { period, units });
                }
            } else {
                *run = 0;
            }
        }
        if self.history.len() == WINDOW {
            self.history.pop_front();
        }
        self.history.push_back(unit);
        self.since_diversity += 1;
        if found.is_none()
            && self.history.len() == WINDOW
            && self.since_diversity >= DIVERSITY_EVERY
        {
            self.since_diversity = 0;
            if low_diversity(&self.history) {
                found = Some(Signal::LowDiversity);
            }
        }
        found
    }
}

/// Few distinct 4-grams and a text LZ78 compresses well.
fn low_diversity(units: &VecDeque<u64>) -> bool {
    let grams: HashSet<[u64; 4]> = (0..units.len().saturating_sub(3))
        .map(|i| [units[i], units[i + 1], units[i + 2], units[i + 3]])
        .collect();
    let share = grams.len() as f64 / units.len().saturating_sub(3).max(1) as f64;
    share < MAX_DISTINCT_SHARE && lz78_ratio(units) > MIN_LZ_RATIO
}

/// Units per phrase of an LZ78 parse: 1 for a text of all-new units, up
/// to about sqrt(2n) for one unit repeated.
fn lz78_ratio(units: &VecDeque<u64>) -> f64 {
    let mut phrases: HashMap<(usize, u64), usize> = HashMap::new();
    let mut node = 0usize;
    let mut count = 0usize;
    for &unit in units {
        match phrases.get(&(node, unit)) {
            Some(&next) => node = next,
            None => {
                let id = phrases.len() + 1;
                phrases.insert((node, unit), id);
                count += 1;
                node = 0;
            }
        }
    }
    if node != 0 {
        count += 1;
    }
    units.len() as f64 / count.max(1) as f64
}

/// Cuts text pieces into words, carrying a word cut between pieces.
#[derive(Debug, Default)]
struct Words {
    partial: String,
}

impl Words {
    /// The hashes of the words `piece` completes.
    fn feed(&mut self, piece: &str, out: &mut Vec<u64>) {
        for c in piece.chars() {
            if c.is_whitespace() {
                if !self.partial.is_empty() {
                    out.push(hash_word(&self.partial));
                    self.partial.clear();
                }
            } else if c.is_alphanumeric() {
                if self.partial.len() >= MAX_WORD_BYTES {
                    out.push(hash_word(&self.partial));
                    self.partial.clear();
                }
                self.partial.push(c);
            } else {
                // Punctuation is a word of its own: `a, a, a` loops as `a` `,`.
                if !self.partial.is_empty() {
                    out.push(hash_word(&self.partial));
                    self.partial.clear();
                }
                let mut buf = [0u8; 4];
                out.push(hash_word(c.encode_utf8(&mut buf)));
            }
        }
    }
}

fn hash_word(word: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    word.hash(&mut h);
    // Token ids are below 2^32; words never collide with them.
    h.finish() | (1 << 63)
}

/// The analyser: token ids where the producer gives them, words otherwise.
#[derive(Debug, Default)]
pub struct Degeneration {
    detector: Detector,
    words: Words,
    scratch: Vec<u64>,
}

impl Degeneration {
    fn stop(signal: Signal) -> Stop {
        let detail = match signal {
            Signal::Cycle { period, units } => {
                format!("a cycle of {period} tokens repeated over {units} tokens")
            }
            Signal::LowDiversity => "few distinct 4-grams over the last 512 tokens".to_string(),
        };
        Stop {
            analyser: "degeneration",
            kind: StopKind::Degenerate,
            detail,
        }
    }
}

impl Analyser for Degeneration {
    fn on_token(&mut self, token: Option<u32>, text: &str) -> Option<Stop> {
        if let Some(id) = token {
            return self.detector.push(u64::from(id)).map(Self::stop);
        }
        self.scratch.clear();
        self.words.feed(text, &mut self.scratch);
        let mut signal = None;
        for &unit in &self.scratch {
            if let Some(s) = self.detector.push(unit) {
                signal = Some(s);
                break;
            }
        }
        signal.map(Self::stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_signal(units: impl IntoIterator<Item = u64>) -> Option<(usize, Signal)> {
        let mut d = Detector::default();
        units
            .into_iter()
            .enumerate()
            .find_map(|(i, u)| d.push(u).map(|s| (i + 1, s)))
    }

    #[test]
    fn one_token_repeated_stops_at_48_tokens() {
        let (at, signal) = first_signal(std::iter::repeat_n(7, 100)).unwrap();
        assert_eq!(at, 48);
        assert_eq!(
            signal,
            Signal::Cycle {
                period: 1,
                units: 48
            }
        );
    }

    #[test]
    fn a_cycle_of_100_tokens_stops_after_its_third_copy() {
        let cycle: Vec<u64> = (1000..1100).collect();
        let stream = cycle.iter().copied().cycle().take(400);
        let (at, signal) = first_signal(stream).unwrap();
        assert_eq!(at, 300);
        assert_eq!(
            signal,
            Signal::Cycle {
                period: 100,
                units: 300
            }
        );
    }

    #[test]
    fn two_copies_of_a_long_span_are_not_a_loop() {
        let cycle: Vec<u64> = (0..120).collect();
        let stream = cycle.iter().chain(cycle.iter()).copied();
        assert_eq!(first_signal(stream), None);
    }

    #[test]
    fn a_cycle_longer_than_128_is_not_looked_for() {
        let cycle: Vec<u64> = (0..150).collect();
        let stream = cycle.iter().copied().cycle().take(600);
        assert_eq!(first_signal(stream), None);
    }

    #[test]
    fn a_short_loop_with_changing_words_is_caught_by_low_diversity() {
        // "ha ha ha" with a different word every 24 units: no exact cycle
        // covers 48 units, but there are few distinct 4-grams.
        let stream = (0..2000u64).map(|i| if i % 24 == 23 { 10_000 + i } else { i % 3 });
        let (at, signal) = first_signal(stream).unwrap();
        assert_eq!(signal, Signal::LowDiversity);
        assert!(at <= WINDOW + DIVERSITY_EVERY, "caught at {at}");
    }

    #[test]
    fn distinct_text_never_trips() {
        // A pseudo-random walk over a large vocabulary.
        let mut x: u64 = 12345;
        let stream = (0..5000).map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % 30000
        });
        assert_eq!(first_signal(stream), None);
    }

    #[test]
    fn words_of_a_text_loop_are_caught_without_token_ids() {
        let mut a = Degeneration::default();
        let piece = "the cat sat on the mat. ";
        // Cut at odd places, as a provider's deltas are.
        let text = piece.repeat(40);
        let bytes = text.as_bytes();
        let mut stopped = None;
        for (i, chunk) in bytes.chunks(5).enumerate() {
            let chunk = std::str::from_utf8(chunk).unwrap();
            if let Some(stop) = a.on_token(None, chunk) {
                stopped = Some(i);
                assert_eq!(stop.analyser, "degeneration");
                break;
            }
        }
        // 7 words per sentence: 48 units = 7 sentences (~168 bytes).
        let at = stopped.expect("the loop was not caught");
        assert!(at * 5 < 8 * piece.len(), "caught late, at chunk {at}");
    }
}
