//! The root span around a `/v1` request: opened before auth (so auth is a
//! stage of it), ended when the response *body* ends, so a streamed
//! answer's span covers its last byte, not only its headers.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use opentelemetry::KeyValue;

use super::{semconv, Telemetry, Trace};

/// The routes whose root span is named after them; other paths (ids in
/// them) get the method alone, as HTTP's conventions ask for a route that
/// is not known.
const NAMED_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
    "/v1/embeddings",
    "/v1/moderations",
    "/v1/models",
];

/// Whether a request gets a trace: the API's, not probes or scrapes.
pub fn is_traced(path: &str) -> bool {
    path.starts_with("/v1/")
}

/// Opens the root span of `request` and puts its [`Trace`] in the
/// request's extensions, where auth and the [`crate::telemetry::Trace`]
/// readers find it.
pub fn open(telemetry: &Telemetry, request: &mut Request) -> Trace {
    let path = request.uri().path();
    let route = NAMED_ROUTES.iter().find(|r| **r == path).copied();
    let trace = telemetry.request(
        request.method().as_str(),
        route.unwrap_or(""),
        request.headers(),
    );
    trace.set(KeyValue::new(semconv::URL_PATH, path.to_string()));
    request.extensions_mut().insert(trace.clone());
    trace
}

/// Stamps the status on the root span and ends it with the body.
pub fn close(trace: Trace, response: Response) -> Response {
    if !trace.is_on() {
        return response;
    }
    let status = response.status();
    trace.set(KeyValue::new(
        semconv::HTTP_RESPONSE_STATUS_CODE,
        i64::from(status.as_u16()),
    ));
    if status.is_server_error() {
        trace.fail(status.as_str(), status.to_string());
    }
    response.map(|body| {
        Body::new(TracedBody {
            body,
            trace: Some(trace),
        })
    })
}

/// A response body that ends its request's root span when it is done.
struct TracedBody {
    body: Body,
    trace: Option<Trace>,
}

impl TracedBody {
    fn end(&mut self) {
        if let Some(trace) = self.trace.take() {
            trace.end();
        }
    }
}

impl HttpBody for TracedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        // Both fields are Unpin (the body is boxed): no projection needed.
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.end(),
            Poll::Ready(Some(Err(e))) => {
                if let Some(trace) = &this.trace {
                    trace.fail("body", e.to_string());
                }
                this.end();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        // The client went away mid-answer: the span still ends (now).
        self.end();
    }
}
