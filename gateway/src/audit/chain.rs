//! The store sink's hash chain: each row of the `audit` table carries
//! `hash = SHA-256(prev_hash, seq, time, every field)` and the previous
//! row's hash, with consecutive `seq`. An edited row no longer matches its
//! hash; a deleted one leaves a gap in `seq` (or, deleted at the start, a
//! first row that is not seq 1). [`verify`] walks the chain and names the
//! first broken row.
//!
//! Several instances append to one PostgreSQL: an append takes a
//! transaction-scoped advisory lock before reading the last row, so two
//! writers never give out one `seq` or fork the chain. SQLite serialises
//! writers with `BEGIN IMMEDIATE`.

use sha2::{Digest, Sha256};
use sqlx::Row;

use super::AuditRecord;
use crate::store::{Backend, Store, StoreError};

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Arbitrary, fixed: the advisory lock serialising audit appends.
const APPEND_LOCK: i64 = 0x5_11CE_0040;

/// Rows read per query while verifying.
const VERIFY_PAGE: i64 = 1000;

/// The hash of one record in the chain. Every field goes in with a tag and
/// its length, so no two different records hash the same input (`None` and
/// `Some("")` differ; a field's end cannot be moved into the next).
pub fn hash(prev_hash: &str, seq: i64, record: &AuditRecord) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(seq.to_be_bytes());
    h.update(record.at_ms.to_be_bytes());
    let fields: [Option<&str>; 8] = [
        record.request_id.as_deref(),
        Some(&record.actor),
        record.tenant.as_deref(),
        record.source.as_deref(),
        Some(&record.action),
        record.target.as_deref(),
        Some(&record.outcome),
        record.detail.as_deref(),
    ];
    for field in fields {
        match field {
            None => h.update([0u8]),
            Some(text) => {
                h.update([1u8]);
                h.update((text.len() as u64).to_be_bytes());
                h.update(text.as_bytes());
            }
        }
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Appends `records` to the chain, in order, in one transaction.
pub async fn append(store: &Store, records: &[AuditRecord]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let begin = match store.backend() {
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN",
    };
    let mut tx = store.pool().begin_with(begin).await?;
    if store.backend() == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut *tx)
            .await?;
    }
    let last = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *tx)
        .await?;
    let (mut seq, mut prev) = match last {
        Some(row) => (row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?),
        None => (0, GENESIS.to_string()),
    };
    for r in records {
        seq += 1;
        let h = hash(&prev, seq, r);
        sqlx::query(
            "INSERT INTO audit (seq, at_ms, request_id, actor, tenant, source, action, target, \
             outcome, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(seq)
        .bind(r.at_ms)
        .bind(r.request_id.clone())
        .bind(r.actor.clone())
        .bind(r.tenant.clone())
        .bind(r.source.clone())
        .bind(r.action.clone())
        .bind(r.target.clone())
        .bind(r.outcome.clone())
        .bind(r.detail.clone())
        .bind(prev.clone())
        .bind(h.clone())
        .execute(&mut *tx)
        .await?;
        prev = h;
    }
    tx.commit().await?;
    Ok(())
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every row checks out.
    Intact { records: u64 },
    /// The first row where the chain breaks.
    Broken { seq: i64, problem: Break },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The row's contents do not match its hash: it was edited.
    Edited,
    /// `seq` jumps: the rows between were deleted.
    Missing { expected: i64 },
    /// The row does not follow its predecessor's hash (a row before it was
    /// replaced or deleted together with its number).
    PrevHash,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Intact { records } => write!(f, "the audit chain is intact ({records} records)"),
            Self::Broken { seq, problem } => match problem {
                Break::Edited => write!(
                    f,
                    "the audit chain is broken at seq {seq}: the record does not match its hash (edited)"
                ),
                Break::Missing { expected } => write!(
                    f,
                    "the audit chain is broken at seq {seq}: seq {expected}..{} is missing (deleted)",
                    seq - 1
                ),
                Break::PrevHash => write!(
                    f,
                    "the audit chain is broken at seq {seq}: it does not follow the record before it \
                     (a record was replaced or deleted)"
                ),
            },
        }
    }
}

