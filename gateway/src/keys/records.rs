//! The `keys` and `teams` rows, what the admin API and the CLI may change in
//! them, and the portable SQL that reads and writes them (SQLite and
//! PostgreSQL alike).

use serde::{Deserialize, Deserializer, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::auth::Role;
use crate::config::{GuardAction, StreamMode};
use crate::store::Store;

use super::KeysError;

/// A virtual key as stored: everything but its digest (which stays in the
/// store and the hot-path cache, never in an answer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyRecord {
    pub prefix: String,
    pub name: Option<String>,
    pub tenant: String,
    pub team: Option<String>,
    pub user: Option<String>,
    #[serde(serialize_with = "role_names")]
    pub roles: Vec<Role>,
    pub allowed_models: Option<Vec<String>>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u32>,
    pub sensitive: bool,
    /// Regulated (and so sensitive): see [`crate::sensitivity`].
    pub regulated: bool,
    #[serde(serialize_with = "guard_name")]
    pub guard: Option<GuardAction>,
    /// How this key's answers are analysed; `None`: the route's `[stream]` mode.
    #[serde(serialize_with = "stream_name")]
    pub stream: Option<StreamMode>,
    /// Whether the guard scores this key's answer windows; `None`: the
    /// route's `[stream] guard`.
    pub stream_guard: Option<bool>,
    /// Milliseconds since the Unix epoch.
    pub expires_at: Option<i64>,
    /// Set by revoke (now) and rotate (now + grace).
    pub revoke_at: Option<i64>,
    pub blocked: bool,
    pub rotated_from: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TeamRecord {
    pub id: String,
    pub tenant: String,
    pub allowed_models: Option<Vec<String>>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u32>,
    pub created_at: i64,
    pub updated_at: i64,
}

fn role_names<S: serde::Serializer>(roles: &[Role], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(roles.iter().map(|r| r.as_str()))
}

fn guard_name<S: serde::Serializer>(guard: &Option<GuardAction>, s: S) -> Result<S::Ok, S::Error> {
    match guard {
        Some(g) => s.serialize_some(g.as_str()),
        None => s.serialize_none(),
    }
}

fn stream_name<S: serde::Serializer>(mode: &Option<StreamMode>, s: S) -> Result<S::Ok, S::Error> {
    match mode {
        Some(m) => s.serialize_some(m.as_str()),
        None => s.serialize_none(),
    }
}

/// `"field": null` clears a field; a field left out keeps its value.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// What a create or an update sets (the admin API's JSON body, the CLI's
/// flags). Absent: unchanged (or the default, on create); `null`: cleared.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyChanges {
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<Option<String>>,
    pub tenant: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub team: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub user: Option<Option<String>>,
    pub roles: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub allowed_models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub rpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    pub tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub max_parallel: Option<Option<u32>>,
    /// Milliseconds since the Unix epoch.
    #[serde(default, deserialize_with = "nullable")]
    pub expires_at: Option<Option<i64>>,
    pub blocked: Option<bool>,
    pub sensitive: Option<bool>,
    /// Regulated: sensitive, PII never cached, stored content encrypted,
    /// the audit fail-closed.
    pub regulated: Option<bool>,
    /// `flag`, `block` or `off`; `null`: the server's `[guard] action`.
    #[serde(default, deserialize_with = "nullable")]
    pub guard: Option<Option<String>>,
    /// `off`, `hold_back`, `stream_first` or `buffer_full`; `null`: the
    /// route's `[stream]` mode.
    #[serde(default, deserialize_with = "nullable")]
    pub stream: Option<Option<String>>,
    /// The guard over this key's answer windows; `null`: the route's
    /// `[stream] guard`.
    #[serde(default, deserialize_with = "nullable")]
    pub stream_guard: Option<Option<bool>>,
}

impl KeyChanges {
    /// The roles asked for, parsed (an unknown name is a 400 naming it).
    pub fn parsed_roles(&self) -> Result<Option<Vec<Role>>, KeysError> {
        self.roles
            .as_ref()
            .map(|names| {
                names
                    .iter()
                    .map(|n| {
                        Role::parse(n).ok_or_else(|| {
                            KeysError::Invalid {
                                field: "roles",
                                message: format!(
                                    "`{n}` is not a role; use admin, auditor, team_admin, user or service"
                                ),
                            }
                        })
                    })
                    .collect()
            })
            .transpose()
    }

