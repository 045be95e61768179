//! Injected upstream failures: what each one becomes, the retry bound,
//! `Retry-After`, and the circuit breaker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

// ---- injected failures ----

#[tokio::test]
async fn server_errors_are_retried_up_to_the_bound() {
    let (fake, provider, _key) = openai().await;
    fake.control.set_fault(Some(Fault::ServerError));
    let resilience = Resilience::new(quick(3));
    let err = resilience
        .chat(provider.as_ref(), &request("gpt-fake", true))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ProviderError::Status { status: 500, .. }),
        "{err:?}"
    );
    assert_eq!(fake.control.requests(), 3);
}

#[tokio::test]
async fn a_transient_500_is_retried_into_a_clean_answer() {
    let (fake, provider, _key) = openai().await;
    fake.control.fail_next(2, Fault::ServerError);
    let resilience = Resilience::new(quick(3));
    let mut answer = resilience
        .chat(provider.as_ref(), &request("gpt-fake", false))
        .await
        .unwrap();
    let out = collect(answer.as_mut()).await.unwrap();
    assert_eq!(out[0].text, DEFAULT_REPLY);
    assert_eq!(fake.control.requests(), 3);
}

#[tokio::test]
async fn retry_after_is_honoured_and_an_excessive_one_is_not_waited_for() {
    let (fake, provider, _key) = openai().await;
    let resilience = Resilience::new(quick(3));
    // A short Retry-After: waited for, then the retry succeeds.
    fake.control.fail_next(
        1,
        Fault::TooManyRequests {
            retry_after: "0.05".into(),
        },
    );
    let mut answer = resilience
        .chat(provider.as_ref(), &request("gpt-fake", true))
        .await
        .unwrap();
    assert!(collect(answer.as_mut()).await.is_ok());
    assert_eq!(fake.control.requests(), 2);
    // Longer than max_retry_after: one request, and the 429 with its wait.
    fake.control.fail_next(
        1,
        Fault::TooManyRequests {
            retry_after: "30".into(),
        },
    );
    let err = resilience
        .chat(provider.as_ref(), &request("gpt-fake", true))
        .await
        .err()
        .unwrap();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert!(err.is_retryable());
    assert_eq!(fake.control.requests(), 3);
    assert_eq!(err.to_api_error().status(), 429);
}

#[tokio::test]
async fn a_hang_is_a_first_byte_timeout_retried_to_the_bound() {
    let (fake, provider, _key) = openai().await;
    fake.control.set_fault(Some(Fault::Hang));
    let resilience = Resilience::new(ResilienceConfig {
        first_byte_timeout_ms: 150,
        ..quick(2)
    });
    let err = resilience
        .chat(provider.as_ref(), &request("gpt-fake", true))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            ProviderError::Timeout {
                phase: TimeoutPhase::FirstByte,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(fake.control.requests(), 2);
}

#[tokio::test]
async fn a_reset_after_the_first_chunk_is_a_failed_step_not_a_retry() {
    let (fake, provider, _key) = openai().await;
    fake.control
        .set_fault(Some(Fault::ResetAfter { chunks: 2 }));
    let resilience = Resilience::new(quick(3));
    let mut answer = resilience
        .chat(provider.as_ref(), &request("gpt-fake", true))
        .await
        .unwrap();
    let steps = steps(answer.as_mut()).await;
    assert_eq!(
        token_texts(&steps),
        word_chunks(DEFAULT_REPLY)[..2].to_vec()
    );
    assert!(matches!(steps.last(), Some(Step::Failed(_))), "{steps:?}");
    assert_eq!(fake.control.requests(), 1);
}

#[tokio::test]
async fn a_reset_before_any_content_is_retried() {
    let (fake, provider, _key) = openai().await;
    fake.control.fail_next(1, Fault::ResetAfter { chunks: 0 });
    let resilience = Resilience::new(quick(3));
    let mut answer = resilience
        .chat(provider.as_ref(), &request("gpt-fake", true))
        .await
        .unwrap();
    assert_eq!(
        collect(answer.as_mut()).await.unwrap()[0].text,
        DEFAULT_REPLY
    );
    assert_eq!(fake.control.requests(), 2);
}

#[tokio::test]
async fn malformed_json_is_not_retried() {
    let (fake, provider, _key) = openai().await;
    fake.control.set_fault(Some(Fault::MalformedJson));
    let resilience = Resilience::new(quick(3));
    let err = resilience
        .chat(provider.as_ref(), &request("gpt-fake", false))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ProviderError::Malformed(_)), "{err:?}");
    assert_eq!(fake.control.requests(), 1);

    // Mid-stream, a broken event ends the stream with an error step.
    let mut answer = resilience
        .chat(provider.as_ref(), &request("gpt-fake", true))
        .await
        .unwrap();
    let steps = steps(answer.as_mut()).await;
    assert_eq!(token_texts(&steps).len(), 1);
    assert!(matches!(steps.last(), Some(Step::Failed(_))));
    assert_eq!(fake.control.requests(), 2);
}