/// Walks the whole chain from seq 1, a page at a time.
pub async fn verify(store: &Store) -> Result<Verdict, StoreError> {
    let mut expected = 1i64;
    let mut prev = GENESIS.to_string();
    let mut records = 0u64;
    loop {
        let rows = sqlx::query(
            "SELECT seq, at_ms, request_id, actor, tenant, source, action, target, outcome, \
             detail, prev_hash, hash FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(expected)
        .bind(VERIFY_PAGE)
        .fetch_all(store.pool())
        .await?;
        if rows.is_empty() {
            return Ok(Verdict::Intact { records });
        }
        for row in rows {
            let seq: i64 = row.try_get(0)?;
            let record = AuditRecord {
                at_ms: row.try_get(1)?,
                request_id: row.try_get(2)?,
                actor: row.try_get(3)?,
                tenant: row.try_get(4)?,
                source: row.try_get(5)?,
                action: row.try_get(6)?,
                target: row.try_get(7)?,
                outcome: row.try_get(8)?,
                detail: row.try_get(9)?,
            };
            let prev_hash: String = row.try_get(10)?;
            let stored: String = row.try_get(11)?;
            if seq != expected {
                let problem = Break::Missing { expected };
                return Ok(Verdict::Broken { seq, problem });
            }
            if hash(&prev_hash, seq, &record) != stored {
                let problem = Break::Edited;
                return Ok(Verdict::Broken { seq, problem });
            }
            if prev_hash != prev {
                let problem = Break::PrevHash;
                return Ok(Verdict::Broken { seq, problem });
            }
            prev = stored;
            expected = seq + 1;
            records += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::sample;
    use crate::store::testing;

    async fn append_n(store: &Store, from: usize, n: usize) {
        let records: Vec<_> = (from..from + n).map(sample).collect();
        append(store, &records).await.unwrap();
    }

    async fn detects_an_edited_and_a_deleted_row(store: Store) {
        append_n(&store, 0, 3).await;
        append_n(&store, 3, 4).await;
        assert_eq!(
            verify(&store).await.unwrap(),
            Verdict::Intact { records: 7 }
        );

        sqlx::query("UPDATE audit SET actor = 'key:someone-else' WHERE seq = 5")
            .execute(store.pool())
            .await
            .unwrap();
        let verdict = verify(&store).await.unwrap();
        assert_eq!(
            verdict,
            Verdict::Broken {
                seq: 5,
                problem: Break::Edited
            }
        );
        assert!(verdict.to_string().contains("seq 5"), "{verdict}");
        // Put it back: the chain is whole again.
        sqlx::query("UPDATE audit SET actor = 'key:k4' WHERE seq = 5")
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(
            verify(&store).await.unwrap(),
            Verdict::Intact { records: 7 }
        );

        sqlx::query("DELETE FROM audit WHERE seq = 3")
            .execute(store.pool())
            .await
            .unwrap();
        let verdict = verify(&store).await.unwrap();
        assert_eq!(
            verdict,
            Verdict::Broken {
                seq: 4,
                problem: Break::Missing { expected: 3 }
            }
        );

        // Renumbering to hide the gap breaks the hashes instead (row by
        // row: PostgreSQL checks the key after each one).
        for seq in 4..=7i64 {
            sqlx::query("UPDATE audit SET seq = $1 WHERE seq = $2")
                .bind(seq - 1)
                .bind(seq)
                .execute(store.pool())
                .await
                .unwrap();
        }
        assert!(matches!(
            verify(&store).await.unwrap(),
            Verdict::Broken { seq: 3, .. }
        ));
    }

    #[tokio::test]
    async fn sqlite_verify_detects_an_edited_and_a_deleted_row() {
        let (store, _dir) = testing::sqlite().await;
        detects_an_edited_and_a_deleted_row(store).await;
    }

    #[tokio::test]
    async fn postgres_verify_detects_an_edited_and_a_deleted_row() {
        detects_an_edited_and_a_deleted_row(testing::postgres().await).await;
    }

    async fn deleting_the_first_row_is_found(store: Store) {
        append_n(&store, 0, 2).await;
        sqlx::query("DELETE FROM audit WHERE seq = 1")
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(
            verify(&store).await.unwrap(),
            Verdict::Broken {
                seq: 2,
                problem: Break::Missing { expected: 1 }
            }
        );
    }

    #[tokio::test]
    async fn sqlite_deleting_the_first_row_is_found() {
        let (store, _dir) = testing::sqlite().await;
        deleting_the_first_row_is_found(store).await;
    }

    #[tokio::test]
    async fn postgres_deleting_the_first_row_is_found() {
        deleting_the_first_row_is_found(testing::postgres().await).await;
    }

    /// Two stores (two pools, as two instances have) on one fresh schema.
    async fn two_postgres_instances() -> (Store, Store) {
        use crate::config::{Secret, StoreLocation, StoreSettings};
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = testing::postgres_url();
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&admin)
            .await
            .unwrap();
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let sep = if admin.contains('?') { '&' } else { '?' };
        let settings = StoreSettings {
            location: StoreLocation::Postgres(Secret::new(format!(
                "{admin}{sep}options=-c%20search_path%3D{schema}"
            ))),
        };
        (
            Store::open(&settings).await.unwrap(),
            Store::open(&settings).await.unwrap(),
        )
    }

    #[tokio::test]
    async fn postgres_two_writers_appending_at_once_keep_one_chain() {
        let (store, other) = two_postgres_instances().await;
        let writer = |store: Store, base: usize| {
            tokio::spawn(async move {
                for round in 0..20 {
                    append_n(&store, base + round * 5, 5).await;
                }
            })
        };
        let a = writer(store.clone(), 0);
        let b = writer(other, 1000);
        a.await.unwrap();
        b.await.unwrap();
        assert_eq!(
            verify(&store).await.unwrap(),
            Verdict::Intact { records: 200 }
        );
    }

    #[tokio::test]
    async fn sqlite_two_writers_appending_at_once_keep_one_chain() {
        let (store, dir) = testing::sqlite().await;
        let settings = crate::config::StoreSettings {
            location: crate::config::StoreLocation::Sqlite(dir.path().join("sluice.db")),
        };
        let other = Store::open(&settings).await.unwrap();
        let a = {
            let store = store.clone();
            tokio::spawn(async move {
                for round in 0..10 {
                    append_n(&store, round * 5, 5).await;
                }
            })
        };
        let b = tokio::spawn(async move {
            for round in 0..10 {
                append_n(&other, 1000 + round * 5, 5).await;
            }
        });
        a.await.unwrap();
        b.await.unwrap();
        assert_eq!(
            verify(&store).await.unwrap(),
            Verdict::Intact { records: 100 }
        );
    }
}
