//! The spend log's settling stage: once the answer ends, one row for the
//! request goes on the spend log's queue ([`crate::spend`]).

use std::sync::Arc;

use super::settle::{Ending, Settle, Settlement};
use crate::auth::Principal;
use crate::spend::{Served, SpendLog};

pub(super) struct RecordSpend {
    pub log: SpendLog,
    pub principal: Arc<Principal>,
    /// The public model name the request asked for.
    pub model: String,
}

impl Settle for RecordSpend {
    fn settle(self: Box<Self>, s: &Settlement<'_>) {
        let status = match s.ending {
            Ending::Completed => "completed".to_string(),
            Ending::Failed(code) => format!("failed_{code}"),
            Ending::Disconnected => "disconnected".to_string(),
        };
        let deployment = s.provenance.map(|p| &p.deployment);
        self.log.record(Served {
            principal: &self.principal,
            model: &self.model,
            deployment: deployment.map(|d| &*d.name),
            local: deployment.is_some_and(|d| d.is_local()),
            usage: s.usage,
            cost: s.cost,
            latency: s.elapsed,
            cache_hit: s.cache_hit(),
            status,
        });
    }
}
