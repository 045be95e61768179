//! Finding personal data in a text: one regex pass for the candidates,
//! then each candidate checked (check digits, issuer prefixes, context
//! words) and given its kind.
//!
//! Design choice: one alternation of every shape, compiled once, run with
//! `captures_iter` (the regex crate finds each match with its lazy DFA and
//! resolves the groups on the match alone), so a text is read once whatever
//! the number of kinds. Every boundary is ASCII (`(?-u:\b)`, `[0-9]`): a
//! Unicode word boundary would push the regex off its DFA on Cyrillic text.
//! Numbers are matched as runs of digit groups (spaces, dashes, brackets
//! between groups), then the run's digits are classified by length and
//! check digits; when the whole run is not an identifier, its sub-runs are
//! tried (a card followed by an unrelated number in the same run).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use regex::{Captures, Regex};

use super::checksum;
use crate::config::PiiEntity;

/// One value found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub entity: PiiEntity,
    /// Byte range in the text.
    pub span: Range<usize>,
}

const PATTERN: &str = r"(?x)
    (?P<pem>-----BEGIN[A-Z\ ]*PRIVATE\ KEY-----(?s:.)*?-----END[A-Z\ ]*PRIVATE\ KEY-----)
  | (?P<jwt>(?-u:\b)eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,})
  | (?P<secret>(?-u:\b)(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}
        |github_pat_[A-Za-z0-9_]{22,}|xox[bpoas]-[A-Za-z0-9-]{10,}))
  | (?P<email>[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?
        (?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24})
  | (?P<iban>(?-u:\b)[A-Z]{2}[0-9]{2}(?:\ ?[A-Z0-9]{4}){2,7}(?:\ ?[A-Z0-9]{1,3})?(?-u:\b))
  | (?P<ipv6>[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})
  | (?P<ipv4>(?:[0-9]{1,3}\.){3}[0-9]{1,3})
  | (?P<num>(?:\+\ ?)?(?:\([0-9]+\)|[0-9]+)(?:[\ -]?(?:\([0-9]+\)|[0-9]+))*)
";

/// How far before a number its context words may stand (bytes).
const CONTEXT_BYTES: usize = 64;
/// How far from an account its bank's BIK may stand (bytes).
const BIK_NEAR_BYTES: usize = 300;
/// Digit groups of one run tried as sub-runs at most.
const MAX_GROUPS: usize = 16;

const PASSPORT_WORDS: &[&str] = &["паспорт", "passport", "серия", "серии"];
const ACCOUNT_WORDS: &[&str] = &["счет", "счёт", "р/с", "к/с", "account"];

/// The compiled detector; built once, shared by every request.
pub struct Detector {
    regex: Regex,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Detector")
    }
}

/// A run of digit groups, before it is classified.
struct NumberRun {
    /// Byte ranges of the digit groups in the text.
    groups: Vec<Range<usize>>,
    plus: bool,
}

impl Detector {
    pub fn new() -> Result<Self, regex::Error> {
        Ok(Self {
            regex: Regex::new(PATTERN)?,
        })
    }

    /// Every value in `text`, in order, none overlapping.
    pub fn scan(&self, text: &str) -> Vec<Found> {
        let mut found = Vec::new();
        let mut runs = Vec::new();
        for caps in self.regex.captures_iter(text) {
            if let Some(f) = self.shape(text, &caps, &mut runs) {
                found.push(f);
            }
        }
        if !runs.is_empty() {
            let biks: Vec<usize> = runs
                .iter()
                .filter(|r| {
                    let d = run_digits(text, &r.groups);
                    d.len() == 9 && d.starts_with("04") && !r.plus
                })
                .filter_map(|r| r.groups.first().map(|g| g.start))
                .collect();
            for run in &runs {
                classify_run(text, run, &biks, &mut found);
            }
            found.sort_by_key(|f| f.span.start);
        }
        found
    }

    /// The kind of a candidate that needs no digit classification; number
    /// runs are kept for later (an account needs every BIK of the text).
    fn shape(&self, text: &str, caps: &Captures<'_>, runs: &mut Vec<NumberRun>) -> Option<Found> {
        let found = |entity, m: regex::Match<'_>| {
            Some(Found {
                entity,
                span: m.range(),
            })
        };
        if let Some(m) = caps.name("pem") {
            return found(PiiEntity::Secret, m);
        }
        if let Some(m) = caps.name("jwt").or_else(|| caps.name("secret")) {
            return found(PiiEntity::Secret, m);
        }
        if let Some(m) = caps.name("email") {
            return found(PiiEntity::Email, m);
        }
        if let Some(m) = caps.name("iban") {
            return iban(m.as_str()).map(|len| Found {
                entity: PiiEntity::Iban,
                span: m.start()..m.start() + len,
            });
        }
        if let Some(m) = caps.name("ipv6") {
            let s = m.as_str();
            let hex = s.chars().filter(char::is_ascii_hexdigit).count();
            let ok = hex >= 3
                && s.parse::<Ipv6Addr>().is_ok()
                && !word_byte_before(text, m.start())
                && !word_byte_at(text, m.end());
            return if ok { found(PiiEntity::Ip, m) } else { None };
        }
        if let Some(m) = caps.name("ipv4") {
            let after = text.as_bytes().get(m.end()..).unwrap_or_default();
            let dotted_on =
                after.first() == Some(&b'.') && after.get(1).is_some_and(u8::is_ascii_digit);
            let ok = m.as_str().parse::<Ipv4Addr>().is_ok()
                && !word_byte_before(text, m.start())
                && !word_byte_at(text, m.end())
                && !dotted_on
                && !text[..m.start()].ends_with('.');
            return if ok { found(PiiEntity::Ip, m) } else { None };
        }
        if let Some(m) = caps.name("num") {
            // Digits glued to letters are part of an identifier or a hash
            // (`a3f5...`, `ID12345`), not a number of their own.
            if word_byte_before(text, m.start()) || word_byte_at(text, m.end()) {
                return None;
            }
            let s = m.as_str();
            let plus = s.starts_with('+');
            let groups: Vec<Range<usize>> = digit_groups(s)
                .map(|g| m.start() + g.start..m.start() + g.end)
                .collect();
            if !groups.is_empty() {
                runs.push(NumberRun { groups, plus });
            }
        }
        None
    }
}

