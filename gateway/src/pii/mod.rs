//! Personal data (and secrets) in requests and answers: found, then
//! allowed, masked (`[EMAIL]`), hashed (`[EMAIL:3f2a9c1b0d]`), refused
//! (400 `content_policy_violation`) or, for cloud deployments only,
//! replaced by placeholders and put back in the answer (`[pii]` in the
//! config says which, per kind).
//!
//! Where it runs: [`Pii::redact_request`] is a chain stage before the
//! guard and the cache, so both (and the cache key) see the redacted text;
//! [`pseudonym`] runs in the router once the deployment is known (only a
//! cloud deployment gets placeholders: the local engine is trusted with
//! the values); [`output::redact_answer`] wraps the answer. The stage's
//! [`PiiReport`] is the request's record of what was found: a response
//! header, metrics (`sluice_pii_detections_total{entity, action,
//! direction}`), an audit event (kinds and counts, never a value), and the
//! fact later stages read ([`PiiReport::carries_pii`]).
//!
//! Design choice: a request whose values stay in its text for the local
//! engine (`pseudonymize`) is neither looked up nor stored in the cache
//! ([`PiiReport::keeps_values`]): its key would hold the values, and an
//! answer restored for one client must never be served to another (a
//! semantic hit would hand client B the answer restored with client A's
//! values). Masked and hashed requests are cached like any other: their
//! text holds no value.

mod checksum;
mod detect;
pub mod output;
pub mod pseudonym;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::http::{HeaderMap, HeaderValue};
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use crate::config::{PiiAction, PiiEntity, PiiSettings};
use crate::error::ApiError;
use crate::validate::{Input, Job};
pub use detect::{Detector, Found};

/// The response header that says what was done: `masked=email,card; hashed=phone`.
pub const PII_HEADER: &str = "x-sluice-pii";

/// Which way the text goes (for metrics, and `block` on the way out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Input,
    Output,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
        }
    }
}

/// The detector and the policy, built once at start.
pub struct Pii {
    detector: Detector,
    settings: PiiSettings,
    hash_key: Vec<u8>,
}

/// What was found in one request (or one piece of an answer).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PiiReport {
    counts: BTreeMap<(PiiAction, PiiEntity), usize>,
}

impl PiiReport {
    fn add(&mut self, action: PiiAction, entity: PiiEntity) {
        *self.counts.entry((action, entity)).or_insert(0) += 1;
    }

    /// The request carries personal data of a kind not set to `allow`.
    pub fn carries_pii(&self) -> bool {
        self.counts.keys().any(|(a, _)| *a != PiiAction::Allow)
    }

    /// Personal data of any kind was found, `allow`ed kinds included
    /// (what regulated mode reads: such a prompt is never cached, even
    /// masked, since what surrounds a value is personal too).
    pub fn found_any(&self) -> bool {
        !self.counts.is_empty()
    }

    /// Values of `pseudonymize` kinds stay in the request's text (for the
    /// local engine; a cloud deployment gets placeholders).
    pub fn keeps_values(&self) -> bool {
        self.counts
            .keys()
            .any(|(a, _)| *a == PiiAction::Pseudonymize)
    }

    /// How many values of `entity` got `action`.
    pub fn count_of(&self, action: PiiAction, entity: PiiEntity) -> usize {
        self.counts.get(&(action, entity)).copied().unwrap_or(0)
    }

    /// `masked=email,card; hashed=phone`, kinds per action; `None` when
    /// nothing but allowed values was found.
    pub fn header_value(&self) -> Option<String> {
        let mut by_action: BTreeMap<PiiAction, Vec<&str>> = BTreeMap::new();
        for (action, entity) in self.counts.keys() {
            if *action != PiiAction::Allow {
                by_action.entry(*action).or_default().push(entity.as_str());
            }
        }
        let parts: Vec<String> = by_action
            .into_iter()
            .map(|(action, kinds)| format!("{}={}", past_tense(action), kinds.join(",")))
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    pub fn set_headers(&self, headers: &mut HeaderMap) {
        if let Some(value) = self.header_value() {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(PII_HEADER, v);
            }
        }
    }

    /// `email=2,card=1 masked`-style detail for the audit log: kinds,
    /// actions and counts only.
    pub fn audit_detail(&self) -> String {
        let mut out = String::new();
        for ((action, entity), n) in &self.counts {
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = write!(out, "{}:{}={n}", action.as_str(), entity.as_str());
        }
        out
    }

    /// Counts every detection in the metrics.
    fn count(&self, direction: Direction) {
        for ((action, entity), n) in &self.counts {
            metrics::counter!(
                "sluice_pii_detections_total",
                "entity" => entity.as_str(),
                "action" => action.as_str(),
                "direction" => direction.as_str()
            )
            .increment(*n as u64);
        }
    }
}

fn past_tense(action: PiiAction) -> &'static str {
    match action {
        PiiAction::Allow => "allowed",
        PiiAction::Mask => "masked",
        PiiAction::Hash => "hashed",
        PiiAction::Block => "blocked",
        PiiAction::Pseudonymize => "pseudonymized",
    }
}

