//! An in-process OTLP/gRPC trace receiver: a real tonic server on loopback
//! that keeps every span it is sent, so a test can read the trace a request
//! left behind, as a collector would have received it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;

/// One received span, flattened for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub name: String,
    /// Hex, as in a `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root without a remote parent.
    pub parent_span_id: String,
    /// OTLP's enum: 1 internal, 2 server, 3 client.
    pub kind: i32,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: HashMap<String, AttrValue>,
    /// The `service.name` of the resource that sent it.
    pub service_name: Option<String>,
    /// OTLP status code: 2 is error.
    pub status_code: i32,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    Strings(Vec<String>),
    Other,
}

impl AttrValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.get(key)
    }

    pub fn str_attr(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(AttrValue::as_str)
    }
}

#[derive(Default)]
struct Collected {
    spans: Mutex<Vec<ReceivedSpan>>,
    exports: Mutex<usize>,
}

/// The running receiver; stops when dropped.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    collected: Arc<Collected>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Service(Arc<Collected>);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans.resource.as_ref().and_then(|r| {
                r.attributes
                    .iter()
                    .find(|kv| kv.key == "service.name")
                    .and_then(
                        |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(AnyValue::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        },
                    )
            });
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(flatten(span, service_name.clone()));
                }
            }
        }
        if let Ok(mut spans) = self.0.spans.lock() {
            spans.extend(received);
        }
        if let Ok(mut n) = self.0.exports.lock() {
            *n += 1;
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(v: Option<AnyValue>) -> AttrValue {
    match v {
        Some(AnyValue::StringValue(s)) => AttrValue::Str(s),
        Some(AnyValue::IntValue(i)) => AttrValue::Int(i),
        Some(AnyValue::DoubleValue(d)) => AttrValue::Double(d),
        Some(AnyValue::BoolValue(b)) => AttrValue::Bool(b),
        Some(AnyValue::ArrayValue(a)) => AttrValue::Strings(
            a.values
                .into_iter()
                .filter_map(|v| match v.value {
                    Some(AnyValue::StringValue(s)) => Some(s),
                    _ => None,
                })
                .collect(),
        ),
        _ => AttrValue::Other,
    }
}

fn flatten(span: Span, service_name: Option<String>) -> ReceivedSpan {
    ReceivedSpan {
        name: span.name,
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: hex(&span.parent_span_id),
        kind: span.kind,
        start_unix_nano: span.start_time_unix_nano,
        end_unix_nano: span.end_time_unix_nano,
        attributes: span
            .attributes
            .into_iter()
            .map(|kv| (kv.key, value(kv.value.and_then(|v| v.value))))
            .collect(),
        service_name,
        status_code: span.status.map_or(0, |s| s.code),
    }
}

impl OtlpReceiver {
    /// Starts on a free loopback port (inside a tokio runtime).
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("local addr");
        let collected = Arc::new(Collected::default());
        let service = TraceServiceServer::new(Service(collected.clone()));
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            addr,
            collected,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`, for `[telemetry] endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collected
            .spans
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Export calls received so far.
    pub fn exports(&self) -> usize {
        self.collected.exports.lock().map(|n| *n).unwrap_or(0)
    }

    /// The spans of `trace_id` once `done` says they are all there (polled
    /// until `limit`; whatever arrived by then otherwise).
    pub async fn trace(
        &self,
        trace_id: &str,
        limit: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let started = Instant::now();
        loop {
            let spans: Vec<ReceivedSpan> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if done(&spans) || started.elapsed() > limit {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
