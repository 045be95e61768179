//! The input guard as a stage of the request chain: every chat message and
//! completion prompt that carries text is scored (all roles: an injection
//! hidden in a system, assistant or tool turn is as dangerous as one in the
//! user's), then the key's action applies: `flag` (answered, logged,
//! counted and marked `x-sluice-guard: flagged`), `block` (a 400 with code
//! `content_policy_violation`) or `off` (not scored). A route may turn
//! scoring off for its model (`[[routes]] guard = "off"`), a key for its
//! requests (`guard = "off"`).
//!
//! Design choice: every piece of a request is scored in one guard call (one
//! tokenising task, shared encoder batches), and when the semantic cache
//! embeds with the guard head's own encoder, the head's vector of the last
//! user message as a whole is handed on as the cache's lookup key (the
//! [`Screening`] carries it). One forward pass, two stages.
//!
//! A guard failure (an encoder queue full, say) fails the request only when
//! the action is `block`: a guard that merely flags must not take the chat
//! path down with it, so it logs, counts and lets the request through
//! unscored.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use super::{Guard, GuardEncoders};
use crate::config::{GuardAction, GuardScoring};
use crate::error::ApiError;
use crate::sensitivity::TenantPolicy;
use crate::validate::{Input, ValidRequest};

/// The response header that says what the guard made of a request.
pub const GUARD_HEADER: &str = "x-sluice-guard";

/// The guard stage, built once at start.
pub struct InputGuard {
    guard: Arc<Guard>,
    encoders: Arc<dyn GuardEncoders>,
    /// Hand the last user message's vector to the semantic cache: only
    /// when the cache embeds with the head's encoder.
    share_embedding: bool,
    action: GuardAction,
    scoring: GuardScoring,
    /// Routes whose `guard` overrides `scoring`, by public model name.
    route_scoring: HashMap<String, GuardScoring>,
}

/// The guard's verdict on a whole request: its most severe piece's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GuardOutcome {
    /// Every piece scored below `t_low`.
    Clean,
    /// No piece reached `t_high`, some reached `t_low`: the band a second
    /// opinion (the L3 moderation stage) is for. Never blocked here.
    Uncertain,
    /// Some piece reached `t_high`.
    Flagged,
}

impl GuardOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Uncertain => "uncertain",
            Self::Flagged => "flagged",
        }
    }
}

/// What the guard stage decided about one request.
#[derive(Debug, Default, Clone)]
pub struct Screening {
    /// `None` when the request was not scored.
    outcome: Option<GuardOutcome>,
    /// The parameters (`messages[1].content`) whose pieces decided an
    /// uncertain or flagged outcome, in request order.
    params: Vec<String>,
    /// The last user message's embedding, for the cache.
    embedding: Option<Arc<[f32]>>,
}

impl Screening {
    /// The last user message's embedding, if the guard computed one.
    pub fn embedding(&self) -> Option<&Arc<[f32]>> {
        self.embedding.as_ref()
    }

    /// `Some(true)` when the request was flagged; `None` when not scored.
    pub fn flagged(&self) -> Option<bool> {
        self.outcome.map(|o| o == GuardOutcome::Flagged)
    }

    /// The outcome; `None` when the request was not scored.
    pub fn outcome(&self) -> Option<GuardOutcome> {
        self.outcome
    }

    /// For an uncertain or flagged request, the parameters that made it so
    /// (what the moderation stage should look at); empty otherwise.
    pub fn params(&self) -> &[String] {
        &self.params
    }

    /// `x-sluice-guard: clean | uncertain | flagged`; absent when the
    /// request was not scored.
    pub fn set_headers(&self, headers: &mut HeaderMap) {
        if let Some(outcome) = self.outcome {
            headers.insert(GUARD_HEADER, HeaderValue::from_static(outcome.as_str()));
        }
    }
}

/// The stage's settings besides the guard itself.
pub struct InputGuardSettings {
    /// What a flagged request gets unless its key says otherwise.
    pub action: GuardAction,
    pub scoring: GuardScoring,
    /// Routes whose `guard` overrides `scoring`, by public model name.
    pub route_scoring: HashMap<String, GuardScoring>,
    /// Whether the semantic cache embeds with the head's encoder (then the
    /// guard's vector of the last user message is the cache's); a wrong
    /// `true` would put vectors of one model under another's id.
    pub share_embedding: bool,
}

/// One piece of text to score and the parameter it came from.
pub(crate) struct Piece<'a> {
    pub(crate) text: &'a str,
    pub(crate) param: String,
    /// The chat role (`user`, `tool`...); `None` for a completion prompt.
    pub(crate) role: Option<&'a str>,
    /// The cache's semantic text (the last user message).
    last_user: bool,
}

impl InputGuard {
    pub fn new(
        guard: Arc<Guard>,
        encoders: Arc<dyn GuardEncoders>,
        settings: InputGuardSettings,
    ) -> Self {
        let InputGuardSettings {
            action,
            scoring,
            route_scoring,
            share_embedding,
        } = settings;
        Self {
            guard,
            encoders,
            share_embedding,
            action,
            scoring,
            route_scoring,
        }
    }

    /// What a flagged request of this caller gets: its key's action, else
    /// `[guard] action`.
    pub fn action_for(&self, policy: &TenantPolicy) -> GuardAction {
        policy.guard.unwrap_or(self.action)
    }

