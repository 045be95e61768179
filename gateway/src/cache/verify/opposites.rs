//! Opposite words ("allowed" / "forbidden", "import" / "export"): the
//! lexicon `antonyms.txt`, extracted from WordNet 3.0 by
//! `bench/data/make_antonyms.py` and embedded in the binary, plus the few
//! suffix rules that take an inflected word back to the lemma it lists.
//!
//! Design choice: a lexicon, not an NLI model. A lookup is a few hash
//! probes per word pair (microseconds on a semantic hit's path, no second
//! forward pass), needs no network or model files in tests, and a
//! rejection names the two words in the log.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

const LEXICON: &str = include_str!("../antonyms.txt");

struct Lexicon {
    /// Word → the sides it stands on: `2 * line + side`.
    sides: HashMap<&'static str, Vec<u32>>,
    /// Irregular form → lemma ("sold" → "sell").
    irregular: HashMap<&'static str, &'static str>,
    /// Russian: (word beginning, `2 * line + side`); Russian inflects too
    /// much for lemmas by suffix rules, so a word stands on a side when it
    /// starts with one of the side's beginnings.
    russian: Vec<(&'static str, u32)>,
}

static OPPOSITES: LazyLock<Lexicon> = LazyLock::new(|| parse(LEXICON));

fn parse(text: &'static str) -> Lexicon {
    let mut sides: HashMap<&'static str, Vec<u32>> = HashMap::new();
    let mut irregular = HashMap::new();
    let mut russian = Vec::new();
    let mut section = "";
    let mut line_no = 0u32;
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section == "[irregular]" {
            if let Some((form, lemma)) = line.split_once(' ') {
                irregular.insert(form, lemma);
            }
            continue;
        }
        let Some((left, right)) = line.split_once('\t') else {
            continue;
        };
        for (side, words) in [(0, left), (1, right)] {
            for w in words.split(' ') {
                if section == "[ru]" {
                    russian.push((w, 2 * line_no + side));
                } else {
                    sides.entry(w).or_default().push(2 * line_no + side);
                }
            }
        }
        line_no += 1;
    }
    Lexicon {
        sides,
        irregular,
        russian,
    }
}

impl Lexicon {
    fn opposite(&self, a: &str, b: &str) -> bool {
        let (Some(x), Some(y)) = (self.sides.get(a), self.sides.get(b)) else {
            return false;
        };
        // Same line (the same `n / 2`), other side.
        x.iter().any(|s| y.contains(&(s ^ 1)))
    }

    /// `word` and the lemmas its inflection may come from, those the
    /// lexicon knows ("forbidden" → "forbid", "increases" → "increase").
    fn lemmas(&self, word: &str, out: &mut HashSet<String>) {
        out.insert(word.to_string());
        if let Some(l) = self.irregular.get(word) {
            out.insert((*l).to_string());
        }
        const SUFFIXES: &[(&str, &[&str])] = &[
            ("ies", &["y"]),
            ("ied", &["y"]),
            ("ier", &["y"]),
            ("iest", &["y"]),
            ("es", &["", "e"]),
            ("s", &[""]),
            ("ed", &["", "e"]),
            ("ing", &["", "e"]),
            ("en", &["", "e"]),
            ("er", &["", "e"]),
            ("est", &["", "e"]),
        ];
        for (suffix, endings) in SUFFIXES {
            let Some(stem) = word.strip_suffix(suffix) else {
                continue;
            };
            if stem.chars().count() < 2 {
                continue;
            }
            for ending in *endings {
                let lemma = format!("{stem}{ending}");
                if self.sides.contains_key(lemma.as_str()) {
                    out.insert(lemma);
                }
            }
            // "stopped" → "stop", "forbidden" → "forbid".
            let mut chars = stem.chars().rev();
            if let (Some(x), Some(y)) = (chars.next(), chars.next()) {
                if x == y {
                    let undoubled = &stem[..stem.len() - x.len_utf8()];
                    if self.sides.contains_key(undoubled) {
                        out.insert(undoubled.to_string());
                    }
                }
            }
        }
    }
}

/// The first pair of opposites that one text uses and the other does not
/// ("Is it allowed…" / "Is it forbidden…"); words both texts use are no
/// opposition ("buy or sell" / "sell or buy").
pub fn find(a: &[String], b: &[String]) -> Option<(String, String)> {
    let lex = &*OPPOSITES;
    let lemmas = |words: &[String]| {
        let mut out = HashSet::new();
        for w in words {
            lex.lemmas(w, &mut out);
        }
        out
    };
    let (la, lb) = (lemmas(a), lemmas(b));
    for x in la.difference(&lb) {
        for y in lb.difference(&la) {
            if lex.opposite(x, y) {
                return Some((x.clone(), y.clone()));
            }
        }
    }
    let russian_sides = |words: &[String]| -> HashSet<u32> {
        words
            .iter()
            .filter(|w| !w.is_ascii())
            .flat_map(|w| {
                lex.russian
                    .iter()
                    .filter(move |(beginning, _)| w.starts_with(beginning))
                    .map(|&(_, side)| side)
            })
            .collect()
    };
    let (ra, rb) = (russian_sides(a), russian_sides(b));
    ra.difference(&rb)
        .find(|s| rb.contains(&(*s ^ 1)) && !ra.contains(&(*s ^ 1)))
        .map(|s| {
            let name = |side: u32| {
                lex.russian
                    .iter()
                    .find(|(_, x)| *x == side)
                    .map_or("", |(b, _)| *b)
                    .to_string()
            };
            (name(*s), name(s ^ 1))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn lexicon_parses_and_pairs_only_across_sides() {
        let lex = &*OPPOSITES;
        assert!(lex.sides.len() > 5000, "{}", lex.sides.len());
        assert!(lex.opposite("buy", "sell") && lex.opposite("sell", "buy"));
        assert!(!lex.opposite("buy", "purchase"));
        assert_eq!(lex.irregular.get("sold"), Some(&"sell"));
    }

    #[test]
    fn inflections_find_their_lemma() {
        for (a, b) in [
            ("forbidden", "allowed"),
            ("increases", "decreasing"),
            ("sold", "bought"),
            ("stopped", "started"),
        ] {
            assert!(find(&words(a), &words(b)).is_some(), "{a} / {b}");
        }
        assert_eq!(find(&words("buy or sell"), &words("sell or buy")), None);
        assert!(find(&words("цены растут"), &words("цены падают")).is_some());
        assert_eq!(
            find(&words("растение растёт"), &words("растение растёт")),
            None
        );
    }
}
