//! What survives: two servers sharing the store, a restart, and `kill -9`
//! of Redis right after acknowledged appends.

use super::*;

#[tokio::test]
async fn two_servers_share_sessions_and_chaining_survives_a_restart() {
    let url = fresh_postgres_schema("e2e_sessions");
    let redis = RedisKeys::new("pg");
    let extra = format!(
        "[store]\nurl = \"{url}\"\n[sessions]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{}\"\n",
        redis.0
    );
    let a = Server::start(options(&extra));
    let b = Server::start(options(&extra));
    let first = send(
        &a,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(json!("Hi"), json!({}))),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json()["id"].as_str().unwrap().to_string();
    // b chains a's response at once.
    let second = send(
        &b,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(json!("More"), json!({"previous_response_id": first}))),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.body);
    let second = second.json()["id"].as_str().unwrap().to_string();
    // Both stop; a new server (empty Redis prefix is not needed: the store
    // holds everything) chains the chain.
    a.stop();
    b.stop();
    drop(redis);
    let c = Server::start(options(&extra));
    let third = send(
        &c,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(
            json!("Again"),
            json!({"previous_response_id": second}),
        )),
    )
    .await;
    assert_eq!(third.status, 200, "{}", third.body);
    assert_eq!(
        send(&c, "GET", &format!("/v1/responses/{first}"), KEY_A, None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn killing_redis_after_an_acknowledged_append_loses_nothing() {
    let mut redis = OwnRedis::start();
    let s = Server::start(options(&format!(
        "[sessions]\nredis_url = \"redis://127.0.0.1:{}\"\n",
        redis.port
    )));
    let conv = send(&s, "POST", "/v1/conversations", KEY_A, Some(json!({}))).await;
    assert_eq!(conv.status, 200, "{}", conv.body);
    let id = conv.json()["id"].as_str().unwrap().to_string();
    let path = format!("/v1/conversations/{id}/items");
    let mut acknowledged = Vec::new();
    for text in ["one", "two", "three"] {
        let r = send(
            &s,
            "POST",
            &path,
            KEY_A,
            Some(json!({"items": [{"role": "user", "content": text}]})),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        acknowledged.push(r.json()["data"][0]["id"].as_str().unwrap().to_string());
    }
    // Read once, so the copy in Redis is the one being read...
    assert_eq!(send(&s, "GET", &path, KEY_A, None).await.status, 200);
    // ...and Redis dies right after the acknowledgements.
    redis.kill_9();
    let listed = send(&s, "GET", &format!("{path}?order=asc"), KEY_A, None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let ids: Vec<String> = listed.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, acknowledged);
    // Writes go on without Redis, acknowledged only once durable.
    let r = send(
        &s,
        "POST",
        &path,
        KEY_A,
        Some(json!({"items": [{"role": "user", "content": "four"}]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let listed = send(&s, "GET", &path, KEY_A, None).await.json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 4);
}
