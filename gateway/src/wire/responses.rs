//! The Responses and Conversations APIs' request bodies, as sent (loosely
//! typed, like the chat request: the validator names what is wrong; every
//! field not listed lands in `other` and is refused by name).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// `POST /v1/responses`.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponseCreateRequest {
    pub model: Option<String>,
    /// A string, or an array of items.
    pub input: Option<Value>,
    pub instructions: Option<String>,
    pub previous_response_id: Option<String>,
    /// A conversation id, or `{"id": ...}`.
    pub conversation: Option<Value>,
    pub store: Option<bool>,
    pub stream: Option<bool>,
    pub metadata: Option<Value>,
    pub max_output_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// `auto` or `disabled` (the default).
    pub truncation: Option<String>,
    pub user: Option<String>,
    pub safety_identifier: Option<String>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {...}}`: text, json_object or json_schema.
    pub text: Option<Value>,
    // Known, accepted only in their "off" form.
    pub background: Option<bool>,
    pub reasoning: Option<Value>,
    pub include: Option<Vec<String>>,
    pub stream_options: Option<Value>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `POST /v1/conversations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationCreateRequest {
    pub metadata: Option<Value>,
    pub items: Option<Vec<Value>>,
}

/// `POST /v1/conversations/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationUpdateRequest {
    pub metadata: Option<Value>,
}

/// `POST /v1/conversations/{id}/items`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemsCreateRequest {
    pub items: Option<Vec<Value>>,
}

/// The paging of a list (`input_items`, conversation items).
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    pub limit: Option<i64>,
    /// `asc` or `desc` (the default).
    pub order: Option<String>,
    /// An item id: the page starts after it.
    pub after: Option<String>,
    /// Accepted and without effect (no extra fields to include here).
    pub include: Option<Value>,
    #[serde(rename = "include[]")]
    pub include_list: Option<Value>,
}

/// `GET /v1/responses/{id}`'s query.
#[derive(Debug, Default, Deserialize)]
pub struct RetrieveQuery {
    pub stream: Option<bool>,
    pub starting_after: Option<i64>,
    pub include: Option<Value>,
    #[serde(rename = "include[]")]
    pub include_list: Option<Value>,
    pub include_obfuscation: Option<bool>,
}
