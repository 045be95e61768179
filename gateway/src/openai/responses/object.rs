//! The response object (`"object": "response"`) as the API shows it, and
//! the form it is stored in: the final object plus the pieces its stream
//! was made of (for a replay with the same events).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_runtime::Usage;

use super::Piece;
use crate::error::ApiError;
use crate::validate::responses::Truncation;
use crate::wire::responses::ResponseCreateRequest;

/// One turn of `/v1/responses`, as stored.
pub struct Turn {
    pub id: String,
    pub created_at: u64,
    pub tenant: String,
    pub user: Option<String>,
    pub store: bool,
    pub previous: Option<String>,
    pub conversation: Option<String>,
    /// Checked `metadata` (an object).
    pub metadata: Value,
    pub truncation: Truncation,
    /// The request's own items, normalised (with ids).
    pub input: Vec<Value>,
    /// The conversation, or the first response of the chain: what the
    /// engine keeps warm between turns.
    pub root: String,
    /// A sensitive caller's turn: its content is encrypted at rest.
    pub seal: bool,
    /// `background: true`: run by a task of its own, stored `queued` first.
    pub background: bool,
}

/// How an answer ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Completed,
    /// Cut at `max_output_tokens`.
    Incomplete,
    Failed(ApiError),
}

/// A fresh response id, `resp_` and 24 hex digits.
pub fn response_id() -> String {
    crate::util::new_id("resp").replace('-', "_")
}

/// The response as it starts: `in_progress`, no output, no usage.
pub fn skeleton(turn: &Turn, req: &ResponseCreateRequest, model: &str) -> Value {
    let format = req
        .text
        .as_ref()
        .and_then(|t| t.get("format"))
        .cloned()
        .unwrap_or_else(|| json!({"type": "text"}));
    json!({
        "id": turn.id,
        "object": "response",
        "created_at": turn.created_at,
        "status": "in_progress",
        "background": turn.background,
        "error": null,
        "incomplete_details": null,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls.unwrap_or(true),
        "previous_response_id": turn.previous,
        "conversation": turn.conversation.as_ref().map(|id| json!({"id": id})),
        "reasoning": {"effort": null, "summary": null},
        "store": turn.store,
        "temperature": req.temperature.unwrap_or(1.0),
        "text": {"format": format},
        "tool_choice": req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        "tools": req.tools.clone().unwrap_or_else(|| json!([])),
        "top_p": req.top_p.unwrap_or(1.0),
        "truncation": turn.truncation.as_str(),
        "usage": null,
        "user": req.user,
        "metadata": turn.metadata,
    })
}

/// A stored response's starting form again (for a replay).
pub fn skeleton_of(response: &Value) -> Value {
    let mut skeleton = response.clone();
    if let Value::Object(map) = &mut skeleton {
        map.insert("status".into(), json!("in_progress"));
        map.insert("output".into(), json!([]));
        map.insert("usage".into(), Value::Null);
        map.insert("error".into(), Value::Null);
        map.insert("incomplete_details".into(), Value::Null);
    }
    skeleton
}

/// The final response.
pub fn finish(skeleton: &Value, output: &[Value], outcome: &Outcome, usage: &Usage) -> Value {
    let mut response = skeleton.clone();
    let (status, error, incomplete) = match outcome {
        Outcome::Completed => ("completed", Value::Null, Value::Null),
        Outcome::Incomplete => (
            "incomplete",
            Value::Null,
            json!({"reason": "max_output_tokens"}),
        ),
        Outcome::Failed(err) => {
            let body = err.body();
            (
                "failed",
                json!({"code": body.error.code.unwrap_or("server_error"),
                       "message": body.error.message}),
                Value::Null,
            )
        }
    };
    if let Value::Object(map) = &mut response {
        map.insert("status".into(), json!(status));
        map.insert("error".into(), error);
        map.insert("incomplete_details".into(), incomplete);
        map.insert("output".into(), Value::Array(output.to_vec()));
        map.insert(
            "usage".into(),
            json!({
                "input_tokens": usage.prompt_tokens,
                "input_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
                "output_tokens": usage.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage.prompt_tokens.saturating_add(usage.completion_tokens),
            }),
        );
    }
    response
}

/// A stored response's body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stored {
    pub response: Value,
    #[serde(default)]
    pub pieces: Vec<Piece>,
    /// Whether it is stored sealed (a sensitive caller's): a later change
    /// (a background run's end, a cancel) seals it too, whoever makes it.
    #[serde(default)]
    pub seal: bool,
}

impl Stored {
    pub fn read(body: &Value) -> Result<Self, ApiError> {
        Self::deserialize(body)
            .map_err(|e| ApiError::Internal(format!("a stored response is unreadable: {e}")))
    }

    pub fn write(self) -> Value {
        let mut body = json!({"response": self.response, "pieces": self.pieces});
        if self.seal {
            body["seal"] = json!(true);
        }
        body
    }
}
