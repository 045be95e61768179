//! OTLP's trace export request (`ExportTraceServiceRequest`, protobuf),
//! written straight from [`SpanRecord`]s: no intermediate message types,
//! one buffer per batch, sized exactly before anything is written (every
//! message's length is computed first, so each byte is written once). Field numbers are those of
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
    let span_lens: Vec<usize> = spans.iter().map(span_len).collect();
    let resource_len: usize = resource
        .iter()
        .map(|kv| nested_len(key_value_len(kv)))
        .sum();
    let scope_len = nested_len(string_len(scope));
    let scope_spans_len = scope_len + span_lens.iter().map(|&n| nested_len(n)).sum::<usize>();
    let resource_spans_len = nested_len(resource_len) + nested_len(scope_spans_len);

    let total = nested_len(resource_spans_len);
    let mut b = Vec::with_capacity(total);
    // ExportTraceServiceRequest.resource_spans
    header(&mut b, 1, resource_spans_len);
    // ResourceSpans.resource: Resource.attributes
    header(&mut b, 1, resource_len);
    for attribute in resource {
        header(&mut b, 1, key_value_len(attribute));
        key_value(&mut b, attribute);
    }
    // ResourceSpans.scope_spans
    header(&mut b, 2, scope_spans_len);
    // ScopeSpans.scope: InstrumentationScope.name
    header(&mut b, 1, string_len(scope));
    string(&mut b, 1, scope);
    for (span, &len) in spans.iter().zip(&span_lens) {
        header(&mut b, 2, len);
        encode_span(&mut b, span);
    }
    debug_assert_eq!(
        b.len(),
        total,
        "the lengths computed match what was written"
    );
    b
}

/// The bytes [`encode_span`] writes.
fn span_len(span: &SpanRecord) -> usize {
    let mut n = bytes_len(span.trace_id.len()) + bytes_len(span.span_id.len());
    if let Some(parent) = &span.parent_span_id {
        n += bytes_len(parent.len());
    }
    n += string_len(&span.name) + varint_field_len(kind_code(&span.kind));
    n += 2 * (1 + 8); // start and end: fixed64
    n += span
        .attributes
        .iter()
        .map(|kv| nested_len(key_value_len(kv)))
        .sum::<usize>();
    if span.dropped_attributes > 0 {
        n += varint_field_len(u64::from(span.dropped_attributes));
    }
    if let Some(message) = &span.error {
        n += nested_len(status_len(message));
    }
    n + 2 + 4 // flags: fixed32 behind a two-byte key
}

fn encode_span(b: &mut Vec<u8>, span: &SpanRecord) {
    bytes(b, 1, &span.trace_id);
    bytes(b, 2, &span.span_id);
    if let Some(parent) = &span.parent_span_id {
        bytes(b, 4, parent);
    }
    string(b, 5, &span.name);
    varint_field(b, 6, kind_code(&span.kind));
    fixed64(b, 7, span.start_unix_nano);
    fixed64(b, 8, span.end_unix_nano);
    for attribute in &span.attributes {
        header(b, 9, key_value_len(attribute));
        key_value(b, attribute);
    }
    if span.dropped_attributes > 0 {
        varint_field(b, 10, u64::from(span.dropped_attributes));
    }
    if let Some(message) = &span.error {
        // Status { message = 2; code = 3 (STATUS_CODE_ERROR = 2) }
        header(b, 15, status_len(message));
        string(b, 2, message);
        varint_field(b, 3, 2);
    }
    let mut flags = FLAG_SAMPLED | FLAG_HAS_IS_REMOTE;
    if span.parent_is_remote {
        flags |= FLAG_IS_REMOTE;
    }
    key(b, 16, FIXED32);
    b.extend_from_slice(&flags.to_le_bytes());
}

