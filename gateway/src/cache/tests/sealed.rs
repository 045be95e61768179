//! Regulated requests' entries: sealed under the tenant's data key in
//! Redis (no plaintext of question, answer or vector in any value), opened
//! only for their tenant and their entry id; never written for a prompt
//! that may carry personal data. In the real Redis on 127.0.0.1:6379,
//! under a key prefix of the test's own.

use super::embedders::RedisKeys;
use super::flow::{asking, generated};
use super::*;
use crate::config::Secret;
use crate::sealing::{Cipher, DataKeys};

const QUESTION: &str = "What is the balance of account zebra-quartz-41?";
const ANSWER: &str = "The balance is sapphire-tangerine-77.";

fn cipher() -> Cipher {
    Cipher::new(Arc::new(
        DataKeys::in_memory(Secret::new("a-test-master-key-of-at-least-32-bytes".into())).unwrap(),
    ))
}

fn sealed_meta() -> EntryMeta {
    EntryMeta {
        tenant: Arc::from("bank"),
        model: Arc::from("m"),
        scope: Some(Key([3; 32])),
        text: Some(QUESTION.into()),
        embedding: Some(HashedEmbedder::new(16).embed_now(QUESTION)),
        embedder: Some(Arc::from("test@1")),
    }
}

#[tokio::test]
async fn a_sealed_record_holds_no_plaintext_and_opens_only_for_its_tenant_and_id() {
    let cipher = cipher();
    let meta = sealed_meta();
    let stored = (*answer(ANSWER)).clone();
    let key = cipher.tenant("bank").await.unwrap();
    let bytes = record::encode_sealed(&meta, &stored, &key, "id1").unwrap();
    let text = String::from_utf8_lossy(&bytes);
    for secret in ["zebra-quartz", "sapphire-tangerine", "balance"] {
        assert!(!text.contains(secret), "`{secret}` in the record: {text}");
    }
    let open =
        |bytes: &[u8], key: &crate::sealing::TenantKey, id: &str| match record::decode_any(bytes)
            .unwrap()
        {
            record::Record::Sealed(s) => s.open(key, id),
            record::Record::Plain(_) => panic!("a regulated record was written plain"),
        };
    let d = open(&bytes, &key, "id1").unwrap();
    assert_eq!(d.answer, stored);
    assert_eq!(d.meta.text.as_deref(), Some(QUESTION));
    assert_eq!(d.meta.embedding, meta.embedding);
    assert_eq!(d.meta.scope, meta.scope);
    // Another tenant's key, or the record copied under another id: no.
    let other = cipher.tenant("clinic").await.unwrap();
    assert!(open(&bytes, &other, "id1").is_err());
    assert!(open(&bytes, &key, "id2").is_err());
    // A plain reader never mistakes it for a plain record.
    assert!(record::decode(&bytes).is_err());
}

fn redis_settings(prefix: &str) -> CacheSettings {
    CacheSettings {
        enabled: true,
        backend: Backend::Redis {
            url: "redis://127.0.0.1:6379".into(),
            prefix: prefix.to_string(),
        },
        similarity_threshold: 0.5,
        ..CacheSettings::default()
    }
}

async fn regulated_lookup(
    cache: &Arc<Cache>,
    tenant: &str,
    body: Value,
    may_carry_pii: bool,
) -> Decision {
    let r = chat(body);
    let h = HeaderMap::new();
    cache
        .lookup(
            Request {
                tenant,
                model: &r.model,
                job: &r.job,
                headers: &h,
                sensitive: true,
                regulated: true,
                may_carry_pii,
            },
            None,
        )
        .await
}

#[tokio::test]
async fn redis_holds_regulated_entries_sealed_and_serves_them_to_their_tenant_only() {
    let prefix = format!("sluice-test:unit:sealed:{}", uuid::Uuid::new_v4().simple());
    let _cleanup = RedisKeys(prefix.clone());
    let embedder: Arc<dyn Embedder> = Arc::new(HashedEmbedder::default());
    let cache = Cache::with_cipher(
        redis_settings(&prefix),
        Some(embedder.clone()),
        Some(cipher()),
    )
    .unwrap();

    let mut d = regulated_lookup(&cache, "bank", asking(QUESTION), false).await;
    assert_eq!(d.outcome, Outcome::Miss);
    collect(d.record(generated(ANSWER)).as_mut()).await.unwrap();

    // Every value under the prefix, whatever its type, holds no plaintext.
    let mut c = cache.redis().unwrap().connection();
    let names: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        names.iter().any(|k| k.contains(":e:")),
        "the entry was written: {names:?}"
    );
    for k in &names {
        // GET for the entries: DUMP may LZF-compress a value and hide text.
        let kind: String = ::redis::cmd("TYPE")
            .arg(k)
            .query_async(&mut c)
            .await
            .unwrap();
        let read = if kind == "string" { "GET" } else { "DUMP" };
        let value: Vec<u8> = ::redis::cmd(read).arg(k).query_async(&mut c).await.unwrap();
        let value = String::from_utf8_lossy(&value);
        for secret in ["zebra-quartz", "sapphire-tangerine", "balance"] {
            assert!(!value.contains(secret), "`{secret}` in {k}: {value}");
        }
    }

    // Its tenant gets it back, exact and by a paraphrase (the vector was sealed too).
    let mut hit = regulated_lookup(&cache, "bank", asking(QUESTION), false).await;
    assert_eq!(hit.outcome, Outcome::Exact);
    let served = collect(hit.take_hit().unwrap().as_mut()).await.unwrap();
    assert_eq!(served[0].text, ANSWER);
    let paraphrase = "what is the balance of account zebra-quartz-41";
    assert!(matches!(
        regulated_lookup(&cache, "bank", asking(paraphrase), false)
            .await
            .outcome,
        Outcome::Semantic { .. }
    ));
    // Another tenant asking the same finds nothing.
    assert_eq!(
        regulated_lookup(&cache, "clinic", asking(QUESTION), false)
            .await
            .outcome,
        Outcome::Miss
    );

    // A prompt that may carry personal data is neither read nor written.
    let mut pii = regulated_lookup(&cache, "bank", asking(QUESTION), true).await;
    assert_eq!(pii.outcome, Outcome::Bypass);
    assert!(pii.take_hit().is_none());

    // The control: an unregulated request's entry is plain text in Redis,
    // so the reads above would have shown a leak.
    let h = HeaderMap::new();
    let r = chat(asking("Where is marble-otter-12?"));
    let mut plain_d = cache
        .lookup(
            Request {
                tenant: "bank",
                model: &r.model,
                job: &r.job,
                headers: &h,
                sensitive: false,
                regulated: false,
                may_carry_pii: false,
            },
            None,
        )
        .await;
    collect(plain_d.record(generated("Near the river.")).as_mut())
        .await
        .unwrap();
    let entry = cache
        .redis()
        .unwrap()
        .entry_key(&keys("bank", &r.model, &r.job).exact);
    let value: Vec<u8> = ::redis::cmd("GET")
        .arg(&entry)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&value).contains("marble-otter"));

    // Without a master key a regulated request is not cached at all.
    let plain = Cache::new(redis_settings(&prefix), Some(embedder)).unwrap();
    assert_eq!(
        regulated_lookup(&plain, "bank", asking(QUESTION), false)
            .await
            .outcome,
        Outcome::Bypass
    );
}
