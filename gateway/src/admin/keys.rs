//! `/admin/keys`: create (the key is answered once), list, show, change,
//! rotate and revoke virtual keys. An admin may do anything; an auditor
//! reads; a team admin reads and changes its own team's keys and never
//! grants the admin or auditor role.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::{AdminCaller, AdminError};
use crate::audit::actions;
use crate::auth::{Access, Role};
use crate::error::ApiError;
use crate::keys::{KeyChanges, KeyRecord, KeysError, NewKey};
use crate::openai::json::{parse, ApiJson};
use crate::state::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/keys", post(create).get(list))
        .route(
            "/admin/keys/{prefix}",
            get(show).patch(update).delete(revoke),
        )
        .route("/admin/keys/{prefix}/rotate", post(rotate))
}

/// A key as answered: its record, plus the key itself when just minted.
fn shown(record: &KeyRecord, new: Option<&NewKey>) -> Value {
    let mut value = serde_json::to_value(record).unwrap_or(Value::Null);
    if let (Some(new), Value::Object(map)) = (new, &mut value) {
        map.insert("key".into(), Value::String(new.key.clone()));
    }
    value
}

/// Only an admin grants the admin or auditor role, or lifts regulated mode.
fn may_grant(
    caller: &AdminCaller,
    state: &AppState,
    changes: &KeyChanges,
) -> Result<(), AdminError> {
    let roles = changes.parsed_roles()?.unwrap_or_default();
    if !caller.is_admin()
        && roles
            .iter()
            .any(|r| matches!(r, Role::Admin | Role::Auditor))
    {
        let message = "Only an admin may grant the admin or auditor role.";
        caller.denied(&state.audit, "key", message);
        return Err(ApiError::Forbidden {
            message: message.into(),
            code: "permission_denied",
        }
        .into());
    }
    // Regulated mode is a compliance control: a team admin may turn it on
    // for a key of its team, never off.
    if !caller.is_admin() && changes.regulated == Some(false) {
        let message = "Only an admin may turn regulated mode off for a key.";
        caller.denied(&state.audit, "key", message);
        return Err(ApiError::Forbidden {
            message: message.into(),
            code: "permission_denied",
        }
        .into());
    }
    Ok(())
}

/// A key's team that does not exist is bad input here, not a missing page.
fn team_is_input(e: KeysError) -> AdminError {
    match e {
        KeysError::NoTeam(_) => ApiError::invalid("team", e.to_string()).into(),
        other => other.into(),
    }
}

/// The key, once the caller may read (or change) it. A caller who may not
/// see every key learns nothing of keys outside its team, not even whether
/// they exist.
async fn load(
    state: &AppState,
    caller: &AdminCaller,
    prefix: &str,
    write: bool,
) -> Result<KeyRecord, AdminError> {
    match state.keys.get(prefix).await {
        Ok(record) => {
            caller.permit(&state.audit, access(write, record.team.as_deref()), prefix)?;
            Ok(record)
        }
        Err(KeysError::NoKey(_)) if !caller.sees_everything() => {
            caller.permit(&state.audit, access(write, None), prefix)?;
            Err(KeysError::NoKey(prefix.into()).into())
        }
        Err(e) => Err(e.into()),
    }
}

fn access(write: bool, team: Option<&str>) -> Access<'_> {
    if write {
        Access::Write { team }
    } else {
        Access::Read { team }
    }
}

async fn create(
    State(state): State<AppState>,
    caller: AdminCaller,
    ApiJson(changes): ApiJson<KeyChanges>,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let team = changes.team.clone().flatten();
    caller.permit(
        &state.audit,
        Access::Write {
            team: team.as_deref(),
        },
        "key",
    )?;
    may_grant(&caller, &state, &changes)?;
    let (new, record) = state.keys.create(&changes).await.map_err(team_is_input)?;
    caller.changed(
        &state.audit,
        actions::KEY_CREATED,
        &record.prefix,
        "created",
    );
    Ok((StatusCode::CREATED, Json(shown(&record, Some(&new)))))
}

async fn list(
    State(state): State<AppState>,
    caller: AdminCaller,
) -> Result<Json<Value>, AdminError> {
    let keys = if caller.sees_everything() {
        state.keys.list(None).await?
    } else {
        let team = caller.0.team.clone();
        caller.permit(
            &state.audit,
            Access::Read {
                team: team.as_deref(),
            },
            "keys",
        )?;
        state.keys.list(team.as_deref()).await?
    };
    let data: Vec<Value> = keys.iter().map(|k| shown(k, None)).collect();
    Ok(Json(serde_json::json!({ "object": "list", "data": data })))
}

async fn show(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path(prefix): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let record = load(&state, &caller, &prefix, false).await?;
    Ok(Json(shown(&record, None)))
}

async fn update(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path(prefix): Path<String>,
    ApiJson(changes): ApiJson<KeyChanges>,
) -> Result<Json<Value>, AdminError> {
    load(&state, &caller, &prefix, true).await?;
    if let Some(team) = &changes.team {
        // Moving a key: the caller must also own where it goes.
        caller.permit(
            &state.audit,
            Access::Write {
                team: team.as_deref(),
            },
            &prefix,
        )?;
    }
    may_grant(&caller, &state, &changes)?;
    let record = state
        .keys
        .update(&prefix, &changes)
        .await
        .map_err(team_is_input)?;
    caller.changed(&state.audit, actions::KEY_UPDATED, &prefix, "updated");
    Ok(Json(shown(&record, None)))
}

async fn revoke(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path(prefix): Path<String>,
) -> Result<Json<Value>, AdminError> {
    load(&state, &caller, &prefix, true).await?;
    let record = state.keys.revoke(&prefix).await?;
    caller.changed(&state.audit, actions::KEY_REVOKED, &prefix, "revoked");
    Ok(Json(shown(&record, None)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the old key keeps working; 0 (the default) ends it now.
    #[serde(default)]
    grace_seconds: u64,
}

async fn rotate(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path(prefix): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let body: RotateBody = if body.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        parse(&body)?
    };
    load(&state, &caller, &prefix, true).await?;
    let grace = Duration::from_secs(body.grace_seconds);
    let (new, record, old) = state.keys.rotate(&prefix, grace).await?;
    caller.changed(
        &state.audit,
        actions::KEY_ROTATED,
        &prefix,
        &format!(
            "rotated to {} with a grace of {} s",
            record.prefix, body.grace_seconds
        ),
    );
    let mut answer = shown(&record, Some(&new));
    if let Value::Object(map) = &mut answer {
        map.insert("old_key".into(), shown(&old, None));
    }
    Ok((StatusCode::CREATED, Json(answer)))
}
