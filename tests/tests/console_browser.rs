//! The admin console in a real browser: headless Chromium (the Debian
//! package, installed by `scripts/chromium.sh`) driven through chromedriver
//! against the real `sluice` binary with the demo model and its SQLite
//! store. A person's path through it: the login page, a refused key, log
//! in, create a key and see it listed with its secret shown once, stream
//! a chat answer in the playground with that key and watch the tokens
//! arrive, see the spend report count the request, then the audit log,
//! cache and guard, engine and overview pages. A screenshot of each page
//! is written to `$CARGO_TARGET_DIR/ui-screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "browser/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::{Server, ServerOptions, DEMO_MODEL_ID};
use webdriver::Browser;

const ADMIN: &str = "console-admin-key-0123456789";
const WAIT: Duration = Duration::from_secs(30);

fn config() -> String {
    format!(
        r#"
[admin]
key_env = "ADMIN_KEY"

[[models]]
id = "{DEMO_MODEL_ID}"
path = "{{DEMO_MODEL}}"

[spend]
reference_price = {{ input_per_1k = 1.0, output_per_1k = 2.0 }}
flush_ms = 50
"#
    )
}

/// `$CARGO_TARGET_DIR/ui-screenshots`, else `target/ui-screenshots` beside
/// the test executable (`target/<profile>/deps/<exe>`).
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.ancestors().nth(3).unwrap().to_path_buf()
        });
    target.join("ui-screenshots")
}

/// Opens a console page and waits until it has drawn.
async fn open(browser: &Browser, server: &Server, page: &str) {
    browser
        .goto(&format!("{}/ui#{page}", server.base_url()))
        .await;
    wait_for_page(browser, page, &format!("the {page} page")).await;
}

/// Moves to another page of the loaded console by its hash (the page's
/// memory survives, where a new key waits for the playground).
async fn switch_to(browser: &Browser, page: &str) {
    browser
        .eval(
            &format!("location.hash = '#{page}'; return true;"),
            json!([]),
        )
        .await;
    wait_for_page(browser, page, &format!("the {page} page")).await;
}

/// Waits until `page` is the one shown and it has drawn.
async fn wait_for_page(browser: &Browser, page: &str, what: &str) {
    browser
        .wait_for(
            what,
            &format!(
                "const m = document.getElementById('main'); \
                 return !!m && m.dataset.page === '{page}' && m.dataset.ready === 'true';"
            ),
            WAIT,
        )
        .await;
}

async fn shot(browser: &Browser, name: &str) {
    let path = screenshot_dir().join(format!("{name}.png"));
    browser.screenshot(&path).await;
    eprintln!("screenshot: {}", path.display());
}

