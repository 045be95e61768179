//! Virtual keys end to end: created through `/admin/keys` with the
//! `[admin]` key, used on `/v1`, rotated with a grace, refused by role and
//! by model allowlist; and two servers sharing PostgreSQL and Redis, where a
//! revoke on one reaches the other at once.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{get, http_client, post_raw, Reply};
use serde_json::{json, Value};
use sluice_tests::services::fresh_postgres_schema;
use sluice_tests::{run_cli, Server, ServerOptions, DEMO_MODEL_ID};

const ADMIN_KEY: &str = "admin-key-0123456789";

fn config(extra: &str) -> String {
    format!(
        r#"
        [admin]
        key_env = "ADMIN_KEY"
        [[models]]
        id = "{DEMO_MODEL_ID}"
        path = "{{DEMO_MODEL}}"
        {extra}
        "#
    )
}

/// One server with its own SQLite store, shared by the tests of this file.
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        Server::start(ServerOptions {
            config: Some(config("")),
            env: vec![("ADMIN_KEY".into(), ADMIN_KEY.into())],
            args: Vec::new(),
        })
    })
}

async fn send(server: &Server, method: &str, path: &str, key: &str, body: Option<Value>) -> Reply {
    let url = format!("{}{path}", server.base_url());
    let client = http_client();
    let mut req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "PATCH" => client.patch(url),
        "DELETE" => client.delete(url),
        other => panic!("method {other}"),
    }
    .bearer_auth(key);
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = req.send().await.expect("send");
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.expect("body"),
    }
}

