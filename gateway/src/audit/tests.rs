//! The audit log end to end inside the process: real sinks (a SQLite and a
//! PostgreSQL store, a file, a TCP syslog receiver), the spool and the
//! writer tasks.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::chain::{verify, Verdict};
use super::*;
use crate::config::{AuditMode, AuditSettings, AuditSinkConfig, SyslogTarget, SyslogTransport};
use crate::store::{testing, Store};

fn event(i: usize) -> AuditEvent {
    AuditEvent::new(actions::KEY_UPDATED, "key:admin", AuditOutcome::Success)
        .tenant("acme")
        .target(format!("t{i}"))
}

fn settings(spool: &Path, sinks: Vec<AuditSinkConfig>, mode: AuditMode) -> AuditSettings {
    AuditSettings {
        sinks,
        mode,
        spool_dir: spool.to_path_buf(),
    }
}

async fn file_and_store_get_every_record_in_order(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let config = settings(
        &dir.path().join("spool"),
        vec![AuditSinkConfig::Store, AuditSinkConfig::File(file.clone())],
        AuditMode::FailOpen,
    );
    let (log, writers) = AuditLog::start(&config, &store).unwrap();
    let audit = Audit::new(log);
    for i in 0..300 {
        audit.record(event(i)).unwrap();
    }
    writers.finish(Duration::from_secs(30)).await;
    let targets: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["target"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        targets,
        (0..300).map(|i| format!("t{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        verify(&store).await.unwrap(),
        Verdict::Intact { records: 300 }
    );
    let last: String = sqlx::query_scalar("SELECT target FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(last, "t299");
}

#[tokio::test]
async fn sqlite_file_and_store_get_every_record_in_order() {
    let (store, _dir) = testing::sqlite().await;
    file_and_store_get_every_record_in_order(store).await;
}

#[tokio::test]
async fn postgres_file_and_store_get_every_record_in_order() {
    file_and_store_get_every_record_in_order(testing::postgres().await).await;
}

/// Reads octet-counted syslog frames and returns each CEF `cs2` (target).
async fn read_targets(stream: &mut BufReader<TcpStream>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let mut len = Vec::new();
        stream.read_until(b' ', &mut len).await.unwrap();
        assert!(
            !len.is_empty(),
            "the connection closed after {} records",
            out.len()
        );
        let len: usize = std::str::from_utf8(&len).unwrap().trim().parse().unwrap();
        let mut msg = vec![0; len];
        stream.read_exact(&mut msg).await.unwrap();
        let msg = String::from_utf8(msg).unwrap();
        assert!(msg.starts_with("<109>1 "), "{msg}");
        let target = msg
            .split(' ')
            .find_map(|f| f.strip_prefix("cs2="))
            .unwrap()
            .to_string();
        out.push(target);
    }
    out
}

#[tokio::test]
async fn a_syslog_receiver_down_for_10_s_gets_every_record_afterwards_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let config = settings(
        dir.path(),
        vec![AuditSinkConfig::Syslog(SyslogTarget {
            transport: SyslogTransport::Tcp,
            address: address.clone(),
        })],
        AuditMode::FailOpen,
    );
    let (store, _store_dir) = testing::sqlite().await;
    let (log, writers) = AuditLog::start(&config, &store).unwrap();
    let audit = Audit::new(log);
    for i in 0..5 {
        audit.record(event(i)).unwrap();
    }
    let (conn, _) = listener.accept().await.unwrap();
    let mut conn = BufReader::new(conn);
    assert_eq!(
        read_targets(&mut conn, 5).await,
        ["t0", "t1", "t2", "t3", "t4"]
    );

    // The receiver goes away: its connection and its listener.
    drop(conn);
    drop(listener);
    for i in 5..40 {
        audit.record(event(i)).unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Ten seconds down in all, then back on the same port.
    let listener = TcpListener::bind(&address).await.unwrap();
    let (conn, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
        .await
        .expect("the sink reconnects")
        .unwrap();
    let mut conn = BufReader::new(conn);
    let expected: Vec<String> = (5..40).map(|i| format!("t{i}")).collect();
    assert_eq!(read_targets(&mut conn, 35).await, expected);
    writers.finish(Duration::from_secs(5)).await;
    // Everything was taken: the spool is empty.
    assert_eq!(
        std::fs::metadata(dir.path().join("syslog.jsonl"))
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn records_spooled_before_a_restart_are_delivered_after_it() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port yet.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let config = settings(
        dir.path(),
        vec![AuditSinkConfig::Syslog(SyslogTarget {
            transport: SyslogTransport::Tcp,
            address: address.clone(),
        })],
        AuditMode::FailOpen,
    );
    let (store, _store_dir) = testing::sqlite().await;
    let (log, writers) = AuditLog::start(&config, &store).unwrap();
    for i in 0..10 {
        Audit::new(log.clone()).record(event(i)).unwrap();
    }
    writers.finish(Duration::from_secs(5)).await;
    drop(log);

    let listener = TcpListener::bind(&address).await.unwrap();
    let (_log, writers) = AuditLog::start(&config, &store).unwrap();
    let (conn, _) = listener.accept().await.unwrap();
    let mut conn = BufReader::new(conn);
    let expected: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    assert_eq!(read_targets(&mut conn, 10).await, expected);
    writers.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn fail_closed_refuses_while_the_store_fails_and_recovers_after() {
    let (store, dir) = testing::sqlite().await;
    let config = settings(
        &dir.path().join("spool"),
        vec![AuditSinkConfig::Store],
        AuditMode::FailClosed,
    );
    let (log, writers) = AuditLog::start(&config, &store).unwrap();
    let audit = Audit::new(log.clone());
    audit.record(event(0)).unwrap();
    assert!(audit.check().is_ok());

    // The store stops taking records.
    sqlx::query("ALTER TABLE audit RENAME TO audit_away")
        .execute(store.pool())
        .await
        .unwrap();
    audit.record(event(1)).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while audit.check().is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failure is noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(audit.record(event(2)).is_err(), "fail_closed refuses");

    sqlx::query("ALTER TABLE audit_away RENAME TO audit")
        .execute(store.pool())
        .await
        .unwrap();
    while audit.check().is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the recovery is noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    audit.record(event(3)).unwrap();
    writers.finish(Duration::from_secs(10)).await;
    let targets: Vec<String> = sqlx::query_scalar("SELECT target FROM audit ORDER BY seq")
        .fetch_all(store.pool())
        .await
        .unwrap();
    // The refused record was never written; the spooled one was, in order.
    assert_eq!(targets, ["t0", "t1", "t3"]);
    assert_eq!(
        verify(&store).await.unwrap(),
        Verdict::Intact { records: 3 }
    );
}

#[tokio::test]
async fn fail_open_serves_on_while_the_store_fails() {
    let (store, dir) = testing::sqlite().await;
    let config = settings(
        &dir.path().join("spool"),
        vec![AuditSinkConfig::Store],
        AuditMode::FailOpen,
    );
    let (log, writers) = AuditLog::start(&config, &store).unwrap();
    let audit = Audit::new(log.clone());
    sqlx::query("ALTER TABLE audit RENAME TO audit_away")
        .execute(store.pool())
        .await
        .unwrap();
    audit.record(event(0)).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while log.healthy() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failure is noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(audit.check().is_ok());
    assert!(audit.record(event(1)).is_ok());
    writers.finish(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_event_inside_a_request_carries_its_id_and_source() {
    let outside = AuditEvent::new(actions::LOGIN, "a", AuditOutcome::Success);
    assert_eq!((outside.request_id, outside.source), (None, None));
    let context = RequestContext {
        id: "req-1".into(),
        source: Some(std::net::IpAddr::from([10, 0, 0, 7])),
    };
    let inside = context
        .scope(async { AuditEvent::new(actions::LOGIN, "a", AuditOutcome::Success) })
        .await;
    assert_eq!(inside.request_id.as_deref(), Some("req-1"));
    assert_eq!(inside.source.as_deref(), Some("10.0.0.7"));
}

/// A fail-open log whose sink is down: records would wait in a spool.
struct DownButOpen;

impl AuditSink for DownButOpen {
    fn submit(&self, _event: AuditEvent) -> Result<(), AuditUnavailable> {
        Ok(())
    }
    fn available(&self) -> bool {
        true
    }
    fn writable(&self) -> bool {
        false
    }
}

#[test]
fn a_regulated_request_is_refused_while_the_log_is_down_even_in_fail_open_mode() {
    let audit = Audit::new(std::sync::Arc::new(DownButOpen));
    assert!(audit.check().is_ok(), "fail-open serves other requests");
    assert!(audit.check_for(false).is_ok());
    assert!(audit.check_for(true).is_err(), "regulated: fail-closed");
    let event = || AuditEvent::new(actions::REGULATED_REQUEST, "k", AuditOutcome::Success);
    assert!(audit.record_for(false, event()).is_ok());
    assert!(audit.record_for(true, event()).is_err());
    // Audit off: nothing to be closed about.
    assert!(Audit::off().check_for(true).is_ok());
}
