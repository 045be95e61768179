//! The upstream providers against the fake upstreams (real HTTP on
//! loopback), called directly through the gateway library: text and usage
//! mapping for each provider streamed and whole, every injected failure, the
//! retry bound, `Retry-After`, the circuit breaker, and GigaChat's
//! single-flight token exchange. This file holds the shared helpers and the
//! mapping tests; [`failures`] the injected failures and the breaker,
//! [`gigachat_tokens`] the token exchange. Two modules start the real
//! binary in front of the fakes: [`content_filter`] (each provider's filter
//! reaches the client and is never cached), [`in_flight`] (the
//! deployment and server in-flight caps) and [`tool_calls`] (tools through
//! every provider, capability routing, cached calls, the Python SDK).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;
mod content_filter;
mod failures;
mod gigachat_tokens;
mod in_flight;
mod tool_calls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_gateway::answer::{collect, Answer, Step};
use sluice_gateway::providers::{
    build, BreakerState, Provider, ProviderConfig, ProviderError, ProviderRequest, Resilience,
    ResilienceConfig, TimeoutPhase,
};
use sluice_gateway::validate::Sampling;
use sluice_models::ChatMessage;
use sluice_runtime::FinishReason;
use sluice_tests::fakes::{self, word_chunks, Fault, DEFAULT_REPLY};

const OPENAI_KEY: &str = "sk-fake-openai-key-0123456789";
const GIGACHAT_KEY: &str = "ZmFrZS1jbGllbnQ6ZmFrZS1zZWNyZXQ=";
const YANDEX_KEY: &str = "AQVN-fake-yandex-key";
const FOLDER: &str = "b1gfakefolder";

fn sampling() -> Sampling {
    Sampling {
        max_tokens: None,
        temperature: 0.7,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repetition_penalty: 1.0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        seed: None,
        stop_token_ids: Vec::new(),
        stop_strings: Vec::new(),
        ignore_eos: false,
        logprobs: None,
        logit_bias: Vec::new(),
        constraint: None,
    }
}

fn request(model: &str, stream: bool) -> ProviderRequest {
    ProviderRequest {
        upstream_model: model.into(),
        messages: vec![
            ChatMessage::text("system", "You are terse."),
            ChatMessage::text("user", "Say hello to me"),
        ],
        sampling: sampling(),
        n: 1,
        stream,
        tools: None,
        traceparent: None,
    }
}

/// Words in the request's messages: how the fakes count prompt tokens.
const PROMPT_WORDS: usize = 7;

struct KeyFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn key_file(secret: &str) -> KeyFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    KeyFile { _dir: dir, path }
}

fn quick(max_attempts: u32) -> ResilienceConfig {
    ResilienceConfig {
        connect_timeout_ms: 1_000,
        first_byte_timeout_ms: 5_000,
        between_chunks_timeout_ms: 5_000,
        total_timeout_ms: 20_000,
        max_attempts,
        backoff_base_ms: 1,
        backoff_max_ms: 5,
        max_retry_after_ms: 1_000,
        breaker_failures: 100,
        breaker_cooldown_ms: 60_000,
    }
}

fn openai_config(fake: &fakes::FakeServer, key: &KeyFile) -> ProviderConfig {
    ProviderConfig::Openai {
        name: "fake-openai".into(),
        base_url: format!("{}/v1", fake.base_url()),
        api_key_env: None,
        api_key_file: Some(key.path.clone()),
        headers: [("OpenAI-Organization".to_string(), "org-fake".to_string())].into(),
        dialect: Default::default(),
        resilience: quick(3),
    }
}

async fn openai() -> (fakes::FakeServer, Arc<dyn Provider>, KeyFile) {
    let fake = fakes::openai::start(Some(OPENAI_KEY)).await;
    let key = key_file(OPENAI_KEY);
    let provider = build(&openai_config(&fake, &key)).unwrap();
    (fake, provider, key)
}