    /// Scores the request's texts and applies the key's action.
    pub async fn screen(
        &self,
        policy: &TenantPolicy,
        req: &ValidRequest,
    ) -> Result<Screening, ApiError> {
        let action = self.action_for(policy);
        let scoring = self
            .route_scoring
            .get(&req.model)
            .copied()
            .unwrap_or(self.scoring);
        if action == GuardAction::Off || scoring == GuardScoring::Off {
            return Ok(Screening::default());
        }
        let pieces = pieces(&req.job.input);
        if pieces.is_empty() {
            return Ok(Screening::default());
        }
        let started = Instant::now();
        // One call for every piece: one tokenising task and shared encoder
        // batches; the last user message's vector comes back for the cache.
        let texts = pieces.iter().map(|p| p.text.to_owned()).collect();
        let keep = pieces
            .iter()
            .position(|p| p.last_user)
            .filter(|_| self.share_embedding);
        let scored = self
            .guard
            .verdicts_keeping(self.encoders.as_ref(), texts, keep)
            .await;
        metrics::histogram!("sluice_guard_seconds").record(started.elapsed().as_secs_f64());
        let (verdicts, embedding) = match scored {
            Ok(scored) => scored,
            Err(e) => {
                metrics::counter!(crate::metrics::catalog::GUARD_REQUESTS, "outcome" => "error")
                    .increment(1);
                if action == GuardAction::Block {
                    return Err(e);
                }
                tracing::warn!(error = %e, "the guard could not score the request; passing it unscored");
                return Ok(Screening::default());
            }
        };
        let outcome = |v: &super::GuardVerdict| {
            if v.flagged {
                GuardOutcome::Flagged
            } else if v.uncertain {
                GuardOutcome::Uncertain
            } else {
                GuardOutcome::Clean
            }
        };
        let worst = verdicts
            .iter()
            .map(outcome)
            .max()
            .unwrap_or(GuardOutcome::Clean);
        let params: Vec<String> = pieces
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| worst != GuardOutcome::Clean && outcome(v) == worst)
            .map(|(p, _)| p.param.clone())
            .collect();
        match worst {
            GuardOutcome::Clean | GuardOutcome::Uncertain => {
                metrics::counter!(crate::metrics::catalog::GUARD_REQUESTS, "outcome" => worst.as_str())
                    .increment(1);
                return Ok(Screening {
                    outcome: Some(worst),
                    params,
                    embedding,
                });
            }
            GuardOutcome::Flagged => {}
        }
        let param = params.first().cloned().unwrap_or_default();
        if action == GuardAction::Block {
            metrics::counter!(crate::metrics::catalog::GUARD_REQUESTS, "outcome" => "blocked")
                .increment(1);
            tracing::info!(model = %req.model, param = %param, "guard blocked the request");
            return Err(ApiError::InvalidRequest {
                message: format!(
                    "The request was refused by the input guard: `{param}` looks like a prompt \
                     injection. Rephrase it, or ask the administrator to review the policy."
                ),
                param: Some(param),
                code: Some("content_policy_violation"),
            });
        }
        metrics::counter!(crate::metrics::catalog::GUARD_REQUESTS, "outcome" => "flagged")
            .increment(1);
        tracing::warn!(model = %req.model, param = %param, "guard flagged the request");
        Ok(Screening {
            outcome: Some(GuardOutcome::Flagged),
            params,
            embedding,
        })
    }
}

/// Every text the request carries, with the parameter that holds it.
/// Prompts given as token ids carry no text before a model's tokenizer
/// reads them, so they are not scored here.
pub(crate) fn pieces(input: &Input) -> Vec<Piece<'_>> {
    match input {
        Input::Chat(messages) => {
            let last_user = messages.iter().rposition(|m| m.role == "user");
            messages
                .iter()
                .enumerate()
                .filter(|(_, m)| !m.content.trim().is_empty())
                .map(|(i, m)| Piece {
                    text: &m.content,
                    param: format!("messages[{i}].content"),
                    role: Some(m.role.as_str()),
                    last_user: Some(i) == last_user,
                })
                .collect()
        }
        Input::Text(prompts) => prompts
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.trim().is_empty())
            .map(|(i, p)| Piece {
                text: p,
                param: if prompts.len() == 1 {
                    "prompt".to_string()
                } else {
                    format!("prompt[{i}]")
                },
                role: None,
                last_user: false,
            })
            .collect(),
        Input::Tokens(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_names_the_outcome_and_is_absent_when_unscored() {
        for (outcome, want) in [
            (GuardOutcome::Clean, "clean"),
            (GuardOutcome::Uncertain, "uncertain"),
            (GuardOutcome::Flagged, "flagged"),
        ] {
            let s = Screening {
                outcome: Some(outcome),
                ..Screening::default()
            };
            let mut headers = HeaderMap::new();
            s.set_headers(&mut headers);
            assert_eq!(headers[GUARD_HEADER], want);
            assert_eq!(s.flagged(), Some(outcome == GuardOutcome::Flagged));
        }
        let mut headers = HeaderMap::new();
        Screening::default().set_headers(&mut headers);
        assert!(headers.get(GUARD_HEADER).is_none());
        assert!(GuardOutcome::Flagged > GuardOutcome::Uncertain);
        assert!(GuardOutcome::Uncertain > GuardOutcome::Clean);
    }
}
