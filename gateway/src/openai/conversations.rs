//! `/v1/conversations` and their items: create, retrieve, update metadata,
//! delete; add, list, get and delete items. A conversation is a session of
//! the store ([`crate::sessions`]); a response created with `conversation`
//! adds its input and output items to it.
//!
//! Beyond OpenAI's API, for clients that append concurrently: every answer
//! carries the conversation's version in `x-sluice-session-version`; an
//! item append or a metadata update with `If-Match: <version>` is refused
//! with 409 when another change came first; an `Idempotency-Key` header
//! makes a retried item append write nothing twice.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::chain::Caller;
use crate::error::ApiError;
use crate::openai::json::ApiJson;
use crate::openai::responses::{paging, query, SessionApi};
use crate::sessions::{Kind, NewItem, NewSession, SessionStore, Snapshot};
use crate::validate::responses as valid;
use crate::wire::responses::{
    ConversationCreateRequest, ConversationUpdateRequest, ItemsCreateRequest, ListQuery,
};

const VERSION_HEADER: &str = "x-sluice-session-version";

fn conversation_id() -> String {
    crate::util::new_id("conv").replace('-', "_")
}

/// The conversation object.
fn object(snapshot: &Snapshot) -> Value {
    let s = &snapshot.session;
    json!({
        "id": s.id,
        "object": "conversation",
        "created_at": s.created_at / 1000,
        "metadata": s.body.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn with_version(body: Value, version: i64) -> Response {
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(VERSION_HEADER, HeaderValue::from(version));
    response
}

/// `If-Match: <version>` (quotes allowed, as for an ETag).
fn expected_version(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get("if-match") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_matches('"'))
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|v| *v >= 1)
        .map(Some)
        .ok_or_else(|| {
            ApiError::invalid(
                "If-Match",
                "'If-Match' must be a conversation version (x-sluice-session-version)",
            )
        })
}

/// Items with their idempotency keys: the `Idempotency-Key` header and the
/// item's place, else the item's id.
fn new_items(caller: &Caller, headers: &HeaderMap, items: Vec<Value>) -> Vec<NewItem> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty());
    items
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let id = body["id"].as_str().unwrap_or_default().to_string();
            NewItem {
                key: key.map_or_else(|| id.clone(), |k| format!("{k}:{i}")),
                id,
                body,
                seal: caller.sensitive,
            }
        })
        .collect()
}

async fn load(api: &SessionApi, caller: &Caller, id: &str) -> Result<Snapshot, ApiError> {
    let snapshot = api
        .sessions
        .load(&caller.tenant.0, id)
        .await
        .map_err(|e| e.to_api("Conversation"))?;
    if snapshot.session.kind != Kind::Conversation {
        return Err(ApiError::NotFound {
            what: "Conversation",
            id: id.to_string(),
        });
    }
    Ok(snapshot)
}

/// `POST /v1/conversations`.
pub async fn create(
    State(api): State<SessionApi>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ConversationCreateRequest>,
) -> Result<Response, ApiError> {
    let metadata = valid::metadata(body.metadata)?;
    let items = valid::normalize_items("items", body.items.unwrap_or_default())?;
    let snapshot = api
        .sessions
        .create(
            NewSession {
                id: conversation_id(),
                tenant: caller.tenant.0.to_string(),
                user: caller.principal.user.as_deref().map(String::from),
                kind: Kind::Conversation,
                parent: None,
                conversation: None,
                body: json!({"metadata": metadata}),
                seal: caller.sensitive,
            },
            new_items(&caller, &headers, items),
        )
        .await
        .map_err(|e| e.to_api("Conversation"))?;
    Ok(with_version(object(&snapshot), snapshot.session.version))
}

/// `GET /v1/conversations/{id}`.
pub async fn retrieve(
    State(api): State<SessionApi>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let snapshot = load(&api, &caller, &id).await?;
    Ok(with_version(object(&snapshot), snapshot.session.version))
}

/// `POST /v1/conversations/{id}`: replaces the metadata.
pub async fn update(
    State(api): State<SessionApi>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ConversationUpdateRequest>,
) -> Result<Response, ApiError> {
    let expected = expected_version(&headers)?;
    let metadata = valid::metadata(body.metadata)?;
    load(&api, &caller, &id).await?;
    // A sensitive (or regulated) caller's metadata is sealed like its items.
    api.sessions
        .update_sealed(
            &caller.tenant.0,
            &id,
            expected,
            json!({"metadata": metadata}),
            caller.sensitive,
        )
        .await
        .map_err(|e| e.to_api("Conversation"))?;
    let snapshot = load(&api, &caller, &id).await?;
    Ok(with_version(object(&snapshot), snapshot.session.version))
}

/// `DELETE /v1/conversations/{id}`.
pub async fn delete(
    State(api): State<SessionApi>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    load(&api, &caller, &id).await?;
    api.sessions
        .delete(&caller.tenant.0, &id)
        .await
        .map_err(|e| e.to_api("Conversation"))?;
    Ok(Json(
        json!({"id": id, "object": "conversation.deleted", "deleted": true}),
    ))
}

/// `POST /v1/conversations/{id}/items`.
pub async fn add_items(
    State(api): State<SessionApi>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    _include: Result<Query<ListQuery>, QueryRejection>,
    ApiJson(body): ApiJson<ItemsCreateRequest>,
) -> Result<Response, ApiError> {
    let expected = expected_version(&headers)?;
    let items = valid::normalize_items("items", body.items.unwrap_or_default())?;
    if items.is_empty() {
        return Err(ApiError::invalid("items", "give at least one item"));
    }
    load(&api, &caller, &id).await?;
    let appended = api
        .sessions
        .append(
            &caller.tenant.0,
            &id,
            expected,
            new_items(&caller, &headers, items),
        )
        .await
        .map_err(|e| e.to_api("Conversation"))?;
    let data: Vec<Value> = appended.items.into_iter().map(|i| i.body).collect();
    let id_of = |v: Option<&Value>| v.and_then(|i| i.get("id")).cloned();
    let body = json!({
        "object": "list",
        "first_id": id_of(data.first()),
        "last_id": id_of(data.last()),
        "has_more": false,
        "data": data,
    });
    Ok(with_version(body, appended.version))
}

/// `GET /v1/conversations/{id}/items`.
pub async fn list_items(
    State(api): State<SessionApi>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let snapshot = load(&api, &caller, &id).await?;
    let version = snapshot.session.version;
    let items = snapshot.items.into_iter().map(|i| i.body).collect();
    Ok(with_version(paging::page(items, &q)?, version))
}

/// `GET /v1/conversations/{id}/items/{item_id}`.
pub async fn get_item(
    State(api): State<SessionApi>,
    caller: Caller,
    Path((id, item_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = load(&api, &caller, &id).await?;
    snapshot
        .items
        .into_iter()
        .find(|i| i.id == item_id)
        .map(|i| Json(i.body))
        .ok_or(ApiError::NotFound {
            what: "Item",
            id: item_id,
        })
}

/// `DELETE /v1/conversations/{id}/items/{item_id}`: the conversation.
pub async fn delete_item(
    State(api): State<SessionApi>,
    caller: Caller,
    Path((id, item_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    load(&api, &caller, &id).await?;
    api.sessions
        .delete_item(&caller.tenant.0, &id, &item_id)
        .await
        .map_err(|e| e.to_api("Conversation"))?;
    let snapshot = load(&api, &caller, &id).await?;
    Ok(with_version(object(&snapshot), snapshot.session.version))
}
