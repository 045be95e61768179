//! The in-flight caps end to end: the real `sluice` binary in front of a
//! slow fake upstream. A deployment at its `max_concurrency` hands a
//! newcomer to the route's next deployment, or answers 429 with
//! `Retry-After` when there is none; `[server] max_in_flight` refuses a
//! request past it with 429 while a stream still holds its slot.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::fakes::{self, FakeServer, Fault, DEFAULT_REPLY};
use sluice_tests::Server;

use crate::common::{get, http_client, post, sse_events};
use crate::start_server;

fn provider(name: &str, fake: &FakeServer) -> String {
    format!(
        "[[providers]]\nkind = \"openai\"\nname = \"{name}\"\nbase_url = \"{}/v1\"\n",
        fake.base_url()
    )
}

fn deployment(name: &str, priority: u32, extra: &str) -> String {
    format!(
        "[[routes.deployments]]\nname = \"{name}\"\nprovider = \"{name}\"\n\
         upstream_model = \"up-{name}\"\npriority = {priority}\n{extra}\n"
    )
}

fn chat(stream: bool) -> Value {
    json!({
        "model": "chat",
        "messages": [{"role": "user", "content": "Say hello slowly"}],
        "max_tokens": 32,
        "stream": stream,
    })
}

/// Opens a streamed chat request and returns once its headers arrived
/// (the upstream's first chunk is in): the stream holds its slots until
/// its body is read to the end.
async fn open_stream(server: &Server) -> reqwest::Response {
    let resp = http_client()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .header("content-type", "application/json")
        .body(chat(true).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

/// Reads a held stream to its end and checks it was a whole answer.
async fn finish_stream(resp: reqwest::Response) {
    let body = resp.text().await.unwrap();
    let events = sse_events(&body);
    let text: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, DEFAULT_REPLY);
}

fn slow() -> Fault {
    Fault::SlowDrip {
        every: Duration::from_millis(150),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_at_its_cap_answers_429_with_retry_after_when_no_other_is_left() {
    let fake = fakes::openai::start(None).await;
    fake.control.set_fault(Some(slow()));
    let config = format!(
        "{}\n[[routes]]\nmodel = \"chat\"\n{}",
        provider("only", &fake),
        deployment("only", 0, "max_concurrency = 1"),
    );
    let server = start_server(config, &[]).await;

    let held = open_stream(&server).await;
    let reply = post(&server, "/v1/chat/completions", &chat(false)).await;
    let err = reply.expect_error(429);
    assert_eq!(err["type"], "rate_limit_error");
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert!(
        reply.headers.contains_key("retry-after"),
        "{:?}",
        reply.headers
    );
    assert_eq!(
        fake.control.requests(),
        1,
        "the refused request was never sent"
    );

    finish_stream(held).await;
    let reply = post(&server, "/v1/chat/completions", &chat(false)).await;
    assert_eq!(reply.status, 200, "the slot is free again: {}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_at_its_cap_hands_the_request_to_the_next_one() {
    let (busy, spare) = (
        fakes::openai::start(None).await,
        fakes::openai::start(None).await,
    );
    busy.control.set_fault(Some(slow()));
    let config = format!(
        "{}{}\n[[routes]]\nmodel = \"chat\"\n{}{}",
        provider("busy", &busy),
        provider("spare", &spare),
        deployment("busy", 0, "max_concurrency = 1"),
        deployment("spare", 1, ""),
    );
    let server = start_server(config, &[]).await;

    let held = open_stream(&server).await;
    let reply = post(&server, "/v1/chat/completions", &chat(false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.headers["x-sluice-deployment"], "spare");
    assert_eq!((busy.control.requests(), spare.control.requests()), (1, 1));
    finish_stream(held).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_requests_past_max_in_flight_until_a_stream_ends() {
    let fake = fakes::openai::start(None).await;
    fake.control.set_fault(Some(slow()));
    let config = format!(
        "[server]\nmax_in_flight = 1\n\n{}\n[[routes]]\nmodel = \"chat\"\n{}",
        provider("only", &fake),
        deployment("only", 0, ""),
    );
    let server = start_server(config, &[]).await;

    let held = open_stream(&server).await;
    let reply = post(&server, "/v1/chat/completions", &chat(false)).await;
    let err = reply.expect_error(429);
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert!(
        err["message"].as_str().unwrap().contains("The server"),
        "{err}"
    );
    assert_eq!(reply.headers["retry-after"], "1");
    // Probes are not API requests: they never count against the cap.
    assert_eq!(get(&server, "/health", None).await.status, 200);
    assert_eq!(get(&server, "/ready", None).await.status, 200);
    assert_eq!(fake.control.requests(), 1);

    finish_stream(held).await;
    let reply = post(&server, "/v1/chat/completions", &chat(false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}
