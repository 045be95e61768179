//! `POST /v1/embeddings`, OpenAI-compatible.
//!
//! `input` is a string, an array of strings, an array of token ids or an
//! array of token-id arrays; texts are tokenised here with the encoder's own
//! tokenizer (`[CLS] … [SEP]` for BERT), token arrays are taken as they are.
//! The model is looked up first, so an unknown one is a 404 whatever the
//! rest of the body holds. Every input is then checked (empty, too long, ids
//! outside the vocabulary) and refused with its index before anything is
//! queued, so one bad item never costs the pool work; parsing and
//! tokenising run on a blocking thread, once per request, not on the async
//! workers. Design decision: a request's inputs go to the pool through one
//! `encode_many`, so a 32-item request runs as one batch, items from
//! concurrent requests share batches, and a request with more inputs than
//! the pool's queue holds is fed to it as earlier inputs come back (OpenAI
//! takes up to 2048 inputs; `queue_capacity` bounds waiting work, not the
//! size of a request).

use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::EncoderKind;
use crate::encoders::ReadyEncoder;
use crate::error::ApiError;
use crate::openai::json::ApiJson;
use crate::state::AppState;

/// OpenAI's own cap on inputs per request.
pub const MAX_INPUTS: usize = 2048;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: Value,
    pub encoding_format: Option<String>,
    pub dimensions: Option<i64>,
    /// Accepted for compatibility; only logged.
    pub user: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingResponse {
    object: &'static str,
    data: Vec<EmbeddingData>,
    model: String,
    usage: EmbeddingUsage,
}

#[derive(Debug, Serialize)]
struct EmbeddingData {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
struct EmbeddingUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// One input as the client wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum RawInput {
    Text(String),
    Tokens(Vec<u32>),
}

fn input_param(index: Option<usize>) -> String {
    index.map_or_else(|| "input".to_string(), |i| format!("input[{i}]"))
}

fn token_array(items: &[Value], index: Option<usize>) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        input_param(index),
                        format!("token ids must be non-negative integers below 2^32, got {v}"),
                    )
                })
        })
        .collect()
}

/// The wire `input` as a list of inputs, or a 400 naming the part at fault.
pub fn parse_input(input: &Value) -> Result<Vec<RawInput>, ApiError> {
    let items =
        match input {
            Value::String(s) => return Ok(vec![RawInput::Text(s.clone())]),
            Value::Array(items) => items,
            _ => return Err(ApiError::invalid(
                "input",
                "input must be a string, an array of strings, an array of token ids or an array \
                 of token-id arrays",
            )),
        };
    if items.is_empty() {
        return Err(ApiError::invalid(
            "input",
            "input must not be an empty array",
        ));
    }
    if items.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            "input",
            format!(
                "input has {} items; at most {MAX_INPUTS} are allowed",
                items.len()
            ),
        ));
    }
    if items.iter().all(Value::is_number) {
        return Ok(vec![RawInput::Tokens(token_array(items, None)?)]);
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(RawInput::Text(s.clone())),
            Value::Array(ids) => Ok(RawInput::Tokens(token_array(ids, Some(i))?)),
            _ => Err(ApiError::invalid(
                input_param(Some(i)),
                "each item must be a string or an array of token ids",
            )),
        })
        .collect()
}

/// Token ids per input, checked against the encoder's limits.
pub fn tokenize_inputs(
    encoder: &ReadyEncoder,
    inputs: Vec<RawInput>,
    single: bool,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let vocab = encoder.tokenizer.vocab_size();
    inputs
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let param = input_param((!single).then_some(i));
            let ids = match raw {
                RawInput::Text(text) => {
                    if text.is_empty() {
                        return Err(ApiError::invalid(
                            param,
                            "input must not be an empty string",
                        ));
                    }
                    encoder
                        .tokenizer
                        .encode_with_special_tokens(&text)
                        .map_err(|e| ApiError::invalid(param.clone(), e.to_string()))?
                }
                RawInput::Tokens(ids) => {
                    if ids.is_empty() {
                        return Err(ApiError::invalid(param, "a token array must not be empty"));
                    }
                    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                        return Err(ApiError::invalid(
                            param,
                            format!("token id {bad} is outside the vocabulary of {vocab}"),
                        ));
                    }
                    ids
                }
            };
            if ids.len() > encoder.max_len {
                return Err(ApiError::InvalidRequest {
                    message: format!(
                        "{param} has {} tokens; the model `{}` takes at most {}",
                        ids.len(),
                        encoder.id,
                        encoder.max_len
                    ),
                    param: Some(param),
                    code: Some("context_length_exceeded"),
                });
            }
            Ok(ids)
        })
        .collect()
}

/// The first `dimensions` components, renormalised when the model's output is.
pub fn shorten(vector: &[f32], dimensions: usize, renormalize: bool) -> Vec<f32> {
    let mut v = vector[..dimensions.min(vector.len())].to_vec();
    if renormalize && dimensions < vector.len() {
        sluice_models::encoder::l2_normalize(&mut v);
    }
    v
}

