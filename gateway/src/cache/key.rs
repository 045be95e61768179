//! Cache keys: a sha256 over a canonical, length-prefixed encoding of who
//! asks (tenant), which model, and every part of the validated [`Job`] that
//! can change the answer.
//!
//! Design choice: the key is computed from the validated job, not from the
//! request body, so two bodies that the validator turns into the same job
//! (defaults spelled out or not, `stream` on or off) share an entry, and the
//! job and its sampling settings are destructured without `..` so a new
//! parameter does not compile until it is placed here.

use std::fmt;

use sha2::{Digest, Sha256};
use sluice_models::ChatMessage;
use sluice_runtime::GrammarSpec;

use crate::validate::{FunctionSpec, Input, Job, Sampling, ToolChoice, Tools};

/// Bumped when the encoding changes, so old entries can never match.
const KEY_VERSION: &str = "sluice-cache-key-v1";

/// A 32-byte digest naming an exact request or a semantic scope.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}…)", &self.hex()[..12])
    }
}

/// The keys of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Keys {
    pub exact: Key,
    /// Chat requests with a user message only.
    pub semantic: Option<SemanticKey>,
}

/// Where a request may find a semantically equal neighbour: the scope fixes
/// everything but the last user message, whose text is compared by meaning.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticKey {
    pub scope: Key,
    pub text: String,
}

/// Length-prefixed fields with a tag each, so no two different requests
/// encode to the same bytes (`["ab","c"]` vs `["a","bc"]`).
struct Canon(Sha256);

impl Canon {
    fn new(kind: &str) -> Self {
        let mut c = Self(Sha256::new());
        c.str("version", KEY_VERSION);
        c.str("kind", kind);
        c
    }
    fn bytes(&mut self, tag: &str, b: &[u8]) {
        self.0.update((tag.len() as u64).to_le_bytes());
        self.0.update(tag.as_bytes());
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
    }
    fn str(&mut self, tag: &str, s: &str) {
        self.bytes(tag, s.as_bytes());
    }
    fn u64(&mut self, tag: &str, v: u64) {
        self.bytes(tag, &v.to_le_bytes());
    }
    fn opt_u64(&mut self, tag: &str, v: Option<u64>) {
        match v {
            Some(v) => self.u64(tag, v),
            None => self.bytes(tag, b"none"),
        }
    }
    fn f32(&mut self, tag: &str, v: f32) {
        // -0.0 and 0.0 sample alike.
        let v = if v == 0.0 { 0.0 } else { v };
        self.bytes(tag, &v.to_bits().to_le_bytes());
    }
    fn message(&mut self, m: &ChatMessage) {
        let ChatMessage {
            role,
            content,
            tool_calls,
            tool_call_id,
        } = m;
        self.str("role", role);
        self.str("content", content);
        // Written only when present, so plain turns keep their old keys.
        if !tool_calls.is_empty() {
            self.u64("tool_calls", tool_calls.len() as u64);
            for call in tool_calls {
                self.str("call_id", &call.id);
                self.str("call_name", &call.name);
                self.str("call_arguments", &call.arguments);
            }
        }
        if let Some(id) = tool_call_id {
            self.str("tool_call_id", id);
        }
    }
    /// The functions offered and how they must be used: they change the
    /// answer. Written only when present.
    fn tools(&mut self, tools: Option<&Tools>) {
        let Some(Tools {
            functions,
            choice,
            parallel,
        }) = tools
        else {
            return;
        };
        self.u64("tools", functions.len() as u64);
        for FunctionSpec {
            name,
            description,
            parameters,
            strict,
        } in functions
        {
            self.str("function", name);
            self.str("description", description.as_deref().unwrap_or(""));
            self.str(
                "parameters",
                &parameters
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
            );
            self.u64("strict", u64::from(*strict));
        }
        match choice {
            ToolChoice::Auto => self.str("tool_choice", "auto"),
            ToolChoice::None => self.str("tool_choice", "none"),
            ToolChoice::Required => self.str("tool_choice", "required"),
            ToolChoice::Function(name) => self.str("tool_choice_function", name),
        }
        self.u64("parallel_tool_calls", u64::from(*parallel));
    }
    fn finish(self) -> Key {
        Key(self.0.finalize().into())
    }
}

