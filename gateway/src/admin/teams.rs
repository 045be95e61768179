//! `/admin/teams`: teams carry a tenant, a model allowlist and limits that
//! every key of the team shares. Only an admin changes them (a team admin
//! raising its own team's limits would defeat them); an auditor reads all,
//! a team admin its own.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use super::{AdminCaller, AdminError};
use crate::audit::actions;
use crate::auth::Access;
use crate::keys::{TeamChanges, TeamRecord};
use crate::openai::json::ApiJson;
use crate::state::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/teams", post(create).get(list))
        .route("/admin/teams/{id}", get(show).patch(update).delete(remove))
}

fn shown(team: &TeamRecord) -> Value {
    serde_json::to_value(team).unwrap_or(Value::Null)
}

async fn create(
    State(state): State<AppState>,
    caller: AdminCaller,
    ApiJson(changes): ApiJson<TeamChanges>,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    caller.permit(&state.audit, Access::Write { team: None }, "team")?;
    let team = state.keys.create_team(&changes).await?;
    caller.changed(&state.audit, actions::TEAM_CHANGED, &team.id, "created");
    Ok((StatusCode::CREATED, Json(shown(&team))))
}

async fn list(
    State(state): State<AppState>,
    caller: AdminCaller,
) -> Result<Json<Value>, AdminError> {
    let teams = if caller.sees_everything() {
        state.keys.list_teams().await?
    } else {
        let own = caller.0.team.clone();
        caller.permit(
            &state.audit,
            Access::Read {
                team: own.as_deref(),
            },
            "teams",
        )?;
        let own = own.unwrap_or_default();
        vec![state.keys.get_team(&own).await?]
    };
    let data: Vec<Value> = teams.iter().map(shown).collect();
    Ok(Json(serde_json::json!({ "object": "list", "data": data })))
}

async fn show(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    caller.permit(&state.audit, Access::Read { team: Some(&id) }, &id)?;
    Ok(Json(shown(&state.keys.get_team(&id).await?)))
}

async fn update(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
    ApiJson(changes): ApiJson<TeamChanges>,
) -> Result<Json<Value>, AdminError> {
    caller.permit(&state.audit, Access::Write { team: None }, &id)?;
    let team = state.keys.update_team(&id, &changes).await?;
    caller.changed(&state.audit, actions::TEAM_CHANGED, &id, "updated");
    Ok(Json(shown(&team)))
}

async fn remove(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    caller.permit(&state.audit, Access::Write { team: None }, &id)?;
    let team = state.keys.delete_team(&id).await?;
    caller.changed(&state.audit, actions::TEAM_CHANGED, &id, "deleted");
    Ok(Json(shown(&team)))
}
