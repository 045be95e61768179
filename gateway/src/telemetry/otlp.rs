//! OTLP's trace export request (`ExportTraceServiceRequest`, protobuf),
//! written straight from [`SpanRecord`]s: no intermediate message types,
//! one buffer per batch. Field numbers are those of
//! `opentelemetry/proto/trace/v1/trace.proto` and `common/v1/common.proto`;
//! the tests decode the bytes with the generated types a collector uses.

use opentelemetry::trace::SpanKind;
use opentelemetry::{Array, KeyValue, Value};

use super::span::SpanRecord;

/// gRPC method of OTLP's trace service.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `SpanFlags`: the low byte is the W3C trace flags; bit 8 says whether the
/// parent's remoteness is known, bit 9 that it is remote.
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// One export request: the process's resource, one scope, `spans`.
pub fn export_request(resource: &[KeyValue], scope: &str, spans: &[SpanRecord]) -> Vec<u8> {
    let mut w = Backwards::with_capacity(128 + 320 * spans.len());
    // ExportTraceServiceRequest.resource_spans
    w.nested(1, |w| {
        // ResourceSpans.scope_spans
        w.nested(2, |w| {
            for span in spans.iter().rev() {
                w.nested(2, |w| encode_span(w, span));
            }
            // ScopeSpans.scope: InstrumentationScope.name
            w.nested(1, |w| w.string(1, scope));
        });
        // ResourceSpans.resource: Resource.attributes
        w.nested(1, |w| {
            for attribute in resource.iter().rev() {
                w.nested(1, |w| key_value(w, attribute));
            }
        });
    });
    w.finish()
}

/// A span's fields, the last first (see [`Backwards`]).
fn encode_span(w: &mut Backwards, span: &SpanRecord) {
    let mut flags = FLAG_SAMPLED | FLAG_HAS_IS_REMOTE;
    if span.parent_is_remote {
        flags |= FLAG_IS_REMOTE;
    }
    w.raw(&flags.to_le_bytes());
    w.key(16, FIXED32);
    if let Some(message) = &span.error {
        // Status { message = 2; code = 3 (STATUS_CODE_ERROR = 2) }
        w.nested(15, |w| {
            w.varint_field(3, 2);
            w.string(2, message);
        });
    }
    if span.dropped_attributes > 0 {
        w.varint_field(10, u64::from(span.dropped_attributes));
    }
    for attribute in span.attributes.iter().rev() {
        w.nested(9, |w| key_value(w, attribute));
    }
    w.fixed64(8, span.end_unix_nano);
    w.fixed64(7, span.start_unix_nano);
    w.varint_field(6, kind_code(&span.kind));
    w.string(5, &span.name);
    if let Some(parent) = &span.parent_span_id {
        w.bytes(4, parent);
    }
    w.bytes(2, &span.span_id);
    w.bytes(1, &span.trace_id);
}

