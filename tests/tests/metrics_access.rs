//! Who may read `/metrics`: the admin key on the API listener, or anyone who
//! reaches `[server] metrics_listen` (and then the API listener does not
//! serve it). `/health` and `/ready` stay open. The real `sluice` binary,
//! with the demo model and no encoders.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{get, http_client};
use sluice_tests::{Server, ServerOptions, DEMO_MODEL_ID};

const KEY: &str = "tenant-key-0123456789";
const ADMIN: &str = "admin-key-0123456789";

async fn start(extra: &str) -> Server {
    let config = format!(
        r#"
encoders = []
{extra}
[[auth.keys]]
tenant = "a"
key_env = "KEY_A"
[admin]
key_env = "ADMIN_KEY"
[[models]]
id = "{DEMO_MODEL_ID}"
path = "{{DEMO_MODEL}}"
"#
    );
    tokio::task::spawn_blocking(move || {
        Server::start(ServerOptions {
            config: Some(config),
            env: vec![
                ("KEY_A".into(), KEY.into()),
                ("ADMIN_KEY".into(), ADMIN.into()),
            ],
            args: Vec::new(),
        })
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn metrics_on_the_api_listener_need_the_admin_key() {
    let server = start("").await;
    let err = get(&server, "/metrics", None).await.expect_error(401);
    assert!(
        err["message"].as_str().unwrap().contains("admin key"),
        "{err}"
    );
    // A tenant's key is not the admin key; nor is a prefix of the admin key.
    get(&server, "/metrics", Some(KEY)).await.expect_error(401);
    get(&server, "/metrics", Some(&ADMIN[..ADMIN.len() - 1]))
        .await
        .expect_error(401);
    let ok = get(&server, "/metrics", Some(ADMIN)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(
        ok.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "{:?}",
        ok.headers
    );
    for open in ["/health", "/ready"] {
        assert_eq!(get(&server, open, None).await.status, 200, "{open}");
    }
}

#[tokio::test]
async fn a_metrics_listener_serves_them_and_the_api_listener_does_not() {
    // A free port for the metrics listener (the harness learns only the API's).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = start(&format!(
        "[server]\nmetrics_listen = \"127.0.0.1:{port}\"\n"
    ))
    .await;
    assert!(
        server.logs().contains(&format!(
            "metrics served on http://127.0.0.1:{port}/metrics"
        )),
        "{}",
        server.logs()
    );
    let resp = http_client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Only /metrics there: the API is not reachable through it.
    let resp = http_client()
        .get(format!("http://127.0.0.1:{port}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    // On the API listener /metrics is not served, not even with the admin key.
    get(&server, "/metrics", Some(ADMIN))
        .await
        .expect_error(404);
    assert_eq!(get(&server, "/health", None).await.status, 200);
}
