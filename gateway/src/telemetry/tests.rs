//! The tracer's spans: propagation, parents, sampling, ends.

use super::*;
use crate::config::LogFormat;

fn on() -> Telemetry {
    // JSON logs alone turn spans on (ids, no exporter): enough to test
    // propagation without a collector.
    let settings = TelemetrySettings {
        log_format: LogFormat::Json,
        ..TelemetrySettings::default()
    };
    Telemetry::start(&settings).unwrap().0
}

fn headers(traceparent: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(TRACEPARENT, traceparent.parse().unwrap());
    h
}

#[test]
fn a_clients_traceparent_is_continued() {
    let t = on();
    let trace = t.request(
        "POST",
        "/v1/chat/completions",
        &headers("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    );
    let (trace_id, span_id) = trace.ids().unwrap();
    assert_eq!(trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_ne!(span_id, "b7ad6b7169203331", "the root is a new span");
    let call = trace.child("chat m", SpanKind::Client, Vec::new());
    let sent = call.traceparent().unwrap();
    let (_, call_span) = call.ids().unwrap();
    assert_eq!(
        sent,
        format!("00-0af7651916cd43dd8448eb211c80319c-{call_span}-01")
    );
}

#[test]
fn a_malformed_traceparent_starts_a_new_trace() {
    let t = on();
    let trace = t.request("POST", "/v1/completions", &headers("00-zz-11-01"));
    let (trace_id, _) = trace.ids().unwrap();
    assert_eq!(trace_id.len(), 32);
    assert_ne!(trace_id, "00000000000000000000000000000000");
}

/// Telemetry that records every sampled span into a queue the test reads.
fn recording(ratio: f64) -> (Telemetry, tokio::sync::mpsc::Receiver<SpanRecord>) {
    let (queue, spans) = export::SpanQueue::for_tests(64);
    let shared = Shared {
        sampling_ratio: ratio,
        record_content: false,
        queue: Some(queue),
    };
    let telemetry = Telemetry {
        shared: Some(Arc::new(shared)),
    };
    (telemetry, spans)
}

fn drain(spans: &mut tokio::sync::mpsc::Receiver<SpanRecord>) -> Vec<SpanRecord> {
    std::iter::from_fn(|| spans.try_recv().ok()).collect()
}

#[test]
fn spans_end_into_the_queue_under_their_parents() {
    let (t, mut spans) = recording(1.0);
    let root = t.request(
        "POST",
        "/v1/chat/completions",
        &headers("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    );
    {
        let mut auth = root.stage(semconv::stage::AUTH);
        auth.set(KeyValue::new("k", 1));
        auth.fail("401", "no key");
    }
    let call = root.child("chat m", SpanKind::Client, vec![KeyValue::new("a", "b")]);
    let start = SystemTime::now();
    call.span_between(
        "prefill",
        start,
        start + std::time::Duration::from_millis(2),
        Vec::new(),
    );
    call.set(KeyValue::new("late", true));
    drop(call);
    root.set(KeyValue::new(semconv::HTTP_RESPONSE_STATUS_CODE, 200_i64));
    root.end();
    root.set(KeyValue::new("after the end", 1));
    root.end();

    let ended = drain(&mut spans);
    let names: Vec<&str> = ended.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            semconv::stage::AUTH,
            "prefill",
            "chat m",
            "POST /v1/chat/completions"
        ]
    );
    let [auth, prefill, call, root] = ended.as_slice() else {
        unreachable!()
    };
    assert_eq!(
        root.parent_span_id,
        Some([0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31])
    );
    assert!(root.parent_is_remote);
    assert_eq!(root.trace_id[..2], [0x0a, 0xf7]);
    assert_eq!(auth.parent_span_id, Some(root.span_id));
    assert_eq!(call.parent_span_id, Some(root.span_id));
    assert_eq!(prefill.parent_span_id, Some(call.span_id));
    assert!(!call.parent_is_remote);
    assert_eq!(auth.error.as_deref(), Some("no key"));
    assert_eq!(auth.attributes.len(), 2, "k and error.type");
    assert_eq!(prefill.end_unix_nano - prefill.start_unix_nano, 2_000_000);
    assert_eq!(call.attributes.len(), 2, "a and late");
    assert!(root
        .attributes
        .iter()
        .all(|a| a.key.as_str() != "after the end"));
    assert!(root.end_unix_nano >= root.start_unix_nano);
}

#[test]
fn an_unsampled_trace_records_nothing_and_still_propagates() {
    let (t, mut spans) = recording(0.0);
    let root = t.request("POST", "/v1/completions", &HeaderMap::new());
    let stage = root.stage(semconv::stage::AUTH);
    assert!(!stage.is_on());
    drop(stage);
    let call = root.child("chat m", SpanKind::Client, Vec::new());
    let sent = call.traceparent().unwrap();
    assert!(sent.ends_with("-00"), "{sent}");
    drop(call);
    drop(root);
    assert!(drain(&mut spans).is_empty());

    // A client's sampled flag wins over the ratio.
    let root = t.request(
        "POST",
        "/v1/completions",
        &headers("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    );
    drop(root.stage(semconv::stage::AUTH));
    drop(root);
    assert_eq!(drain(&mut spans).len(), 2);
}

#[test]
fn the_last_clone_dropped_ends_the_span() {
    let (t, mut spans) = recording(1.0);
    let root = t.request("GET", "", &HeaderMap::new());
    let clone = root.clone();
    drop(root);
    assert!(drain(&mut spans).is_empty());
    drop(clone);
    let ended = drain(&mut spans);
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].name, "GET");
    assert_eq!(ended[0].kind, SpanKind::Server);
}

#[test]
fn off_is_a_no_op() {
    let trace = Telemetry::default().request("POST", "/v1/x", &HeaderMap::new());
    assert!(!trace.is_on());
    assert!(trace.traceparent().is_none());
    let mut stage = trace.stage(semconv::stage::AUTH);
    stage.set(KeyValue::new("k", 1));
    assert!(!trace.records_content());
}

#[test]
fn one_wall_clock_keeps_gaps_between_instants_exact() {
    let clock = WallClock::now();
    let a = Instant::now();
    let b = a + std::time::Duration::from_millis(5);
    let before = a - std::time::Duration::from_millis(3);
    let gap = clock.at(b).duration_since(clock.at(a)).unwrap();
    assert_eq!(gap, std::time::Duration::from_millis(5));
    let gap = clock.at(a).duration_since(clock.at(before)).unwrap();
    assert_eq!(gap, std::time::Duration::from_millis(3));
    assert_eq!(clock.at(a), clock.at(a));
}
