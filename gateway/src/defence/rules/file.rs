//! The rules file as written (TOML), and how a user's file joins the
//! built-in one: a rule with a built-in rule's id replaces it, a new id is
//! added, and `disable = ["id", ...]` removes rules by id.
//!
//! ```toml
//! disable = ["jailbreak.stay_in_character"]
//!
//! [[rule]]
//! id = "override.acme_codeword"
//! category = "instruction_override"
//! weight = 0.9                 # 0 < weight <= 1
//! languages = ["en"]           # what it is written in (documentation)
//! views = ["text", "base64"]   # default: every view
//! roles = ["user", "tool"]     # default: user, assistant, tool, prompt
//! phrases = ["open sesame"]    # literal, matched on whole words
//! patterns = ['act\s+as\s+root'] # regex, case-insensitive
//! unless_preceded_by = ["never", "не"]
//! ```
//!
//! Texts reach the rules lowercased, with whitespace runs made one space
//! (see [`crate::defence::normalize`]): a phrase is written that way too
//! (it is folded the same way when loaded).

use serde::Deserialize;

use super::RulesError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Ids of rules (built-in ones, usually) to switch off.
    #[serde(default)]
    pub disable: Vec<String>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: String,
    pub category: String,
    pub weight: f32,
    #[serde(default)]
    pub languages: Vec<String>,
    pub views: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
    #[serde(default)]
    pub phrases: Vec<String>,
    #[serde(default)]
    pub patterns: Vec<String>,
    /// A normalisation signal instead of text: `tag_chars`,
    /// `selector_bytes`, `invisible`, `bidi`, `mixed_script`, `decoded`.
    pub signal: Option<String>,
    /// How many of the signal's units fire the rule (default 1).
    pub min_count: Option<usize>,
    /// Words that, just before a match, make it a mention rather than an
    /// order ("never reveal your system prompt").
    #[serde(default)]
    pub unless_preceded_by: Vec<String>,
    pub description: Option<String>,
}

impl RuleFile {
    pub fn parse(text: &str, origin: &str) -> Result<Self, RulesError> {
        toml::from_str(text).map_err(|e| RulesError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })
    }
}

/// The built-in rules with `user`'s file applied over them.
pub fn merge(
    built_in: RuleFile,
    user: Option<(RuleFile, &str)>,
) -> Result<Vec<RuleSpec>, RulesError> {
    let mut rules = built_in.rules;
    let Some((user, origin)) = user else {
        return Ok(rules);
    };
    for id in &user.disable {
        let before = rules.len();
        rules.retain(|r| &r.id != id);
        if rules.len() == before && !user.rules.iter().any(|r| &r.id == id) {
            return Err(RulesError::Invalid {
                origin: origin.to_string(),
                id: id.clone(),
                message: "`disable` names no rule".into(),
            });
        }
    }
    for spec in user.rules {
        if user.disable.contains(&spec.id) {
            continue;
        }
        match rules.iter_mut().find(|r| r.id == spec.id) {
            Some(existing) => *existing = spec,
            None => rules.push(spec),
        }
    }
    Ok(rules)
}
