//! Redaction of the answer, as it streams: each stream's text is released
//! only up to a point no value can straddle. What is held back: the last
//! [`TAIL`] bytes, then back to the start of a word cut by that point (up
//! to [`MAX_WORD`] bytes: a JWT or an API key is one long word), then back
//! to the start of any value found across the point, and everything from
//! an unclosed private-key block's `-----BEGIN` (up to [`MAX_BLOCK`]).
//!
//! On the way out `block` masks (the status line has left already) and
//! `pseudonymize` lets the value through: the values an answer restores
//! are the client's own.

use std::sync::Arc;

use super::stream::{Carrier, Held, HeldAnswer};
use super::{Direction, Pii, PiiReport};
use crate::answer::BoxAnswer;

/// Bytes always held back: longer than any value but keys and tokens.
const TAIL: usize = 64;
/// A word longer than this is released even if cut.
const MAX_WORD: usize = 4096;
/// An unclosed private-key block held longer than this is released.
const MAX_BLOCK: usize = 16 * 1024;
/// Released text kept as the context of the next scan (passport and
/// account context words).
const CONTEXT: usize = 64;

/// Wraps an answer so every stream of it is redacted.
pub fn redact_answer(answer: BoxAnswer, pii: Arc<Pii>, tenant: Arc<str>) -> BoxAnswer {
    HeldAnswer::wrap(
        answer,
        Box::new(move |_: Carrier| {
            Box::new(Redacting {
                pii: pii.clone(),
                tenant: tenant.clone(),
                context: String::new(),
                buf: String::new(),
            }) as Box<dyn Held>
        }),
    )
}

struct Redacting {
    pii: Arc<Pii>,
    tenant: Arc<str>,
    /// The end of the text already released, unredacted.
    context: String,
    buf: String,
}

impl Redacting {
    /// Where the held-back part starts.
    fn safe_end(&self, scanned: &[std::ops::Range<usize>]) -> usize {
        let buf = self.buf.as_bytes();
        let mut end = floor_char(&self.buf, self.buf.len().saturating_sub(TAIL));
        let word_floor = end.saturating_sub(MAX_WORD);
        while end > word_floor
            && end > 0
            && end < buf.len()
            && !buf[end - 1].is_ascii_whitespace()
            && !buf[end].is_ascii_whitespace()
        {
            end -= 1;
        }
        end = floor_char(&self.buf, end);
        for span in scanned {
            if span.start < end && span.end > end {
                end = span.start;
            }
        }
        if let Some(begin) = self.buf.rfind("-----BEGIN") {
            let closed = self.buf[begin..].contains("-----END");
            if !closed && self.buf.len() - begin <= MAX_BLOCK {
                end = end.min(begin);
            }
        }
        end
    }

    fn release(&mut self, all: bool) -> String {
        let offset = self.context.len();
        let scan_text = format!("{}{}", self.context, self.buf);
        let found: Vec<_> = self
            .pii
            .detector
            .scan(&scan_text)
            .into_iter()
            .filter(|f| f.span.start >= offset)
            .map(|mut f| {
                f.span = f.span.start - offset..f.span.end - offset;
                f
            })
            .collect();
        let end = if all {
            self.buf.len()
        } else {
            let spans: Vec<_> = found.iter().map(|f| f.span.clone()).collect();
            self.safe_end(&spans)
        };
        let inside: Vec<_> = found.into_iter().filter(|f| f.span.end <= end).collect();
        let mut report = PiiReport::default();
        let released = self.pii.apply(
            &self.tenant,
            &self.buf[..end],
            &inside,
            Direction::Output,
            &mut report,
        );
        report.count(Direction::Output);
        let raw: String = self.buf.drain(..end).collect();
        self.context.push_str(&raw);
        let keep = floor_char(&self.context, self.context.len().saturating_sub(CONTEXT));
        self.context.drain(..keep);
        released
    }
}

impl Held for Redacting {
    fn push(&mut self, piece: &str) -> String {
        self.buf.push_str(piece);
        if self.buf.len() <= TAIL {
            return String::new();
        }
        self.release(false)
    }

    fn finish(&mut self) -> String {
        self.release(true)
    }
}

/// The largest char boundary at or below `at`.
fn floor_char(s: &str, mut at: usize) -> usize {
    at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}
