//! The session store against real SQLite, real PostgreSQL (a schema of its
//! own per test) and real Redis (a key prefix of its own per test; the
//! `kill -9` test starts its own `redis-server` on a free port).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::store::{testing, Store};

fn redis_url() -> String {
    std::env::var("SLUICE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn hot(url: &str) -> Hot {
    let prefix = format!("sluice-test-sessions:{}", uuid::Uuid::new_v4().simple());
    Hot::new(url, &prefix, Duration::from_secs(3600)).unwrap()
}

fn new_session(id: &str, tenant: &str, user: &str) -> NewSession {
    NewSession {
        id: id.into(),
        tenant: tenant.into(),
        user: Some(user.into()),
        kind: Kind::Conversation,
        parent: None,
        conversation: None,
        body: json!({"metadata": {"topic": "test"}}),
        seal: false,
    }
}

fn item(key: &str, text: &str) -> NewItem {
    NewItem {
        id: format!("msg_{key}"),
        key: key.into(),
        body: json!({"type": "message", "role": "user", "content": text}),
        seal: false,
    }
}

async fn count(store: &Store, sql: &str, id: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Runs a scenario on SQLite and on PostgreSQL, each with Redis in front.
macro_rules! both_backends {
    ($scenario:ident, $sqlite:ident, $postgres:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            let (store, _dir) = testing::sqlite().await;
            $scenario(store).await;
        }

        #[tokio::test]
        async fn $postgres() {
            $scenario(testing::postgres().await).await;
        }
    };
}

async fn appends_are_read_back_in_order_from_redis_and_the_store(store: Store) {
    let sessions = Sessions::new(Durable::new(store.clone()), Some(hot(&redis_url())), None);
    let created = sessions
        .create(new_session("conv_a", "t1", "u1"), vec![item("k1", "one")])
        .await
        .unwrap();
    assert_eq!(created.session.version, 1);
    let appended = sessions
        .append(
            "t1",
            "conv_a",
            Some(1),
            vec![item("k2", "two"), item("k3", "three")],
        )
        .await
        .unwrap();
    assert_eq!(appended.version, 2);
    assert_eq!(
        appended.items.iter().map(|i| i.seq).collect::<Vec<_>>(),
        [2, 3]
    );
    let from_redis = sessions.load("t1", "conv_a").await.unwrap();
    let from_store = sessions.durable().load("t1", "conv_a").await.unwrap();
    assert_eq!(from_redis, from_store);
    let texts: Vec<_> = from_store
        .items
        .iter()
        .map(|i| i.body["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
    // Another tenant never sees it, from either layer.
    assert!(matches!(
        sessions.load("t2", "conv_a").await,
        Err(SessionError::NotFound(_))
    ));
    assert!(matches!(
        sessions
            .append("t2", "conv_a", None, vec![item("k9", "x")])
            .await,
        Err(SessionError::NotFound(_))
    ));
}
both_backends!(
    appends_are_read_back_in_order_from_redis_and_the_store,
    sqlite_appends_are_read_back_in_order,
    postgres_appends_are_read_back_in_order
);

async fn a_retried_append_writes_one_row_and_a_stale_one_is_refused(store: Store) {
    let sessions = Sessions::new(Durable::new(store.clone()), Some(hot(&redis_url())), None);
    sessions
        .create(new_session("conv_b", "t1", "u1"), vec![])
        .await
        .unwrap();
    let first = sessions
        .append("t1", "conv_b", Some(1), vec![item("k1", "one")])
        .await
        .unwrap();
    // The same flush again (a client retry after a lost acknowledgement).
    let again = sessions
        .append("t1", "conv_b", Some(1), vec![item("k1", "one")])
        .await
        .unwrap();
    assert!(again.duplicate && !first.duplicate);
    assert_eq!(again.items, first.items);
    assert_eq!(again.version, first.version);
    let rows = count(
        &store,
        "SELECT COUNT(*) FROM session_items WHERE session_id = $1",
        "conv_b",
    )
    .await;
    assert_eq!(rows, 1);
    // A new item based on the old version: someone else's change came first.
    match sessions
        .append("t1", "conv_b", Some(1), vec![item("k2", "two")])
        .await
    {
        Err(SessionError::Stale {
            expected, current, ..
        }) => assert_eq!((expected, current), (1, 2)),
        other => panic!("expected a stale version, got {other:?}"),
    }
    assert_eq!(
        SessionError::Stale {
            id: "x".into(),
            expected: 1,
            current: 2
        }
        .to_api("Conversation")
        .status(),
        axum::http::StatusCode::CONFLICT
    );
}
both_backends!(
    a_retried_append_writes_one_row_and_a_stale_one_is_refused,
    sqlite_a_retried_append_writes_one_row,
    postgres_a_retried_append_writes_one_row
);

async fn of_two_concurrent_appends_one_wins_and_the_other_is_stale(store: Store) {
    let sessions = std::sync::Arc::new(Sessions::new(
        Durable::new(store.clone()),
        Some(hot(&redis_url())),
        None,
    ));
    sessions
        .create(new_session("conv_c", "t1", "u1"), vec![item("k0", "zero")])
        .await
        .unwrap();
    for round in 0..5 {
        let version = sessions.load("t1", "conv_c").await.unwrap().session.version;
        let (a, b) = (sessions.clone(), sessions.clone());
        let ka = format!("a{round}");
        let kb = format!("b{round}");
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move {
                a.append("t1", "conv_c", Some(version), vec![item(&ka, "a")])
                    .await
            }),
            tokio::spawn(async move {
                b.append("t1", "conv_c", Some(version), vec![item(&kb, "b")])
                    .await
            }),
        );
        let results = [ra.unwrap(), rb.unwrap()];
        let won = results.iter().filter(|r| r.is_ok()).count();
        let stale = results
            .iter()
            .filter(|r| matches!(r, Err(SessionError::Stale { .. })))
            .count();
        assert_eq!((won, stale), (1, 1), "round {round}: {results:?}");
    }
    let rows = count(
        &store,
        "SELECT COUNT(*) FROM session_items WHERE session_id = $1",
        "conv_c",
    )
    .await;
    assert_eq!(rows, 6);
    // Redis holds the winner's latest copy.
    let snapshot = sessions.load("t1", "conv_c").await.unwrap();
    assert_eq!(
        snapshot,
        sessions.durable().load("t1", "conv_c").await.unwrap()
    );
    assert_eq!(snapshot.session.version, 6);
}
both_backends!(
    of_two_concurrent_appends_one_wins_and_the_other_is_stale,
    sqlite_concurrent_appends_one_wins,
    postgres_concurrent_appends_one_wins
);

#[tokio::test]
async fn a_warm_never_overwrites_a_newer_copy_nor_a_tombstone() {
    let (store, _dir) = testing::sqlite().await;
    let sessions = Sessions::new(Durable::new(store), Some(hot(&redis_url())), None);
    let hot = sessions.hot().unwrap();
    let v1 = sessions
        .create(new_session("conv_d", "t1", "u1"), vec![item("k1", "one")])
        .await
        .unwrap();
    sessions
        .append("t1", "conv_d", None, vec![item("k2", "two")])
        .await
        .unwrap();
    // A slow reader that loaded version 1 warms Redis late: refused.
    hot.put(&v1).await;
    match hot.get("conv_d").await {
        Some(hot::Entry::Live(s)) => assert_eq!(s.session.version, 2),
        other => panic!("expected version 2 in redis, got {other:?}"),
    }
    // An append to a session Redis does not hold leaves a version marker:
    // a reader that loaded the row before the append cannot store it after.
    hot.forget("conv_d").await;
    let before = sessions.durable().load("t1", "conv_d").await.unwrap();
    sessions
        .append("t1", "conv_d", None, vec![item("k3", "three")])
        .await
        .unwrap();
    hot.put(&before).await;
    assert!(hot.get("conv_d").await.is_none(), "a stale copy was stored");
    let read = sessions.load("t1", "conv_d").await.unwrap();
    assert_eq!(read.items.len(), 3);
    match hot.get("conv_d").await {
        Some(hot::Entry::Live(s)) => assert_eq!((s.session.version, s.items.len()), (3, 3)),
        other => panic!("expected version 3 in redis, got {other:?}"),
    }
    sessions.delete("t1", "conv_d").await.unwrap();
    hot.put(&v1).await;
    assert!(matches!(hot.get("conv_d").await, Some(hot::Entry::Gone)));
    assert!(matches!(
        sessions.load("t1", "conv_d").await,
        Err(SessionError::NotFound(_))
    ));
}

/// A `redis-server` of the test's own, on a free port, without persistence.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: Option<u16>) -> Self {
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is needed by this test");
        let redis = Self { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill_9(&mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-9", &pid]).status().unwrap();
        assert!(status.success());
        self.child.wait().unwrap();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn killing_redis_after_an_acknowledged_append_loses_nothing() {
    let store = testing::postgres().await;
    let mut redis = OwnRedis::start(None);
    let sessions = Sessions::new(Durable::new(store.clone()), Some(hot(&redis.url())), None);
    sessions
        .create(new_session("conv_e", "t1", "u1"), vec![item("k1", "one")])
        .await
        .unwrap();
    // Acknowledged: it is in the store (and in Redis)...
    sessions
        .append("t1", "conv_e", Some(1), vec![item("k2", "two")])
        .await
        .unwrap();
    // ...then Redis dies before any later step.
    redis.kill_9();
    let read = sessions.load("t1", "conv_e").await.unwrap();
    assert_eq!(read.items.len(), 2);
    // Appends go on while Redis is down.
    sessions
        .append("t1", "conv_e", Some(2), vec![item("k3", "three")])
        .await
        .unwrap();
    // A fresh, empty Redis on the same port: a miss warms it from the store.
    let redis = OwnRedis::start(Some(redis.port));
    // Every read answers in full; once the outage back-off has passed and
    // the connection is back, a read warms Redis again.
    let mut warmed = None;
    for _ in 0..40 {
        let read = sessions.load("t1", "conv_e").await.unwrap();
        assert_eq!(read.items.len(), 3);
        assert_eq!(read.session.version, 3);
        if let Some(hot::Entry::Live(s)) = sessions.hot().unwrap().get("conv_e").await {
            warmed = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(warmed.expect("redis was never warmed again").items.len(), 3);
    drop(redis);
}

async fn purge_and_erasure_leave_nothing_in_either_store(store: Store) {
    let sessions = Sessions::new(Durable::new(store.clone()), Some(hot(&redis_url())), None);
    let hot = sessions.hot().unwrap();
    for (id, tenant, user) in [
        ("conv_u1", "t1", "alice"),
        ("conv_u2", "t1", "alice"),
        ("conv_u3", "t1", "bob"),
        ("conv_u4", "t2", "carol"),
    ] {
        sessions
            .create(
                new_session(id, tenant, user),
                vec![item(&format!("{id}-k"), &format!("secret of {user}"))],
            )
            .await
            .unwrap();
    }
    let ids = |removed: Vec<Removed>| {
        let mut ids: Vec<String> = removed.into_iter().map(|r| r.id).collect();
        ids.sort();
        ids
    };
    let erased = sessions
        .erase(Erase::User {
            tenant: Some("t1"),
            user: "alice",
        })
        .await
        .unwrap();
    assert_eq!(ids(erased), ["conv_u1", "conv_u2"]);
    let erased = sessions.erase(Erase::Tenant("t2")).await.unwrap();
    assert_eq!(ids(erased), ["conv_u4"]);
    // Retention: bob's session is older than the cutoff.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let purged = retention::purge_once(&sessions, Duration::ZERO).await;
    assert_eq!(purged, 1);
    for id in ["conv_u1", "conv_u2", "conv_u3", "conv_u4"] {
        for sql in [
            "SELECT COUNT(*) FROM sessions WHERE id = $1",
            "SELECT COUNT(*) FROM session_items WHERE session_id = $1",
        ] {
            assert_eq!(count(&store, sql, id).await, 0, "{sql} for {id}");
        }
        // Redis keeps only a tombstone: no content.
        let mut conn = redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(hot.key(id))
            .query_async(&mut conn)
            .await
            .unwrap();
        let tombstone = std::collections::HashMap::from([("v".to_string(), "gone".to_string())]);
        assert_eq!(fields, tombstone, "{id}");
    }
}
both_backends!(
    purge_and_erasure_leave_nothing_in_either_store,
    sqlite_purge_and_erasure_leave_nothing,
    postgres_purge_and_erasure_leave_nothing
);

#[tokio::test]
async fn a_sensitive_callers_content_is_encrypted_in_the_store_and_in_redis() {
    let store = testing::postgres().await;
    let cipher = Cipher::new(std::sync::Arc::new(
        crate::sealing::DataKeys::new(
            crate::config::Secret::new("a-test-secret-of-at-least-32-bytes!!".into()),
            store.clone(),
        )
        .unwrap(),
    ));
    let sessions = Sessions::new(
        Durable::new(store.clone()),
        Some(hot(&redis_url())),
        Some(cipher),
    );
    let mut new = new_session("conv_s", "t1", "u1");
    new.seal = true;
    new.body = json!({"metadata": {"diagnosis": "private"}});
    let mut first = item("k1", "my private question");
    first.seal = true;
    sessions.create(new, vec![first]).await.unwrap();
    let mut second = item("k2", "another private line");
    second.seal = true;
    let appended = sessions
        .append("t1", "conv_s", Some(1), vec![second])
        .await
        .unwrap();
    assert_eq!(appended.items[0].body["content"], "another private line");
    // Read through the layers: plain text.
    let read = sessions.load("t1", "conv_s").await.unwrap();
    assert_eq!(read.session.body["metadata"]["diagnosis"], "private");
    assert_eq!(read.items[1].body["content"], "another private line");
    // At rest: neither the rows nor Redis hold the text.
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM session_items WHERE session_id = 'conv_s' \
         UNION ALL SELECT body FROM sessions WHERE id = 'conv_s'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert!(!row.contains("private"), "{row}");
    }
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let hot = sessions.hot().unwrap();
    let meta: String = redis::cmd("HGET")
        .arg(hot.key("conv_s"))
        .arg("m")
        .query_async(&mut conn)
        .await
        .unwrap();
    let items: Vec<String> = redis::cmd("LRANGE")
        .arg(hot.items_key("conv_s"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(items.len(), 2);
    for copy in items.iter().chain([&meta]) {
        assert!(!copy.contains("private"), "{copy}");
    }
}