/// OTLP's `SpanKind` enum.
fn kind_code(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn key_value(w: &mut Backwards, attribute: &KeyValue) {
    w.nested(2, |w| any_value(w, &attribute.value));
    w.string(1, attribute.key.as_str());
}

/// `AnyValue`: a oneof, so a field is written even when it holds its
/// type's default (an empty string, `false`, 0).
fn any_value(w: &mut Backwards, value: &Value) {
    match value {
        Value::String(s) => w.string(1, s.as_str()),
        Value::Bool(v) => w.varint_field(2, u64::from(*v)),
        Value::I64(v) => w.varint_field(3, *v as u64),
        Value::F64(v) => w.fixed64(4, v.to_bits()),
        // ArrayValue { repeated AnyValue values = 1 }
        Value::Array(array) => w.nested(5, |w| match array {
            Array::Bool(values) => {
                for v in values.iter().rev() {
                    w.nested(1, |w| w.varint_field(2, u64::from(*v)));
                }
            }
            Array::I64(values) => {
                for v in values.iter().rev() {
                    w.nested(1, |w| w.varint_field(3, *v as u64));
                }
            }
            Array::F64(values) => {
                for v in values.iter().rev() {
                    w.nested(1, |w| w.fixed64(4, v.to_bits()));
                }
            }
            Array::String(values) => {
                for v in values.iter().rev() {
                    w.nested(1, |w| w.string(1, v.as_str()));
                }
            }
            // A kind of array a later `opentelemetry` adds: sent empty.
            _ => {}
        }),
        // A kind of value a later `opentelemetry` adds: an empty AnyValue.
        _ => {}
    }
}

/// A protobuf writer that builds the message from its end: every piece is
/// appended reversed and the whole buffer is turned around once at the end.
/// A nested message's length is then known when its header is written
/// (right after its body), so nothing is measured twice or moved; the
/// price is that fields and repeated elements are written last first.
struct Backwards {
    buf: Vec<u8>,
}

impl Backwards {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.reverse();
        self.buf
    }

    /// `bytes` as they should read once the buffer is turned around.
    fn raw(&mut self, bytes: &[u8]) {
        let at = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.buf[at..].reverse();
    }

    fn varint(&mut self, mut v: u64) {
        let mut encoded = [0u8; 10];
        let mut n = 0;
        while v >= 0x80 {
            encoded[n] = v as u8 | 0x80;
            v >>= 7;
            n += 1;
        }
        encoded[n] = v as u8;
        self.raw(&encoded[..=n]);
    }

    fn key(&mut self, field: u32, wire_type: u32) {
        self.varint(u64::from(field << 3 | wire_type));
    }

    fn varint_field(&mut self, field: u32, v: u64) {
        self.varint(v);
        self.key(field, VARINT);
    }

    fn fixed64(&mut self, field: u32, v: u64) {
        self.raw(&v.to_le_bytes());
        self.key(field, FIXED64);
    }

    fn bytes(&mut self, field: u32, v: &[u8]) {
        self.raw(v);
        self.varint(v.len() as u64);
        self.key(field, LEN);
    }

    fn string(&mut self, field: u32, v: &str) {
        self.bytes(field, v.as_bytes());
    }

    /// A length-delimited field whose body `write` writes (backwards).
    fn nested(&mut self, field: u32, write: impl FnOnce(&mut Self)) {
        let end = self.buf.len();
        write(self);
        let len = self.buf.len() - end;
        self.varint(len as u64);
        self.key(field, LEN);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use opentelemetry::StringValue;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Decoded;
    use prost::Message as _;

    use super::super::span::{root_ids, SpanIds};
    use super::*;

    fn span(
        ids: SpanIds,
        parent: Option<([u8; 8], bool)>,
        attributes: Vec<KeyValue>,
    ) -> SpanRecord {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let mut record = SpanRecord::open(
            ids,
            parent,
            "chat demo".into(),
            SpanKind::Client,
            start,
            attributes,
        );
        record.close(start + Duration::from_micros(250));
        record
    }

    #[test]
    fn a_collector_decodes_every_field_we_write() {
        let root = root_ids(None, 1.0);
        let child = root.child();
        let long = "x".repeat(300); // a length that takes two varint bytes
        let mut failed = span(
            child,
            Some((root.span_id, false)),
            vec![
                KeyValue::new("gen_ai.request.model", "demo"),
                KeyValue::new("empty", ""),
                KeyValue::new("gen_ai.usage.input_tokens", 42_i64),
                KeyValue::new("negative", -7_i64),
                KeyValue::new("gen_ai.request.temperature", 0.25_f64),
                KeyValue::new("flag", false),
                KeyValue::new("long", long.clone()),
                KeyValue::new(
                    "gen_ai.response.finish_reasons",
                    Value::Array(Array::String(vec![StringValue::from("stop")])),
                ),
                KeyValue::new("ints", Value::Array(Array::I64(vec![1, -2]))),
            ],
        );
        failed.error = Some("upstream said 502".into());
        let remote_child = span(root, Some(([9; 8], true)), Vec::new());
        let resource = [KeyValue::new("service.name", "sluice-test")];

        let bytes = export_request(&resource, "sluice", &[failed.clone(), remote_child]);
        let request = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();

        let resource_spans = &request.resource_spans[0];
        let service = &resource_spans.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        let scope_spans = &resource_spans.scope_spans[0];
        assert_eq!(scope_spans.scope.as_ref().unwrap().name, "sluice");
        let [first, second] = scope_spans.spans.as_slice() else {
            panic!("two spans: {:?}", scope_spans.spans)
        };
        assert_eq!(first.trace_id, root.trace_id);
        assert_eq!(first.span_id, child.span_id);
        assert_eq!(first.parent_span_id, root.span_id);
        assert_eq!(first.name, "chat demo");
        assert_eq!(first.kind, 3);
        assert_eq!(first.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(first.end_time_unix_nano, 1_700_000_000_123_706_789);
        assert_eq!(first.flags, 0x101);
        let status = first.status.as_ref().unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (2, "upstream said 502")
        );
        let values: Vec<(&str, Option<&Decoded>)> = first
            .attributes
            .iter()
            .map(|kv| {
                (
                    kv.key.as_str(),
                    kv.value.as_ref().and_then(|v| v.value.as_ref()),
                )
            })
            .collect();
        assert_eq!(values.len(), 9);
        assert_eq!(values[0].1, Some(&Decoded::StringValue("demo".into())));
        assert_eq!(values[1].1, Some(&Decoded::StringValue(String::new())));
        assert_eq!(values[2].1, Some(&Decoded::IntValue(42)));
        assert_eq!(values[3].1, Some(&Decoded::IntValue(-7)));
        assert_eq!(values[4].1, Some(&Decoded::DoubleValue(0.25)));
        assert_eq!(values[5].1, Some(&Decoded::BoolValue(false)));
        assert_eq!(values[6].1, Some(&Decoded::StringValue(long)));
        let Some(Decoded::ArrayValue(reasons)) = values[7].1 else {
            panic!("{:?}", values[7])
        };
        assert_eq!(
            reasons.values[0].value,
            Some(Decoded::StringValue("stop".into()))
        );
        let Some(Decoded::ArrayValue(ints)) = values[8].1 else {
            panic!("{:?}", values[8])
        };
        assert_eq!(ints.values[1].value, Some(Decoded::IntValue(-2)));

        assert_eq!(second.parent_span_id, vec![9; 8]);
        assert_eq!(second.flags, 0x301, "a remote parent is marked");
        assert!(second.status.is_none());
        assert!(second.attributes.is_empty());
    }

    #[test]
    fn a_large_batch_decodes_whole() {
        let root = root_ids(None, 1.0);
        let spans: Vec<SpanRecord> = (0..600)
            .map(|i| span(root.child(), None, vec![KeyValue::new("i", i as i64)]))
            .collect();
        let bytes = export_request(&[], "sluice", &spans);
        let request = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let decoded = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(decoded.len(), 600);
        assert_eq!(decoded[599].span_id, spans[599].span_id);
        assert!(decoded[0].parent_span_id.is_empty());
    }
}
