//! Deterministic prompts: text built from common English words (about one
//! token per word for byte-level BPE vocabularies), and exact-length token
//! prompts for the engine-level workload, so both sides of a comparison get
//! the very same token ids.

use anyhow::{bail, Context, Result};
use sluice_models::Tokenizer;

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "time",
    "people",
    "year",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "name",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "good",
    "new",
    "first",
    "last",
    "long",
    "great",
    "little",
    "own",
    "other",
    "old",
    "big",
    "high",
    "different",
    "small",
    "large",
    "next",
    "early",
    "young",
    "important",
    "few",
    "public",
    "bad",
    "same",
    "able",
    "river",
    "garden",
    "music",
    "window",
    "light",
    "market",
    "paper",
    "road",
    "table",
    "winter",
    "summer",
    "train",
    "letter",
    "bridge",
    "mountain",
    "village",
    "ocean",
    "forest",
    "simple",
    "quiet",
    "green",
    "open",
    "clear",
    "warm",
];

/// SplitMix64: a tiny, seedable generator, so prompts are the same in every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// `n` words drawn from the list with a seed of their own.
pub fn words(n: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(n * 7);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.below(WORDS.len())]);
    }
    out
}

/// A text prompt of about `approx_tokens` tokens, distinct for each `index`
/// (so no prefix cache can make one request cheaper than another).
pub fn text_prompt(index: usize, approx_tokens: usize, seed: u64) -> String {
    let head = format!("Request {index}. Continue this text:");
    // The head is about 8 tokens; the rest is one word per token.
    let body = words(
        approx_tokens.saturating_sub(8).max(1),
        seed ^ ((index as u64) << 20),
    );
    format!("{head} {body}")
}

/// Exactly `len` token ids, distinct for each `index`: words are encoded and
/// the ids cut at `len` (a cut inside a word costs the model nothing extra).
pub fn token_prompt(tok: &Tokenizer, index: usize, len: usize, seed: u64) -> Result<Vec<u32>> {
    if len == 0 {
        bail!("a prompt needs at least one token");
    }
    let mut words_needed = len + 8;
    for _ in 0..8 {
        let text = text_prompt(index, words_needed, seed);
        let mut ids = tok
            .encode(&text, true)
            .with_context(|| format!("tokenising the prompt of request {index}"))?;
        if ids.len() >= len {
            ids.truncate(len);
            return Ok(ids);
        }
        words_needed *= 2;
    }
    bail!("could not build a {len}-token prompt from words (the tokenizer merges too much)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_deterministic_and_seed_dependent() {
        assert_eq!(words(20, 7), words(20, 7));
        assert_ne!(words(20, 7), words(20, 8));
        assert_eq!(words(20, 7).split(' ').count(), 20);
    }

    #[test]
    fn text_prompts_differ_by_index() {
        assert_ne!(text_prompt(0, 64, 1), text_prompt(1, 64, 1));
    }
}
