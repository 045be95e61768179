//! The server-wide cap on API requests in flight (`[server] max_in_flight`),
//! as an axum middleware: a request that finds every slot taken gets 429
//! with `Retry-After` at once, before any work is done for it.
//!
//! Design choice: a slot is a semaphore permit taken with `try_acquire`
//! (never awaited: queueing here would only hide the overload from the
//! client, which is better placed to back off), and it is held by the
//! response *body*, not by the handler: a streamed answer occupies the
//! server until its last byte is written, long after its headers left. The
//! permit is given back when the body ends, fails, or is dropped (the client
//! went away).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use metrics::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// What a refused client is told to wait: slots free as answers finish,
/// which at this load is a matter of seconds, not minutes.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The shared slots; cheap to clone (one per router).
#[derive(Clone)]
pub struct InFlightLimit {
    permits: Arc<Semaphore>,
    limit: usize,
    refused: Counter,
}

impl InFlightLimit {
    /// At most `limit` requests at once (clamped to what a semaphore can count).
    pub fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            refused: metrics::counter!(crate::metrics::catalog::REJECTED, "reason" => "server_in_flight"),
        }
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

/// The middleware: `.route_layer(middleware::from_fn_with_state(limit, inflight::limit_in_flight))`.
pub async fn limit_in_flight(
    State(limit): State<InFlightLimit>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(permit) = limit.permits.clone().try_acquire_owned() else {
        limit.refused.increment(1);
        return ApiError::InFlightLimit {
            what: "The server".into(),
            limit: limit.limit,
            retry_after: RETRY_AFTER,
        }
        .into_response();
    };
    next.run(request).await.map(|body| {
        Body::new(PermitBody {
            body,
            permit: Some(permit),
        })
    })
}

/// A response body that holds its request's slot until it is done.
struct PermitBody {
    body: Body,
    permit: Option<OwnedSemaphorePermit>,
}

impl HttpBody for PermitBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        // Both fields are Unpin (the body is boxed), so no projection is needed.
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        // The end, or a failure that ends it: the slot is free before the
        // connection gets around to dropping the body.
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.permit = None;
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    use axum::Router;
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    /// A router whose one route streams whatever is sent on the returned
    /// channel and ends when it closes: an answer that is still streaming.
    fn streaming_app(limit: &InFlightLimit) -> (Router, mpsc::Sender<mpsc::Receiver<Bytes>>) {
        let (bodies_tx, bodies_rx) = mpsc::channel::<mpsc::Receiver<Bytes>>(4);
        let bodies = Arc::new(tokio::sync::Mutex::new(bodies_rx));
        let app = Router::new()
            .route(
                "/stream",
                get(move || {
                    let bodies = bodies.clone();
                    async move {
                        let rx = bodies.lock().await.recv().await.unwrap();
                        Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
                            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
                        }))
                    }
                }),
            )
            .route("/whole", get(|| async { "done" }))
            .layer(axum::middleware::from_fn_with_state(
                limit.clone(),
                limit_in_flight,
            ));
        (app, bodies_tx)
    }

    fn get_req(path: &str) -> Request {
        Request::builder().uri(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_streaming_answer_holds_its_slot_until_its_last_byte() {
        let limit = InFlightLimit::new(1);
        let (app, bodies) = streaming_app(&limit);
        let (chunks, rx) = mpsc::channel(4);
        bodies.send(rx).await.unwrap();

        let first = app.clone().oneshot(get_req("/stream")).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        // Headers are out, the body is not: the slot is still taken.
        assert_eq!(limit.in_flight(), 1);
        let refused = app.clone().oneshot(get_req("/whole")).await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(refused.into_body(), usize::MAX)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");

        chunks.send(Bytes::from_static(b"part")).await.unwrap();
        drop(chunks);
        let streamed = axum::body::to_bytes(first.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&streamed[..], b"part");
        assert_eq!(limit.in_flight(), 0);
        let after = app.oneshot(get_req("/whole")).await.unwrap();
        assert_eq!(after.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_dropped_unfinished_answer_frees_its_slot() {
        let limit = InFlightLimit::new(1);
        let (app, bodies) = streaming_app(&limit);
        let (_chunks, rx) = mpsc::channel(4);
        bodies.send(rx).await.unwrap();
        let first = app.clone().oneshot(get_req("/stream")).await.unwrap();
        assert_eq!(limit.in_flight(), 1);
        // The client went away mid-stream.
        drop(first);
        assert_eq!(limit.in_flight(), 0);
        let after = app.oneshot(get_req("/whole")).await.unwrap();
        assert_eq!(after.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn whole_answers_free_their_slot_as_they_are_read() {
        let limit = InFlightLimit::new(2);
        let (app, _bodies) = streaming_app(&limit);
        for _ in 0..5 {
            let r = app.clone().oneshot(get_req("/whole")).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let body = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap();
            assert_eq!(&body[..], b"done");
        }
        assert_eq!(limit.in_flight(), 0);
    }
}
