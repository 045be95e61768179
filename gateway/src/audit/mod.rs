//! The audit log: who did what to whom, and with what outcome. Key use
//! failures, key and budget changes, config reloads, guard decisions, limit
//! and budget refusals all land here; prompt and answer text never does.
//!
//! Stages hold an [`Audit`] and call [`Audit::record`]; where the records
//! go (the store with a hash chain, JSON lines, syslog) is behind
//! [`AuditSink`]. The server's sink is [`AuditLog`]: a writer task per
//! configured sink (the store's hash chain, [`chain`]; a JSON-lines file;
//! syslog with CEF, [`syslog`]), each behind a disk [`spool`] so an outage
//! loses nothing and `record` never waits.

pub mod chain;
mod log;
pub mod query;
mod record;
mod sinks;
pub mod spool;
pub mod syslog;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

pub use log::{AuditLog, AuditWriters};
pub use record::AuditRecord;

/// What the audit log records, by name (`<object>.<verb>`).
pub mod actions {
    pub const AUTH_FAILED: &str = "auth.failed";
    pub const LOGIN: &str = "auth.login";
    pub const KEY_CREATED: &str = "key.created";
    pub const KEY_UPDATED: &str = "key.updated";
    pub const KEY_ROTATED: &str = "key.rotated";
    pub const KEY_REVOKED: &str = "key.revoked";
    pub const TEAM_CHANGED: &str = "team.changed";
    pub const BUDGET_CHANGED: &str = "budget.changed";
    pub const BUDGET_ALERT: &str = "budget.alert";
    pub const BUDGET_REFUSED: &str = "budget.refused";
    pub const LIMIT_REFUSED: &str = "limit.refused";
    pub const GUARD_DECISION: &str = "guard.decision";
    pub const DEFENCE_DECISION: &str = "defence.decision";
    /// The external moderation service's verdict on an uncertain request
    /// (or why it gave none, or why it was not asked).
    pub const MODERATION_DECISION: &str = "moderation.decision";
    pub const PII_DECISION: &str = "pii.decision";
    /// A stream analyser (or the budget's cap) stopped an answer early.
    pub const STREAM_STOP: &str = "stream.stop";
    /// A policy analyser (the guard too) found something in text already
    /// sent (`stream_first`): recorded, not stopped.
    pub const STREAM_OBSERVED: &str = "stream.observed";
    pub const CONFIG_RELOADED: &str = "config.reloaded";
    pub const ADMIN_DENIED: &str = "admin.denied";
    pub const SPEND_QUEUE_FULL: &str = "spend.queue_full";
    /// A user's or a tenant's stored sessions and cached answers erased.
    pub const DATA_ERASED: &str = "data.erased";
    /// A regulated caller's request, recorded before it is served (its
    /// model, the cache's outcome, whether PII was found; never text).
    pub const REGULATED_REQUEST: &str = "regulated.request";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    Success,
    Failure,
    /// Refused by a policy (role, limit, budget, guard).
    Denied,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Denied => "denied",
        }
    }
}

impl fmt::Display for AuditOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit record as a stage reports it (the sink adds the time and the
/// hash chain).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub action: &'static str,
    /// Who did it ([`crate::auth::Principal::actor`], or what a failed
    /// attempt presented: a key's prefix, never the key).
    pub actor: String,
    pub tenant: Option<String>,
    pub request_id: Option<String>,
    /// The client's address.
    pub source: Option<String>,
    /// What was acted on (a key prefix, a team, a budget, a model).
    pub target: Option<String>,
    pub outcome: AuditOutcome,
    /// A short reason; never prompt or answer text.
    pub detail: Option<String>,
}

/// The request an audit event happens in: its id (`x-request-id`) and the
/// client's address. The server sets it around each request's handling
/// ([`RequestContext::scope`]); every event recorded inside carries it
/// without each stage passing it along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub id: String,
    /// The client's address; written out only when an event is made (most
    /// requests make none).
    pub source: Option<std::net::IpAddr>,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

impl RequestContext {
    /// Runs `work` with this as the current request.
    pub async fn scope<F: std::future::Future>(self, work: F) -> F::Output {
        REQUEST.scope(self, work).await
    }

    /// The request the calling task is handling, if any.
    pub fn current() -> Option<RequestContext> {
        REQUEST.try_with(Clone::clone).ok()
    }
}

impl AuditEvent {
    /// An event; inside a request it carries that request's id and source.
    pub fn new(action: &'static str, actor: impl Into<String>, outcome: AuditOutcome) -> Self {
        let (request_id, source) = match RequestContext::current() {
            Some(RequestContext { id, source }) => (Some(id), source.map(|ip| ip.to_string())),
            None => (None, None),
        };
        Self {
            action,
            actor: actor.into(),
            tenant: None,
            request_id,
            source,
            target: None,
            outcome,
            detail: None,
        }
    }
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }
}

/// The audit log cannot take records now (only ever returned in
/// `audit_mode = "fail_closed"`; otherwise records are spooled).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the audit log cannot be written; requests are refused until it can (audit_mode = \"fail_closed\")")]
pub struct AuditUnavailable;

/// Where records go. Never blocks: a sink queues and writes off the
/// request path.
pub trait AuditSink: Send + Sync {
    fn submit(&self, event: AuditEvent) -> Result<(), AuditUnavailable>;

    /// `false` while records cannot be written (a spool unwritable, the
    /// store failing) *and* the mode is fail-closed: then requests are refused.
    fn available(&self) -> bool {
        true
    }

    /// `false` while records cannot be written, whatever the mode: a
    /// regulated request is refused then even under `fail_open`.
    fn writable(&self) -> bool {
        true
    }
}

/// The handle stages hold; cheap to clone. [`Audit::off`] drops records.
#[derive(Clone, Default)]
pub struct Audit {
    sink: Option<Arc<dyn AuditSink>>,
}

impl fmt::Debug for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit")
            .field("on", &self.sink.is_some())
            .finish()
    }
}

impl Audit {
    pub fn off() -> Self {
        Self::default()
    }

    pub fn new(sink: Arc<dyn AuditSink>) -> Self {
        Self { sink: Some(sink) }
    }

    /// Records an event; `Err` only when the log is down and the mode is
    /// fail-closed (the caller refuses the request).
    pub fn record(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        match &self.sink {
            Some(sink) => sink.submit(event),
            None => Ok(()),
        }
    }

    /// `Err` while the log cannot be written in `fail_closed` mode: the
    /// chain checks this before it serves a request.
    pub fn check(&self) -> Result<(), AuditUnavailable> {
        match &self.sink {
            Some(sink) if !sink.available() => Err(AuditUnavailable),
            _ => Ok(()),
        }
    }

    /// [`Audit::check`], fail-closed for a regulated request whatever the
    /// configured mode.
    pub fn check_for(&self, regulated: bool) -> Result<(), AuditUnavailable> {
        match &self.sink {
            Some(sink) if regulated && !sink.writable() => Err(AuditUnavailable),
            _ => self.check(),
        }
    }

    /// [`Audit::record`], fail-closed for a regulated request whatever the
    /// configured mode.
    pub fn record_for(&self, regulated: bool, event: AuditEvent) -> Result<(), AuditUnavailable> {
        self.check_for(regulated)?;
        self.record(event)
    }
}