fn status_len(message: &str) -> usize {
    string_len(message) + varint_field_len(2)
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

fn key_value_len(attribute: &KeyValue) -> usize {
    string_len(attribute.key.as_str()) + nested_len(any_value_len(&attribute.value))
}

fn key_value(b: &mut Vec<u8>, attribute: &KeyValue) {
    string(b, 1, attribute.key.as_str());
    header(b, 2, any_value_len(&attribute.value));
    any_value(b, &attribute.value);
}

/// The bytes [`any_value`] writes.
fn any_value_len(value: &Value) -> usize {
    match value {
        Value::String(s) => string_len(s.as_str()),
        Value::Bool(_) => 2,
        Value::I64(v) => varint_field_len(*v as u64),
        Value::F64(_) => 1 + 8,
        Value::Array(array) => nested_len(array_len(array)),
        _ => 0,
    }
}

fn array_len(array: &Array) -> usize {
    match array {
        Array::Bool(values) => values.len() * nested_len(2),
        Array::I64(values) => values
            .iter()
            .map(|v| nested_len(varint_field_len(*v as u64)))
            .sum(),
        Array::F64(values) => values.len() * nested_len(1 + 8),
        Array::String(values) => values
            .iter()
            .map(|v| nested_len(string_len(v.as_str())))
            .sum(),
        _ => 0,
    }
}

/// `AnyValue`: a oneof, so a field is written even when it holds its
/// type's default (an empty string, `false`, 0).
fn any_value(b: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => string(b, 1, s.as_str()),
        Value::Bool(v) => varint_field(b, 2, u64::from(*v)),
        Value::I64(v) => varint_field(b, 3, *v as u64),
        Value::F64(v) => fixed64(b, 4, v.to_bits()),
        // ArrayValue { repeated AnyValue values = 1 }
        Value::Array(array) => {
            header(b, 5, array_len(array));
            match array {
                Array::Bool(values) => {
                    for v in values {
                        header(b, 1, 2);
                        varint_field(b, 2, u64::from(*v));
                    }
                }
                Array::I64(values) => {
                    for v in values {
                        header(b, 1, varint_field_len(*v as u64));
                        varint_field(b, 3, *v as u64);
                    }
                }
                Array::F64(values) => {
                    for v in values {
                        header(b, 1, 1 + 8);
                        fixed64(b, 4, v.to_bits());
                    }
                }
                Array::String(values) => {
                    for v in values {
                        header(b, 1, string_len(v.as_str()));
                        string(b, 1, v.as_str());
                    }
                }
                // A kind of array a later `opentelemetry` adds: sent empty.
                _ => {}
            }
        }
        // A kind of value a later `opentelemetry` adds: an empty AnyValue.
        _ => {}
    }
}

// The sizes: every field number used here but the span's flags (16,
// counted where it is written) is below 16, so a key is one byte.

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn nested_len(body: usize) -> usize {
    1 + varint_len(body as u64) + body
}

fn string_len(v: &str) -> usize {
    bytes_len(v.len())
}

fn bytes_len(len: usize) -> usize {
    nested_len(len)
}

fn varint_field_len(v: u64) -> usize {
    1 + varint_len(v)
}

fn key(b: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(b, u64::from(field << 3 | wire_type));
}

fn varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

/// The key and length of a length-delimited field whose body follows.
fn header(b: &mut Vec<u8>, field: u32, len: usize) {
    key(b, field, LEN);
    varint(b, len as u64);
}

fn varint_field(b: &mut Vec<u8>, field: u32, v: u64) {
    key(b, field, VARINT);
    varint(b, v);
}

fn fixed64(b: &mut Vec<u8>, field: u32, v: u64) {
    key(b, field, FIXED64);
    b.extend_from_slice(&v.to_le_bytes());
}

fn bytes(b: &mut Vec<u8>, field: u32, v: &[u8]) {
    header(b, field, v.len());
    b.extend_from_slice(v);
}

fn string(b: &mut Vec<u8>, field: u32, v: &str) {
    bytes(b, field, v.as_bytes());
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
    fn varint_lengths_match_what_is_written() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(varint_len(v), b.len(), "{v}");
        }
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
