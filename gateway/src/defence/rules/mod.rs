//! L1, rules: every view of a text ([`super::normalize`]) goes through one
//! Aho-Corasick automaton (the literal phrases of every rule) and one
//! `RegexSet` (the patterns of every rule), so the cost of a scan grows
//! with the text, not with the number of rules. A rule fires when one of
//! its phrases or patterns matches a view it reads, in a message whose
//! role it applies to, and no word of its `unless_preceded_by` stands
//! just before the match. Signal rules fire on what normalisation counted
//! (smuggled tag characters, say).
//!
//! A text's score is the noisy-or of the weights of the distinct rules
//! that fired, `1 - Π(1 - w)`: one strong rule decides alone, weak ones
//! (an invisible character, a mixed-script word) add up without ever
//! reaching 1. A rule whose every match opens right after a quotation
//! mark counts half ([`QUOTED_FACTOR`]): security talk quotes attacks
//! ("why is 'ignore previous instructions' dangerous?"); it is flagged at
//! most, and the guard still reads it.
//!
//! Rules are data: [`BUILT_IN`] is compiled into the binary, and a user's
//! file adds, replaces or disables rules by id ([`file`]).

pub mod file;

use std::path::Path;

use aho_corasick::{AhoCorasick, MatchKind};
use regex::{Regex, RegexSet, RegexSetBuilder};

use super::normalize::{self, Normalized, ViewKind};
use file::{RuleFile, RuleSpec};

/// The rules every server starts with.
pub const BUILT_IN: &str = include_str!("../rules.toml");
const BUILT_IN_ORIGIN: &str = "the built-in rules";
/// Bytes before a match searched for a negating word.
const NEGATION_WINDOW: usize = 32;
/// What a quoted match weighs, as a share of its rule's weight.
pub const QUOTED_FACTOR: f32 = 0.5;
/// Compiled size allowed for all patterns together.
const REGEX_SIZE_LIMIT: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read the rules file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: rule `{id}`: {message}")]
    Invalid {
        origin: String,
        id: String,
        message: String,
    },
}

/// Whose message a text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
    /// A completion prompt.
    Prompt,
}

impl Role {
    const ALL: [Role; 5] = [
        Self::System,
        Self::User,
        Self::Assistant,
        Self::Tool,
        Self::Prompt,
    ];
    /// Rules read these unless they say otherwise: the system prompt is
    /// the operator's, and often describes the attacks it forbids.
    const DEFAULT: [Role; 4] = [Self::User, Self::Assistant, Self::Tool, Self::Prompt];

    pub fn name(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
            Self::Prompt => "prompt",
        }
    }

    /// A chat message's role; unknown roles read as the user's.
    pub fn of_message(role: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == role)
            .unwrap_or(Self::User)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// What normalisation counted that a signal rule can weigh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    TagChars,
    SelectorBytes,
    Invisible,
    Bidi,
    MixedScript,
    Decoded,
}

impl Signal {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "tag_chars" => Self::TagChars,
            "selector_bytes" => Self::SelectorBytes,
            "invisible" => Self::Invisible,
            "bidi" => Self::Bidi,
            "mixed_script" => Self::MixedScript,
            "decoded" => Self::Decoded,
            _ => return None,
        })
    }

    fn count(self, n: &Normalized) -> usize {
        let s = &n.signals;
        match self {
            Self::TagChars => s.invisible.tag_chars,
            Self::SelectorBytes => s.invisible.selector_bytes,
            Self::Invisible => s.invisible.invisible,
            Self::Bidi => s.invisible.bidi,
            Self::MixedScript => usize::from(s.mixed_script),
            Self::Decoded => s.decoded,
        }
    }
}

/// Which layer a rule belongs to, for headers and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// A normalisation signal.
    Normalize,
    /// A phrase or a pattern.
    Rules,
}

