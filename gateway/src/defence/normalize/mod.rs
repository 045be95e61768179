//! L0, normalisation: from one text, the views the rules read.
//!
//! Each view undoes one way of hiding words from a matcher:
//! - `text`: NFKC (fullwidth and styled letters become plain ones),
//!   invisible characters and bidi controls removed, lowercased, runs of
//!   whitespace made one space. Flag emoji and ZWJ emoji stay whole.
//! - `smuggled`: what tag characters and variation-selector runs encoded
//!   ([`invisible`]), itself normalised.
//! - `skeleton`: mixed-script tokens in their majority script ([`fold`]).
//! - `leet`: leetspeak read back ([`fold`]).
//! - `rot13`: the text with its ASCII letters rotated.
//! - `reversed`: the text backwards (`snoitcurtsni suoiverp erongi`).
//! - `base64`, `hex`, `url`: payloads that decode to readable text
//!   ([`decode`]), each normalised in turn and decoded again, down to
//!   [`MAX_DEPTH`] layers.
//!
//! A view that would equal the `text` view is not made, so ordinary text
//! costs three views: itself, its rotation and its reversal.
//!
//! Linear in the input: every pass reads its input once, decoded payloads
//! are never longer than their encoding (and in all at most
//! [`DECODE_BUDGET_RATIO`] times the input), and decoding stops at
//! [`MAX_DEPTH`]. [`Normalized::visited`] counts the bytes the passes
//! read, so a test checks the bound without a clock.

pub mod decode;
mod fold;
mod invisible;

use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

pub use decode::Encoding;
pub use invisible::InvisibleCounts;

/// Layers of encoding undone at most (base64 inside hex, say).
pub const MAX_DEPTH: u8 = 2;
/// Decoded output allowed per input byte, over all payloads and depths.
pub const DECODE_BUDGET_RATIO: usize = 2;
/// ASCII letters a text needs before a ROT13 view is worth reading.
const MIN_ROT13_LETTERS: usize = 8;

/// Which transformation made a view; a rule names the kinds it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViewKind {
    Text,
    Smuggled,
    Skeleton,
    Leet,
    Rot13,
    Reversed,
    Base64,
    Hex,
    Url,
}

impl ViewKind {
    pub const ALL: [ViewKind; 9] = [
        Self::Text,
        Self::Smuggled,
        Self::Skeleton,
        Self::Leet,
        Self::Rot13,
        Self::Reversed,
        Self::Base64,
        Self::Hex,
        Self::Url,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Smuggled => "smuggled",
            Self::Skeleton => "skeleton",
            Self::Leet => "leet",
            Self::Rot13 => "rot13",
            Self::Reversed => "reversed",
            Self::Base64 => "base64",
            Self::Hex => "hex",
            Self::Url => "url",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    fn of(encoding: Encoding) -> Self {
        match encoding {
            Encoding::Base64 => Self::Base64,
            Encoding::Hex => Self::Hex,
            Encoding::Url => Self::Url,
        }
    }
}

/// One reading of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub kind: ViewKind,
    /// Layers of encoding undone to reach it (0: the text itself).
    pub depth: u8,
    pub text: String,
}

/// What normalisation noticed, for the rules that weigh it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Signals {
    pub invisible: InvisibleCounts,
    /// Tokens mixing Latin with Cyrillic or Greek letters were folded.
    pub mixed_script: bool,
    /// Payloads decoded (base64, hex, url), at every depth.
    pub decoded: usize,
}

/// Every view of a text, and what making them cost.
#[derive(Debug, Default)]
pub struct Normalized {
    pub views: Vec<View>,
    pub signals: Signals,
    /// Bytes read by all passes together.
    pub visited: usize,
}

/// The views of `text`.
pub fn normalize(text: &str) -> Normalized {
    let mut out = Normalized::default();
    let mut budget = text.len().saturating_mul(DECODE_BUDGET_RATIO);
    add_views(text, ViewKind::Text, 0, &mut budget, &mut out);
    out
}

