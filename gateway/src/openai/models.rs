//! `GET /v1/models` and `GET /v1/models/{id}`.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;

use crate::encoders::EncoderSlot;
use crate::error::ApiError;
use crate::registry::ModelSlot;
use crate::server::AppState;

#[derive(Debug, Serialize)]
pub struct Model {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    /// The context length, once the model is loaded (vLLM reports it too).
    #[serde(skip_serializing_if = "Option::is_none")]
    max_model_len: Option<usize>,
    /// "embedding" or "classifier" for in-process encoders; absent for chat models.
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    object: &'static str,
    data: Vec<Model>,
}

fn model(slot: &ModelSlot) -> Model {
    Model {
        id: slot.config.id.clone(),
        object: "model",
        created: slot.created,
        owned_by: "sluice",
        max_model_len: slot.engine().map(|e| e.info().max_model_len),
        kind: None,
    }
}

fn encoder_model(slot: &EncoderSlot) -> Model {
    Model {
        id: slot.config.id.clone(),
        object: "model",
        created: slot.created,
        owned_by: "sluice",
        max_model_len: slot.ready().map(|e| e.max_len),
        kind: Some(slot.config.kind.as_str()),
    }
}

/// Every configured model and encoder, loaded or still loading.
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: state
            .registry
            .slots()
            .iter()
            .map(|s| model(s))
            .chain(state.encoders.slots().iter().map(|s| encoder_model(s)))
            .collect(),
    })
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Model>, ApiError> {
    if let Some(slot) = state.encoders.get(&id) {
        return Ok(Json(encoder_model(slot)));
    }
    Ok(Json(model(state.registry.get(&id)?)))
}