fn gigachat_config(
    fake: &fakes::gigachat::GigaChatFake,
    key: &KeyFile,
    margin_ms: u64,
) -> ProviderConfig {
    ProviderConfig::Gigachat {
        name: "fake-gigachat".into(),
        base_url: Some(fake.server.base_url()),
        oauth_url: Some(fake.oauth_url()),
        auth_key_env: None,
        auth_key_file: Some(key.path.clone()),
        scope: "GIGACHAT_API_PERS".into(),
        ca_bundle: None,
        token_refresh_margin_ms: Some(margin_ms),
        resilience: quick(1),
    }
}

fn yandex_config(fake: &fakes::FakeServer, key: &KeyFile) -> ProviderConfig {
    ProviderConfig::Yandex {
        name: "fake-yandex".into(),
        base_url: Some(fake.base_url()),
        folder_id: FOLDER.into(),
        api_key_env: None,
        api_key_file: Some(key.path.clone()),
        iam_token_env: None,
        iam_token_file: None,
        resilience: quick(1),
    }
}

/// Every step of an answer, in order.
async fn steps(answer: &mut dyn Answer) -> Vec<Step> {
    let mut out = Vec::new();
    while let Some(step) = answer.next().await {
        out.push(step);
    }
    out
}

fn token_texts(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Token { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn finish_of(steps: &[Step]) -> Option<FinishReason> {
    steps.iter().find_map(|s| match s {
        Step::Finished { reason, .. } => Some(*reason),
        _ => None,
    })
}

/// Starts `sluice serve` with this config and environment, off the async
/// workers (it blocks until the server is ready, and the fakes must keep
/// answering meanwhile).
async fn start_server(config: String, env: &[(&str, &str)]) -> sluice_tests::Server {
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        sluice_tests::Server::start(sluice_tests::ServerOptions {
            config: Some(config),
            env,
            ..sluice_tests::ServerOptions::default()
        })
    })
    .await
    .unwrap()
}

// ---- text and usage mapping ----

#[tokio::test]
async fn openai_stream_maps_deltas_usage_and_asks_for_usage() {
    let (fake, provider, _key) = openai().await;
    let mut answer = provider.chat(&request("gpt-fake", true)).await.unwrap();
    let steps = steps(answer.as_mut()).await;
    assert_eq!(token_texts(&steps), word_chunks(DEFAULT_REPLY));
    assert_eq!(finish_of(&steps), Some(FinishReason::Stop));
    let usage = answer.usage();
    assert_eq!(usage.prompt_tokens, PROMPT_WORDS);
    assert_eq!(usage.completion_tokens, word_chunks(DEFAULT_REPLY).len());
    let body = fake.control.last_body().unwrap();
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["model"], "gpt-fake");
    assert_eq!(body["messages"][1]["content"], "Say hello to me");
    assert!(
        body.get("top_k").is_none(),
        "neutral extensions are not sent: {body}"
    );
    let headers = fake.control.last_headers().unwrap();
    assert_eq!(headers["openai-organization"], "org-fake");
}

#[tokio::test]
async fn openai_whole_answer_maps_text_usage_and_length() {
    let (fake, provider, _key) = openai().await;
    let mut req = request("gpt-fake", false);
    req.sampling.max_tokens = Some(3);
    req.n = 2;
    let mut answer = provider.chat(&req).await.unwrap();
    let out = collect(answer.as_mut()).await.unwrap();
    assert_eq!(out.len(), 2);
    for choice in &out {
        assert_eq!(choice.text, "Hello from the");
        assert_eq!(choice.finish_reason, Some(FinishReason::Length));
    }
    assert_eq!(answer.usage().completion_tokens, 3);
    let body = fake.control.last_body().unwrap();
    assert_eq!(body["max_tokens"], 3);
    assert!(body.get("stream_options").is_none());
}

