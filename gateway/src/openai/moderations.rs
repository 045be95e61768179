//! `POST /v1/moderations` in OpenAI's shape, answered by the input guard.
//! All texts of a request are scored in one guard call (their pieces share
//! encoder batches), bounded by `[guard] timeout_ms`: past it the answer is
//! a 504 timeout error.
//!
//! Design decision: only `prompt_injection` is reported. OpenAI's own keys
//! (`hate`, `violence`, `sexual`, ...) are left out rather than filled with
//! zeros: the guard has no model for them, and a `false` we cannot back
//! would read as "checked and clean" to a client that trusts it.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::guard::verdict::{Guard, GuardVerdict};
use crate::openai::json::ApiJson;
use crate::state::AppState;
use crate::util::new_id;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModerationRequest {
    /// A string or an array of strings.
    pub input: serde_json::Value,
    pub model: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ModerationResponse {
    pub id: String,
    pub model: String,
    pub results: Vec<ModerationResult>,
}

#[derive(Debug, Serialize)]
pub struct ModerationResult {
    pub flagged: bool,
    pub categories: BTreeMap<&'static str, bool>,
    pub category_scores: BTreeMap<&'static str, f64>,
}

impl From<GuardVerdict> for ModerationResult {
    fn from(v: GuardVerdict) -> Self {
        Self {
            flagged: v.flagged,
            categories: v.categories.iter().map(|(k, c)| (*k, c.flagged)).collect(),
            category_scores: v.categories.iter().map(|(k, c)| (*k, c.score)).collect(),
        }
    }
}

/// The texts of `input`, checked: a string, or a non-empty array of at most
/// `max_inputs` strings.
pub fn parse_input(input: &serde_json::Value, max_inputs: usize) -> Result<Vec<String>, ApiError> {
    match input {
        serde_json::Value::String(s) => Ok(vec![s.clone()]),
        serde_json::Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::invalid(
                    "input",
                    "`input` is an empty array; give a string or at least one string",
                ));
            }
            if items.len() > max_inputs {
                return Err(ApiError::invalid(
                    "input",
                    format!(
                        "`input` has {} items; at most {max_inputs} per request",
                        items.len()
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    serde_json::Value::String(s) => Ok(s.clone()),
                    other => Err(ApiError::invalid(
                        format!("input[{i}]"),
                        format!(
                            "`input[{i}]` is {}; this guard moderates text only, give a string",
                            kind(other)
                        ),
                    )),
                })
                .collect()
        }
        other => Err(ApiError::invalid(
            "input",
            format!(
                "`input` is {}; give a string or an array of strings",
                kind(other)
            ),
        )),
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn guard_for<'a>(state: &'a AppState, model: Option<&str>) -> Result<&'a Guard, ApiError> {
    let guard = state
        .guard
        .as_deref()
        .ok_or_else(|| ApiError::ModelNotFound(model.unwrap_or("guard").to_string()))?;
    match model {
        Some(m) if m != guard.id => Err(ApiError::ModelNotFound(m.to_string())),
        _ => Ok(guard),
    }
}

pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ModerationRequest>,
) -> Result<Json<ModerationResponse>, ApiError> {
    let ModerationRequest { input, model } = body;
    // The model is checked before anything is read from `input`: an unknown
    // one is a 404 whatever the input holds, and costs no encoder work.
    let guard = guard_for(&state, model.as_deref())?;
    let texts = parse_input(&input, guard.max_inputs)?;
    let results = guard
        .verdicts(state.encoders.as_ref(), texts)
        .await?
        .into_iter()
        .map(ModerationResult::from)
        .collect();
    Ok(Json(ModerationResponse {
        id: new_id("modr"),
        model: guard.id.clone(),
        results,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param_of(err: ApiError) -> Option<String> {
        match err {
            ApiError::InvalidRequest { param, .. } => param,
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn strings_and_arrays_of_strings_are_accepted() {
        assert_eq!(parse_input(&json!("hi"), 4).unwrap(), ["hi"]);
        assert_eq!(parse_input(&json!(["a", ""]), 4).unwrap(), ["a", ""]);
    }

    #[test]
    fn bad_inputs_are_400_naming_the_item() {
        assert_eq!(
            param_of(parse_input(&json!([]), 4).unwrap_err()).as_deref(),
            Some("input")
        );
        assert_eq!(
            param_of(parse_input(&json!(["a", 3]), 4).unwrap_err()).as_deref(),
            Some("input[1]")
        );
        assert_eq!(
            param_of(parse_input(&json!(vec!["a"; 5]), 4).unwrap_err()).as_deref(),
            Some("input")
        );
        assert_eq!(
            param_of(parse_input(&json!(null), 4).unwrap_err()).as_deref(),
            Some("input")
        );
        assert_eq!(
            param_of(parse_input(&json!({"text": "x"}), 4).unwrap_err()).as_deref(),
            Some("input")
        );
    }
}
