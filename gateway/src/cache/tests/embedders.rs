//! Entries remember which embedder made their vector: two models of the
//! same width make vectors whose cosines mean nothing to each other, so
//! another embedder's entries are never semantic candidates (exact hits do
//! not depend on vectors and still cross). In process and in the real Redis
//! on 127.0.0.1:6379, under a key prefix of the test's own.

use super::flow::{asking, generated, lookup};
use super::*;

fn embedder(id: &str) -> Arc<dyn Embedder> {
    // Same width, same vectors: only the id differs.
    Arc::new(HashedEmbedder::default().named(id))
}

#[test]
fn memory_store_compares_only_vectors_of_the_same_embedder() {
    let store = MemoryStore::new(CacheSettings::default().bounds);
    let later = Instant::now() + Duration::from_secs(60);
    let scope = Key([9; 32]);
    let vector = HashedEmbedder::default().embed_now("What is the capital of France?");
    let mut e = meta();
    e.scope = Some(scope);
    e.text = Some("What is the capital of France?".into());
    e.embedding = Some(vector.clone());
    e.embedder = Some(Arc::from("model-a@1"));
    store.insert(Key([1; 32]), e, answer("Paris."), later);
    let now = Instant::now();
    let same = store.nearest(&scope, "model-a@1", &vector, 0.9, 4, now);
    assert_eq!(same.len(), 1);
    assert!(store
        .nearest(&scope, "model-b@2", &vector, 0.9, 4, now)
        .is_empty());
}

#[test]
fn records_keep_their_embedder_and_old_records_have_none() {
    let mut e = meta();
    e.embedding = Some(HashedEmbedder::new(8).embed_now("x"));
    e.embedder = Some(Arc::from("model-a@1"));
    let d = record::decode(&record::encode(&e, &answer("y"))).unwrap();
    assert_eq!(d.meta.embedder.as_deref(), Some("model-a@1"));
    e.embedder = None;
    let d = record::decode(&record::encode(&e, &answer("y"))).unwrap();
    assert_eq!(d.meta.embedder, None);
}

#[tokio::test]
async fn the_cache_stores_its_embedders_id_with_each_entry() {
    let settings = CacheSettings {
        enabled: true,
        similarity_threshold: 0.5,
        ..CacheSettings::default()
    };
    let cache = Cache::in_memory(settings, Some(embedder("model-a@1")));
    let mut d = lookup(&cache, "t", asking("What is the capital of France?")).await;
    collect(d.record(generated("Paris.")).as_mut())
        .await
        .unwrap();
    let Store::Memory(m) = &cache.store else {
        panic!("in-memory cache");
    };
    let v = HashedEmbedder::default().embed_now("what is the capital of France");
    let scope = keys("t", "m", &chat(asking("x")).job)
        .semantic
        .unwrap()
        .scope;
    let now = Instant::now();
    assert_eq!(m.nearest(&scope, "model-a@1", &v, 0.5, 4, now).len(), 1);
    assert!(m.nearest(&scope, "model-b@2", &v, 0.5, 4, now).is_empty());
}

/// Deletes the test's Redis keys however the test ends.
pub(super) struct RedisKeys(pub(super) String);
impl Drop for RedisKeys {
    fn drop(&mut self) {
        let Ok(client) = ::redis::Client::open("redis://127.0.0.1:6379") else {
            return;
        };
        let Ok(mut c) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{}:*", self.0))
            .query(&mut c)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = ::redis::cmd("DEL").arg(keys).query(&mut c);
        }
    }
}

#[tokio::test]
async fn redis_never_serves_a_semantic_hit_across_embedders() {
    let prefix = format!(
        "sluice-test:unit:embedders:{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let _cleanup = RedisKeys(prefix.clone());
    let settings = CacheSettings {
        enabled: true,
        backend: Backend::Redis {
            url: "redis://127.0.0.1:6379".into(),
            prefix,
        },
        similarity_threshold: 0.5,
        ..CacheSettings::default()
    };
    // Three gateway instances on one Redis: two with model A, one with B.
    let a1 = Cache::new(settings.clone(), Some(embedder("model-a@1"))).unwrap();
    let a2 = Cache::new(settings.clone(), Some(embedder("model-a@1"))).unwrap();
    let b = Cache::new(settings, Some(embedder("model-b@2"))).unwrap();
    let question = asking("What is the capital of France?");
    let mut d = lookup(&a1, "t", question.clone()).await;
    assert_eq!(d.outcome, Outcome::Miss);
    collect(d.record(generated("Paris.")).as_mut())
        .await
        .unwrap();

    let paraphrase = asking("what is the capital of France");
    assert_eq!(
        lookup(&b, "t", paraphrase.clone()).await.outcome,
        Outcome::Miss,
        "model B compared model A's vector"
    );
    assert!(matches!(
        lookup(&a2, "t", paraphrase).await.outcome,
        Outcome::Semantic { .. }
    ));
    assert_eq!(lookup(&b, "t", question).await.outcome, Outcome::Exact);
}

#[test]
fn weights_fingerprint_is_stable_and_tells_fine_tunes_apart() {
    use crate::encoders::weights_fingerprint;
    let write = |weights: &[u8]| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), br#"{"hidden_size": 8}"#).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), weights).unwrap();
        dir
    };
    // Past the 64 KiB head, so a change there is seen only by the samples.
    let base: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut tuned = base.clone();
    for i in (200_000..tuned.len()).step_by(1000) {
        tuned[i] ^= 1;
    }
    let (one, again, other) = (write(&base), write(&base), write(&tuned));
    let f = weights_fingerprint(one.path());
    assert_eq!(f, weights_fingerprint(again.path()));
    assert_ne!(f, weights_fingerprint(other.path()));
    assert_eq!(
        weights_fingerprint(&one.path().join("missing")),
        "unreadable"
    );
}