    /// Applies the changes to `record` (validated; the prefix, times and
    /// revocation are not this struct's to change).
    pub fn apply(&self, record: &mut KeyRecord) -> Result<(), KeysError> {
        let Self {
            name,
            tenant,
            team,
            user,
            roles: _,
            allowed_models,
            rpm,
            tpm,
            max_parallel,
            expires_at,
            blocked,
            sensitive,
            regulated,
            guard,
            stream,
            stream_guard,
        } = self.clone();
        if let Some(roles) = self.parsed_roles()? {
            record.roles = if roles.is_empty() {
                vec![Role::User]
            } else {
                roles
            };
        }
        if let Some(tenant) = tenant {
            if tenant.trim().is_empty() {
                return Err(KeysError::Invalid {
                    field: "tenant",
                    message: "the tenant cannot be empty".into(),
                });
            }
            record.tenant = tenant;
        }
        if let Some(guard) = guard {
            record.guard = guard
                .map(|g| {
                    GuardAction::parse("guard", &g).map_err(|_| KeysError::Invalid {
                        field: "guard",
                        message: format!("`{g}` is not \"flag\", \"block\" or \"off\""),
                    })
                })
                .transpose()?;
        }
        if let Some(stream) = stream {
            record.stream = stream
                .map(|m| {
                    StreamMode::parse("stream", &m).map_err(|_| KeysError::Invalid {
                        field: "stream",
                        message: format!(
                            "`{m}` is not \"off\", \"hold_back\", \"stream_first\" or \"buffer_full\""
                        ),
                    })
                })
                .transpose()?;
        }
        set(&mut record.name, name);
        set(&mut record.team, team);
        set(&mut record.user, user);
        set(&mut record.allowed_models, allowed_models);
        set(&mut record.rpm, rpm);
        set(&mut record.tpm, tpm);
        set(&mut record.max_parallel, max_parallel);
        set(&mut record.expires_at, expires_at);
        set(&mut record.stream_guard, stream_guard);
        if let Some(blocked) = blocked {
            record.blocked = blocked;
        }
        if let Some(sensitive) = sensitive {
            record.sensitive = sensitive;
        }
        if let Some(regulated) = regulated {
            record.regulated = regulated;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamChanges {
    /// Only on create (the body's or the path's).
    pub id: Option<String>,
    pub tenant: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub allowed_models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub rpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    pub tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub max_parallel: Option<Option<u32>>,
}

impl TeamChanges {
    pub fn apply(&self, team: &mut TeamRecord) -> Result<(), KeysError> {
        if let Some(tenant) = &self.tenant {
            if tenant.trim().is_empty() {
                return Err(KeysError::Invalid {
                    field: "tenant",
                    message: "the tenant cannot be empty".into(),
                });
            }
            team.tenant = tenant.clone();
        }
        set(&mut team.allowed_models, self.allowed_models.clone());
        set(&mut team.rpm, self.rpm);
        set(&mut team.tpm, self.tpm);
        set(&mut team.max_parallel, self.max_parallel);
        Ok(())
    }
}

fn set<T>(field: &mut Option<T>, change: Option<Option<T>>) {
    if let Some(value) = change {
        *field = value;
    }
}

const KEY_COLUMNS: &str = "prefix, digest, name, tenant, team, user_id, roles, allowed_models, \
     rpm, tpm, max_parallel, sensitive, guard_policy, expires_at, revoke_at, blocked, \
     rotated_from, created_at, updated_at, stream_policy, stream_guard, regulated";

const TEAM_COLUMNS: &str =
    "id, tenant, allowed_models, rpm, tpm, max_parallel, created_at, updated_at";

fn models_json(models: &Option<Vec<String>>) -> Option<String> {
    models
        .as_ref()
        .map(|m| serde_json::Value::from(m.clone()).to_string())
}

fn models_from(text: Option<String>) -> Result<Option<Vec<String>>, KeysError> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| KeysError::Corrupt(format!("allowed_models: {e}")))
    })
    .transpose()
}

fn small(value: Option<i64>, column: &str) -> Result<Option<u32>, KeysError> {
    value
        .map(|v| u32::try_from(v).map_err(|_| KeysError::Corrupt(format!("{column} = {v}"))))
        .transpose()
}

fn large(value: Option<i64>, column: &str) -> Result<Option<u64>, KeysError> {
    value
        .map(|v| u64::try_from(v).map_err(|_| KeysError::Corrupt(format!("{column} = {v}"))))
        .transpose()
}