/// Everything in [`Sampling`] changes the answer (or, for `logprobs`, its shape).
fn sampling(c: &mut Canon, s: &Sampling) {
    let Sampling {
        max_tokens,
        temperature,
        top_k,
        top_p,
        min_p,
        repetition_penalty,
        presence_penalty,
        frequency_penalty,
        seed,
        stop_token_ids,
        stop_strings,
        ignore_eos,
        logprobs,
        logit_bias,
        constraint,
    } = s;
    c.opt_u64("max_tokens", max_tokens.map(|v| v as u64));
    c.f32("temperature", *temperature);
    c.u64("top_k", *top_k as u64);
    c.f32("top_p", *top_p);
    c.f32("min_p", *min_p);
    c.f32("repetition_penalty", *repetition_penalty);
    c.f32("presence_penalty", *presence_penalty);
    c.f32("frequency_penalty", *frequency_penalty);
    c.opt_u64("seed", *seed);
    c.u64("stop_token_ids", stop_token_ids.len() as u64);
    for id in stop_token_ids {
        c.u64("stop_token_id", u64::from(*id));
    }
    c.u64("stop_strings", stop_strings.len() as u64);
    for s in stop_strings {
        c.str("stop", s);
    }
    c.u64("ignore_eos", u64::from(*ignore_eos));
    c.opt_u64("logprobs", logprobs.map(|v| v as u64));
    // Written only when used, so the keys of requests without them are
    // what they were before these fields existed.
    if !logit_bias.is_empty() {
        c.u64("logit_bias", logit_bias.len() as u64);
        for &(id, bias) in logit_bias {
            c.u64("bias_id", u64::from(id));
            c.f32("bias", bias);
        }
    }
    if let Some(constraint) = constraint {
        match &constraint.spec {
            GrammarSpec::JsonObject => c.str("grammar", "json_object"),
            GrammarSpec::JsonSchema { schema, strict } => {
                c.str("json_schema", schema);
                c.u64("strict", u64::from(*strict));
            }
            GrammarSpec::Regex(rx) => c.str("regex", rx),
            GrammarSpec::Lark(lark) => c.str("lark", lark),
        }
    }
}

fn context(
    kind: &str,
    tenant: &str,
    model: &str,
    s: &Sampling,
    n: usize,
    tools: Option<&Tools>,
) -> Canon {
    let mut c = Canon::new(kind);
    c.str("tenant", tenant);
    c.str("model", model);
    sampling(&mut c, s);
    c.u64("n", n as u64);
    c.tools(tools);
    c
}

/// The exact key and, for chat requests with a user turn, the semantic key.
pub fn keys(tenant: &str, model: &str, job: &Job) -> Keys {
    let (input, s, n, tools) = job.parts();
    let mut exact = context("exact", tenant, model, s, n, tools);
    let semantic = match input {
        Input::Chat(messages) => {
            exact.u64("messages", messages.len() as u64);
            for m in messages {
                exact.message(m);
            }
            messages.iter().rposition(|m| m.role == "user").map(|last| {
                let mut scope = context("scope", tenant, model, s, n, tools);
                scope.u64("messages", messages.len() as u64);
                scope.u64("last_user", last as u64);
                for (i, m) in messages.iter().enumerate() {
                    if i != last {
                        scope.message(m);
                    }
                }
                SemanticKey {
                    scope: scope.finish(),
                    text: messages
                        .get(last)
                        .map(|m| m.content.clone())
                        .unwrap_or_default(),
                }
            })
        }
        Input::Text(prompts) => {
            exact.u64("text_prompts", prompts.len() as u64);
            for p in prompts {
                exact.str("prompt", p);
            }
            None
        }
        Input::Tokens(prompts) => {
            exact.u64("token_prompts", prompts.len() as u64);
            for p in prompts {
                exact.u64("tokens", p.len() as u64);
                for t in p {
                    exact.u64("t", u64::from(*t));
                }
            }
            None
        }
    };
    Keys {
        exact: exact.finish(),
        semantic,
    }
}
