//! The input defence's first layers, which run on every request before the
//! guard: L0 normalisation ([`normalize`]) makes the views of a text that
//! undo the usual ways of hiding words from a matcher (invisible and
//! smuggled characters, look-alike letters, leetspeak, base64, hex, URL
//! encoding, ROT13), and L1 rules ([`rules`]) scan every view with one
//! Aho-Corasick automaton and one `RegexSet`, in Russian and English.
//! [`stage`] is the chain's stage: it scores a request's texts and flags
//! or refuses it.
//!
//! Main types: [`normalize::Normalized`] (the views of one text),
//! [`rules::RuleSet`] (the compiled rules: the built-in `rules.toml` and a
//! user's file over it), [`InputDefence`] (the stage) and
//! [`DefenceStamp`] (its decision, which the response's headers carry).
//!
//! Design decision: the rules are data, not code. Each rule has an id, a
//! category, a weight, the languages it is written in, and the views and
//! message roles it reads; a deployment adds its own, re-weights or
//! disables built-in ones by id without a new binary. Everything is
//! linear in the input (no backtracking regex engine; decoding bounded by
//! the input's size and two layers deep), so a megabyte of hostile text
//! costs a few passes, never a blow-up.
//!
//! This module sees a validated request only: no HTTP, no server state.

pub mod normalize;
pub mod rules;
pub mod stage;

pub use stage::{DefenceStamp, InputDefence, Outcome, DEFENCE_HEADER};
