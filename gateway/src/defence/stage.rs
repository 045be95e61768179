//! The input defence as a stage of the request chain: every text a request
//! carries (each chat message's content whatever its role, tool results
//! included, an assistant turn's tool-call arguments, completion prompts)
//! is normalised and scanned by the rules; the request's score is the
//! highest of its texts', and the mode decides: `block` refuses from
//! `block_threshold` (400 `content_policy_violation`) and flags from
//! `flag_threshold`; `flag` only flags; `off` scans nothing.
//!
//! `x-sluice-defence` says what was decided and by which layer and rule:
//! `clean`, `flagged; layer=rules; rule=override.ignore_previous` or
//! `blocked; layer=normalize; rule=obfuscation.tag_characters; view=smuggled`.
//! The response to a refusal carries it too.
//!
//! Design choice: a request whose texts pass [`INLINE_BYTES`] in all is
//! scanned on a blocking thread: an 8 KB chat is scanned in well under a
//! millisecond, but a megabyte takes long enough to stall the HTTP
//! workers' other requests.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use super::normalize::ViewKind;
use super::rules::{Layer, Role, RuleSet, RulesError};
use crate::config::{DefenceConfig, DefenceMode};
use crate::error::ApiError;
use crate::validate::{Input, ValidRequest};

/// The response header that says what the defence made of a request.
pub const DEFENCE_HEADER: &str = "x-sluice-defence";
/// Texts (in bytes, all together) scanned on the request's own task.
pub const INLINE_BYTES: usize = 64 << 10;

/// The stage, built once at start.
pub struct InputDefence {
    rules: Arc<RuleSet>,
    mode: DefenceMode,
    flag_threshold: f32,
    block_threshold: f32,
}

/// What the stage decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Clean,
    Flagged,
    Blocked,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Flagged => "flagged",
            Self::Blocked => "blocked",
        }
    }
}

/// The rule that decided, and where it fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Decider {
    pub layer: Layer,
    pub rule: String,
    pub category: String,
    pub view: ViewKind,
    /// The parameter holding the text (`messages[2].content`).
    pub param: String,
    pub score: f32,
}

/// The stage's decision about one request; `outcome` is `None` when it
/// was not scanned (mode `off`, or no stage).
#[derive(Debug, Clone, Default)]
pub struct DefenceStamp {
    outcome: Option<Outcome>,
    decider: Option<Decider>,
}

impl DefenceStamp {
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    pub fn decider(&self) -> Option<&Decider> {
        self.decider.as_ref()
    }

    /// The header's value; `None` when the request was not scanned.
    pub fn header_value(&self) -> Option<String> {
        let outcome = self.outcome?;
        let mut value = outcome.as_str().to_string();
        if let (Outcome::Flagged | Outcome::Blocked, Some(d)) = (outcome, &self.decider) {
            value.push_str(&format!("; layer={}; rule={}", d.layer.name(), d.rule));
            if d.view != ViewKind::Text {
                value.push_str(&format!("; view={}", d.view.name()));
            }
        }
        Some(value)
    }

    /// Sets `x-sluice-defence` when the request was scanned.
    pub fn set_headers(&self, headers: &mut HeaderMap) {
        if let Some(value) = self
            .header_value()
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            headers.insert(DEFENCE_HEADER, value);
        }
    }

    /// The 400 a blocked request gets (with the header); `None` otherwise.
    pub fn refusal(&self) -> Option<ApiError> {
        let (Some(Outcome::Blocked), Some(d)) = (self.outcome, &self.decider) else {
            return None;
        };
        Some(ApiError::ContentPolicy {
            message: format!(
                "The request was refused by the input defence: `{}` matches the rule `{}` \
                 ({}). Rephrase it, or ask the administrator to review the policy.",
                d.param, d.rule, d.category
            ),
            param: Some(d.param.clone()),
            headers: self
                .header_value()
                .map(|v| vec![(DEFENCE_HEADER, v)])
                .unwrap_or_default(),
        })
    }
}

/// One text of a request, whose message it is, and where it sits.
struct Piece {
    text: String,
    role: Role,
    param: String,
}

impl InputDefence {
    /// The configured stage; `None` in mode `off`. A rules file that does
    /// not load stops the server at start.
    pub fn from_config(config: &DefenceConfig) -> Result<Option<Self>, RulesError> {
        if config.mode == DefenceMode::Off {
            return Ok(None);
        }
        let rules = RuleSet::load(config.rules_file.as_deref())?;
        Ok(Some(Self::new(Arc::new(rules), config)))
    }

    pub fn new(rules: Arc<RuleSet>, config: &DefenceConfig) -> Self {
        Self {
            rules,
            mode: config.mode,
            flag_threshold: config.flag_threshold,
            block_threshold: config.block_threshold,
        }
    }