/// The IBAN's length in bytes once trailing groups that break its check
/// are dropped; `None` when no prefix of it is valid.
fn iban(candidate: &str) -> Option<usize> {
    let mut end = candidate.len();
    loop {
        let compact: String = candidate[..end].chars().filter(|c| *c != ' ').collect();
        if checksum::iban(&compact) {
            return Some(end);
        }
        end = candidate[..end].rfind(' ')?;
    }
}

fn word_byte_before(text: &str, at: usize) -> bool {
    at > 0
        && text
            .as_bytes()
            .get(at - 1)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

fn word_byte_at(text: &str, at: usize) -> bool {
    text.as_bytes()
        .get(at)
        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// Byte ranges of the maximal digit sequences of `s`.
fn digit_groups(s: &str) -> impl Iterator<Item = Range<usize>> + '_ {
    let b = s.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() && !b[i].is_ascii_digit() {
            i += 1;
        }
        if i >= b.len() {
            return None;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        Some(start..i)
    })
}

fn run_digits(text: &str, groups: &[Range<usize>]) -> String {
    groups.iter().filter_map(|g| text.get(g.clone())).collect()
}

/// Finds identifiers in a run: the whole run first, then its sub-runs,
/// longest first, left to right.
fn classify_run(text: &str, run: &NumberRun, biks: &[usize], found: &mut Vec<Found>) {
    let groups = &run.groups[..run.groups.len().min(MAX_GROUPS)];
    let mut i = 0;
    while i < groups.len() {
        let mut matched = None;
        for end in (i + 1..=groups.len()).rev() {
            let window = &groups[i..end];
            let plus = run.plus && i == 0;
            if let Some(entity) = classify(text, window, plus, biks) {
                matched = Some((entity, end));
                break;
            }
        }
        match matched {
            Some((entity, end)) => {
                // A `+` (and a space after it) or an opening bracket
                // before the first group belongs to the number.
                let bytes = text.as_bytes();
                let mut start = groups[i].start;
                if start > 0 && bytes[start - 1] == b'(' {
                    start -= 1;
                }
                if run.plus && i == 0 {
                    while start > 0 && matches!(bytes[start - 1], b' ' | b'+') {
                        start -= 1;
                        if bytes[start] == b'+' {
                            break;
                        }
                    }
                }
                let last = &groups[end - 1];
                let mut stop = last.end;
                if text.as_bytes().get(stop) == Some(&b')') {
                    stop += 1;
                }
                found.push(Found {
                    entity,
                    span: start..stop,
                });
                i = end;
            }
            None => i += 1,
        }
    }
}

/// The kind of the number made of `groups`, if it is one.
fn classify(text: &str, groups: &[Range<usize>], plus: bool, biks: &[usize]) -> Option<PiiEntity> {
    let d = run_digits(text, groups);
    let start = groups.first()?.start;
    let b = d.as_bytes();
    if plus {
        // E.164: a country code (not 0) and at most 15 digits.
        let phone = b.first().is_some_and(|c| *c != b'0') && (8..=15).contains(&d.len());
        return phone.then_some(PiiEntity::Phone);
    }
    match d.len() {
        9 => None,
        10 => {
            if has_context(text, start, PASSPORT_WORDS) {
                Some(PiiEntity::Passport)
            } else if checksum::inn(&d) {
                Some(PiiEntity::Inn)
            } else {
                None
            }
        }
        11 => {
            let trunk = matches!(b[0], b'7' | b'8') && matches!(b[1], b'3' | b'4' | b'8' | b'9');
            if checksum::snils(&d) && !(trunk && groups.len() != 4) {
                Some(PiiEntity::Snils)
            } else if trunk {
                Some(PiiEntity::Phone)
            } else {
                None
            }
        }
        12 if checksum::inn(&d) => Some(PiiEntity::Inn),
        13 if checksum::ogrn(&d) && matches!(b[0], b'1' | b'5') => Some(PiiEntity::Ogrn),
        15 if checksum::ogrn(&d) && b[0] == b'3' => Some(PiiEntity::Ogrnip),
        20 => {
            let near: Vec<&usize> = biks
                .iter()
                .filter(|&&at| at.abs_diff(start) <= BIK_NEAR_BYTES)
                .collect();
            let valid = if near.is_empty() {
                has_context(text, start, ACCOUNT_WORDS)
            } else {
                near.iter().any(|&&at| {
                    text.get(at..at + 9)
                        .is_some_and(|bik| checksum::account_with_bik(&d, bik))
                })
            };
            valid.then_some(PiiEntity::Account)
        }
        12..=19 if checksum::card_prefix(&d) && checksum::luhn(&d) => Some(PiiEntity::Card),
        _ => None,
    }
}

/// One of `words` stands just before `at` (case-insensitive).
fn has_context(text: &str, at: usize, words: &[&str]) -> bool {
    let mut from = at.saturating_sub(CONTEXT_BYTES);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let before = text.get(from..at).unwrap_or_default().to_lowercase();
    words.iter().any(|w| before.contains(w))
}