/// Adds the views of `text`, which was reached through `kind` at `depth`.
fn add_views(text: &str, kind: ViewKind, depth: u8, budget: &mut usize, out: &mut Normalized) {
    let cleaned = invisible::clean(text);
    out.visited += text.len();
    accumulate(&mut out.signals.invisible, cleaned.counts);
    out.visited += cleaned.visible.len();
    let nfkc = nfkc(cleaned.visible);
    let base = fold_case_space(&nfkc);
    out.visited += nfkc.len();
    let skeleton = fold::skeleton(&nfkc);
    out.visited += nfkc.len();
    out.signals.mixed_script |= skeleton.is_some();
    let skeleton = skeleton.map(|s| fold_case_space(&s));
    let unleet = fold::unleetspeak(skeleton.as_deref().unwrap_or(&base));
    out.visited += base.len();
    // The text view first: a rule that fires in several views is reported
    // in the first one (a Russian phrase is its own ROT13).
    let at = out.views.len();
    let ascii_letters = base.bytes().filter(u8::is_ascii_alphabetic).count();
    out.visited += base.len();
    if ascii_letters >= MIN_ROT13_LETTERS && kind != ViewKind::Rot13 {
        out.visited += base.len();
        out.views.push(View {
            kind: ViewKind::Rot13,
            depth,
            text: decode::rot13(&base),
        });
    }
    if depth == 0 {
        out.visited += base.len();
        out.views.push(View {
            kind: ViewKind::Reversed,
            depth,
            text: reversed(&base),
        });
    }
    for (view_kind, view) in [(ViewKind::Skeleton, skeleton), (ViewKind::Leet, unleet)] {
        if let Some(text) = view.filter(|v| *v != base) {
            out.views.push(View {
                kind: if depth == 0 { view_kind } else { kind },
                depth,
                text,
            });
        }
    }
    out.views.insert(
        at,
        View {
            kind,
            depth,
            text: base,
        },
    );
    if depth >= MAX_DEPTH {
        return;
    }
    if !cleaned.smuggled.is_empty() {
        add_views(
            &cleaned.smuggled,
            ViewKind::Smuggled,
            depth + 1,
            budget,
            out,
        );
    }
    let payloads = decode::payloads(&nfkc, budget, &mut out.visited);
    out.signals.decoded += payloads.len();
    for payload in payloads {
        add_views(
            &payload.text,
            ViewKind::of(payload.encoding),
            depth + 1,
            budget,
            out,
        );
    }
}

/// NFKC, skipping the (slow) recomposition for text that is already in
/// it: ASCII, and most Latin and Cyrillic prose.
pub fn nfkc(text: String) -> String {
    // Latin-1 letters, Cyrillic, dashes and quotes are NFKC already;
    // checking that first spares most texts the table lookups.
    let common = |c: char| matches!(c as u32, 0..=0x9F | 0xAB | 0xBB | 0xC0..=0x24F | 0x400..=0x52F | 0x2010..=0x2015 | 0x2018..=0x201F);
    if text.chars().all(common) || is_nfkc_quick(text.chars()) == IsNormalized::Yes {
        text
    } else {
        text.nfkc().collect()
    }
}

fn accumulate(total: &mut InvisibleCounts, more: InvisibleCounts) {
    total.invisible += more.invisible;
    total.bidi += more.bidi;
    total.tag_chars += more.tag_chars;
    total.selector_bytes += more.selector_bytes;
}

/// A letter or a digit: the standard library's answer, with the scripts
/// most texts are written in decided without its table search.
pub fn is_word_char(c: char) -> bool {
    match c as u32 {
        0..=0x7F => c.is_ascii_alphanumeric(),
        0xC0..=0x24F => c != '×' && c != '÷',
        0x400..=0x481 | 0x48A..=0x52F => true,
        _ => c.is_alphanumeric(),
    }
}

/// Lowercase, with each run of whitespace one space and none at the ends:
/// the form rule phrases are written in.
pub fn fold_case_space(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        // Runs of ASCII that stay as they are (most text) are copied whole.
        let run = bytes[at..]
            .iter()
            .position(|&b| !b.is_ascii() || b.is_ascii_uppercase() || is_ascii_space(b))
            .map_or(bytes.len(), |n| at + n);
        if run > at {
            if space {
                out.push(' ');
                space = false;
            }
            out.push_str(&text[at..run]);
            at = run;
            continue;
        }
        let Some(c) = text[at..].chars().next() else {
            break;
        };
        at += c.len_utf8();
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        // ASCII and Russian without the standard library's table search.
        match c as u32 {
            0x41..=0x5A => out.push(c.to_ascii_lowercase()),
            0x410..=0x42F => out.push(char::from_u32(c as u32 + 0x20).unwrap_or(c)),
            0x400..=0x40F => out.push(char::from_u32(c as u32 + 0x50).unwrap_or(c)),
            0..=0x7F | 0x430..=0x45F => out.push(c),
            _ => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// The ASCII characters `char::is_whitespace` calls whitespace.
fn is_ascii_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// The text backwards, by character, allocated once.
fn reversed(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    out.extend(text.chars().rev());
    out
}

#[cfg(test)]
mod tests;
