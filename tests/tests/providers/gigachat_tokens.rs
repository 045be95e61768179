//! GigaChat's token exchange: one fetch for many concurrent requests, and
//! one refresh on expiry or revocation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

// ---- GigaChat tokens ----

async fn concurrent_chats(provider: &Arc<dyn Provider>, count: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let provider = provider.clone();
        tasks.spawn(async move {
            let mut answer = provider.chat(&request("GigaChat", false)).await?;
            collect(answer.as_mut())
                .await
                .map_err(|e| ProviderError::Transport(e.to_string()))
        });
    }
    while let Some(result) = tasks.join_next().await {
        let out = result.unwrap().unwrap();
        assert_eq!(out[0].text, DEFAULT_REPLY);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_fetch_one_token() {
    let fake = fakes::gigachat::start(GIGACHAT_KEY).await;
    let key = key_file(GIGACHAT_KEY);
    let provider = build(&gigachat_config(&fake, &key, 60_000)).unwrap();
    concurrent_chats(&provider, 50).await;
    assert_eq!(fake.oauth.token_requests(), 1);
    assert_eq!(fake.control().requests(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_is_refreshed_once_for_all_concurrent_requests() {
    let fake = fakes::gigachat::start(GIGACHAT_KEY).await;
    let key = key_file(GIGACHAT_KEY);
    let provider = build(&gigachat_config(&fake, &key, 60_000)).unwrap();
    concurrent_chats(&provider, 1).await;
    fake.oauth.expire_tokens();
    concurrent_chats(&provider, 50).await;
    assert_eq!(fake.oauth.token_requests(), 2);
    let rquids = fake.oauth.rquids();
    assert_eq!(rquids.len(), 2);
    assert_ne!(rquids[0], rquids[1], "a fresh RqUID per exchange");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_near_expiry_is_refreshed_before_use_once() {
    let fake = fakes::gigachat::start(GIGACHAT_KEY).await;
    fake.oauth.set_token_lifetime(Duration::from_millis(3_000));
    let key = key_file(GIGACHAT_KEY);
    // Refresh when under two seconds are left: a token is good for one
    // second, which the second batch has to fit in.
    let provider = build(&gigachat_config(&fake, &key, 2_000)).unwrap();
    concurrent_chats(&provider, 1).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    concurrent_chats(&provider, 30).await;
    assert_eq!(fake.oauth.token_requests(), 2);
    // Refreshed ahead of expiry: the chat API never saw a stale token.
    assert_eq!(fake.control().requests(), 31);
}

#[tokio::test]
async fn an_expired_token_fault_is_recovered_with_one_refresh() {
    let fake = fakes::gigachat::start(GIGACHAT_KEY).await;
    let key = key_file(GIGACHAT_KEY);
    let provider = build(&gigachat_config(&fake, &key, 60_000)).unwrap();
    concurrent_chats(&provider, 1).await;
    fake.control().fail_next(1, Fault::ExpiredToken);
    concurrent_chats(&provider, 1).await;
    assert_eq!(fake.oauth.token_requests(), 2);
    assert_eq!(fake.control().requests(), 3, "one 401, then the retry");
}

#[tokio::test]
async fn a_wrong_authorization_key_is_an_auth_error() {
    let fake = fakes::gigachat::start(GIGACHAT_KEY).await;
    let key = key_file("bm90LXRoZS1rZXk=");
    let provider = build(&gigachat_config(&fake, &key, 60_000)).unwrap();
    let err = provider
        .chat(&request("GigaChat", false))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ProviderError::Auth(_)), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(fake.control().requests(), 0);
}