/// Creates a key as `creator`; (key, prefix).
async fn create_key(server: &Server, creator: &str, fields: Value) -> (String, String) {
    let reply = send(server, "POST", "/admin/keys", creator, Some(fields)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let v = reply.json();
    (
        v["key"].as_str().unwrap().to_string(),
        v["prefix"].as_str().unwrap().to_string(),
    )
}

async fn chat(server: &Server, key: &str) -> Reply {
    let body = json!({
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
    });
    post_raw(server, "/v1/chat/completions", body.to_string(), Some(key)).await
}

/// Polls until `key` is refused on `server`; panics after `limit`.
async fn wait_refused(server: &Server, key: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let reply = get(server, "/v1/models", Some(key)).await;
        if reply.status == 401 {
            return;
        }
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(
            Instant::now() < deadline,
            "the key was still accepted after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_team(server: &Server, id: &str) {
    let reply = send(
        server,
        "POST",
        "/admin/teams",
        ADMIN_KEY,
        Some(json!({"id": id, "tenant": "acme"})),
    )
    .await;
    assert!(matches!(reply.status, 201 | 409), "{}", reply.body);
}

#[tokio::test]
async fn a_key_made_through_the_admin_api_serves_chat_and_is_shown_once() {
    let s = server();
    let (key, prefix) = create_key(s, ADMIN_KEY, json!({"name": "e2e", "rpm": 60})).await;
    assert!(key.starts_with(&format!("sk-sl-{prefix}_")));
    let reply = chat(s, &key).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // With a virtual key in the store, a request without one is refused.
    get(s, "/v1/models", None).await.expect_error(401);
    // The key is never shown again.
    let shown = send(s, "GET", &format!("/admin/keys/{prefix}"), ADMIN_KEY, None).await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.json()["rpm"], 60);
    assert!(!shown.body.contains(&key[15..]), "{}", shown.body);
    let listed = send(s, "GET", "/admin/keys", ADMIN_KEY, None).await;
    assert!(listed.body.contains(&prefix) && !listed.body.contains(&key[15..]));
    // Unknown prefix: 404; the admin routes need a key at all.
    send(s, "GET", "/admin/keys/nosuchkey", ADMIN_KEY, None)
        .await
        .expect_error(404);
    get(s, "/admin/keys", None).await.expect_error(401);
    // A plain user key is no admin.
    send(s, "GET", "/admin/keys", &key, None)
        .await
        .expect_error(403);
    // Blocked: 401 with a clear message; unblocked: back.
    let path = format!("/admin/keys/{prefix}");
    assert_eq!(
        send(s, "PATCH", &path, ADMIN_KEY, Some(json!({"blocked": true})))
            .await
            .status,
        200
    );
    let err = chat(s, &key).await.expect_error(401);
    assert!(
        err["message"].as_str().unwrap().contains("blocked"),
        "{err}"
    );
    assert_eq!(
        send(
            s,
            "PATCH",
            &path,
            ADMIN_KEY,
            Some(json!({"blocked": false}))
        )
        .await
        .status,
        200
    );
    assert_eq!(chat(s, &key).await.status, 200);
}

#[tokio::test]
async fn a_rotated_key_works_through_its_grace_then_gets_401() {
    let s = server();
    let (old, prefix) = create_key(s, ADMIN_KEY, json!({})).await;
    let reply = send(
        s,
        "POST",
        &format!("/admin/keys/{prefix}/rotate"),
        ADMIN_KEY,
        Some(json!({"grace_seconds": 2})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let new = reply.json()["key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(reply.json()["rotated_from"], prefix.as_str());
    assert_eq!(
        chat(s, &old).await.status,
        200,
        "the old key works in its grace"
    );
    assert_eq!(chat(s, &new).await.status, 200);
    wait_refused(s, &old, Duration::from_secs(15)).await;
    let err = chat(s, &old).await.expect_error(401);
    assert!(
        err["message"].as_str().unwrap().contains("revoked"),
        "{err}"
    );
    assert_eq!(chat(s, &new).await.status, 200, "the new key stays");
}

#[tokio::test]
async fn an_auditor_reads_everything_and_changes_nothing() {
    let s = server();
    let (auditor, _) = create_key(s, ADMIN_KEY, json!({"roles": ["auditor"]})).await;
    let (_, target) = create_key(s, ADMIN_KEY, json!({})).await;
    let path = format!("/admin/keys/{target}");
    assert_eq!(
        send(s, "GET", "/admin/keys", &auditor, None).await.status,
        200
    );
    assert_eq!(send(s, "GET", &path, &auditor, None).await.status, 200);
    assert_eq!(
        send(s, "GET", "/admin/teams", &auditor, None).await.status,
        200
    );
    for (method, path, body) in [
        ("POST", "/admin/keys".to_string(), Some(json!({}))),
        ("PATCH", path.clone(), Some(json!({"rpm": 1}))),
        ("DELETE", path.clone(), None),
        ("POST", format!("{path}/rotate"), Some(json!({}))),
        (
            "POST",
            "/admin/teams".to_string(),
            Some(json!({"id": "aud"})),
        ),
    ] {
        let err = send(s, method, &path, &auditor, body)
            .await
            .expect_error(403);
        assert_eq!(err["code"], "permission_denied", "{method} {path}");
    }
    // Nothing changed.
    let after = send(s, "GET", &path, ADMIN_KEY, None).await.json();
    assert!(
        after["rpm"].is_null() && after["revoke_at"].is_null(),
        "{after}"
    );
}

#[tokio::test]
async fn a_team_admin_touches_its_own_team_only() {
    let s = server();
    create_team(s, "red").await;
    create_team(s, "blue").await;
    let (red_admin, _) = create_key(
        s,
        ADMIN_KEY,
        json!({"team": "red", "roles": ["team_admin"]}),
    )
    .await;
    let (_, blue_key) = create_key(s, ADMIN_KEY, json!({"team": "blue"})).await;
    let blue_path = format!("/admin/keys/{blue_key}");
    for (method, path, body) in [
        ("GET", blue_path.clone(), None),
        ("PATCH", blue_path.clone(), Some(json!({"rpm": 1}))),
        ("DELETE", blue_path.clone(), None),
        (
            "POST",
            "/admin/keys".to_string(),
            Some(json!({"team": "blue"})),
        ),
        ("POST", "/admin/keys".to_string(), Some(json!({}))),
        ("GET", "/admin/teams/blue".to_string(), None),
        (
            "PATCH",
            "/admin/teams/red".to_string(),
            Some(json!({"rpm": 100000})),
        ),
    ] {
        let err = send(s, method, &path, &red_admin, body)
            .await
            .expect_error(403);
        assert_eq!(err["code"], "permission_denied", "{method} {path}");
    }
    // Its own team: yes, but never an admin or auditor key.
    let (_, red_key) = create_key(s, &red_admin, json!({"team": "red", "rpm": 5})).await;
    let red_path = format!("/admin/keys/{red_key}");
    assert_eq!(
        send(s, "PATCH", &red_path, &red_admin, Some(json!({"rpm": 6})))
            .await
            .status,
        200
    );
    for roles in [json!(["admin"]), json!(["auditor"])] {
        send(
            s,
            "POST",
            "/admin/keys",
            &red_admin,
            Some(json!({"team": "red", "roles": roles})),
        )
        .await
        .expect_error(403);
        send(
            s,
            "PATCH",
            &red_path,
            &red_admin,
            Some(json!({"roles": roles})),
        )
        .await
        .expect_error(403);
    }
    // Nor move a key to another team.
    send(
        s,
        "PATCH",
        &red_path,
        &red_admin,
        Some(json!({"team": "blue"})),
    )
    .await
    .expect_error(403);
    let listed = send(s, "GET", "/admin/keys", &red_admin, None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let data = listed.json()["data"].as_array().unwrap().clone();
    assert!(data.iter().all(|k| k["team"] == "red"), "{data:?}");
    assert!(data.iter().any(|k| k["prefix"] == red_key.as_str()));
    assert_eq!(
        send(s, "GET", "/admin/teams/red", &red_admin, None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_key_not_allowed_the_model_gets_403_and_does_not_see_it() {
    let s = server();
    let (key, _) = create_key(
        s,
        ADMIN_KEY,
        json!({"allowed_models": ["some-other-model"]}),
    )
    .await;
    let err = chat(s, &key).await.expect_error(403);
    assert_eq!(err["code"], "model_not_allowed");
    let models = get(s, "/v1/models", Some(&key)).await.json();
    assert!(models["data"].as_array().unwrap().is_empty(), "{models}");
    let (allowed, _) = create_key(s, ADMIN_KEY, json!({"allowed_models": [DEMO_MODEL_ID]})).await;
    assert_eq!(chat(s, &allowed).await.status, 200);
    let models = get(s, "/v1/models", Some(&allowed)).await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [DEMO_MODEL_ID]);
}

#[tokio::test]
async fn a_role_allowlist_narrows_its_keys_models() {
    // `service` may use another model only; `user` has no list (every model).
    let s = Server::start(ServerOptions {
        config: Some(config(
            "[auth.role_models]\n        service = [\"some-other-model\"]",
        )),
        env: vec![("ADMIN_KEY".into(), ADMIN_KEY.into())],
        args: Vec::new(),
    });
    let (service, _) = create_key(&s, ADMIN_KEY, json!({"roles": ["service"]})).await;
    let err = chat(&s, &service).await.expect_error(403);
    assert_eq!(err["code"], "model_not_allowed");
    let models = get(&s, "/v1/models", Some(&service)).await.json();
    assert!(models["data"].as_array().unwrap().is_empty(), "{models}");
    let (user, _) = create_key(&s, ADMIN_KEY, json!({"roles": ["user"]})).await;
    assert_eq!(chat(&s, &user).await.status, 200);
    // Several roles: what any of them allows.
    let (both, _) = create_key(&s, ADMIN_KEY, json!({"roles": ["service", "user"]})).await;
    assert_eq!(chat(&s, &both).await.status, 200);
}

#[tokio::test]
async fn a_revoke_on_one_server_reaches_another_through_redis() {
    let url = fresh_postgres_schema("e2e_keys");
    let start = || {
        Server::start(ServerOptions {
            config: Some(config(&format!(
                "[store]\nurl = \"{url}\"\n[auth]\nredis_url = \"redis://127.0.0.1:6379\"\n"
            ))),
            env: vec![
                ("ADMIN_KEY".into(), ADMIN_KEY.into()),
                (
                    "SLUICE_KEY_PEPPER".into(),
                    "shared-pepper-for-both-instances".into(),
                ),
            ],
            args: Vec::new(),
        })
    };
    let (a, b) = (start(), start());
    let (key, prefix) = create_key(&a, ADMIN_KEY, json!({})).await;
    // b knows the key (and caches it).
    assert_eq!(chat(&b, &key).await.status, 200);
    assert_eq!(get(&b, "/v1/models", Some(&key)).await.status, 200);
    let reply = send(
        &a,
        "DELETE",
        &format!("/admin/keys/{prefix}"),
        ADMIN_KEY,
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Well inside b's cache TTL (5 s): only the broadcast can make b refuse now.
    wait_refused(&b, &key, Duration::from_secs(3)).await;
    wait_refused(&a, &key, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_cli_manages_keys_in_the_store_a_server_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\npath = \"{}\"\n",
        dir.path().join("sluice.db").display()
    );
    let cli_config = dir.path().join("cli.toml");
    let audit_file = dir.path().join("cli-audit.jsonl");
    let cli_audit = format!(
        "[audit]\nsinks = [\"file\"]\nfile = \"{}\"\nspool_dir = \"{}\"\n",
        audit_file.display(),
        dir.path().join("spool").display()
    );
    std::fs::write(&cli_config, format!("{store}{cli_audit}")).unwrap();
    let cfg = cli_config.to_str().unwrap();
    let (code, out, err) = run_cli(
        &[
            "keys",
            "create",
            "--config",
            cfg,
            "--name",
            "from-cli",
            "--rpm",
            "5",
            "--allowed-model",
            DEMO_MODEL_ID,
            "--regulated",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let key = out.trim().to_string();
    let prefix = key
        .strip_prefix("sk-sl-")
        .unwrap()
        .split('_')
        .next()
        .unwrap()
        .to_string();
    assert!(err.contains(&prefix), "{err}");
    let (code, out, err) = run_cli(&["keys", "list", "--config", cfg], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&prefix) && out.contains("from-cli") && out.contains("active"),
        "{out}"
    );
    assert!(!out.contains(&key[15..]), "the list shows no key: {out}");

    let s = Server::start(ServerOptions {
        config: Some(config(&store)),
        env: vec![("ADMIN_KEY".into(), ADMIN_KEY.into())],
        args: Vec::new(),
    });
    assert_eq!(chat(&s, &key).await.status, 200);
    let shown = send(&s, "GET", &format!("/admin/keys/{prefix}"), ADMIN_KEY, None)
        .await
        .json();
    assert_eq!(shown["rpm"], 5);
    assert_eq!(shown["allowed_models"], json!([DEMO_MODEL_ID]));
    // `--regulated` reached the store's column (migration 0020); the local
    // demo model is on_prem, so the regulated key is served.
    assert_eq!(shown["regulated"], true);

    let (code, out, err) = run_cli(
        &[
            "keys",
            "rotate",
            "--config",
            cfg,
            &prefix,
            "--grace-seconds",
            "3600",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let rotated = out.trim().to_string();
    assert_eq!(chat(&s, &rotated).await.status, 200);
    assert_eq!(chat(&s, &key).await.status, 200, "inside the grace");
    let (code, _, err) = run_cli(&["keys", "revoke", "--config", cfg, &prefix], &[]);
    assert_eq!(code, 0, "{err}");
    // No Redis here: the server's cache entry expires within its TTL.
    wait_refused(&s, &key, Duration::from_secs(15)).await;
    assert_eq!(chat(&s, &rotated).await.status, 200);
    let (code, _, err) = run_cli(&["keys", "revoke", "--config", cfg, "nosuchkey"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("nosuchkey"), "{err}");

    // Every change made with the CLI is in the audit log, by the CLI's user.
    let records: Vec<Value> = std::fs::read_to_string(&audit_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r["action"].as_str().unwrap(), r["target"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("key.created", prefix.as_str()),
            ("key.rotated", prefix.as_str()),
            ("key.revoked", prefix.as_str()),
        ],
        "{records:?}"
    );
    assert!(records
        .iter()
        .all(|r| r["actor"].as_str().unwrap().starts_with("cli:")));
}
