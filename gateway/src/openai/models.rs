//! `GET /v1/models` and `GET /v1/models/{id}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Serialize;

use crate::auth::Principal;
use crate::config::SamplingDefaults;
use crate::encoders::EncoderSlot;
use crate::error::ApiError;
use crate::registry::ModelSlot;
use crate::state::AppState;

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
    /// The sampling parameters a request that leaves them out gets
    /// (`[models.defaults]` over `generation_config.json`); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    defaults: Option<SamplingDefaults>,
}

/// A model's sampling defaults as shown, `None` when it has none.
fn defaults_wire(d: Option<&SamplingDefaults>) -> Option<SamplingDefaults> {
    d.filter(|d| !d.is_empty()).cloned()
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    object: &'static str,
    data: Vec<Model>,
}

/// `defaults`: what a request for this id gets, which is the model's own
/// unless a `[[routes]]` entry of the same name may send it elsewhere.
fn model(slot: &ModelSlot, defaults: Option<&SamplingDefaults>) -> Model {
    Model {
        id: slot.config.id.clone(),
        object: "model",
        created: slot.created,
        owned_by: "sluice",
        max_model_len: slot.engine().map(|e| e.info().max_model_len),
        kind: None,
        defaults: defaults_wire(defaults),
    }
}

/// A public model name of a `[[routes]]` entry that is not a local model id.
fn routed(id: &str, created: u64, defaults: Option<&SamplingDefaults>) -> Model {
    Model {
        id: id.to_string(),
        object: "model",
        created,
        owned_by: "sluice",
        max_model_len: None,
        kind: None,
        defaults: defaults_wire(defaults),
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
        defaults: None,
    }
}

/// Every configured model and encoder (loaded or still loading), then the
/// public names of the routes; only those the caller may use.
pub async fn list(
    State(state): State<AppState>,
    principal: Option<Extension<Arc<Principal>>>,
) -> Json<ModelList> {
    let created = state.registry.slots().first().map_or(0, |s| s.created);
    let mut data: Vec<Model> = state
        .registry
        .slots()
        .iter()
        .map(|s| model(s, state.router.sampling_defaults(&s.config.id)))
        .collect();
    data.extend(state.encoders.slots().iter().map(|s| encoder_model(s)));
    data.extend(
        state
            .router
            .public_models()
            .map(|id| routed(id, created, state.router.sampling_defaults(id))),
    );
    if let Some(Extension(p)) = principal {
        data.retain(|m| p.may_use_model(&m.id));
    }
    Json(ModelList {
        object: "list",
        data,
    })
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Model>, ApiError> {
    if let Ok(slot) = state.registry.get(&id) {
        return Ok(Json(model(slot, state.router.sampling_defaults(&id))));
    }
    if let Some(slot) = state.encoders.get(&id) {
        return Ok(Json(encoder_model(slot)));
    }
    if state.router.has_route(&id) {
        let created = state.registry.slots().first().map_or(0, |s| s.created);
        return Ok(Json(routed(
            &id,
            created,
            state.router.sampling_defaults(&id),
        )));
    }
    Err(ApiError::ModelNotFound(id))
}