fn as_i64<T: Into<u64>>(value: Option<T>) -> Option<i64> {
    value.map(|v| i64::try_from(v.into()).unwrap_or(i64::MAX))
}

/// A key row and its digest (hex).
fn key_from(row: &AnyRow) -> Result<(KeyRecord, String), KeysError> {
    let roles: String = row.try_get("roles")?;
    let roles: Vec<String> =
        serde_json::from_str(&roles).map_err(|e| KeysError::Corrupt(format!("roles: {e}")))?;
    let guard: Option<String> = row.try_get("guard_policy")?;
    let stream: Option<String> = row.try_get("stream_policy")?;
    let record = KeyRecord {
        prefix: row.try_get("prefix")?,
        name: row.try_get("name")?,
        tenant: row.try_get("tenant")?,
        team: row.try_get("team")?,
        user: row.try_get("user_id")?,
        // An unknown name (a later version's role) grants nothing here.
        roles: roles.iter().filter_map(|r| Role::parse(r)).collect(),
        allowed_models: models_from(row.try_get("allowed_models")?)?,
        rpm: small(row.try_get("rpm")?, "rpm")?,
        tpm: large(row.try_get("tpm")?, "tpm")?,
        max_parallel: small(row.try_get("max_parallel")?, "max_parallel")?,
        sensitive: row.try_get::<i64, _>("sensitive")? != 0,
        regulated: row.try_get::<i64, _>("regulated")? != 0,
        guard: guard.and_then(|g| GuardAction::parse("guard_policy", &g).ok()),
        stream: stream.and_then(|m| StreamMode::parse("stream_policy", &m).ok()),
        stream_guard: row
            .try_get::<Option<i64>, _>("stream_guard")?
            .map(|g| g != 0),
        expires_at: row.try_get("expires_at")?,
        revoke_at: row.try_get("revoke_at")?,
        blocked: row.try_get::<i64, _>("blocked")? != 0,
        rotated_from: row.try_get("rotated_from")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    };
    Ok((record, row.try_get("digest")?))
}

fn team_from(row: &AnyRow) -> Result<TeamRecord, KeysError> {
    Ok(TeamRecord {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        allowed_models: models_from(row.try_get("allowed_models")?)?,
        rpm: small(row.try_get("rpm")?, "rpm")?,
        tpm: large(row.try_get("tpm")?, "tpm")?,
        max_parallel: small(row.try_get("max_parallel")?, "max_parallel")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn role_json(roles: &[Role]) -> String {
    serde_json::Value::from(roles.iter().map(|r| r.as_str()).collect::<Vec<_>>()).to_string()
}

/// Inserts a key row; `Ok(false)` when its prefix or digest is taken.
pub async fn insert_key(
    store: &Store,
    key: &KeyRecord,
    digest_hex: &str,
) -> Result<bool, KeysError> {
    let sql = format!(
        "INSERT INTO keys ({KEY_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)"
    );
    let result = sqlx::query(&sql)
        .bind(key.prefix.clone())
        .bind(digest_hex.to_string())
        .bind(key.name.clone())
        .bind(key.tenant.clone())
        .bind(key.team.clone())
        .bind(key.user.clone())
        .bind(role_json(&key.roles))
        .bind(models_json(&key.allowed_models))
        .bind(as_i64(key.rpm))
        .bind(as_i64(key.tpm))
        .bind(as_i64(key.max_parallel))
        .bind(i64::from(key.sensitive))
        .bind(key.guard.map(|g| g.as_str().to_string()))
        .bind(key.expires_at)
        .bind(key.revoke_at)
        .bind(i64::from(key.blocked))
        .bind(key.rotated_from.clone())
        .bind(key.created_at)
        .bind(key.updated_at)
        .bind(key.stream.map(|m| m.as_str().to_string()))
        .bind(key.stream_guard.map(i64::from))
        .bind(i64::from(key.regulated))
        .execute(store.pool())
        .await;
    match result {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Writes every changeable field of a key row back; `Ok(false)`: no such key.
pub async fn update_key(store: &Store, key: &KeyRecord) -> Result<bool, KeysError> {
    let done = sqlx::query(
        "UPDATE keys SET name = $2, tenant = $3, team = $4, user_id = $5, roles = $6, \
         allowed_models = $7, rpm = $8, tpm = $9, max_parallel = $10, sensitive = $11, \
         guard_policy = $12, expires_at = $13, revoke_at = $14, blocked = $15, updated_at = $16, \
         stream_policy = $17, stream_guard = $18, regulated = $19 WHERE prefix = $1",
    )
    .bind(key.prefix.clone())
    .bind(key.name.clone())
    .bind(key.tenant.clone())
    .bind(key.team.clone())
    .bind(key.user.clone())
    .bind(role_json(&key.roles))
    .bind(models_json(&key.allowed_models))
    .bind(as_i64(key.rpm))
    .bind(as_i64(key.tpm))
    .bind(as_i64(key.max_parallel))
    .bind(i64::from(key.sensitive))
    .bind(key.guard.map(|g| g.as_str().to_string()))
    .bind(key.expires_at)
    .bind(key.revoke_at)
    .bind(i64::from(key.blocked))
    .bind(key.updated_at)
    .bind(key.stream.map(|m| m.as_str().to_string()))
    .bind(key.stream_guard.map(i64::from))
    .bind(i64::from(key.regulated))
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected() > 0)
}

/// A key and its digest (hex).
pub async fn get_key(
    store: &Store,
    prefix: &str,
) -> Result<Option<(KeyRecord, String)>, KeysError> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE prefix = $1");
    let row = sqlx::query(&sql)
        .bind(prefix.to_string())
        .fetch_optional(store.pool())
        .await?;
    row.as_ref().map(key_from).transpose()
}

/// Every key, or a team's, oldest first.
pub async fn list_keys(store: &Store, team: Option<&str>) -> Result<Vec<KeyRecord>, KeysError> {
    let rows = match team {
        Some(team) => {
            let sql = format!(
                "SELECT {KEY_COLUMNS} FROM keys WHERE team = $1 ORDER BY created_at, prefix"
            );
            sqlx::query(&sql)
                .bind(team.to_string())
                .fetch_all(store.pool())
                .await?
        }
        None => {
            let sql = format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at, prefix");
            sqlx::query(&sql).fetch_all(store.pool()).await?
        }
    };
    rows.iter().map(|r| key_from(r).map(|(k, _)| k)).collect()
}

pub async fn count_keys(store: &Store) -> Result<i64, KeysError> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM keys")
        .fetch_one(store.pool())
        .await?)
}

pub async fn count_team_keys(store: &Store, team: &str) -> Result<i64, KeysError> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM keys WHERE team = $1")
            .bind(team.to_string())
            .fetch_one(store.pool())
            .await?,
    )
}