/// Little-endian f32 bytes in base64, as OpenAI sends `encoding_format = "base64"`.
pub fn to_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn embedding_encoder(state: &AppState, id: &str) -> Result<ReadyEncoder, ApiError> {
    if state.encoders.get(id).is_none() && state.registry.get(id).is_ok() {
        return Err(ApiError::invalid(
            "model",
            format!("`{id}` is a chat model; name an embedding model for /v1/embeddings"),
        ));
    }
    let encoder = state.encoders.ready(id)?;
    if encoder.kind != EncoderKind::Embedding {
        return Err(ApiError::invalid(
            "model",
            format!("`{id}` is a classifier; name an embedding model for /v1/embeddings"),
        ));
    }
    Ok(encoder)
}

pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<EmbeddingRequest>,
) -> Result<Json<EmbeddingResponse>, ApiError> {
    let EmbeddingRequest {
        model,
        input,
        encoding_format,
        dimensions,
        user,
    } = body;
    let encoder = embedding_encoder(&state, &model)?;
    let base64 = match encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("`{other}` is not \"float\" or \"base64\""),
            ))
        }
    };
    let dimensions = match dimensions {
        None => encoder.dim,
        Some(d) if d >= 1 && (d as u64) <= encoder.dim as u64 => d as usize,
        Some(d) => {
            return Err(ApiError::invalid(
                "dimensions",
                format!(
                    "dimensions must be between 1 and {} for `{model}`, got {d}",
                    encoder.dim
                ),
            ))
        }
    };
    let single = !input.is_array()
        || input
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_number));
    let tokenizing = encoder.clone();
    let ids = tokio::task::spawn_blocking(move || {
        tokenize_inputs(&tokenizing, parse_input(&input)?, single)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("embeddings tokenizer task: {e}")))??;
    let prompt_tokens = ids.iter().map(Vec::len).sum();
    tracing::debug!(model = %model, inputs = ids.len(), prompt_tokens, user = user.as_deref(), "embeddings");
    let vectors = tokio::time::timeout(state.request_timeout, encoder.handle.encode_many(ids))
        .await
        .map_err(|_| ApiError::Timeout(state.request_timeout))?
        .map_err(|e| ApiError::from_engine(e, std::time::Duration::from_secs(1)))?;
    let data = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let v = shorten(v, dimensions, encoder.normalized);
            EmbeddingData {
                object: "embedding",
                index,
                embedding: if base64 {
                    EmbeddingValue::Base64(to_base64(&v))
                } else {
                    EmbeddingValue::Float(v)
                },
            }
        })
        .collect();
    Ok(Json(EmbeddingResponse {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_input_shape_parses() {
        assert_eq!(
            parse_input(&json!("hi")).unwrap(),
            vec![RawInput::Text("hi".into())]
        );
        assert_eq!(
            parse_input(&json!(["a", "b"])).unwrap(),
            vec![RawInput::Text("a".into()), RawInput::Text("b".into())]
        );
        assert_eq!(
            parse_input(&json!([1, 2, 3])).unwrap(),
            vec![RawInput::Tokens(vec![1, 2, 3])]
        );
        assert_eq!(
            parse_input(&json!([[1], [2, 3]])).unwrap(),
            vec![RawInput::Tokens(vec![1]), RawInput::Tokens(vec![2, 3])]
        );
    }

    fn param_of(err: ApiError) -> Option<String> {
        match err {
            ApiError::InvalidRequest { param, .. } => param,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn bad_inputs_name_the_item_at_fault() {
        assert_eq!(
            param_of(parse_input(&json!([])).unwrap_err()).unwrap(),
            "input"
        );
        assert_eq!(
            param_of(parse_input(&json!(5)).unwrap_err()).unwrap(),
            "input"
        );
        assert_eq!(
            param_of(parse_input(&json!(["ok", 3, "x"])).unwrap_err()).unwrap(),
            "input[1]"
        );
        assert_eq!(
            param_of(parse_input(&json!(["ok", {"a": 1}])).unwrap_err()).unwrap(),
            "input[1]"
        );
        assert_eq!(
            param_of(parse_input(&json!([[1], [-2]])).unwrap_err()).unwrap(),
            "input[1]"
        );
        let too_many = Value::Array(vec![json!("x"); MAX_INPUTS + 1]);
        assert_eq!(
            param_of(parse_input(&too_many).unwrap_err()).unwrap(),
            "input"
        );
    }

    #[test]
    fn shortening_renormalises_only_normalised_models() {
        let v = [0.6f32, 0.8, 0.0];
        let short = shorten(&v, 1, true);
        assert_eq!(short, vec![1.0]);
        assert_eq!(shorten(&v, 1, false), vec![0.6]);
        assert_eq!(shorten(&v, 3, true), v.to_vec());
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let text = to_base64(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        assert_eq!(bytes.len(), 8);
        assert_eq!(f32::from_le_bytes(bytes[0..4].try_into().unwrap()), 1.0);
        assert_eq!(f32::from_le_bytes(bytes[4..8].try_into().unwrap()), -2.5);
    }
}
