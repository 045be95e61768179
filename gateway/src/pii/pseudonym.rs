//! The reversible mode: before a request leaves for a cloud deployment,
//! values of the kinds set to `pseudonymize` become placeholders
//! (`<PII_EMAIL_1>`: equal values, one placeholder), and the answer has
//! them put back for the client, a placeholder split across steps
//! included.
//!
//! Design choice: the mapping is a value of the one upstream attempt that
//! made it ([`Placeholders`]), moved into the answer that restores it and
//! dropped with it: it is never cached, logged or shared with another
//! request, so one request's values cannot be restored into another's
//! answer.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_models::ChatMessage;

use super::stream::{Carrier, Held, HeldAnswer};
use super::{normalized, Pii};
use crate::answer::BoxAnswer;
use crate::config::PiiAction;

const PREFIX: &str = "<PII_";
/// A placeholder's length at most (`<PII_PASSPORT_99999>` fits).
const MAX_PLACEHOLDER: usize = 32;

/// One request's placeholders and the values they stand for.
#[derive(Debug, Default, Clone)]
pub struct Placeholders {
    /// Placeholder → the value as the client wrote it (the first spelling).
    values: HashMap<String, String>,
    /// (kind, normalised value) → placeholder, so equal values share one.
    assigned: HashMap<(&'static str, String), String>,
    counts: HashMap<&'static str, usize>,
}

impl Placeholders {
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn placeholder(&mut self, kind: &'static str, norm: String, raw: &str) -> String {
        if let Some(p) = self.assigned.get(&(kind, norm.clone())) {
            return p.clone();
        }
        let n = self.counts.entry(kind).or_insert(0);
        *n += 1;
        let p = format!("<PII_{}_{n}>", kind.to_ascii_uppercase());
        self.values.insert(p.clone(), raw.to_string());
        self.assigned.insert((kind, norm), p.clone());
        p
    }
}

impl Pii {
    /// Replaces the values of `pseudonymize` kinds in every message (text
    /// and tool-call arguments) by placeholders.
    pub fn pseudonymize(&self, messages: &[ChatMessage]) -> (Vec<ChatMessage>, Placeholders) {
        let mut placeholders = Placeholders::default();
        let out = messages
            .iter()
            .map(|m| {
                let mut m = m.clone();
                m.content = self.pseudonymize_text(&m.content, &mut placeholders);
                for call in &mut m.tool_calls {
                    call.arguments = self.pseudonymize_text(&call.arguments, &mut placeholders);
                }
                m
            })
            .collect();
        (out, placeholders)
    }

    fn pseudonymize_text(&self, text: &str, placeholders: &mut Placeholders) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in self.detector.scan(text) {
            if self.action(f.entity) != PiiAction::Pseudonymize {
                continue;
            }
            let raw = &text[f.span.clone()];
            out.push_str(&text[at..f.span.start]);
            out.push_str(&placeholders.placeholder(
                f.entity.as_str(),
                normalized(f.entity, raw),
                raw,
            ));
            at = f.span.end;
        }
        out.push_str(&text[at..]);
        out
    }
}

/// Wraps an upstream's answer so its placeholders are put back.
pub fn restore(answer: BoxAnswer, placeholders: Placeholders) -> BoxAnswer {
    if placeholders.is_empty() {
        return answer;
    }
    let placeholders = Arc::new(placeholders);
    HeldAnswer::wrap(
        answer,
        Box::new(move |carrier: Carrier| {
            Box::new(Restorer {
                placeholders: placeholders.clone(),
                carrier,
                buf: String::new(),
            }) as Box<dyn Held>
        }),
    )
}

/// One stream's restoring state: the text since the last `<` that may
/// still become a placeholder.
struct Restorer {
    placeholders: Arc<Placeholders>,
    carrier: Carrier,
    buf: String,
}

impl Restorer {
    /// `buf[..end]` with every whole placeholder replaced by its value.
    fn release(&mut self, end: usize) -> String {
        let text: String = self.buf.drain(..end).collect();
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(at) = rest.find(PREFIX) {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            let close = tail
                .char_indices()
                .take(MAX_PLACEHOLDER)
                .find(|(_, c)| *c == '>')
                .map(|(i, _)| i);
            match close.and_then(|i| self.placeholders.values.get(&tail[..=i]).map(|v| (i, v))) {
                Some((i, value)) => {
                    match self.carrier {
                        Carrier::Text => out.push_str(value),
                        Carrier::ToolArguments => out.push_str(&json_string_content(value)),
                    }
                    rest = &tail[i + 1..];
                }
                None => {
                    // Not one of ours (a model may invent one): kept as written.
                    out.push_str(PREFIX);
                    rest = &tail[PREFIX.len()..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

impl Held for Restorer {
    fn push(&mut self, piece: &str) -> String {
        self.buf.push_str(piece);
        let hold = match self.buf.rfind('<') {
            Some(at) if may_become_placeholder(&self.buf[at..]) => at,
            _ => self.buf.len(),
        };
        self.release(hold)
    }

    fn finish(&mut self) -> String {
        let end = self.buf.len();
        self.release(end)
    }
}

/// Whether `s` (starting at a `<`) is the beginning of a placeholder not
/// yet closed.
fn may_become_placeholder(s: &str) -> bool {
    if s.len() >= MAX_PLACEHOLDER || s.contains('>') {
        return false;
    }
    let head = s.len().min(PREFIX.len());
    s.as_bytes()[..head] == PREFIX.as_bytes()[..head]
        && s.bytes()
            .skip(PREFIX.len())
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// A value as the content of a JSON string (no quotes around it).
fn json_string_content(value: &str) -> String {
    let quoted = serde_json::Value::String(value.to_string()).to_string();
    quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(&quoted)
        .to_string()
}

#[cfg(test)]
pub(super) fn restorer_for_test(values: &[(&str, &str)], carrier: Carrier) -> Box<dyn Held> {
    let placeholders = Placeholders {
        values: values
            .iter()
            .map(|(p, v)| (p.to_string(), v.to_string()))
            .collect(),
        ..Placeholders::default()
    };
    Box::new(Restorer {
        placeholders: Arc::new(placeholders),
        carrier,
        buf: String::new(),
    })
}
