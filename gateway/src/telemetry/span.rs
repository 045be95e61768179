//! A span as the exporter sees it ([`SpanRecord`]), the ids that name it
//! and carry a trace across processes ([`SpanIds`], W3C `traceparent`),
//! and the sampling decision.
//!
//! Design choice: these are plain structs, not the OpenTelemetry SDK's
//! spans. A request makes about a dozen spans; through the SDK each one
//! cost a few microseconds to build, convert to OTLP's types and encode
//! (+60-100 µs of CPU per request at full sampling, `bench/RESULTS.md`
//! session 10). Here a span is an id pair, two timestamps and its
//! attributes, and [`super::otlp`] writes it straight into the export
//! request's bytes.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use rand::Rng as _;

/// The most attributes a span keeps (OpenTelemetry's default limit); more
/// are counted as dropped.
pub const MAX_ATTRIBUTES: usize = 128;

/// A span's place in a trace, and whether the trace is sampled: what a
/// `traceparent` header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl SpanIds {
    /// The ids of a new span in this span's trace.
    pub fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// `00-{trace id}-{span id}-{flags}` (W3C trace context, version 00).
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push_str(if self.sampled { "-01" } else { "-00" });
        out
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// Reads a `traceparent` header as the W3C recommendation asks: four
    /// dash-separated lowercase-hex fields (a future version may add more
    /// after them), version `ff` invalid, ids not all zero. `None` for
    /// anything else, so a malformed header starts a new trace.
    pub fn parse_traceparent(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut fields = value.split('-');
        let version = fields.next()?;
        let trace_id = fields.next()?;
        let span_id = fields.next()?;
        let flags = fields.next()?;
        let rest = fields.next();
        if version.len() != 2 || version == "ff" || (version == "00" && rest.is_some()) {
            return None;
        }
        let _ = decode_hex::<1>(version)?;
        let trace_id = decode_hex::<16>(trace_id)?;
        let span_id = decode_hex::<8>(span_id)?;
        let [flags] = decode_hex::<1>(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

/// A recorded span: open while its stage runs, handed to the exporter
/// when it ends.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The parent came from another process (a client's `traceparent`).
    pub parent_is_remote: bool,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: Vec<KeyValue>,
    pub dropped_attributes: u32,
    /// An error status and its message; `None` is OTLP's unset status.
    pub error: Option<Cow<'static, str>>,
}

impl SpanRecord {
    /// A span starting at `start`, under `parent` when there is one.
    pub fn open(
        ids: SpanIds,
        parent: Option<([u8; 8], bool)>,
        name: Cow<'static, str>,
        kind: SpanKind,
        start: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> Self {
        let mut record = Self {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            parent_span_id: parent.map(|(id, _)| id),
            parent_is_remote: parent.is_some_and(|(_, remote)| remote),
            name,
            kind,
            start_unix_nano: unix_nanos(start),
            end_unix_nano: 0,
            attributes: Vec::new(),
            dropped_attributes: 0,
            error: None,
        };
        if attributes.len() <= MAX_ATTRIBUTES {
            record.attributes = attributes;
        } else {
            record.set_all(attributes);
        }
        record
    }

    pub fn set(&mut self, attribute: KeyValue) {
        if self.attributes.len() < MAX_ATTRIBUTES {
            self.attributes.push(attribute);
        } else {
            self.dropped_attributes += 1;
        }
    }

    pub fn set_all(&mut self, attributes: Vec<KeyValue>) {
        for attribute in attributes {
            self.set(attribute);
        }
    }

    pub fn close(&mut self, end: SystemTime) {
        self.end_unix_nano = unix_nanos(end).max(self.start_unix_nano);
    }
}

/// Ids for a root span: a new trace, or the span's place under a client's.
pub fn root_ids(remote_parent: Option<SpanIds>, ratio: f64) -> SpanIds {
    match remote_parent {
        // A client's sampled flag is followed, so a trace it started is
        // never cut in half here.
        Some(parent) => parent.child(),
        None => {
            let trace_id = new_trace_id();
            SpanIds {
                trace_id,
                span_id: new_span_id(),
                sampled: sampled_by_ratio(&trace_id, ratio),
            }
        }
    }
}

/// OpenTelemetry's `TraceIdRatioBased`: the trace id's low 63 bits against
/// the ratio, so every service that samples by ratio agrees on a trace.
pub fn sampled_by_ratio(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let low = u64::from_be_bytes(low);
    (low >> 1) < bound
}

fn new_trace_id() -> [u8; 16] {
    let mut rng = rand::rng();
    loop {
        let id: u128 = rng.random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn new_span_id() -> [u8; 8] {
    let mut rng = rand::rng();
    loop {
        let id: u64 = rng.random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Lowercase hex by table: ids are formatted for every traced request
/// (log fields, `traceparent`), and `format!`'s `{:02x}` cost ~100
/// instructions a byte.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Exactly `2 * N` lowercase hex digits.
fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_its_flag_is_kept() {
        let text = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let ids = SpanIds::parse_traceparent(text).unwrap();
        assert!(ids.sampled);
        assert_eq!(ids.traceparent(), text);
        assert_eq!(ids.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(ids.span_id_hex(), "b7ad6b7169203331");
        let unsampled = SpanIds::parse_traceparent(&text.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled);
        assert!(unsampled.traceparent().ends_with("-00"));
        // A later version may carry more fields; version 00 may not.
        assert!(SpanIds::parse_traceparent(&format!("cc{}-extra", &text[2..])).is_some());
        assert!(SpanIds::parse_traceparent(&format!("{text}-extra")).is_none());
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-zz-11-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
        ] {
            assert_eq!(SpanIds::parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_the_flag_under_a_new_span_id() {
        let parent = root_ids(None, 1.0);
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert!(child.sampled);
        let remote = SpanIds {
            sampled: false,
            ..parent
        };
        let root = root_ids(Some(remote), 1.0);
        assert!(!root.sampled, "the client's decision is followed");
        assert_eq!(root.trace_id, remote.trace_id);
    }

    #[test]
    fn the_ratio_samples_about_its_share_and_the_ends_are_exact() {
        let sampled = (0..20_000).filter(|_| root_ids(None, 0.25).sampled).count();
        assert!((4_400..5_600).contains(&sampled), "{sampled} of 20,000");
        let id = new_trace_id();
        assert!(sampled_by_ratio(&id, 1.0));
        assert!(!sampled_by_ratio(&id, 0.0));
    }

    #[test]
    fn attributes_past_the_limit_are_counted_not_kept() {
        let ids = root_ids(None, 1.0);
        let many: Vec<KeyValue> = (0..MAX_ATTRIBUTES as i64 + 3)
            .map(|i| KeyValue::new("k", i))
            .collect();
        let mut span = SpanRecord::open(
            ids,
            None,
            "s".into(),
            SpanKind::Internal,
            SystemTime::now(),
            many,
        );
        assert_eq!(span.attributes.len(), MAX_ATTRIBUTES);
        assert_eq!(span.dropped_attributes, 3);
        span.set(KeyValue::new("late", 1));
        assert_eq!(span.dropped_attributes, 4);
        let before = SystemTime::now() - std::time::Duration::from_secs(1);
        span.close(before);
        assert_eq!(
            span.end_unix_nano, span.start_unix_nano,
            "never ends before it starts"
        );
    }
}
