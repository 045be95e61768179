//! What a request asks beyond plain chat, as [`Capability`]s, each with the
//! parameter to name when no deployment of the model has it.
//!
//! Design choice: `parallel_tool_calls` asks for nothing. `true` (the
//! default) allows several calls and a deployment that makes one at most
//! still honours it; `false` is passed on where the upstream has the flag
//! and holds trivially where it makes one call at most (GigaChat).

use sluice_runtime::GrammarSpec;

use crate::config::{Capabilities, Capability};
use crate::providers::has_tool_turns;
use crate::validate::{Input, Job, ToolChoice};

/// One capability a request needs, and how to name it to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    pub capability: Capability,
    /// The request field that asks for it.
    pub param: &'static str,
    /// How the error message names what was asked.
    pub asked: &'static str,
}

/// Every capability `job` needs, in the order the error names them.
pub fn needs(job: &Job) -> Vec<Need> {
    let mut out = Vec::new();
    let need = |capability, param, asked| Need {
        capability,
        param,
        asked,
    };
    let tool_turns = matches!(&job.input, Input::Chat(m) if has_tool_turns(m));
    if job.tools.is_some() || tool_turns {
        let (param, asked) = if job.tools.is_some() {
            ("tools", "tools")
        } else {
            ("messages", "tool calls and results")
        };
        out.push(need(Capability::Tools, param, asked));
    }
    if job
        .tools
        .as_ref()
        .is_some_and(|t| t.choice == ToolChoice::Required)
    {
        out.push(need(
            Capability::ToolChoiceRequired,
            "tool_choice",
            "\"required\"",
        ));
    }
    if let Some(c) = &job.sampling.constraint {
        let (capability, asked) = match c.spec {
            GrammarSpec::JsonObject => (Capability::JsonObject, "json_object"),
            GrammarSpec::JsonSchema { .. } => (Capability::JsonSchema, "json_schema"),
            GrammarSpec::Regex(_) | GrammarSpec::Lark(_) => (Capability::Grammar, c.param),
        };
        out.push(need(capability, c.param, asked));
    }
    if !job.sampling.logit_bias.is_empty() {
        out.push(need(Capability::LogitBias, "logit_bias", "logit_bias"));
    }
    out
}

impl Need {
    /// The client's 400 when no deployment of `model` has it:
    /// `no deployment of model 'x' supports 'tools'`.
    pub fn message(&self, model: &str) -> String {
        let mut m = format!("no deployment of model '{model}' supports '{}'", self.param);
        if self.asked != self.param {
            m.push_str(&format!(" ({})", self.asked));
        }
        m
    }
}

/// The first of `needs` that `caps` lacks.
pub fn first_missing(caps: Capabilities, needs: &[Need]) -> Option<&Need> {
    needs.iter().find(|n| !caps.has(n.capability))
}