#[tokio::test]
async fn openai_wrong_key_is_a_non_retryable_401() {
    let fake = fakes::openai::start(Some(OPENAI_KEY)).await;
    let key = key_file("sk-wrong");
    let provider = build(&openai_config(&fake, &key)).unwrap();
    let resilience = Resilience::new(quick(3));
    let err = resilience
        .chat(provider.as_ref(), &request("gpt-fake", false))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ProviderError::Status { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(fake.control.requests(), 1);
}

#[tokio::test]
async fn gigachat_stream_and_whole_answer_map_text_and_usage() {
    let fake = fakes::gigachat::start(GIGACHAT_KEY).await;
    let key = key_file(GIGACHAT_KEY);
    let provider = build(&gigachat_config(&fake, &key, 60_000)).unwrap();
    assert_eq!(provider.kind(), "gigachat");

    let mut answer = provider.chat(&request("GigaChat", true)).await.unwrap();
    let steps = steps(answer.as_mut()).await;
    assert_eq!(token_texts(&steps).concat(), DEFAULT_REPLY);
    assert_eq!(finish_of(&steps), Some(FinishReason::Stop));
    assert_eq!(answer.usage().prompt_tokens, PROMPT_WORDS);
    assert_eq!(
        answer.usage().completion_tokens,
        word_chunks(DEFAULT_REPLY).len()
    );

    let mut req = request("GigaChat", false);
    req.sampling.max_tokens = Some(2);
    let mut answer = provider.chat(&req).await.unwrap();
    let out = collect(answer.as_mut()).await.unwrap();
    assert_eq!(out[0].text, "Hello from");
    assert_eq!(out[0].finish_reason, Some(FinishReason::Length));
    assert_eq!(answer.usage().completion_tokens, 2);

    assert_eq!(fake.oauth.token_requests(), 1, "the token is reused");
    let rquids = fake.oauth.rquids();
    assert_eq!(rquids.len(), 1);
}

#[tokio::test]
async fn yandex_cumulative_stream_becomes_deltas() {
    let fake = fakes::yandex::start(YANDEX_KEY, FOLDER).await;
    let key = key_file(YANDEX_KEY);
    let provider = build(&yandex_config(&fake, &key)).unwrap();
    let mut answer = provider
        .chat(&request("yandexgpt/latest", true))
        .await
        .unwrap();
    let steps = steps(answer.as_mut()).await;
    // One delta per line, never the cumulative text again.
    assert_eq!(token_texts(&steps), word_chunks(DEFAULT_REPLY));
    assert_eq!(finish_of(&steps), Some(FinishReason::Stop));
    assert_eq!(answer.usage().prompt_tokens, PROMPT_WORDS);
    assert_eq!(
        answer.usage().completion_tokens,
        word_chunks(DEFAULT_REPLY).len()
    );
    let body = fake.control.last_body().unwrap();
    assert_eq!(body["modelUri"], format!("gpt://{FOLDER}/yandexgpt/latest"));
    assert_eq!(body["completionOptions"]["stream"], true);
    assert_eq!(body["messages"][0]["text"], "You are terse.");
}

#[tokio::test]
async fn yandex_whole_answer_maps_truncation_to_length() {
    let fake = fakes::yandex::start(YANDEX_KEY, FOLDER).await;
    let key = key_file(YANDEX_KEY);
    let provider = build(&yandex_config(&fake, &key)).unwrap();
    let mut req = request("yandexgpt-lite/latest", false);
    req.sampling.max_tokens = Some(4);
    let mut answer = provider.chat(&req).await.unwrap();
    let out = collect(answer.as_mut()).await.unwrap();
    assert_eq!(out[0].text, "Hello from the fake");
    assert_eq!(out[0].finish_reason, Some(FinishReason::Length));
    assert_eq!(answer.usage().completion_tokens, 4);
    assert_eq!(
        fake.control.last_body().unwrap()["completionOptions"]["maxTokens"],
        "4"
    );
}

#[tokio::test]
async fn unsupported_parameters_are_refused_before_any_request() {
    let (fake, provider, _key) = openai().await;
    let mut req = request("gpt-fake", false);
    req.sampling.stop_token_ids = vec![2];
    let err = provider.chat(&req).await.err().unwrap();
    assert!(
        matches!(err, ProviderError::Unsupported { ref param, .. } if param == "stop_token_ids")
    );
    assert_eq!(err.to_api_error().status(), 400);
    assert_eq!(fake.control.requests(), 0);

    let yfake = fakes::yandex::start(YANDEX_KEY, FOLDER).await;
    let key = key_file(YANDEX_KEY);
    let yandex = build(&yandex_config(&yfake, &key)).unwrap();
    let mut req = request("yandexgpt/latest", false);
    req.n = 2;
    let err = yandex.chat(&req).await.err().unwrap();
    assert!(matches!(err, ProviderError::Unsupported { ref param, .. } if param == "n"));
    assert_eq!(yfake.control.requests(), 0);
}

// ---- secrets and config ----

#[tokio::test]
async fn secrets_never_appear_in_debug_output() {
    use sluice_gateway::providers::{
        gigachat::GigaChat, openai_compat::OpenAiCompat, yandex::Yandex,
    };
    let ofake = fakes::openai::start(Some(OPENAI_KEY)).await;
    let okey = key_file(OPENAI_KEY);
    let openai = OpenAiCompat::from_config(&openai_config(&ofake, &okey)).unwrap();
    let gfake = fakes::gigachat::start(GIGACHAT_KEY).await;
    let gkey = key_file(GIGACHAT_KEY);
    let gigachat = GigaChat::from_config(&gigachat_config(&gfake, &gkey, 60_000)).unwrap();
    let yfake = fakes::yandex::start(YANDEX_KEY, FOLDER).await;
    let ykey = key_file(YANDEX_KEY);
    let yandex = Yandex::from_config(&yandex_config(&yfake, &ykey)).unwrap();
    for (text, secret) in [
        (format!("{openai:?}"), OPENAI_KEY),
        (format!("{gigachat:?}"), GIGACHAT_KEY),
        (format!("{yandex:?}"), YANDEX_KEY),
    ] {
        assert!(text.contains("redacted"), "{text}");
        assert!(!text.contains(secret), "{text}");
    }
}

#[test]
fn a_missing_key_variable_is_a_config_error_naming_it() {
    let cfg = ProviderConfig::Yandex {
        name: "y".into(),
        base_url: None,
        folder_id: "f".into(),
        api_key_env: Some("SLUICE_TEST_SURELY_UNSET_VARIABLE".into()),
        api_key_file: None,
        iam_token_env: None,
        iam_token_file: None,
        resilience: ResilienceConfig::default(),
    };
    match build(&cfg) {
        Err(ProviderError::Config(message)) => {
            assert!(
                message.contains("SLUICE_TEST_SURELY_UNSET_VARIABLE"),
                "{message}"
            )
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("built without a key"),
    }
}

#[test]
fn a_ca_bundle_without_certificates_is_a_config_error() {
    let not_pem = key_file("this is not a certificate");
    let cfg = ProviderConfig::Gigachat {
        name: "g".into(),
        base_url: None,
        oauth_url: None,
        auth_key_env: None,
        auth_key_file: Some(not_pem.path.clone()),
        scope: "GIGACHAT_API_B2B".into(),
        ca_bundle: Some(not_pem.path.clone()),
        token_refresh_margin_ms: None,
        resilience: ResilienceConfig::default(),
    };
    match build(&cfg) {
        Err(ProviderError::Config(message)) => assert!(message.contains("ca_bundle"), "{message}"),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("built with a CA bundle holding no certificate"),
    }
}

#[tokio::test]
async fn yandex_iam_token_is_sent_as_bearer() {
    let fake = fakes::yandex::start(YANDEX_KEY, FOLDER).await;
    let token = key_file("t1.fake-iam-token");
    let provider = build(&ProviderConfig::Yandex {
        name: "y".into(),
        base_url: Some(fake.base_url()),
        folder_id: FOLDER.into(),
        api_key_env: None,
        api_key_file: None,
        iam_token_env: None,
        iam_token_file: Some(token.path.clone()),
        resilience: quick(1),
    })
    .unwrap();
    // The fake accepts only its API key: the refusal shows what was sent.
    let err = provider
        .chat(&request("yandexgpt/latest", false))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ProviderError::Status { status: 401, .. }),
        "{err:?}"
    );
    let headers = fake.control.last_headers().unwrap();
    assert_eq!(headers["authorization"], "Bearer t1.fake-iam-token");
    assert_eq!(headers["x-folder-id"], FOLDER);
}
