//! The admin console without a browser, through the real binary: `/ui`
//! without a session goes to the login page; a wrong key is refused and
//! sets nothing; login sets a signed, HttpOnly, SameSite=Strict cookie that
//! the admin API accepts, with the CSRF token required for changes; an
//! auditor's session reads but cannot create keys through the console's
//! routes, and ends when its key is revoked; the console's stats and audit
//! routes keep their role checks; every `/ui` answer carries the CSP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;

use common::Reply;
use serde_json::{json, Value};
use sluice_tests::{Server, ServerOptions, DEMO_MODEL_ID};

const ADMIN: &str = "console-admin-key-0123456789";

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        Server::start(ServerOptions {
            config: Some(format!(
                r#"
[admin]
key_env = "ADMIN_KEY"

[[models]]
id = "{DEMO_MODEL_ID}"
path = "{{DEMO_MODEL}}"
"#
            )),
            env: vec![("ADMIN_KEY".into(), ADMIN.into())],
            args: Vec::new(),
        })
    })
}

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `application/x-www-form-urlencoded` for one value.
fn form_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn reply(resp: reqwest::Response) -> Reply {
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

async fn login(credential: &str) -> Reply {
    let resp = client()
        .post(format!("{}/ui/login", server().base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("credential={}", form_value(credential)))
        .send()
        .await
        .unwrap();
    reply(resp).await
}

/// The `name=value` of the session cookie a login answer set.
fn session_cookie(reply: &Reply) -> String {
    let set = reply
        .headers
        .get("set-cookie")
        .unwrap_or_else(|| panic!("no cookie set: {} {}", reply.status, reply.body))
        .to_str()
        .unwrap();
    set.split(';').next().unwrap().trim().to_string()
}

async fn send(
    method: &str,
    path: &str,
    cookie: Option<&str>,
    bearer: Option<&str>,
    csrf: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let url = format!("{}{path}", server().base_url());
    let c = client();
    let mut req = match method {
        "GET" => c.get(url),
        "POST" => c.post(url),
        "DELETE" => c.delete(url),
        other => panic!("{other}"),
    };
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    if let Some(key) = bearer {
        req = req.bearer_auth(key);
    }
    if let Some(token) = csrf {
        req = req.header("x-sluice-csrf", token);
    }
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    reply(req.send().await.unwrap()).await
}

/// Logs in with `credential`: (cookie, CSRF token, session info).
async fn session(credential: &str) -> (String, String, Value) {
    let answer = login(credential).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let cookie = session_cookie(&answer);
    let info = send("GET", "/ui/session", Some(&cookie), None, None, None).await;
    assert_eq!(info.status, 200, "{}", info.body);
    let info = info.json();
    (cookie, info["csrf"].as_str().unwrap().to_string(), info)
}

/// A virtual key with one role, made with the admin key: (key, prefix).
async fn key_with_role(role: &str, team: Option<&str>) -> (String, String) {
    if let Some(team) = team {
        let made = send(
            "POST",
            "/admin/teams",
            None,
            Some(ADMIN),
            None,
            Some(json!({"id": team, "tenant": "acme"})),
        )
        .await;
        assert!(made.status == 201 || made.status == 409, "{}", made.body);
    }
    let made = send(
        "POST",
        "/admin/keys",
        None,
        Some(ADMIN),
        None,
        Some(json!({"name": format!("{role} key"), "roles": [role], "team": team})),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let v = made.json();
    (
        v["key"].as_str().unwrap().to_string(),
        v["prefix"].as_str().unwrap().to_string(),
    )
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn ui_without_a_session_redirects_to_login() {
    for path in ["/ui", "/ui/"] {
        let r = send("GET", path, None, None, None, None).await;
        assert_eq!(r.status, 303, "{path}: {}", r.body);
        assert_eq!(header(&r, "location"), "/ui/login");
    }
    // A forged or edited cookie is no session either.
    let forged = "sluice_console=eyJ0ZW5hbnQiOiJhZG1pbiJ9.AAAA";
    let r = send("GET", "/ui", Some(forged), None, None, None).await;
    assert_eq!(r.status, 303);
    let r = send("GET", "/ui/session", Some(forged), None, None, None).await;
    r.expect_error(401);
    let r = send("GET", "/admin/keys", Some(forged), None, None, None).await;
    r.expect_error(401);
    let page = send("GET", "/ui/login", None, None, None, None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("name=\"credential\""), "{}", page.body);
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_sets_no_cookie() {
    // Shaped like virtual keys, or empty. (A token of no known shape on a
    // server with virtual keys but no config keys passes as the
    // `anonymous` config tenant with the user role, which the console
    // refuses with 403: see NOTES.md, branch `console`.)
    for wrong in ["sk-sl-abc_def", "sk-sl-wrongprefix_0123456789", ""] {
        let r = login(wrong).await;
        assert_eq!(r.status, 401, "{wrong:?}: {}", r.body);
        assert!(r.headers.get("set-cookie").is_none(), "{wrong:?}");
        assert!(r.body.contains("role=\"alert\""), "{}", r.body);
    }
    // A working key without an admin role: known, but no console for it.
    let (user_key, _) = key_with_role("user", None).await;
    let r = login(&user_key).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.headers.get("set-cookie").is_none());
    // A body that is not a form.
    let r = client()
        .post(format!("{}/ui/login", server().base_url()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test]
async fn login_sets_a_strict_httponly_cookie_that_opens_the_admin_api() {
    let answer = login(ADMIN).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(header(&answer, "location"), "/ui");
    let set = header(&answer, "set-cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(attribute), "{attribute} missing: {set}");
    }
    assert!(!set.contains(ADMIN), "the cookie must not carry the key");
    let cookie = session_cookie(&answer);

    let page = send("GET", "/ui", Some(&cookie), None, None, None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/ui/assets/app.js"));
    let (_, csrf, info) = session(ADMIN).await;
    assert_eq!(info["roles"], json!(["admin"]));
    assert_eq!(info["can_change_keys"], true);

    let list = send("GET", "/admin/keys", Some(&cookie), None, None, None).await;
    assert_eq!(list.status, 200, "{}", list.body);
    // A change without the CSRF token, or with another session's, is refused.
    let body = json!({"name": "from the console"});
    let r = send(
        "POST",
        "/admin/keys",
        Some(&cookie),
        None,
        None,
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.expect_error(403)["code"], "csrf_token_mismatch");
    let r = send(
        "POST",
        "/admin/keys",
        Some(&cookie),
        None,
        Some(&csrf),
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.expect_error(403)["code"], "csrf_token_mismatch");
    // Another login's token is no good for this cookie; its own is.
    let info = send("GET", "/ui/session", Some(&cookie), None, None, None).await;
    let own_csrf = info.json()["csrf"].as_str().unwrap().to_string();
    assert_ne!(own_csrf, csrf);
    let r = send(
        "POST",
        "/admin/keys",
        Some(&cookie),
        None,
        Some(&own_csrf),
        Some(body),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.json()["key"].as_str().unwrap().starts_with("sk-sl-"));

    // The console's figures: stats and the audit log (with the login in it).
    let stats = send("GET", "/admin/stats", Some(&cookie), None, None, None).await;
    assert_eq!(stats.status, 200, "{}", stats.body);
    let stats = stats.json();
    assert_eq!(stats["models"][0]["id"], DEMO_MODEL_ID);
    assert_eq!(stats["models"][0]["state"], "ready");
    assert!(stats["recent"]["requests"].is_i64(), "{stats}");
    let audit = send(
        "GET",
        "/admin/audit?action=auth.login&limit=50",
        Some(&cookie),
        None,
        None,
        None,
    )
    .await;
    assert_eq!(audit.status, 200, "{}", audit.body);
    let records = audit.json()["data"].as_array().unwrap().clone();
    assert!(
        records
            .iter()
            .any(|r| r["actor"] == "tenant:admin" && r["outcome"] == "success"),
        "{records:?}"
    );

    // Logging out clears the cookie.
    let out = send("POST", "/ui/logout", Some(&cookie), None, None, None).await;
    assert_eq!(out.status, 303);
    assert!(header(&out, "set-cookie").contains("Max-Age=0"));
}

#[tokio::test]
async fn an_auditor_cannot_create_keys_through_the_console() {
    let (auditor_key, auditor_prefix) = key_with_role("auditor", None).await;
    let (cookie, csrf, info) = session(&auditor_key).await;
    assert_eq!(info["roles"], json!(["auditor"]));
    assert_eq!(info["can_change_keys"], false);

    // Reads everything.
    for path in [
        "/admin/keys",
        "/admin/stats",
        "/admin/audit",
        "/admin/spend",
    ] {
        let r = send("GET", path, Some(&cookie), None, None, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    // Changes nothing, even with the right CSRF token.
    let r = send(
        "POST",
        "/admin/keys",
        Some(&cookie),
        None,
        Some(&csrf),
        Some(json!({"name": "auditor's attempt", "roles": ["admin"]})),
    )
    .await;
    assert_eq!(r.expect_error(403)["code"], "permission_denied");
    let r = send(
        "DELETE",
        &format!("/admin/keys/{auditor_prefix}"),
        Some(&cookie),
        None,
        Some(&csrf),
        None,
    )
    .await;
    assert_eq!(r.expect_error(403)["code"], "permission_denied");
    let r = send(
        "POST",
        &format!("/admin/keys/{auditor_prefix}/rotate"),
        Some(&cookie),
        None,
        Some(&csrf),
        None,
    )
    .await;
    assert_eq!(r.expect_error(403)["code"], "permission_denied");
    let keys = send("GET", "/admin/keys", None, Some(ADMIN), None, None).await;
    assert!(
        !keys.body.contains("auditor's attempt"),
        "a key was created: {}",
        keys.body
    );

    // Revoking the key ends the session it opened.
    let r = send(
        "DELETE",
        &format!("/admin/keys/{auditor_prefix}"),
        None,
        Some(ADMIN),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send("GET", "/admin/keys", Some(&cookie), None, None, None).await;
    r.expect_error(401);
    let r = send("GET", "/ui", Some(&cookie), None, None, None).await;
    assert_eq!(r.status, 303);
}

#[tokio::test]
async fn the_console_routes_keep_their_role_checks() {
    for path in ["/admin/stats", "/admin/audit", "/admin/spend/series"] {
        send("GET", path, None, None, None, None)
            .await
            .expect_error(401);
    }
    let (user_key, _) = key_with_role("user", None).await;
    for path in ["/admin/stats", "/admin/audit", "/admin/spend/series"] {
        let r = send("GET", path, None, Some(&user_key), None, None).await;
        assert_eq!(r.expect_error(403)["code"], "permission_denied", "{path}");
    }
    // A team admin reads its team's figures but not the audit log, which
    // spans every team.
    let (team_admin, _) = key_with_role("team_admin", Some("console-red")).await;
    let r = send("GET", "/admin/stats", None, Some(&team_admin), None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["team"], "console-red");
    assert!(v["decisions_today"].is_null(), "{v}");
    let r = send("GET", "/admin/audit", None, Some(&team_admin), None, None).await;
    r.expect_error(403);
    // Bad input is a 400 naming the parameter.
    for (path, param) in [
        ("/admin/audit?limit=0", "limit"),
        ("/admin/audit?before=soon", "before"),
        ("/admin/audit?from=yesterday", "from"),
        ("/admin/stats?window=0", "window"),
        ("/admin/spend/series?bucket=week", "bucket"),
    ] {
        let r = send("GET", path, None, Some(ADMIN), None, None).await;
        assert_eq!(r.expect_error(400)["param"], param, "{path}");
    }
    let r = send(
        "GET",
        "/admin/spend/series?bucket=minute&from=0",
        None,
        Some(ADMIN),
        None,
        None,
    )
    .await;
    assert_eq!(r.expect_error(400)["param"], "bucket");
}

#[tokio::test]
async fn every_ui_answer_carries_the_csp_and_pages_hold_no_inline_script() {
    let (cookie, _, _) = session(ADMIN).await;
    let mut pages = Vec::new();
    for (path, kind) in [
        ("/ui/login", "text/html"),
        ("/ui", "text/html"),
        ("/ui/assets/app.js", "text/javascript"),
        ("/ui/assets/charts.js", "text/javascript"),
        ("/ui/assets/console.css", "text/css"),
    ] {
        let r = send("GET", path, Some(&cookie), None, None, None).await;
        assert_eq!(r.status, 200, "{path}");
        let csp = header(&r, "content-security-policy");
        assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff");
        assert!(header(&r, "content-type").starts_with(kind), "{path}");
        if kind == "text/html" {
            pages.push((path, r.body));
        }
    }
    for (path, body) in pages {
        let lower = body.to_ascii_lowercase();
        let scripts: Vec<&str> = lower.split("<script").skip(1).collect();
        assert!(!scripts.is_empty() || path == "/ui/login", "{path}");
        for script in scripts {
            let tag = &script[..script.find('>').unwrap()];
            assert!(tag.contains("src=\"/ui/assets/"), "{path}: inline {tag}");
            let after = &script[script.find('>').unwrap() + 1..];
            assert!(after.starts_with("</script>"), "{path}: a script body");
        }
        assert!(
            !lower.contains(" onclick=") && !lower.contains(" style="),
            "{path}"
        );
    }
    let missing = send("GET", "/ui/assets/nope.js", None, None, None, None).await;
    missing.expect_error(404);
    assert!(header(&missing, "content-security-policy").starts_with("default-src 'self'"));
}
