//! `/v1/conversations`: concurrent appends and retries; erasing a user's data.

use super::*;

#[tokio::test]
async fn concurrent_conversation_appends_one_wins_and_a_retry_writes_one_row() {
    let shared = shared();
    let s = &shared.server;
    let conv = send(
        s,
        "POST",
        "/v1/conversations",
        KEY_A,
        Some(json!({"metadata": {"k": "v"}})),
    )
    .await;
    assert_eq!(conv.status, 200, "{}", conv.body);
    let version = conv.headers["x-sluice-session-version"]
        .to_str()
        .unwrap()
        .to_string();
    let id = conv.json()["id"].as_str().unwrap().to_string();
    let path = format!("/v1/conversations/{id}/items");
    let body = |text: &str| Some(json!({"items": [{"role": "user", "content": text}]}));
    let if_match = [("if-match", version.as_str())];
    let (a, b) = tokio::join!(
        send_with(s, "POST", &path, KEY_A, body("from a"), &if_match),
        send_with(s, "POST", &path, KEY_A, body("from b"), &if_match),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", a.body, b.body);
    let loser = if a.status == 409 { &a } else { &b };
    assert_eq!(loser.json()["error"]["code"], "conflict");

    // A retried append (same Idempotency-Key) writes one row.
    for _ in 0..2 {
        let r = send_with(
            s,
            "POST",
            &path,
            KEY_A,
            body("once"),
            &[("idempotency-key", "retry-1")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let rows = sqlite_count(
        &shared.store,
        &format!("SELECT COUNT(*) FROM session_items WHERE session_id = '{id}'"),
    )
    .await;
    assert_eq!(rows, 2);
    // A response in the conversation adds its input and output to it.
    let r = send(
        s,
        "POST",
        "/v1/responses",
        KEY_A,
        Some(turn(json!("Hello"), json!({"conversation": id}))),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let items = send(s, "GET", &format!("{path}?order=asc"), KEY_A, None)
        .await
        .json();
    let roles: Vec<&str> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "user", "user", "assistant"]);
    // Tenant b sees none of it.
    send(s, "GET", &format!("/v1/conversations/{id}"), KEY_B, None)
        .await
        .expect_error(404);
}

async fn sqlite_count(path: &std::path::Path, sql: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
}

#[tokio::test]
async fn erasing_a_user_leaves_nothing_in_the_store_or_redis_and_is_audited() {
    let shared = shared();
    let s = &shared.server;
    let user = format!("erase-me-{}", std::process::id());
    let mut ids = Vec::new();
    for text in ["my secret one", "my secret two"] {
        let r = send(
            s,
            "POST",
            "/v1/responses",
            KEY_A,
            Some(turn(json!(text), json!({"user": user}))),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let id = r.json()["id"].as_str().unwrap().to_string();
        // Read once, so Redis holds a copy.
        assert_eq!(
            send(s, "GET", &format!("/v1/responses/{id}"), KEY_A, None)
                .await
                .status,
            200
        );
        ids.push(id);
    }
    // Not an admin: refused.
    send(
        s,
        "DELETE",
        &format!("/admin/users/{user}/data"),
        KEY_A,
        None,
    )
    .await
    .expect_error(403);
    let r = send(
        s,
        "DELETE",
        &format!("/admin/users/{user}/data?tenant=a"),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["sessions_deleted"], 2);
    for id in &ids {
        for sql in [
            format!("SELECT COUNT(*) FROM sessions WHERE id = '{id}'"),
            format!("SELECT COUNT(*) FROM session_items WHERE session_id = '{id}'"),
        ] {
            assert_eq!(sqlite_count(&shared.store, &sql).await, 0, "{sql}");
        }
        send(s, "GET", &format!("/v1/responses/{id}"), KEY_A, None)
            .await
            .expect_error(404);
    }
    let user_rows = sqlite_count(
        &shared.store,
        &format!("SELECT COUNT(*) FROM sessions WHERE user_id = '{user}'"),
    )
    .await;
    assert_eq!(user_rows, 0);
    // Redis keeps tombstones only: no text of the user's.
    for (key, fields) in shared.redis.dump() {
        assert!(!fields.contains("my secret"), "{key}: {fields}");
    }
    // The audit log's writer commits in the background: wait for it.
    let audited = format!(
        "SELECT COUNT(*) FROM audit WHERE action = 'data.erased' AND target = 'user:{user}'"
    );
    let mut found = 0;
    for _ in 0..100 {
        found = sqlite_count(&shared.store, &audited).await;
        if found > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(found, 1);
}
