//! The verifier against a JWKS server made here (axum on loopback, counting
//! its fetches), with ES256 and RS256 keys generated here and tokens built
//! by hand, so the forged ones (`alg: none`, HS256 over the public key) are
//! exactly what an attacker would send.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer;
use rsa::traits::PublicKeyParts;
use serde_json::json;

use super::*;
use crate::audit::AuditSink;
use crate::auth::{authorize, Access, Authenticator, KeyStore};
use crate::config::JwksSource;

const ISSUER: &str = "https://idp.test/realms/acme";
const AUDIENCE: &str = "sluice";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    crate::util::unix_now()
}

/// A P-256 key and its kid.
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
        self.sign_with_header(
            &json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let message = message(header, claims);
        let signature: p256::ecdsa::Signature = self.signing.sign(message.as_bytes());
        format!("{message}.{}", b64(&signature.to_vec()))
    }
}

/// One RSA key for the whole test binary: generating it is the slow part.
fn rsa_key() -> &'static rsa::PrivateKey {
    static KEY: OnceLock<rsa::PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        use rsa::Generate;
        rsa::PrivateKey::generate()
    })
}

fn rsa_jwk(kid: &str) -> Value {
    let public = rsa_key().to_public_key();
    json!({
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
        "n": b64(&public.n_bytes()), "e": b64(&public.e_bytes()),
    })
}

fn rs256(kid: &str, claims: &Value) -> String {
    let message = message(&json!({"alg": "RS256", "typ": "JWT", "kid": kid}), claims);
    let signature = rsa_key()
        .pkcs1v15_sign::<rsa::sha2::Sha256>(message.as_bytes())
        .unwrap();
    format!("{message}.{}", b64(&signature))
}

fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let message = message(header, claims);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(message.as_bytes());
    format!("{message}.{}", b64(&mac.finalize().into_bytes()))
}

