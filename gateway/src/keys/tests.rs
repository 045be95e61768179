//! Store round trips (SQLite and PostgreSQL alike), the hot-path check, and
//! invalidation across two instances through Redis.

use super::*;
use crate::store::testing;
use sqlx::{Column, Row};

fn pepper() -> Pepper {
    Pepper::new(b"test-pepper-0123456789").unwrap()
}

fn changes(json: serde_json::Value) -> KeyChanges {
    serde_json::from_value(json).unwrap()
}

fn team(json: serde_json::Value) -> TeamChanges {
    serde_json::from_value(json).unwrap()
}

async fn keys_on(store: Store) -> VirtualKeys {
    VirtualKeys::open(store, pepper(), None).await.unwrap()
}

fn status(result: Result<Principal, ApiError>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(e) => e.status().as_u16(),
    }
}

async fn round_trip(store: Store) {
    let keys = keys_on(store).await;
    assert!(!keys.enforced(), "no key yet: the server stays open");
    keys.create_team(&team(serde_json::json!({
        "id": "red", "tenant": "acme", "allowed_models": ["a", "b"], "rpm": 100
    })))
    .await
    .unwrap();
    let (new, record) = keys
        .create(&changes(serde_json::json!({
            "name": "ci", "team": "red", "user": "ann", "allowed_models": ["b", "c"],
            "rpm": 10, "tpm": 1000, "max_parallel": 2, "sensitive": true, "guard": "block",
            "stream": "hold_back", "stream_guard": true, "regulated": true
        })))
        .await
        .unwrap();
    assert!(keys.enforced());
    assert_eq!(record.tenant, "acme", "the tenant comes from the team");
    assert_eq!(keys.get(&new.prefix).await.unwrap(), record);

    let p = keys.verify(&new.key).await.unwrap();
    assert_eq!(&*p.tenant, "acme");
    assert_eq!(p.team.as_deref(), Some("red"));
    assert_eq!(p.user.as_deref(), Some("ann"));
    assert_eq!(p.key_prefix(), Some(new.prefix.as_str()));
    assert!(p.roles.contains(Role::User) && !p.roles.contains(Role::Admin));
    assert_eq!(
        p.allowed_models.as_deref(),
        Some(&["b".to_string()][..]),
        "key ∩ team"
    );
    assert_eq!(p.limits.rpm, Some(10));
    assert_eq!(p.team_limits.rpm, Some(100));
    assert!(p.policy.sensitive);
    assert!(p.policy.regulated, "the regulated column reads back");
    assert!(record.regulated);
    assert_eq!(p.policy.guard, Some(crate::config::GuardAction::Block));
    assert_eq!(p.policy.stream, Some(crate::config::StreamMode::HoldBack));
    assert_eq!(p.policy.stream_guard, Some(true));

    let updated = keys
        .update(
            &new.prefix,
            &changes(
                serde_json::json!({"name": null, "rpm": 20, "roles": ["auditor"], "guard": null,
                    "stream": "stream_first", "stream_guard": false, "regulated": false}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(updated.name, None);
    assert_eq!(updated.rpm, Some(20));
    assert_eq!(updated.roles, vec![Role::Auditor]);
    assert_eq!(keys.get(&new.prefix).await.unwrap(), updated);
    let p = keys.verify(&new.key).await.unwrap();
    assert_eq!(p.limits.rpm, Some(20), "an update is seen at once here");
    assert!(p.roles.contains(Role::Auditor));
    assert_eq!(p.policy.guard, None);
    assert_eq!(
        p.policy.stream,
        Some(crate::config::StreamMode::StreamFirst)
    );
    assert_eq!(p.policy.stream_guard, Some(false));
    assert!(!updated.regulated && !p.policy.regulated);
    assert!(p.policy.sensitive, "the key's own sensitive flag stays");

    // Rotation: same fields, a new key; the old one until its revoke_at.
    let (fresh, fresh_record, old) = keys
        .rotate(&new.prefix, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_ne!(fresh.key, new.key);
    assert_eq!(
        fresh_record.rotated_from.as_deref(),
        Some(new.prefix.as_str())
    );
    assert_eq!(fresh_record.rpm, Some(20));
    assert!(old.revoke_at.unwrap() > unix_now_ms());
    assert_eq!(status(keys.verify(&new.key).await), 200, "inside the grace");
    assert_eq!(status(keys.verify(&fresh.key).await), 200);
    let (_, _, old) = keys.rotate(&fresh.prefix, Duration::ZERO).await.unwrap();
    assert!(old.revoke_at.unwrap() <= unix_now_ms());
    assert_eq!(
        status(keys.verify(&fresh.key).await),
        401,
        "a zero grace revokes at once"
    );

    let revoked = keys.revoke(&new.prefix).await.unwrap();
    assert!(revoked.revoke_at.unwrap() <= unix_now_ms());
    assert_eq!(status(keys.verify(&new.key).await), 401);

    let listed = keys.list(None).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(keys.list(Some("red")).await.unwrap().len(), 3);
    assert!(keys.list(Some("blue")).await.unwrap().is_empty());

    // Teams: a team with keys is not deleted; an update reaches its keys.
    assert!(matches!(
        keys.delete_team("red").await,
        Err(KeysError::TeamInUse(_, 3))
    ));
    keys.update_team("red", &team(serde_json::json!({"rpm": 7})))
        .await
        .unwrap();
    assert_eq!(keys.get_team("red").await.unwrap().rpm, Some(7));
    assert!(matches!(
        keys.create_team(&team(serde_json::json!({"id": "red"})))
            .await,
        Err(KeysError::TeamExists(_))
    ));
    keys.create_team(&team(serde_json::json!({"id": "blue"})))
        .await
        .unwrap();
    assert_eq!(keys.list_teams().await.unwrap().len(), 2);
    keys.delete_team("blue").await.unwrap();
    assert!(matches!(
        keys.get_team("blue").await,
        Err(KeysError::NoTeam(_))
    ));

    // Bad input names its field; an unknown team or prefix is said so.
    let err = keys
        .create(&changes(serde_json::json!({"roles": ["root"]})))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("roles:"), "{err}");
    let err = keys
        .create(&changes(serde_json::json!({"guard": "maybe"})))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("guard:"), "{err}");
    assert!(matches!(
        keys.create(&changes(serde_json::json!({"team": "nope"})))
            .await,
        Err(KeysError::NoTeam(_))
    ));
    assert!(matches!(keys.get("nope").await, Err(KeysError::NoKey(_))));
    assert!(serde_json::from_value::<KeyChanges>(serde_json::json!({"digest": "x"})).is_err());
}

#[tokio::test]
async fn sqlite_keys_and_teams_round_trip() {
    let (store, _dir) = testing::sqlite().await;
    round_trip(store).await;
}

#[tokio::test]
async fn postgres_keys_and_teams_round_trip() {
    round_trip(testing::postgres().await).await;
}

async fn blocked_expired_and_wrong_keys_are_refused(store: Store) {
    let keys = keys_on(store).await;
    let (new, _) = keys.create(&KeyChanges::default()).await.unwrap();
    assert_eq!(status(keys.verify(&new.key).await), 200);
    let default = keys.verify(&new.key).await.unwrap();
    assert_eq!(&*default.tenant, DEFAULT_TENANT);
    assert!(default.allowed_models.is_none());

    keys.update(&new.prefix, &changes(serde_json::json!({"blocked": true})))
        .await
        .unwrap();
    let err = keys.verify(&new.key).await.unwrap_err();
    assert_eq!(err.status().as_u16(), 401);
    assert!(err.to_string().contains("blocked"), "{err}");
    keys.update(&new.prefix, &changes(serde_json::json!({"blocked": false})))
        .await
        .unwrap();
    assert_eq!(status(keys.verify(&new.key).await), 200);

    let past = unix_now_ms() - 1000;
    keys.update(
        &new.prefix,
        &changes(serde_json::json!({"expires_at": past})),
    )
    .await
    .unwrap();
    let err = keys.verify(&new.key).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    keys.update(
        &new.prefix,
        &changes(serde_json::json!({"expires_at": null})),
    )
    .await
    .unwrap();
    assert_eq!(status(keys.verify(&new.key).await), 200);

    // The right prefix with a wrong secret, an unknown prefix, a malformed token.
    let (head, _) = new.key.rsplit_once('_').unwrap();
    for wrong in [
        format!("{head}_{}", "x".repeat(40)),
        format!("{}x", new.key),
        "sk-sl-zzzzzzzz_abc".to_string(),
        "sk-sl-nounderscore".to_string(),
    ] {
        assert_eq!(status(keys.verify(&wrong).await), 401, "{wrong}");
    }
    // Another pepper: the digest no longer matches.
    let other = VirtualKeys::open(
        keys.store().clone(),
        Pepper::new(b"another-pepper-0123").unwrap(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status(other.verify(&new.key).await), 401);
}

#[tokio::test]
async fn sqlite_blocked_expired_and_wrong_keys_are_refused() {
    let (store, _dir) = testing::sqlite().await;
    blocked_expired_and_wrong_keys_are_refused(store).await;
}

#[tokio::test]
async fn postgres_blocked_expired_and_wrong_keys_are_refused() {
    blocked_expired_and_wrong_keys_are_refused(testing::postgres().await).await;
}

/// Every value of every row of every table, as text.
async fn dump(store: &Store) -> String {
    let mut out = String::new();
    for table in [
        "teams",
        "keys",
        "budgets",
        "budget_alerts",
        "spend",
        "audit",
        "schema_migrations",
    ] {
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(store.pool())
            .await
            .unwrap();
        for row in rows {
            for col in row.columns() {
                let i = col.ordinal();
                let text = row
                    .try_get::<Option<String>, _>(i)
                    .map(|v| v.unwrap_or_default())
                    .or_else(|_| row.try_get::<Option<i64>, _>(i).map(|v| format!("{v:?}")))
                    .or_else(|_| row.try_get::<Option<f64>, _>(i).map(|v| format!("{v:?}")))
                    .unwrap();
                out.push_str(&text);
                out.push('\t');
            }
            out.push('\n');
        }
    }
    out
}

async fn no_raw_key_in_the_store(store: Store) -> (String, String) {
    let keys = keys_on(store).await;
    let (a, _) = keys.create(&KeyChanges::default()).await.unwrap();
    let (b, _, _) = keys
        .rotate(&a.prefix, Duration::from_secs(60))
        .await
        .unwrap();
    let text = dump(keys.store()).await;
    for key in [&a.key, &b.key] {
        let secret = key.rsplit_once('_').unwrap().1;
        assert!(text.contains(&key[6..14]), "the prefix is kept: {text}");
        assert!(!text.contains(secret), "a raw key in the store: {text}");
    }
    (a.key, b.key)
}

#[tokio::test]
async fn postgres_dump_holds_no_raw_key() {
    no_raw_key_in_the_store(testing::postgres().await).await;
}

#[tokio::test]
async fn sqlite_dump_and_file_bytes_hold_no_raw_key() {
    let (store, dir) = testing::sqlite().await;
    let (a, b) = no_raw_key_in_the_store(store.clone()).await;
    store.pool().close().await;
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(bytes.len() > 4096, "the database files were read");
    for key in [a, b] {
        let secret = key.rsplit_once('_').unwrap().1.as_bytes();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "a raw key in the SQLite files"
        );
    }
}

#[tokio::test]
async fn a_cached_key_is_dropped_after_the_ttl_when_no_broadcast_comes() {
    let store = testing::postgres().await;
    let a = keys_on(store.clone()).await;
    let b = VirtualKeys::with_ttl(store, pepper(), None, Duration::from_millis(200));
    let (new, _) = a.create(&KeyChanges::default()).await.unwrap();
    assert_eq!(status(b.verify(&new.key).await), 200);
    a.update(&new.prefix, &changes(serde_json::json!({"blocked": true})))
        .await
        .unwrap();
    assert_eq!(
        status(b.verify(&new.key).await),
        200,
        "cached: no broadcast reached b"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        status(b.verify(&new.key).await),
        401,
        "the TTL expired the entry"
    );
}

#[tokio::test]
async fn a_revoke_on_one_instance_reaches_another_through_redis() {
    let store = testing::postgres().await;
    let redis = "redis://127.0.0.1:6379";
    let a = VirtualKeys::open(
        store.clone(),
        pepper(),
        Some(Broadcast::new(redis).unwrap()),
    )
    .await
    .unwrap();
    // A TTL far beyond the test: only the broadcast can drop b's entry.
    let b = Arc::new(VirtualKeys::with_ttl(
        store,
        pepper(),
        Some(Broadcast::new(redis).unwrap()),
        Duration::from_secs(600),
    ));
    let shutdown = CancellationToken::new();
    b.spawn_upkeep(shutdown.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.subscribed.load(Ordering::Relaxed) {
        assert!(
            Instant::now() < deadline,
            "b never subscribed (is Redis up at 127.0.0.1:6379?)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (new, _) = a.create(&KeyChanges::default()).await.unwrap();
    assert_eq!(status(b.verify(&new.key).await), 200);
    a.revoke(&new.prefix).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(b.verify(&new.key).await) != 401 {
        assert!(Instant::now() < deadline, "b still accepts a revoked key");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
}

#[test]
fn the_allowlist_check_is_a_403_naming_the_model() {
    let mut p = Principal::anonymous();
    assert!(allow_model(&p, "m").is_ok());
    p.allowed_models = Some(Arc::from(vec!["a".to_string()]));
    let err = allow_model(&p, "m").unwrap_err();
    assert_eq!(err.status().as_u16(), 403);
    assert!(
        err.to_string().contains("`m`") && err.to_string().contains('a'),
        "{err}"
    );
    assert!(allow_model(&p, "a").is_ok());
}