impl Layer {
    pub fn name(self) -> &'static str {
        match self {
            Self::Normalize => "normalize",
            Self::Rules => "rules",
        }
    }
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub id: String,
    pub category: String,
    pub weight: f32,
    pub languages: Vec<String>,
    pub layer: Layer,
    /// Bit `k` set: reads views of kind `ViewKind::ALL[k]`.
    views: u16,
    /// Bit per [`Role`].
    roles: u8,
    signal: Option<(Signal, usize)>,
    /// Folded like the views.
    unless_preceded_by: Vec<String>,
    /// The patterns again, one by one: checked for a negation only after
    /// the set says one matched.
    patterns: Vec<Regex>,
}

impl Rule {
    fn reads(&self, kind: ViewKind, role: Role) -> bool {
        self.views & view_bit(kind) != 0 && self.roles & role.bit() != 0
    }
}

fn view_bit(kind: ViewKind) -> u16 {
    1 << ViewKind::ALL.iter().position(|&k| k == kind).unwrap_or(0)
}

/// A rule that fired, and the view it fired in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub rule: usize,
    pub view: ViewKind,
    /// Every match stood right after an opening quote: a mention ("why is
    /// 'ignore previous instructions' an attack?"), weighed less.
    pub quoted: bool,
}

/// What the rules made of one text.
#[derive(Debug, Default)]
pub struct Scan {
    /// Noisy-or of the fired rules' weights, in `[0, 1]`.
    pub score: f32,
    /// One per fired rule, strongest first.
    pub hits: Vec<Hit>,
    /// Bytes normalisation and matching read.
    pub visited: usize,
    /// The views, kept only when asked for (tests, `sluice-bench`).
    pub normalized: Option<Normalized>,
}

