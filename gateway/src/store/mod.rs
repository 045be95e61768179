//! The durable store: virtual keys, teams, budgets, spend and audit records,
//! in one SQLite file (the default, no setup) or in PostgreSQL shared by
//! every instance. One schema serves both through sqlx's `Any` driver; its
//! migrations are compiled into the binary and run at start.
//!
//! The semantic cache keeps Redis; this store holds what must survive a
//! Redis restart (spend is rebuilt from here, never reset).

mod migrate;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::AnyPool;

use crate::config::{StoreLocation, StoreSettings};

/// Which database the store runs on (some SQL differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {at}: {source}. Check `[store]` in the config (or SLUICE_STORE_URL / SLUICE_DATA_DIR)")]
    Open { at: String, source: sqlx::Error },
    #[error("cannot create the store's folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("store migration {version} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        source: sqlx::Error,
    },
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// A handle on the store; cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens (creating a SQLite file and its folder if needed) and migrates.
    pub async fn open(settings: &StoreSettings) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, shown, backend) = match &settings.location {
            StoreLocation::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::Folder {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
                (
                    format!("sqlite://{}?mode=rwc", path.display()),
                    path.display().to_string(),
                    Backend::Sqlite,
                )
            }
            StoreLocation::Postgres(url) => (
                url.expose().to_string(),
                redact_url(url.expose()),
                Backend::Postgres,
            ),
        };
        let open_err = |source| StoreError::Open {
            at: shown.clone(),
            source,
        };
        let options = AnyConnectOptions::from_str(&url).map_err(open_err)?;
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                // One writer at a time anyway; WAL lets readers go on.
                Backend::Sqlite => 4,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(open_err)?;
        if backend == Backend::Sqlite {
            // Persistent in the file: readers go on while one writer writes.
            // (sqlx's SQLite connections already wait 5 s on a busy lock.)
            sqlx::raw_sql("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(open_err)?;
        }
        let store = Self { pool, backend };
        migrate::run(&store).await?;
        Ok(store)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
}

/// A PostgreSQL URL with its password hidden, for messages.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<store url>".into();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// Store tests run against both backends: a fresh SQLite file, and a fresh
/// schema in the PostgreSQL at 127.0.0.1:5432 (database `test`).
#[cfg(test)]
pub mod testing {
    use super::*;

    /// The PostgreSQL the tests use; `SLUICE_TEST_POSTGRES` overrides it.
    pub fn postgres_url() -> String {
        std::env::var("SLUICE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// A store in a new temporary SQLite file (the folder lives as long as
    /// the returned guard).
    pub async fn sqlite() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = StoreSettings {
            location: StoreLocation::Sqlite(dir.path().join("sluice.db")),
        };
        (
            Store::open(&settings).await.expect("open sqlite store"),
            dir,
        )
    }

    /// A store in a new PostgreSQL schema of its own, so tests running at
    /// once never see each other's rows.
    pub async fn postgres() -> Store {
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = postgres_url();
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&admin)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 (database `test`) is needed by the store tests");
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&pool)
            .await
            .expect("create schema");
        pool.close().await;
        let sep = if admin.contains('?') { '&' } else { '?' };
        let url = format!("{admin}{sep}options=-c%20search_path%3D{schema}");
        let settings = StoreSettings {
            location: StoreLocation::Postgres(crate::config::Secret::new(url)),
        };
        Store::open(&settings).await.expect("open postgres store")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn tables(store: &Store) -> Vec<String> {
        let sql = match store.backend() {
            Backend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            Backend::Postgres => {
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
                 WHERE table_schema = current_schema() ORDER BY table_name"
            }
        };
        sqlx::query_scalar::<_, String>(sql)
            .fetch_all(store.pool())
            .await
            .unwrap()
    }

    async fn migrates_once_and_again(store: Store) {
        let names = tables(&store).await;
        for t in [
            "audit",
            "budgets",
            "keys",
            "schema_migrations",
            "session_items",
            "sessions",
            "spend",
            "teams",
            "tenant_data_keys",
        ] {
            assert!(names.iter().any(|n| n == t), "{t} missing from {names:?}");
        }
        // A second start (another instance, a restart) finds nothing to do.
        migrate::run(&store).await.unwrap();
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(applied, migrate::MIGRATIONS.len() as i64);
    }

    #[tokio::test]
    async fn sqlite_schema_is_created_and_migrations_are_idempotent() {
        let (store, _dir) = testing::sqlite().await;
        migrates_once_and_again(store).await;
    }

    #[tokio::test]
    async fn postgres_schema_is_created_and_migrations_are_idempotent() {
        migrates_once_and_again(testing::postgres().await).await;
    }

    #[test]
    fn a_url_in_a_message_hides_its_password() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/sluice"),
            "postgres://app:***@db:5432/sluice"
        );
        assert_eq!(redact_url("postgres://db/sluice"), "postgres://db/sluice");
    }
}
