//! The screening stages before the model (input defence, PII, guard audit,
//! external moderation) and the regulated caller's record: each turns its
//! component's verdict into the chain's decision and writes the audit record
//! for it (the parameter, the rule or the kinds; never the text).

use super::{Caller, Chain};
use crate::audit::{actions, AuditEvent, AuditOutcome};
use crate::cache::Decision;
use crate::config::GuardAction;
use crate::defence::{DefenceStamp, Outcome};
use crate::error::ApiError;
use crate::guard::screen::Screening;
use crate::moderation::ModerationStamp;
use crate::pii::PiiReport;
use crate::validate::ValidRequest;

impl Chain {
    /// The input defence stage: a flagged request goes on marked, a blocked
    /// one is refused; both are audit records (the parameter and the rule,
    /// never the text).
    pub(super) async fn defend(
        &self,
        caller: &Caller,
        req: &ValidRequest,
    ) -> Result<DefenceStamp, ApiError> {
        let Some(defence) = &self.defence else {
            return Ok(DefenceStamp::default());
        };
        let stamp = defence.screen(req).await;
        if let (Some(outcome @ (Outcome::Flagged | Outcome::Blocked)), Some(d)) =
            (stamp.outcome(), stamp.decider())
        {
            let audit_outcome = match outcome {
                Outcome::Blocked => AuditOutcome::Denied,
                _ => AuditOutcome::Success,
            };
            let event = AuditEvent::new(
                actions::DEFENCE_DECISION,
                caller.principal.actor(),
                audit_outcome,
            )
            .tenant(&*caller.principal.tenant)
            .target(&req.model)
            .detail(format!(
                "{} at {}; layer={}; rule={}; view={}; score={:.2}",
                outcome.as_str(),
                d.param,
                d.layer.name(),
                d.rule,
                d.view.name(),
                d.score
            ));
            self.audit
                .record_for(caller.regulated, event)
                .map_err(|_| ApiError::StoreUnavailable("The audit log"))?;
        }
        match stamp.refusal() {
            Some(refusal) => Err(refusal),
            None => Ok(stamp),
        }
    }

    /// A flagged or blocked request is an audit record (the parameter, never
    /// its text).
    pub(super) fn audit_guard(
        &self,
        caller: &Caller,
        model: &str,
        screened: &Result<Screening, ApiError>,
    ) -> Result<(), ApiError> {
        let (outcome, detail) = match screened {
            Ok(s) if s.flagged() == Some(true) => (AuditOutcome::Success, "flagged".to_string()),
            Err(ApiError::InvalidRequest {
                code: Some("content_policy_violation"),
                param,
                ..
            }) => (
                AuditOutcome::Denied,
                format!("blocked at {}", param.as_deref().unwrap_or("the request")),
            ),
            _ => return Ok(()),
        };
        let event = AuditEvent::new(actions::GUARD_DECISION, caller.principal.actor(), outcome)
            .tenant(&*caller.principal.tenant)
            .target(model)
            .detail(detail);
        self.audit
            .record_for(caller.regulated, event)
            .map_err(|_| ApiError::StoreUnavailable("The audit log"))
    }

    /// The moderation stage: every review is an audit record (outcome,
    /// provider, parameters; never text); a flagged one is refused when
    /// the caller's guard action is `block`.
    pub(super) async fn moderate(
        &self,
        caller: &Caller,
        req: &ValidRequest,
        screening: &Screening,
    ) -> Result<ModerationStamp, ApiError> {
        let (Some(moderation), Some(guard)) = (&self.moderation, &self.guard) else {
            return Ok(ModerationStamp::default());
        };
        let stamp = moderation.review(req, screening, caller.sensitive).await;
        if !stamp.reviewed() {
            return Ok(stamp);
        }
        let refuse = stamp.flagged() && guard.action_for(&caller.policy) == GuardAction::Block;
        let outcome = if refuse {
            AuditOutcome::Denied
        } else {
            AuditOutcome::Success
        };
        let event = AuditEvent::new(
            actions::MODERATION_DECISION,
            caller.principal.actor(),
            outcome,
        )
        .tenant(&*caller.principal.tenant)
        .target(&req.model)
        .detail(stamp.audit_detail());
        self.audit
            .record(event)
            .map_err(|_| ApiError::StoreUnavailable("The audit log"))?;
        if refuse {
            tracing::info!(model = %req.model, detail = %stamp.audit_detail(), "moderation refused the request");
            return Err(stamp.refusal());
        }
        Ok(stamp)
    }

    /// The PII stage; the decision (kinds and counts, never a value) is an
    /// audit record when anything was found.
    pub(super) fn redact_pii(
        &self,
        caller: &Caller,
        req: &mut ValidRequest,
    ) -> Result<PiiReport, ApiError> {
        let Some(pii) = &self.pii else {
            return Ok(PiiReport::default());
        };
        let redacted = pii.redact_request(&caller.tenant.0, &mut req.job);
        let (outcome, detail) = match &redacted {
            Ok(report) if report.carries_pii() => (AuditOutcome::Success, report.audit_detail()),
            Err(ApiError::InvalidRequest { param, .. }) => (
                AuditOutcome::Denied,
                format!("blocked at {}", param.as_deref().unwrap_or("the request")),
            ),
            Ok(_) | Err(_) => return redacted,
        };
        let event = AuditEvent::new(actions::PII_DECISION, caller.principal.actor(), outcome)
            .tenant(&*caller.principal.tenant)
            .target(&req.model)
            .detail(detail);
        self.audit
            .record_for(caller.regulated, event)
            .map_err(|_| ApiError::StoreUnavailable("The audit log"))?;
        redacted
    }

    /// A regulated caller's request is an audit record before it is
    /// served (fail-closed: no record, no answer).
    pub(super) fn audit_regulated(
        &self,
        caller: &Caller,
        model: &str,
        decision: &Decision,
        pii: &PiiReport,
    ) -> Result<(), ApiError> {
        let event = AuditEvent::new(
            actions::REGULATED_REQUEST,
            caller.principal.actor(),
            AuditOutcome::Success,
        )
        .tenant(&*caller.principal.tenant)
        .target(model)
        .detail(format!(
            "cache={}; pii={}; on_prem only",
            decision.outcome.as_str(),
            pii.found_any()
        ));
        self.audit
            .record_for(true, event)
            .map_err(|_| ApiError::StoreUnavailable("The audit log"))
    }
}