/// Every rule, compiled into one automaton and one regex set.
pub struct RuleSet {
    rules: Vec<Rule>,
    phrases: AhoCorasick,
    phrase_rule: Vec<usize>,
    patterns: RegexSet,
    pattern_rule: Vec<usize>,
    signal_rules: Vec<usize>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

impl RuleSet {
    /// The built-in rules, with the user's file (if any) over them.
    pub fn load(user_file: Option<&Path>) -> Result<Self, RulesError> {
        let built_in = RuleFile::parse(BUILT_IN, BUILT_IN_ORIGIN)?;
        let (user, origin) = match user_file {
            Some(path) => {
                let origin = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
                    path: origin.clone(),
                    source,
                })?;
                (Some(RuleFile::parse(&text, &origin)?), origin)
            }
            None => (None, BUILT_IN_ORIGIN.to_string()),
        };
        let specs = file::merge(built_in, user.map(|f| (f, origin.as_str())))?;
        Self::compile(specs, &origin)
    }

    /// Compiles rules written as TOML text (tests, a user file alone).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, RulesError> {
        Self::compile(RuleFile::parse(text, origin)?.rules, origin)
    }

    fn compile(specs: Vec<RuleSpec>, origin: &str) -> Result<Self, RulesError> {
        let mut rules = Vec::with_capacity(specs.len());
        let mut phrases = Vec::new();
        let mut phrase_rule = Vec::new();
        let mut patterns = Vec::new();
        let mut pattern_rule = Vec::new();
        let mut signal_rules = Vec::new();
        for spec in specs {
            let index = rules.len();
            let invalid = |message: String| RulesError::Invalid {
                origin: origin.to_string(),
                id: spec.id.clone(),
                message,
            };
            if spec.id.trim().is_empty() {
                return Err(invalid("`id` must not be empty".into()));
            }
            if rules.iter().any(|r: &Rule| r.id == spec.id) {
                return Err(invalid("the id is used twice".into()));
            }
            if !(spec.weight > 0.0 && spec.weight <= 1.0) {
                return Err(invalid(format!(
                    "`weight` {} is not in (0, 1]",
                    spec.weight
                )));
            }
            let views = match &spec.views {
                None => u16::MAX,
                Some(names) => names.iter().try_fold(0u16, |bits, name| {
                    ViewKind::parse(name)
                        .map(|k| bits | view_bit(k))
                        .ok_or_else(|| {
                            invalid(format!(
                                "`views`: `{name}` is not one of {}",
                                ViewKind::ALL.map(ViewKind::name).join(", ")
                            ))
                        })
                })?,
            };
            let roles = match &spec.roles {
                None => Role::DEFAULT.iter().fold(0, |bits, r| bits | r.bit()),
                Some(names) => names.iter().try_fold(0u8, |bits, name| {
                    Role::ALL
                        .into_iter()
                        .find(|r| r.name() == name)
                        .map(|r| bits | r.bit())
                        .ok_or_else(|| {
                            invalid(format!(
                                "`roles`: `{name}` is not one of system, user, assistant, tool, prompt"
                            ))
                        })
                })?,
            };
            let signal = match &spec.signal {
                None => None,
                Some(name) => {
                    let signal = Signal::parse(name).ok_or_else(|| {
                        invalid(format!(
                            "`signal`: `{name}` is not one of tag_chars, selector_bytes, \
                             invisible, bidi, mixed_script, decoded"
                        ))
                    })?;
                    Some((signal, spec.min_count.unwrap_or(1).max(1)))
                }
            };
            let has_text = !spec.phrases.is_empty() || !spec.patterns.is_empty();
            if signal.is_some() == has_text {
                return Err(invalid(
                    "a rule has either a `signal` or `phrases`/`patterns`, not both and not neither"
                        .into(),
                ));
            }
            let mut compiled = Vec::with_capacity(spec.patterns.len());
            for pattern in &spec.patterns {
                let regex = regex::RegexBuilder::new(pattern)
                    .case_insensitive(true)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| invalid(format!("pattern `{pattern}`: {e}")))?;
                compiled.push(regex);
                patterns.push(pattern.clone());
                pattern_rule.push(index);
            }
            for phrase in &spec.phrases {
                let folded = fold(phrase);
                if folded.is_empty() {
                    return Err(invalid("a phrase is empty".into()));
                }
                phrases.push(folded);
                phrase_rule.push(index);
            }
            if signal.is_some() {
                signal_rules.push(index);
            }
            rules.push(Rule {
                id: spec.id,
                category: spec.category,
                weight: spec.weight,
                languages: spec.languages,
                layer: if signal.is_some() {
                    Layer::Normalize
                } else {
                    Layer::Rules
                },
                views,
                roles,
                signal,
                unless_preceded_by: spec.unless_preceded_by.iter().map(|w| fold(w)).collect(),
                patterns: compiled,
            });
        }
        let phrases_ac = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&phrases)
            .map_err(|e| RulesError::Parse {
                origin: origin.to_string(),
                message: format!("the phrases do not compile: {e}"),
            })?;
        let set = RegexSetBuilder::new(&patterns)
            .case_insensitive(true)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| RulesError::Parse {
                origin: origin.to_string(),
                message: format!("the patterns do not compile together: {e}"),
            })?;
        Ok(Self {
            rules,
            phrases: phrases_ac,
            phrase_rule,
            patterns: set,
            pattern_rule,
            signal_rules,
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn rule(&self, index: usize) -> &Rule {
        &self.rules[index]
    }

    /// Normalises `text` and scores it for a message of `role`.
    pub fn scan(&self, text: &str, role: Role) -> Scan {
        let mut scan = self.scan_normalized(&normalize::normalize(text), role);
        scan.normalized = None;
        scan
    }

    /// [`Self::scan`], keeping the views.
    pub fn scan_keeping_views(&self, text: &str, role: Role) -> Scan {
        let normalized = normalize::normalize(text);
        let mut scan = self.scan_normalized(&normalized, role);
        scan.normalized = Some(normalized);
        scan
    }

    fn scan_normalized(&self, normalized: &Normalized, role: Role) -> Scan {
        let mut fired: Vec<Option<Hit>> = vec![None; self.rules.len()];
        // An order outranks a quoted mention of the same rule.
        let settled = |f: &Option<Hit>| f.is_some_and(|h| !h.quoted);
        let mut visited = normalized.visited;
        for view in &normalized.views {
            let text = view.text.as_str();
            visited += 2 * text.len();
            for m in self.phrases.find_overlapping_iter(text) {
                let index = self.phrase_rule[m.pattern().as_usize()];
                let rule = &self.rules[index];
                if settled(&fired[index]) || !rule.reads(view.kind, role) {
                    continue;
                }
                if whole_words(text, m.start(), m.end()) && !negated(rule, text, m.start()) {
                    let quoted = quoted(text, m.start());
                    if fired[index].is_none() || !quoted {
                        fired[index] = Some(Hit {
                            rule: index,
                            view: view.kind,
                            quoted,
                        });
                    }
                }
            }
            for p in self.patterns.matches(text).iter() {
                let index = self.pattern_rule[p];
                let rule = &self.rules[index];
                if settled(&fired[index]) || !rule.reads(view.kind, role) {
                    continue;
                }
                // The set says a pattern matched; where (for the negation
                // and quotation checks) takes the rule's own regexes,
                // run only for the few rules that fired.
                let mut best: Option<bool> = None;
                for re in &rule.patterns {
                    visited += text.len();
                    for m in re.find_iter(text) {
                        if negated(rule, text, m.start()) {
                            continue;
                        }
                        let q = quoted(text, m.start());
                        best = Some(best.map_or(q, |b| b && q));
                        if !q {
                            break;
                        }
                    }
                }
                if let Some(quoted) = best {
                    if fired[index].is_none() || !quoted {
                        fired[index] = Some(Hit {
                            rule: index,
                            view: view.kind,
                            quoted,
                        });
                    }
                }
            }
        }
        for &index in &self.signal_rules {
            let rule = &self.rules[index];
            if let Some((signal, min)) = rule.signal {
                if signal.count(normalized) >= min && rule.roles & role.bit() != 0 {
                    fired[index] = Some(Hit {
                        rule: index,
                        view: ViewKind::Text,
                        quoted: false,
                    });
                }
            }
        }
        let mut hits: Vec<Hit> = fired.into_iter().flatten().collect();
        hits.sort_by(|a, b| self.weight(b).total_cmp(&self.weight(a)));
        let clean = hits.iter().fold(1.0f32, |p, h| p * (1.0 - self.weight(h)));
        Scan {
            score: 1.0 - clean,
            hits,
            visited,
            normalized: None,
        }
    }

    /// What a hit adds: its rule's weight, halved for a quoted mention.
    pub fn weight(&self, hit: &Hit) -> f32 {
        let w = self.rules[hit.rule].weight;
        if hit.quoted {
            w * QUOTED_FACTOR
        } else {
            w
        }
    }
}

/// A phrase as views are written: NFKC, lowercase, one space.
fn fold(text: &str) -> String {
    normalize::fold_case_space(&normalize::nfkc(text.to_string()))
}

/// A phrase that starts or ends with a letter or digit matches only whole
/// words: `dan` is not in `dance`.
fn whole_words(text: &str, start: usize, end: usize) -> bool {
    let word = |c: Option<char>| c.is_some_and(normalize::is_word_char);
    let first = text[start..end].chars().next();
    let last = text[start..end].chars().next_back();
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !((word(first) && word(before)) || (word(last) && word(after)))
}

/// Whether the match at `start` opens right after a quotation mark.
fn quoted(text: &str, start: usize) -> bool {
    text[..start]
        .chars()
        .next_back()
        .is_some_and(|c| matches!(c, '\'' | '"' | '«' | '“' | '‘' | '„' | '`'))
}

/// Whether one of the rule's negating words stands just before `start`.
fn negated(rule: &Rule, text: &str, start: usize) -> bool {
    if rule.unless_preceded_by.is_empty() {
        return false;
    }
    let mut from = start.saturating_sub(NEGATION_WINDOW);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let before = text[from..start].trim_end();
    rule.unless_preceded_by.iter().any(|word| {
        before.ends_with(word.as_str())
            && !before[..before.len() - word.len()]
                .chars()
                .next_back()
                .is_some_and(normalize::is_word_char)
    })
}

#[cfg(test)]
mod tests;
