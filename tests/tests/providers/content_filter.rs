//! Content filtering end to end, for each provider: the real `sluice`
//! binary with the cache on, in front of a fake upstream whose content
//! filter ends the answer in its own wire format (OpenAI's
//! `content_filter`, GigaChat's `blacklist`, YandexGPT's
//! `ALTERNATIVE_STATUS_CONTENT_FILTER`). The client must see
//! `finish_reason: "content_filter"`, whole and streamed, and the answer
//! must never be served from the cache; the same request unfiltered is
//! cached, which shows the cache was there to hit.

use serde_json::{json, Value};
use sluice_tests::fakes::{self, FakeControl, Fault, FILTERED_WORDS, GIGACHAT_BLACKLIST_REPLY};
use sluice_tests::Server;

use crate::common::{post, sse_events, Reply};
use crate::{start_server, FOLDER, GIGACHAT_KEY, YANDEX_KEY};

fn config(provider: &str) -> String {
    format!(
        r#"
[cache]
enabled = true

{provider}
[[routes]]
model = "chat"
[[routes.deployments]]
name = "upstream"
provider = "up"
upstream_model = "upstream-model"
"#
    )
}

fn body(stream: bool) -> Value {
    json!({
        "model": "chat",
        "messages": [{"role": "user", "content": "Tell me something you should not"}],
        "temperature": 0,
        "max_tokens": 32,
        "stream": stream,
    })
}

fn cache_header(reply: &Reply) -> &str {
    reply
        .headers
        .get("x-sluice-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
}

/// The text and finish reason of a whole answer.
fn whole(reply: &Reply) -> (String, String) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v = reply.json();
    let choice = &v["choices"][0];
    (
        choice["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        choice["finish_reason"].as_str().unwrap_or("(none)").into(),
    )
}

/// The text and finish reason of a streamed answer.
fn streamed(reply: &Reply) -> (String, String) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let events = sse_events(&reply.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut text = String::new();
    let mut finish = String::from("(none)");
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert!(v.get("error").is_none(), "error event: {e}");
        let choice = &v["choices"][0];
        if let Some(t) = choice["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (text, finish)
}

/// Two identical filtered requests, whole then streamed: each reaches the
/// upstream and reports `content_filter`; then the unfiltered answer is
/// cached, so the cache would have served the filtered one had it kept it.
async fn filtered_answers_are_reported_and_never_cached(
    server: &Server,
    control: &FakeControl,
    filtered_text: &str,
) {
    control.set_fault(Some(Fault::ContentFilter));
    for stream in [false, true] {
        for attempt in 0..2 {
            let reply = post(server, "/v1/chat/completions", &body(stream)).await;
            let (text, finish) = if stream {
                streamed(&reply)
            } else {
                whole(&reply)
            };
            assert_eq!(
                finish, "content_filter",
                "stream {stream}, attempt {attempt}"
            );
            assert_eq!(text, filtered_text);
            assert_eq!(
                cache_header(&reply),
                "miss",
                "stream {stream}, attempt {attempt}"
            );
        }
    }
    assert_eq!(
        control.requests(),
        4,
        "every filtered request reached the upstream"
    );

    control.set_fault(None);
    let first = post(server, "/v1/chat/completions", &body(false)).await;
    assert_eq!(whole(&first).1, "stop");
    assert_eq!(cache_header(&first), "miss");
    let again = post(server, "/v1/chat/completions", &body(false)).await;
    assert_eq!(whole(&again), whole(&first));
    assert_eq!(
        cache_header(&again),
        "exact",
        "an unfiltered answer is cached"
    );
    assert_eq!(control.requests(), 5);
}

fn first_words(n: usize) -> String {
    fakes::word_chunks(fakes::DEFAULT_REPLY)[..n].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_content_filter_reaches_the_client_and_is_never_cached() {
    let fake = fakes::openai::start(None).await;
    let provider = format!(
        "[[providers]]\nkind = \"openai\"\nname = \"up\"\nbase_url = \"{}/v1\"\n",
        fake.base_url()
    );
    let server = start_server(config(&provider), &[]).await;
    filtered_answers_are_reported_and_never_cached(
        &server,
        &fake.control,
        &first_words(FILTERED_WORDS),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigachat_blacklist_reaches_the_client_as_content_filter_and_is_never_cached() {
    let fake = fakes::gigachat::start(GIGACHAT_KEY).await;
    let provider = format!(
        r#"[[providers]]
kind = "gigachat"
name = "up"
base_url = "{}"
oauth_url = "{}"
auth_key_env = "FAKE_GIGACHAT_KEY"
scope = "GIGACHAT_API_PERS"
"#,
        fake.server.base_url(),
        fake.oauth_url()
    );
    let server = start_server(config(&provider), &[("FAKE_GIGACHAT_KEY", GIGACHAT_KEY)]).await;
    filtered_answers_are_reported_and_never_cached(
        &server,
        fake.control(),
        GIGACHAT_BLACKLIST_REPLY,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yandex_content_filter_status_reaches_the_client_and_is_never_cached() {
    let fake = fakes::yandex::start(YANDEX_KEY, FOLDER).await;
    let provider = format!(
        r#"[[providers]]
kind = "yandex"
name = "up"
base_url = "{}"
folder_id = "{FOLDER}"
api_key_env = "FAKE_YANDEX_KEY"
"#,
        fake.base_url()
    );
    let server = start_server(config(&provider), &[("FAKE_YANDEX_KEY", YANDEX_KEY)]).await;
    filtered_answers_are_reported_and_never_cached(
        &server,
        &fake.control,
        &first_words(FILTERED_WORDS),
    )
    .await;
}