fn message(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// Claims a valid token carries.
fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "u-123", "exp": now() + 300, "iat": now(),
        "jti": uuid::Uuid::new_v4().to_string(),
        "org": "acme", "groups": ["ml-team", "other"], "email": "ann@acme.test",
        "realm_access": {"roles": ["sluice-auditors", "offline_access"]},
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

/// A JWKS server on loopback that counts its fetches; its set can be
/// swapped (a rotation).
struct Idp {
    url: String,
    fetches: Arc<AtomicUsize>,
    jwks: Arc<Mutex<Value>>,
}

impl Idp {
    async fn start(keys: Vec<Value>) -> Self {
        let fetches = Arc::new(AtomicUsize::new(0));
        let jwks = Arc::new(Mutex::new(json!({ "keys": keys })));
        let (count, served) = (fetches.clone(), jwks.clone());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (count, served) = (count.clone(), served.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that a burst of requests overlaps the fetch.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let body = served.lock().unwrap().clone();
                    axum::Json(body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, fetches, jwks }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn publish(&self, keys: Vec<Value>) {
        *self.jwks.lock().unwrap() = json!({ "keys": keys });
    }
}

fn settings(jwks_url: &str) -> OidcSettings {
    OidcSettings {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        jwks: JwksSource::Url(jwks_url.into()),
        leeway_seconds: 30,
        algorithms: crate::config::ASYMMETRIC_ALGORITHMS.to_vec(),
        tenant: TenantSource::Claim("org".into()),
        team_claim: Some("groups.0".into()),
        user_claim: "email".into(),
        roles_claim: Some("realm_access.roles".into()),
        role_map: BTreeMap::from([
            ("sluice-auditors".to_string(), "auditor".to_string()),
            ("sluice-admins".to_string(), "admin".to_string()),
        ]),
        default_roles: vec!["user".into()],
        refetch_interval: Duration::from_secs(60),
        jwks_max_age: Duration::from_secs(3600),
    }
}

fn client() -> reqwest::Client {
    http_client().unwrap()
}

/// A verifier whose key set has been read once (one fetch).
async fn verifier(idp: &Idp) -> JwtVerifier {
    verifier_with(settings(&idp.url), Audit::off()).await
}

async fn verifier_with(settings: OidcSettings, audit: Audit) -> JwtVerifier {
    let v = JwtVerifier::new(settings, client(), audit);
    v.jwks().refresh().await.unwrap();
    v
}

fn unauthorized(result: Result<Principal, ApiError>) -> String {
    match result {
        Err(err @ ApiError::Unauthorized(_)) => err.to_string(),
        Err(other) => panic!("not a 401: {other:?}"),
        Ok(p) => panic!("accepted: {p:?}"),
    }
}

#[tokio::test]
async fn a_valid_token_maps_to_its_principal() {
    let key = EcKey::new("ec-1");
    let idp = Idp::start(vec![key.jwk()]).await;
    let v = verifier(&idp).await;
    let p = v.verify(&key.sign(&claims())).await.unwrap();
    assert_eq!(&*p.tenant, "acme");
    assert_eq!(p.team.as_deref(), Some("ml-team"));
    assert_eq!(p.user.as_deref(), Some("ann@acme.test"));
    assert_eq!(
        p.credential,
        Credential::Jwt {
            issuer: ISSUER.into(),
            subject: "u-123".into()
        }
    );
    // `offline_access` maps to nothing and is ignored.
    assert_eq!(p.roles, Roles::of(&[Role::Auditor]));
    assert_eq!(p.actor(), "sub:u-123");

    // No mapped role: the default roles.
    let plain = with(
        claims(),
        "realm_access",
        json!({"roles": ["offline_access"]}),
    );
    let p = v.verify(&key.sign(&plain)).await.unwrap();
    assert_eq!(p.roles, Roles::of(&[Role::User]));
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn an_rs256_token_verifies_against_its_rsa_key() {
    let idp = Idp::start(vec![rsa_jwk("rsa-1"), EcKey::new("ec-1").jwk()]).await;
    let v = verifier(&idp).await;
    let p = v.verify(&rs256("rsa-1", &claims())).await.unwrap();
    assert_eq!(&*p.tenant, "acme");
    // The same token with one byte of the claims changed does not.
    let token = rs256("rsa-1", &claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[1] = b64(with(claims(), "sub", json!("someone-else"))
        .to_string()
        .as_bytes());
    let msg = unauthorized(v.verify(&parts.join(".")).await);
    assert!(msg.contains("signature"), "{msg}");
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_reason() {
    let key = EcKey::new("ec-1");
    let idp = Idp::start(vec![key.jwk(), rsa_jwk("rsa-1")]).await;
    let v = verifier(&idp).await;
    let rsa_public_n = rsa_key().to_public_key().n_bytes();
    let rsa_jwk_text = rsa_jwk("rsa-1").to_string();
    let impostor = EcKey::new("ec-1");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong aud",
            key.sign(&with(claims(), "aud", json!("another-service"))),
            "audience",
        ),
        (
            "expired beyond the leeway",
            key.sign(&with(claims(), "exp", json!(now() - 120))),
            "expired",
        ),
        (
            "not valid yet",
            key.sign(&with(claims(), "nbf", json!(now() + 600))),
            "not valid yet",
        ),
        (
            "alg none",
            format!(
                "{}.",
                message(&json!({"alg": "none", "typ": "JWT"}), &claims())
            ),
            "alg: none",
        ),
        (
            "HS256 keyed with the RSA public key's modulus",
            hs256(
                &rsa_public_n,
                &json!({"alg": "HS256", "kid": "rsa-1"}),
                &claims(),
            ),
            "HMAC",
        ),
        (
            "HS256 keyed with the published JWK",
            hs256(
                rsa_jwk_text.as_bytes(),
                &json!({"alg": "HS256", "kid": "rsa-1"}),
                &claims(),
            ),
            "HMAC",
        ),
        (
            "unknown issuer",
            key.sign(&with(claims(), "iss", json!("https://evil.test"))),
            "issuer",
        ),
        ("no issuer", key.sign(&without(claims(), "iss")), "`iss`"),
        (
            "signed by another key under the same kid",
            impostor.sign(&claims()),
            "signature",
        ),
        ("missing exp", key.sign(&without(claims(), "exp")), "`exp`"),
        ("missing aud", key.sign(&without(claims(), "aud")), "`aud`"),
        (
            "ES384 header over the P-256 key",
            key.sign_with_header(&json!({"alg": "ES384", "kid": "ec-1"}), &claims()),
            "does not fit",
        ),
        (
            "ES256 header naming the RSA key",
            key.sign_with_header(&json!({"alg": "ES256", "kid": "rsa-1"}), &claims()),
            "does not fit",
        ),
        (
            "EdDSA",
            key.sign_with_header(&json!({"alg": "EdDSA", "kid": "ec-1"}), &claims()),
            "not accepted",
        ),
        (
            "critical extension",
            key.sign_with_header(
                &json!({"alg": "ES256", "kid": "ec-1", "crit": ["exp"], "exp": 1}),
                &claims(),
            ),
            "crit",
        ),
        ("no sub", key.sign(&without(claims(), "sub")), "`sub`"),
        (
            "a tenant claim that is no tenant name",
            key.sign(&with(claims(), "org", json!("acme corp/../x"))),
            "tenant",
        ),
        (
            "no tenant claim",
            key.sign(&without(claims(), "org")),
            "tenant",
        ),
        ("garbage", "eyJhbGciOi.eyJ.x".to_string(), "base64url"),
    ];
    for (what, token, expected) in cases {
        let msg = unauthorized(v.verify(&token).await);
        assert!(msg.contains(expected), "{what}: {msg}");
        assert!(!msg.contains(&token), "{what}: a token is never echoed");
    }
    // Expired, but within the 30 s leeway: accepted.
    v.verify(&key.sign(&with(claims(), "exp", json!(now() - 5))))
        .await
        .unwrap();
    // None of those made the server reread the key set.
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn an_unknown_kid_causes_exactly_one_fetch_however_many_ask() {
    let key = EcKey::new("ec-1");
    let idp = Idp::start(vec![key.jwk()]).await;
    let v = Arc::new(verifier(&idp).await);
    assert_eq!(idp.fetches(), 1);

    let stranger = EcKey::new("ec-unknown");
    let msg = unauthorized(v.verify(&stranger.sign(&claims())).await);
    assert!(msg.contains("kid"), "{msg}");
    assert_eq!(idp.fetches(), 2, "one refetch for the unknown kid");

    // A burst of unknown kids, concurrent and after: no more fetches within
    // the rate limit.
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..20 {
        let v = v.clone();
        let token = EcKey::new(&format!("ec-burst-{i}")).sign(&claims());
        burst.spawn(async move { v.verify(&token).await });
    }
    while let Some(result) = burst.join_next().await {
        unauthorized(result.unwrap());
    }
    assert_eq!(idp.fetches(), 2);
    // A known key still works throughout.
    v.verify(&key.sign(&claims())).await.unwrap();
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test]
async fn concurrent_unknown_kids_share_one_fetch() {
    let key = EcKey::new("ec-1");
    let idp = Idp::start(vec![key.jwk()]).await;
    // No rate limit at all: only the sharing keeps this to one fetch.
    let mut s = settings(&idp.url);
    s.refetch_interval = Duration::ZERO;
    let v = Arc::new(verifier_with(s, Audit::off()).await);
    let rotated = EcKey::new("ec-2");
    idp.publish(vec![key.jwk(), rotated.jwk()]);
    let token = rotated.sign(&claims());
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (v, token) = (v.clone(), token.clone());
        burst.spawn(async move { v.verify(&token).await });
    }
    while let Some(result) = burst.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test]
async fn a_rotated_key_set_is_picked_up() {
    let old = EcKey::new("ec-old");
    let idp = Idp::start(vec![old.jwk()]).await;
    let v = JwtVerifier::new(settings(&idp.url), client(), Audit::off());
    // The background reader: the first fetch happens without any token.
    v.start();
    for _ in 0..200 {
        if !v.jwks().current().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    v.verify(&old.sign(&claims())).await.unwrap();
    assert_eq!(idp.fetches(), 1);

    let new = EcKey::new("ec-new");
    idp.publish(vec![new.jwk()]);
    let p = v.verify(&new.sign(&claims())).await.unwrap();
    assert_eq!(&*p.tenant, "acme");
    assert_eq!(idp.fetches(), 2);
    // The withdrawn key no longer verifies anything.
    unauthorized(v.verify(&old.sign(&claims())).await);
}

#[tokio::test]
async fn a_foreign_issuer_cannot_make_the_server_fetch() {
    let key = EcKey::new("ec-1");
    let idp = Idp::start(vec![key.jwk()]).await;
    let v = verifier(&idp).await;
    let stranger = EcKey::new("ec-x");
    let foreign = with(claims(), "iss", json!("https://evil.test"));
    unauthorized(v.verify(&stranger.sign(&foreign)).await);
    unauthorized(
        v.verify(&format!(
            "{}.",
            message(&json!({"alg": "none", "kid": "zz"}), &claims())
        ))
        .await,
    );
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn an_unreachable_key_set_refuses_tokens_without_failing() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    drop(listener);
    let v = JwtVerifier::new(settings(&url), client(), Audit::off());
    v.start();
    assert!(v.jwks().refresh().await.is_err());
    let msg = unauthorized(v.verify(&EcKey::new("ec-1").sign(&claims())).await);
    assert!(msg.contains("kid"), "{msg}");
}

#[test]
fn a_mixed_key_set_keeps_only_usable_signing_keys() {
    let ec = EcKey::new("ec-1").jwk();
    let document = json!({"keys": [
        ec,
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"},
        with(rsa_jwk("enc"), "use", json!("enc")),
        with(rsa_jwk("short"), "n", json!(b64(&[0xc5; 128]))),
        with(EcKey::new("ec-2").jwk(), "alg", json!("RS256")),
        {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA", "kid": "broken"},
        {"kid": "nothing"},
    ]});
    let keys = super::super::jwks::parse_key_set(&document).unwrap();
    let kids: Vec<_> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
    assert_eq!(kids, ["ec-1"]);
    assert!(super::super::jwks::parse_key_set(&json!({"nokeys": []})).is_err());
}

#[test]
fn only_jws_shaped_tokens_are_claimed() {
    for token in ["a.b.c", "eyJ.eyJ.", "ab-_.cd.ef_-"] {
        assert!(looks_like_jws(token), "{token}");
    }
    for token in [
        "sk-sl-ab12_secret",
        "sk-a.b.c",
        "a.b",
        "a.b.c.d",
        ".b.c",
        "a..c",
        "a.b c.d",
        "a.b+.c",
        "plain-key",
    ] {
        assert!(!looks_like_jws(token), "{token}");
    }
}

#[test]
fn claims_are_found_by_dotted_path() {
    let claims = json!({
        "https://acme.test/roles": ["x"],
        "realm_access": {"roles": ["a", "b"]},
        "groups": ["g0", "g1"],
        "n": 42,
    });
    assert_eq!(
        claim(&claims, "https://acme.test/roles"),
        Some(&json!(["x"]))
    );
    assert_eq!(
        claim(&claims, "realm_access.roles"),
        Some(&json!(["a", "b"]))
    );
    assert_eq!(claim_text(&claims, "groups.1").as_deref(), Some("g1"));
    assert_eq!(claim_text(&claims, "n").as_deref(), Some("42"));
    assert_eq!(claim(&claims, "realm_access.missing"), None);
    assert_eq!(claim(&claims, "groups.9"), None);
    assert_eq!(claim_text(&claims, "realm_access"), None);
}

/// Collects audit records.
#[derive(Default)]
struct Recorder(Mutex<Vec<AuditEvent>>);

impl AuditSink for Recorder {
    fn submit(&self, event: AuditEvent) -> Result<(), crate::audit::AuditUnavailable> {
        self.0.lock().unwrap().push(event);
        Ok(())
    }
}

impl Recorder {
    fn logins(&self) -> Vec<AuditEvent> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.action == actions::LOGIN)
            .cloned()
            .collect()
    }
}

#[tokio::test]
async fn a_login_is_audited_once_per_token_not_per_request() {
    let key = EcKey::new("ec-1");
    let idp = Idp::start(vec![key.jwk()]).await;
    let recorder = Arc::new(Recorder::default());
    let v = verifier_with(settings(&idp.url), Audit::new(recorder.clone())).await;
    let token = key.sign(&claims());
    for _ in 0..3 {
        v.verify(&token).await.unwrap();
    }
    let logins = recorder.logins();
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!(logins[0].actor, "sub:u-123");
    assert_eq!(logins[0].tenant.as_deref(), Some("acme"));
    assert_eq!(logins[0].outcome, AuditOutcome::Success);
    // A new token (another jti) of the same subject is another login.
    v.verify(&key.sign(&claims())).await.unwrap();
    assert_eq!(recorder.logins().len(), 2);
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        axum::http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    headers
}

#[tokio::test]
async fn through_the_authenticator_a_token_carries_its_roles_to_the_admin_api() {
    let key = EcKey::new("ec-1");
    let idp = Idp::start(vec![key.jwk()]).await;
    let recorder = Arc::new(Recorder::default());
    let audit = Audit::new(recorder.clone());
    let v = verifier_with(settings(&idp.url), audit.clone()).await;
    let auth = Authenticator::new(KeyStore::new(&[]), None, audit).with_check(Arc::new(v));
    // A JWT check makes a key mandatory.
    assert!(!auth.is_open());
    assert!(auth.authenticate(&HeaderMap::new()).await.is_err());

    let auditor = auth
        .authenticate_admin(&bearer(&key.sign(&claims())))
        .await
        .unwrap();
    assert!(authorize(&auditor, Access::Read { team: None }).is_ok());
    let err = authorize(&auditor, Access::Write { team: None }).unwrap_err();
    assert_eq!(err.status(), axum::http::StatusCode::FORBIDDEN);

    let admin_claims = with(
        claims(),
        "realm_access",
        json!({"roles": ["sluice-admins"]}),
    );
    let admin = auth
        .authenticate_admin(&bearer(&key.sign(&admin_claims)))
        .await
        .unwrap();
    assert!(authorize(&admin, Access::Write { team: Some("any") }).is_ok());

    // A bad token is a 401 the authenticator audits as a failure.
    let err = auth
        .authenticate(&bearer(&key.sign(&with(claims(), "aud", json!("x")))))
        .await
        .unwrap_err();
    assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
    let failures = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.action == actions::AUTH_FAILED)
        .count();
    assert_eq!(failures, 1);
}