/// A value in the form equal values share: digits only for numbers,
/// lower case for e-mail addresses.
fn normalized(entity: PiiEntity, raw: &str) -> String {
    match entity {
        PiiEntity::Email => raw.to_lowercase(),
        PiiEntity::Secret | PiiEntity::Ip | PiiEntity::Iban => {
            raw.chars().filter(|c| !c.is_whitespace()).collect()
        }
        _ => raw.chars().filter(char::is_ascii_digit).collect(),
    }
}

impl Pii {
    /// `None` when `[pii]` is off.
    pub fn new(settings: &PiiSettings) -> Result<Option<Self>, regex::Error> {
        if !settings.enabled {
            return Ok(None);
        }
        let hash_key = match &settings.hash_key {
            Some(secret) => secret.expose().as_bytes().to_vec(),
            // Tokens stay equal for equal values within this process only.
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        Ok(Some(Self {
            detector: Detector::new()?,
            settings: settings.clone(),
            hash_key,
        }))
    }

    pub fn action(&self, entity: PiiEntity) -> PiiAction {
        self.settings.action(entity)
    }

    /// Whether answers are redacted too.
    pub fn redacts_output(&self) -> bool {
        self.settings.output
    }

    /// Every value in `text`.
    pub fn scan(&self, text: &str) -> Vec<Found> {
        self.detector.scan(text)
    }

    /// The chain stage: masks and hashes the request's values in place
    /// (every message, every prompt, tool-call arguments), refuses it when
    /// a kind set to `block` is found. Values to pseudonymize are left for
    /// the router.
    pub fn redact_request(&self, tenant: &str, job: &mut Job) -> Result<PiiReport, ApiError> {
        let mut report = PiiReport::default();
        match &mut job.input {
            Input::Chat(messages) => {
                for (i, m) in messages.iter_mut().enumerate() {
                    let param = format!("messages[{i}].content");
                    m.content = self.redact_in(tenant, &m.content, &param, &mut report)?;
                    for (j, call) in m.tool_calls.iter_mut().enumerate() {
                        let param = format!("messages[{i}].tool_calls[{j}].function.arguments");
                        call.arguments =
                            self.redact_in(tenant, &call.arguments, &param, &mut report)?;
                    }
                }
            }
            Input::Text(prompts) => {
                let single = prompts.len() == 1;
                for (i, p) in prompts.iter_mut().enumerate() {
                    let param = if single {
                        "prompt".to_string()
                    } else {
                        format!("prompt[{i}]")
                    };
                    *p = self.redact_in(tenant, p, &param, &mut report)?;
                }
            }
            // Token ids carry no text to read.
            Input::Tokens(_) => {}
        }
        report.count(Direction::Input);
        Ok(report)
    }

    fn redact_in(
        &self,
        tenant: &str,
        text: &str,
        param: &str,
        report: &mut PiiReport,
    ) -> Result<String, ApiError> {
        let found = self.detector.scan(text);
        if found.is_empty() {
            return Ok(text.to_string());
        }
        if let Some(f) = found
            .iter()
            .find(|f| self.action(f.entity) == PiiAction::Block)
        {
            let mut blocked = PiiReport::default();
            blocked.add(PiiAction::Block, f.entity);
            blocked.count(Direction::Input);
            let kind = f.entity.as_str();
            return Err(ApiError::InvalidRequest {
                message: format!(
                    "The request was refused: `{param}` contains personal data of a kind this \
                     server does not accept ({kind}). Remove it and try again."
                ),
                param: Some(param.to_string()),
                code: Some("content_policy_violation"),
            });
        }
        Ok(self.apply(tenant, text, &found, Direction::Input, report))
    }

    /// `text` with each found value replaced as its kind's action says.
    fn apply(
        &self,
        tenant: &str,
        text: &str,
        found: &[Found],
        direction: Direction,
        report: &mut PiiReport,
    ) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in found {
            let mut action = self.action(f.entity);
            if direction == Direction::Output {
                action = match action {
                    PiiAction::Block => PiiAction::Mask,
                    PiiAction::Pseudonymize => PiiAction::Allow,
                    other => other,
                };
            }
            report.add(action, f.entity);
            let raw = &text[f.span.clone()];
            let tag = f.entity.as_str().to_ascii_uppercase();
            let replacement = match action {
                PiiAction::Allow | PiiAction::Pseudonymize => continue,
                PiiAction::Mask | PiiAction::Block => format!("[{tag}]"),
                PiiAction::Hash => format!("[{tag}:{}]", self.hash(tenant, f.entity, raw)),
            };
            out.push_str(&text[at..f.span.start]);
            out.push_str(&replacement);
            at = f.span.end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// The keyed hash of a value: HMAC-SHA256 over the tenant, the kind and
    /// the normalised value, 10 hex digits.
    fn hash(&self, tenant: &str, entity: PiiEntity, raw: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.hash_key) else {
            return "0".repeat(10);
        };
        mac.update(tenant.as_bytes());
        mac.update(&[0]);
        mac.update(entity.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(normalized(entity, raw).as_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..5].iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}
