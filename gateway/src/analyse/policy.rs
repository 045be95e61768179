//! The policy analysers: they read the text of each window (the tail of
//! the last one included, so a value split across two chunks or two
//! windows is seen whole) and stop the answer with `content_filter`.
//!
//! - [`PiiBlock`]: a personal-data kind whose `[pii]` action is `block`
//!   (on the way in that refuses the request; on the way out, with the
//!   analysers on, it ends the answer before the value is released);
//! - [`OutputRules`]: the defence's L1 rules, read as an assistant turn,
//!   scoring at least the `[defence]` block threshold.

use std::sync::Arc;

use super::{Analyser, Stop, StopKind};
use crate::config::PiiAction;
use crate::defence::rules::{Role, RuleSet};
use crate::pii::Pii;

/// Stops an answer that holds a value of a kind set to `block`.
pub struct PiiBlock {
    pii: Arc<Pii>,
}

impl PiiBlock {
    pub fn new(pii: Arc<Pii>) -> Self {
        Self { pii }
    }
}

impl Analyser for PiiBlock {
    fn on_window(&mut self, text: &str) -> Option<Stop> {
        self.pii
            .scan(text)
            .into_iter()
            .find(|f| self.pii.action(f.entity) == PiiAction::Block)
            .map(|f| Stop {
                analyser: "pii",
                kind: StopKind::Policy,
                detail: format!("a value of kind {}", f.entity.as_str()),
            })
    }
}

/// Stops an answer the rules score at the block threshold or above.
pub struct OutputRules {
    rules: Arc<RuleSet>,
    threshold: f32,
}

impl OutputRules {
    pub fn new(rules: Arc<RuleSet>, threshold: f32) -> Self {
        Self { rules, threshold }
    }
}

impl Analyser for OutputRules {
    fn on_window(&mut self, text: &str) -> Option<Stop> {
        let scan = self.rules.scan(text, Role::Assistant);
        if scan.score < self.threshold {
            return None;
        }
        let rule = scan
            .hits
            .first()
            .map(|h| self.rules.rule(h.rule).id.clone());
        Some(Stop {
            analyser: "rules",
            kind: StopKind::Policy,
            detail: format!(
                "rule {} (score {:.2})",
                rule.as_deref().unwrap_or("?"),
                scan.score
            ),
        })
    }
}
