//! The audit log through the real binary: failed key checks are recorded
//! in the store's hash chain and the JSON-lines file, and `sluice audit
//! verify` finds an edited and a deleted record in the store file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::get;
use sluice_tests::{run_cli, Server, ServerOptions, DEMO_MODEL_ID};

const KEY: &str = "sk-test-0123456789";

async fn sql(db: &std::path::Path, statement: &str) {
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}", db.display());
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query(statement).execute(&pool).await.unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_finds_an_edited_and_a_deleted_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let jsonl = dir.path().join("audit.jsonl");
    let config_path = dir.path().join("sluice.toml");
    let config = format!(
        r#"
[[auth.keys]]
tenant = "acme"
key_env = "TEST_KEY"

[[models]]
id = "{DEMO_MODEL_ID}"
path = "{{DEMO_MODEL}}"

[store]
path = "{}"

[audit]
sinks = ["store", "file"]
file = "{}"
spool_dir = "{}"
"#,
        db.display(),
        jsonl.display(),
        dir.path().join("spool").display()
    );
    let model = sluice_tests::demo_model_path();
    std::fs::write(
        &config_path,
        config.replace("{DEMO_MODEL}", model.to_str().unwrap()),
    )
    .unwrap();
    let server = tokio::task::spawn_blocking(move || {
        Server::start(ServerOptions {
            config: Some(config),
            env: vec![("TEST_KEY".into(), KEY.into())],
            args: Vec::new(),
        })
    })
    .await
    .unwrap();
    for i in 0..6 {
        let reply = get(&server, "/v1/models", Some(&format!("sk-wrong-{i}"))).await;
        assert_eq!(reply.status, 401);
    }
    // A clean stop flushes the writers.
    assert_eq!(
        tokio::task::spawn_blocking(move || server.stop())
            .await
            .unwrap(),
        Some(0)
    );

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert!(lines.iter().all(|l| l["action"] == "auth.failed"));
    assert!(
        !std::fs::read_to_string(&jsonl)
            .unwrap()
            .contains("sk-wrong"),
        "a presented key never reaches the audit log"
    );

    let config_arg = config_path.to_str().unwrap();
    let verify = || {
        run_cli(
            &["audit", "verify", "--config", config_arg],
            &[("TEST_KEY", KEY)],
        )
    };
    let (code, out, err) = verify();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("intact (6 records)"), "{out}");

    sql(&db, "UPDATE audit SET outcome = 'success' WHERE seq = 2").await;
    let (code, out, err) = verify();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("broken at seq 2") && out.contains("edited"),
        "{out}"
    );
    sql(&db, "UPDATE audit SET outcome = 'failure' WHERE seq = 2").await;
    assert_eq!(verify().0, 0);

    sql(&db, "DELETE FROM audit WHERE seq = 4").await;
    let (code, out, err) = verify();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("broken at seq 5") && out.contains("deleted"),
        "{out}"
    );
}