/// The number on a card (`1,234` → 1234).
async fn card_number(browser: &Browser, css: &str) -> i64 {
    let text = browser.text(&format!("{css} .value")).await;
    text.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("{css} shows `{text}`"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_logs_in_creates_a_key_streams_a_chat_and_sees_the_spend() {
    let server = tokio::task::spawn_blocking(|| {
        Server::start(ServerOptions {
            config: Some(config()),
            env: vec![("ADMIN_KEY".into(), ADMIN.into())],
            args: Vec::new(),
        })
    })
    .await
    .unwrap();
    let browser = Browser::start(1366, 900).await;
    let base = server.base_url();

    // Without a session, /ui sends the browser to the login page.
    browser.goto(&format!("{base}/ui")).await;
    assert!(
        browser.url().await.ends_with("/ui/login"),
        "{}",
        browser.url().await
    );
    browser.find("#credential").await;
    shot(&browser, "login").await;

    // A wrong key: refused, still on the login page, no cookie.
    browser.type_into("#credential", "sk-sl-nope_wrong").await;
    browser.click("#login-button").await;
    let refused = browser.text("p.error").await;
    assert!(refused.contains("not valid"), "{refused}");
    assert!(browser.cookies().await.is_empty());
    shot(&browser, "login-refused").await;
    // The browser logs the refusal's 401 as an error: expected here, and
    // the only one allowed (the log is read, and emptied, now).
    for entry in browser.console_log().await {
        if entry["level"] == "SEVERE" {
            let message = entry["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("/ui/login") && message.contains("401"),
                "{entry}"
            );
        }
    }

    // The admin key: a session cookie the page's script cannot read.
    browser.type_into("#credential", ADMIN).await;
    browser.click("#login-button").await;
    wait_for_page(&browser, "overview", "the overview after login").await;
    let cookies = browser.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "sluice_console")
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    let visible = browser.eval("return document.cookie", json!([])).await;
    assert!(
        !visible.as_str().unwrap().contains("sluice_console"),
        "{visible}"
    );
    assert!(browser.text("#who").await.contains("admin"));

    // Keys: create one; its secret is shown once and it is listed.
    open(&browser, &server, "keys").await;
    browser.type_into("#key-name", "browser-test-key").await;
    browser.click("#create-key-button").await;
    browser
        .wait_for(
            "the new key's secret",
            "const e = document.getElementById('new-secret-value'); \
             return !!e && e.textContent.startsWith('sk-sl-');",
            WAIT,
        )
        .await;
    let secret = browser.text("#new-secret-value").await;
    let prefix = secret
        .strip_prefix("sk-sl-")
        .and_then(|rest| rest.split_once('_'))
        .map(|(p, _)| p.to_string())
        .unwrap_or_else(|| panic!("not a virtual key: {secret}"));
    browser
        .wait_for(
            "the new key in the list",
            &format!("return !!document.querySelector('#keys tr[data-prefix=\"{prefix}\"]');"),
            WAIT,
        )
        .await;
    let row = browser
        .text(&format!("#keys tr[data-prefix=\"{prefix}\"]"))
        .await;
    assert!(
        row.contains("browser-test-key") && row.contains("active"),
        "{row}"
    );
    shot(&browser, "keys").await;

    // Spend before the chat (navigating by hash keeps the page's memory,
    // where the new key waits for the playground).
    switch_to(&browser, "spend").await;
    let before = card_number(&browser, "#spend-requests").await;

    // Playground: the new key is offered; the answer streams in.
    switch_to(&browser, "playground").await;
    let offered = browser
        .eval("return document.getElementById('pg-key').value", json!([]))
        .await;
    assert_eq!(offered.as_str(), Some(secret.as_str()));
    assert_eq!(
        browser
            .eval(
                "return document.getElementById('pg-model').value",
                json!([])
            )
            .await,
        DEMO_MODEL_ID
    );
    browser.type_into("#pg-max-tokens", "48").await;
    browser.type_into("#pg-temperature", "0").await;
    browser.click("#pg-send").await;
    // Sample the answer while it streams: a partial answer must be seen
    // before the last chunk, and it must grow into the final one.
    let mut partial: Option<String> = None;
    let started = std::time::Instant::now();
    let (final_text, chunks) = loop {
        let v: Value = browser
            .eval(
                "const a = document.getElementById('pg-answer'); \
                 return [a.dataset.state, a.textContent, Number(a.dataset.chunks)];",
                json!([]),
            )
            .await;
        let state = v[0].as_str().unwrap().to_string();
        let text = v[1].as_str().unwrap().to_string();
        let chunks = v[2].as_i64().unwrap();
        match state.as_str() {
            "streaming" if !text.is_empty() && partial.is_none() => partial = Some(text),
            "done" => break (text, chunks),
            "failed" => panic!("the playground failed: {}", browser.text("#pg-error").await),
            _ => {}
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no end: {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let partial = partial.expect("no partial answer was seen while streaming");
    assert!(chunks >= 3, "{chunks} chunks: {final_text:?}");
    assert!(
        final_text.starts_with(&partial) && final_text.len() > partial.len(),
        "partial {partial:?} did not grow into {final_text:?}"
    );
    let stats = browser.text("#pg-stats").await;
    assert!(stats.contains("completion tokens"), "{stats}");
    shot(&browser, "playground").await;

    // The spend report counts the chat (written off the request path:
    // refresh until it lands), and lists it under the new key.
    switch_to(&browser, "spend").await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let after = card_number(&browser, "#spend-requests").await;
        if after > before {
            assert_eq!(after, before + 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the spend report still shows {after} requests"
        );
        browser.click("#spend-refresh").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.click("#spend-group option[value=key]").await;
    browser
        .wait_for(
            "spend grouped by key",
            &format!(
                "const t = document.getElementById('spend-groups'); \
                 return !!t && t.textContent.includes('{prefix}');"
            ),
            WAIT,
        )
        .await;
    shot(&browser, "spend").await;

    // The audit log shows the login and the key's creation.
    open(&browser, &server, "audit").await;
    let audit = browser.text("#audit-table").await;
    assert!(
        audit.contains("auth.login") && audit.contains("key.created"),
        "{audit}"
    );
    assert!(audit.contains(&prefix), "{audit}");
    browser.click("#audit-action option[value='key.']").await;
    browser.click("#audit-apply").await;
    browser
        .wait_for(
            "the filtered audit log",
            "const t = document.getElementById('audit-table'); \
             return !!t && !t.textContent.includes('auth.login') && t.textContent.includes('key.created');",
            WAIT,
        )
        .await;
    shot(&browser, "audit").await;

    open(&browser, &server, "cache").await;
    let cache = browser.text("#cache-models").await;
    assert!(cache.contains(DEMO_MODEL_ID), "{cache}");
    shot(&browser, "cache").await;

    open(&browser, &server, "engine").await;
    let engine = browser.text("#engine-models").await;
    assert!(
        engine.contains(DEMO_MODEL_ID) && engine.contains("ready"),
        "{engine}"
    );
    shot(&browser, "engine").await;

    // The overview counts the chat among the last five minutes' requests.
    open(&browser, &server, "overview").await;
    let recent = browser.text("#card-rps .sub").await;
    assert!(recent.starts_with("1 in the last 5 min"), "{recent}");
    shot(&browser, "overview").await;

    // No page logged an error: no refused script or style (CSP), no
    // failed request, no exception.
    let log = browser.console_log().await;
    let severe: Vec<&Value> = log.iter().filter(|e| e["level"] == "SEVERE").collect();
    assert!(severe.is_empty(), "browser console errors: {severe:#?}");
}
