//! The JSON body extractor. axum's own `Json` rejects with plain text and its
//! own statuses; this one answers in the OpenAI error shape, names the field
//! at fault (`messages[0].content`), and turns the body limit into a 413.

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
pub use crate::state::BodyLimit;

/// A JSON request body. Any content type is accepted: `curl -d` sends
/// `application/x-www-form-urlencoded`, and refusing that helps nobody.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
    BodyLimit: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit: BodyLimit::from_ref(state).0,
                }
            } else {
                ApiError::invalid_body(format!(
                    "cannot read the request body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses a body, naming the path of a field with a wrong type or value.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        describe(&path, &inner)
    })?;
    de.end().map_err(|e| describe(".", &e))?;
    Ok(value)
}

fn describe(path: &str, err: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::invalid_body(format!(
            "We could not parse the JSON body of your request ({err}). The API expects a JSON \
             object such as {{\"model\": ..., \"messages\": [...]}}."
        )),
        Category::Data if path == "." => {
            ApiError::invalid_body(format!("Invalid request body: {err}"))
        }
        Category::Data => ApiError::invalid(path, format!("Invalid value for '{path}': {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Req {
        temperature: Option<f64>,
        messages: Option<Vec<Msg>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Msg {
        role: String,
    }

    fn param_of(body: &str) -> Option<String> {
        match parse::<Req>(body.as_bytes()).unwrap_err() {
            ApiError::InvalidRequest { param, .. } => param,
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn malformed_json_is_400_without_param() {
        assert_eq!(param_of("{\"temperature\": "), None);
        assert_eq!(param_of("not json"), None);
        assert_eq!(param_of(""), None);
        assert_eq!(param_of("{} trailing"), None);
    }

    #[test]
    fn wrong_type_names_the_field() {
        assert_eq!(
            param_of(r#"{"temperature": "hot"}"#).as_deref(),
            Some("temperature")
        );
        assert_eq!(
            param_of(r#"{"messages": [{"role": 5}]}"#).as_deref(),
            Some("messages[0].role")
        );
    }

    #[test]
    fn not_an_object_is_400() {
        // The real request types have a flattened catch-all, so serde takes
        // them only from a map, never from an array of field values.
        let err = parse::<crate::wire::ChatCompletionRequest>(b"[\"m\", []]").unwrap_err();
        let ApiError::InvalidRequest { param, .. } = err else {
            panic!("not a 400: {err:?}")
        };
        assert_eq!(param, None);
    }
}
