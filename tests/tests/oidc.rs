//! OIDC end to end: the real `sluice` binary configured with `[auth.oidc]`
//! against a JWKS server made here (counting its fetches), tokens signed
//! here with a P-256 key generated here. A valid token is served; every
//! forged, foreign, stale or tampered one is a 401 with an OpenAI-style
//! error; an unknown `kid` makes the server refetch the key set exactly
//! once. (No admin route reads roles yet on this branch, so the auditor
//! role is covered by the gateway's unit tests, not here.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{get, post_raw};
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer;
use serde_json::{json, Value};
use sluice_tests::fakes;
use sluice_tests::{Server, ServerOptions};

const ISSUER: &str = "https://idp.test/realms/acme";
const AUDIENCE: &str = "sluice";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct EcKey {
    signing: p256::ecdsa::SigningKey,
    kid: String,
}

impl EcKey {
    fn new(kid: &str) -> Self {
        let signing = loop {
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&rand::random::<[u8; 32]>()) {
                break key;
            }
        };
        Self {
            signing,
            kid: kid.into(),
        }
    }

    fn jwk(&self) -> Value {
        let point = self.signing.verifying_key().to_sec1_point(false);
        let bytes = point.as_bytes();
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": b64(&bytes[1..33]), "y": b64(&bytes[33..65]),
        })
    }

    fn sign(&self, claims: &Value) -> String {
        let message = message(
            &json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
            claims,
        );
        let signature: p256::ecdsa::Signature = self.signing.sign(message.as_bytes());
        format!("{message}.{}", b64(&signature.to_vec()))
    }
}

fn message(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "exp": now() + 600, "iat": now(),
        "org": "acme", "roles": ["user"],
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// A JWKS endpoint on loopback that counts its fetches.
struct Idp {
    url: String,
    fetches: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn idp(keys: Vec<Value>) -> Idp {
    let fetches = Arc::new(AtomicUsize::new(0));
    let jwks = Arc::new(Mutex::new(json!({ "keys": keys })));
    let count = fetches.clone();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let (count, jwks) = (count.clone(), jwks.clone());
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                let body = jwks.lock().unwrap().clone();
                axum::Json(body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Idp {
        url,
        fetches,
        _task: task,
    }
}

async fn start(config: String) -> Server {
    tokio::task::spawn_blocking(move || {
        Server::start(ServerOptions {
            config: Some(config),
            ..ServerOptions::default()
        })
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_configured_issuer_and_only_those_are_served() {
    let key = EcKey::new("ec-1");
    let idp = idp(vec![key.jwk()]).await;
    let upstream = fakes::openai::start(None).await;
    let config = format!(
        r#"
[auth.oidc]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_url = "{}"
tenant_claim = "org"
roles_claim = "roles"

[[providers]]
kind = "openai"
name = "up"
base_url = "{}/v1"

[[routes]]
model = "chat"
[[routes.deployments]]
name = "cloud"
provider = "up"
upstream_model = "up-chat"
"#,
        idp.url,
        upstream.base_url()
    );
    let server = start(config).await;

    // The key set is read at start, in the background: wait for the first
    // valid answer rather than for a log line.
    let token = key.sign(&claims());
    let mut reply = get(&server, "/v1/models", Some(&token)).await;
    for _ in 0..100 {
        if reply.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        reply = get(&server, "/v1/models", Some(&token)).await;
    }
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, server.logs());
    assert!(reply.body.contains("\"chat\""), "{}", reply.body);
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);

    let chat = json!({
        "model": "chat",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 8,
    });
    let reply = post_raw(
        &server,
        "/v1/chat/completions",
        chat.to_string(),
        Some(&token),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // No token at all: the server is not open.
    get(&server, "/v1/models", None).await.expect_error(401);

    let impostor = EcKey::new("ec-1");
    let public_key_text = key.jwk().to_string();
    let refused = [
        (
            "wrong aud",
            key.sign(&with(claims(), "aud", json!("other"))),
        ),
        (
            "expired",
            key.sign(&with(claims(), "exp", json!(now() - 300))),
        ),
        (
            "alg none",
            format!("{}.", message(&json!({"alg": "none"}), &claims())),
        ),
        ("HS256 over the public key", {
            let message = message(&json!({"alg": "HS256", "kid": "ec-1"}), &claims());
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(public_key_text.as_bytes()).unwrap();
            mac.update(message.as_bytes());
            format!("{message}.{}", b64(&mac.finalize().into_bytes()))
        }),
        (
            "unknown issuer",
            key.sign(&with(claims(), "iss", json!("https://evil.test"))),
        ),
        ("wrong signature", impostor.sign(&claims())),
    ];
    for (what, bad) in &refused {
        let reply = get(&server, "/v1/models", Some(bad)).await;
        let err = reply.expect_error(401);
        assert_eq!(err["code"], "invalid_api_key", "{what}: {err}");
        assert_eq!(err["type"], "invalid_request_error", "{what}: {err}");
        assert!(
            !reply.body.contains(bad.as_str()),
            "{what}: the token is never echoed"
        );
        let reply = post_raw(&server, "/v1/chat/completions", chat.to_string(), Some(bad)).await;
        reply.expect_error(401);
    }
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        1,
        "no refused token made the server reread the key set"
    );

    // An unknown kid: exactly one refetch, however many such tokens come.
    let stranger = EcKey::new("ec-unknown").sign(&claims());
    get(&server, "/v1/models", Some(&stranger))
        .await
        .expect_error(401);
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);
    for i in 0..5 {
        let token = EcKey::new(&format!("ec-more-{i}")).sign(&claims());
        get(&server, "/v1/models", Some(&token))
            .await
            .expect_error(401);
    }
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);
    // The good token still works.
    assert_eq!(get(&server, "/v1/models", Some(&token)).await.status, 200);
    let logs = server.logs();
    assert!(!logs.contains(&token), "a token is never logged");
}

/// `POST /ui/login` with `token`, redirects not followed: (status, Set-Cookie).
async fn console_login(server: &Server, token: &str) -> (u16, Option<String>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .post(format!("{}/ui/login", server.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        // A JWT is base64url and dots: nothing to escape in a form.
        .body(format!("credential={token}"))
        .send()
        .await
        .unwrap();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_opens_the_console_and_a_user_token_does_not() {
    let key = EcKey::new("ec-console");
    let idp = idp(vec![key.jwk()]).await;
    let server = start(format!(
        r#"
[auth.oidc]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_url = "{}"
tenant_claim = "org"
roles_claim = "roles"
"#,
        idp.url
    ))
    .await;
    let auditor = key.sign(&with(claims(), "roles", json!(["auditor"])));
    // The key set is read in the background at start.
    let mut answer = console_login(&server, &auditor).await;
    for _ in 0..100 {
        if answer.0 != 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer = console_login(&server, &auditor).await;
    }
    assert_eq!(answer.0, 303, "{}", server.logs());
    let cookie = answer.1.unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let cookie = cookie.split(';').next().unwrap().to_string();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let info: Value = reqwest::Client::new()
        .get(format!("{}/ui/session", server.base_url()))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["actor"], "sub:user-1", "{info}");
    assert_eq!(info["roles"], json!(["auditor"]), "{info}");
    assert_eq!(info["can_change_keys"], false, "{info}");

    // A valid token without an admin role: 403; a stale one: 401.
    let user = key.sign(&claims());
    assert_eq!(console_login(&server, &user).await, (403, None));
    let expired = key.sign(&with(claims(), "exp", json!(now() - 3600)));
    assert_eq!(console_login(&server, &expired).await, (401, None));
}