/// `Ok(false)` when the id is taken.
pub async fn insert_team(store: &Store, team: &TeamRecord) -> Result<bool, KeysError> {
    let sql = format!("INSERT INTO teams ({TEAM_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
    let result = sqlx::query(&sql)
        .bind(team.id.clone())
        .bind(team.tenant.clone())
        .bind(models_json(&team.allowed_models))
        .bind(as_i64(team.rpm))
        .bind(as_i64(team.tpm))
        .bind(as_i64(team.max_parallel))
        .bind(team.created_at)
        .bind(team.updated_at)
        .execute(store.pool())
        .await;
    match result {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub async fn update_team(store: &Store, team: &TeamRecord) -> Result<bool, KeysError> {
    let done = sqlx::query(
        "UPDATE teams SET tenant = $2, allowed_models = $3, rpm = $4, tpm = $5, \
         max_parallel = $6, updated_at = $7 WHERE id = $1",
    )
    .bind(team.id.clone())
    .bind(team.tenant.clone())
    .bind(models_json(&team.allowed_models))
    .bind(as_i64(team.rpm))
    .bind(as_i64(team.tpm))
    .bind(as_i64(team.max_parallel))
    .bind(team.updated_at)
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn get_team(store: &Store, id: &str) -> Result<Option<TeamRecord>, KeysError> {
    let sql = format!("SELECT {TEAM_COLUMNS} FROM teams WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id.to_string())
        .fetch_optional(store.pool())
        .await?;
    row.as_ref().map(team_from).transpose()
}

pub async fn list_teams(store: &Store) -> Result<Vec<TeamRecord>, KeysError> {
    let sql = format!("SELECT {TEAM_COLUMNS} FROM teams ORDER BY id");
    let rows = sqlx::query(&sql).fetch_all(store.pool()).await?;
    rows.iter().map(team_from).collect()
}

pub async fn delete_team(store: &Store, id: &str) -> Result<bool, KeysError> {
    let done = sqlx::query("DELETE FROM teams WHERE id = $1")
        .bind(id.to_string())
        .execute(store.pool())
        .await?;
    Ok(done.rows_affected() > 0)
}