    /// The rules, for the stream analysers that read answers with them.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// The score from which a text is refused in `block` mode.
    pub fn block_threshold(&self) -> f32 {
        self.block_threshold
    }

    /// Scans the request's texts and decides; the caller refuses a
    /// [`Outcome::Blocked`] one with [`DefenceStamp::refusal`].
    pub async fn screen(&self, req: &ValidRequest) -> DefenceStamp {
        if self.mode == DefenceMode::Off {
            return DefenceStamp::default();
        }
        let pieces = pieces(&req.job.input);
        let started = Instant::now();
        let total: usize = pieces.iter().map(|p| p.text.len()).sum();
        let best = if total <= INLINE_BYTES {
            best_piece(&self.rules, &pieces)
        } else {
            let rules = self.rules.clone();
            match tokio::task::spawn_blocking(move || best_piece(&rules, &pieces)).await {
                Ok(best) => best,
                Err(e) => {
                    // Only a panic in the scan gets here: logged, and the
                    // request goes on unmarked to the guard.
                    tracing::error!(error = %e, "the input defence failed to scan a request");
                    None
                }
            }
        };
        metrics::histogram!("sluice_defence_seconds").record(started.elapsed().as_secs_f64());
        let stamp = self.decide(best);
        let outcome = stamp.outcome.unwrap_or(Outcome::Clean);
        metrics::counter!("sluice_defence_requests_total", "outcome" => outcome.as_str())
            .increment(1);
        if let Some(d) = &stamp.decider {
            metrics::counter!(
                "sluice_defence_decisions_total",
                "outcome" => outcome.as_str(),
                "layer" => d.layer.name(),
                "rule" => d.rule.clone(),
            )
            .increment(1);
            tracing::info!(
                model = %req.model,
                param = %d.param,
                rule = %d.rule,
                score = d.score,
                outcome = outcome.as_str(),
                "input defence decision"
            );
        }
        stamp
    }

    fn decide(&self, best: Option<Decider>) -> DefenceStamp {
        let Some(decider) = best else {
            return DefenceStamp {
                outcome: Some(Outcome::Clean),
                decider: None,
            };
        };
        let outcome = if self.mode == DefenceMode::Block && decider.score >= self.block_threshold {
            Outcome::Blocked
        } else if decider.score >= self.flag_threshold {
            Outcome::Flagged
        } else {
            Outcome::Clean
        };
        DefenceStamp {
            outcome: Some(outcome),
            decider: (outcome != Outcome::Clean).then_some(decider),
        }
    }
}

/// The highest-scoring text's strongest rule; `None` when no rule fired.
fn best_piece(rules: &RuleSet, pieces: &[Piece]) -> Option<Decider> {
    let mut best: Option<Decider> = None;
    for piece in pieces {
        let scan = rules.scan(&piece.text, piece.role);
        for hit in &scan.hits {
            let rule = rules.rule(hit.rule);
            metrics::counter!(
                "sluice_defence_rule_hits_total",
                "rule" => rule.id.clone(),
                "category" => rule.category.clone(),
            )
            .increment(1);
        }
        let Some(top) = scan.hits.first() else {
            continue;
        };
        if best.as_ref().is_some_and(|b| b.score >= scan.score) {
            continue;
        }
        let rule = rules.rule(top.rule);
        best = Some(Decider {
            layer: rule.layer,
            rule: rule.id.clone(),
            category: rule.category.clone(),
            view: top.view,
            param: piece.param.clone(),
            score: scan.score,
        });
    }
    best
}

/// Every text the request carries. Prompts given as token ids carry no
/// text before a model's tokenizer reads them, so they are not scanned.
fn pieces(input: &Input) -> Vec<Piece> {
    match input {
        Input::Chat(messages) => {
            let mut out = Vec::with_capacity(messages.len());
            for (i, m) in messages.iter().enumerate() {
                let role = Role::of_message(&m.role);
                if !m.content.trim().is_empty() {
                    out.push(Piece {
                        text: m.content.clone(),
                        role,
                        param: format!("messages[{i}].content"),
                    });
                }
                for (j, call) in m.tool_calls.iter().enumerate() {
                    out.push(Piece {
                        text: call.arguments.clone(),
                        role,
                        param: format!("messages[{i}].tool_calls[{j}].function.arguments"),
                    });
                }
            }
            out
        }
        Input::Text(prompts) => prompts
            .iter()
            .enumerate()
            .map(|(i, p)| Piece {
                text: p.clone(),
                role: Role::Prompt,
                param: if prompts.len() == 1 {
                    "prompt".to_string()
                } else {
                    format!("prompt[{i}]")
                },
            })
            .collect(),
        Input::Tokens(_) => Vec::new(),
    }
}
