//! [`AuditRecord`]: an [`AuditEvent`] stamped with its time, as the spool
//! keeps it (one JSON line) and every sink receives it.

use serde::{Deserialize, Serialize};

use super::AuditEvent;

/// One record on its way to the sinks. Owned strings: a record read back
/// from the spool after a restart has no `'static` action name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Milliseconds since the Unix epoch, taken when the stage recorded it.
    pub at_ms: i64,
    pub request_id: Option<String>,
    pub actor: String,
    pub tenant: Option<String>,
    pub source: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub detail: Option<String>,
}

impl AuditRecord {
    pub fn stamp(event: AuditEvent, at_ms: i64) -> Self {
        let AuditEvent {
            action,
            actor,
            tenant,
            request_id,
            source,
            target,
            outcome,
            detail,
        } = event;
        Self {
            at_ms,
            request_id,
            actor,
            tenant,
            source,
            action: action.to_string(),
            target,
            outcome: outcome.as_str().to_string(),
            detail,
        }
    }

    /// The time as RFC 3339 (UTC, milliseconds).
    pub fn time(&self) -> String {
        jiff::Timestamp::from_millisecond(self.at_ms)
            .map(|t| format!("{t:.3}"))
            .unwrap_or_else(|_| self.at_ms.to_string())
    }
}

#[cfg(test)]
pub(crate) fn sample(i: usize) -> AuditRecord {
    AuditRecord::stamp(
        AuditEvent::new(
            super::actions::KEY_CREATED,
            format!("key:k{i}"),
            super::AuditOutcome::Success,
        )
        .tenant("acme")
        .target(format!("t{i}"))
        .request_id(format!("req-{i}")),
        1_700_000_000_000 + i as i64,
    )
}