#[tokio::test]
async fn malformed_sse_is_a_malformed_error() {
    let (fake, provider, _key) = openai().await;
    fake.control.set_fault(Some(Fault::MalformedSse));
    let resilience = Resilience::new(quick(3));
    let err = resilience
        .chat(provider.as_ref(), &request("gpt-fake", true))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ProviderError::Malformed(_)), "{err:?}");
    assert_eq!(fake.control.requests(), 1);
}

#[tokio::test]
async fn a_slow_drip_within_limits_completes_and_beyond_them_fails_between_chunks() {
    let (fake, provider, _key) = openai().await;
    fake.control.set_fault(Some(Fault::SlowDrip {
        every: Duration::from_millis(5),
    }));
    let patient = Resilience::new(quick(1));
    let mut answer = patient
        .chat(provider.as_ref(), &request("gpt-fake", true))
        .await
        .unwrap();
    assert_eq!(
        collect(answer.as_mut()).await.unwrap()[0].text,
        DEFAULT_REPLY
    );

    fake.control.set_fault(Some(Fault::SlowDrip {
        every: Duration::from_millis(300),
    }));
    let impatient = Resilience::new(ResilienceConfig {
        between_chunks_timeout_ms: 100,
        ..quick(1)
    });
    let mut answer = impatient
        .chat(provider.as_ref(), &request("gpt-fake", true))
        .await
        .unwrap();
    let steps = steps(answer.as_mut()).await;
    match steps.last() {
        Some(Step::Failed(err)) => assert_eq!(err.status(), 504, "{err:?}"),
        other => panic!("expected a timeout step, got {other:?}"),
    }
}

#[tokio::test]
async fn yandex_reset_mid_stream_and_malformed_lines_fail_cleanly() {
    let fake = fakes::yandex::start(YANDEX_KEY, FOLDER).await;
    let key = key_file(YANDEX_KEY);
    let provider = build(&yandex_config(&fake, &key)).unwrap();
    fake.control.fail_next(1, Fault::ResetAfter { chunks: 3 });
    let mut answer = provider
        .chat(&request("yandexgpt/latest", true))
        .await
        .unwrap();
    let steps = steps(answer.as_mut()).await;
    assert_eq!(token_texts(&steps).len(), 3);
    assert!(matches!(steps.last(), Some(Step::Failed(_))));

    fake.control.fail_next(1, Fault::MalformedSse);
    let err = provider
        .chat(&request("yandexgpt/latest", true))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ProviderError::Malformed(_)), "{err:?}");
}

// ---- circuit breaker ----

#[tokio::test]
async fn the_breaker_opens_rejects_fast_and_closes_after_a_good_probe() {
    let (fake, provider, _key) = openai().await;
    let resilience = Resilience::new(ResilienceConfig {
        breaker_failures: 2,
        breaker_cooldown_ms: 200,
        ..quick(1)
    });
    fake.control.set_fault(Some(Fault::ServerError));
    for _ in 0..2 {
        assert!(resilience
            .chat(provider.as_ref(), &request("m", false))
            .await
            .is_err());
    }
    assert_eq!(resilience.breaker().state(), BreakerState::Open);
    let err = resilience
        .chat(provider.as_ref(), &request("m", false))
        .await
        .err()
        .unwrap();
    assert_eq!(err, ProviderError::CircuitOpen);
    assert_eq!(fake.control.requests(), 2, "an open breaker sends nothing");

    // After the cool-down a failed probe reopens it...
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(resilience.breaker().state(), BreakerState::HalfOpen);
    assert!(resilience
        .chat(provider.as_ref(), &request("m", false))
        .await
        .is_err());
    assert_eq!(resilience.breaker().state(), BreakerState::Open);
    assert_eq!(fake.control.requests(), 3);

    // ...and a good one closes it.
    fake.control.set_fault(None);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut answer = resilience
        .chat(provider.as_ref(), &request("m", false))
        .await
        .unwrap();
    assert!(collect(answer.as_mut()).await.is_ok());
    assert_eq!(resilience.breaker().state(), BreakerState::Closed);
    assert_eq!(fake.control.requests(), 4);
}
