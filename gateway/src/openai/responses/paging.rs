//! Cursor paging of item lists (`input_items`, conversation items):
//! `limit` (1-100, default 20), `order` (`desc` by default) and `after` (an
//! item id: the page starts after it), answered as OpenAI lists them.

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::wire::responses::ListQuery;

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

/// One page of `items` (stored in ascending order).
pub fn page(mut items: Vec<Value>, q: &ListQuery) -> Result<Value, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("'limit' is {limit}; it must be between 1 and {MAX_LIMIT}"),
        ));
    }
    match q.order.as_deref() {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(other) => {
            return Err(ApiError::invalid(
                "order",
                format!("'order' is '{other}'; it must be 'asc' or 'desc'"),
            ))
        }
    }
    let id_of = |item: &Value| item.get("id").and_then(Value::as_str).map(String::from);
    let start = match &q.after {
        None => 0,
        Some(after) => match items
            .iter()
            .position(|i| id_of(i).as_deref() == Some(after.as_str()))
        {
            Some(at) => at + 1,
            None => {
                return Err(ApiError::invalid(
                    "after",
                    format!("no item with id '{after}' in this list"),
                ))
            }
        },
    };
    let limit = usize::try_from(limit).unwrap_or(DEFAULT_LIMIT as usize);
    let rest = items.len().saturating_sub(start);
    let data: Vec<Value> = items.into_iter().skip(start).take(limit).collect();
    Ok(json!({
        "object": "list",
        "first_id": data.first().and_then(id_of),
        "last_id": data.last().and_then(id_of),
        "has_more": rest > data.len(),
        "data": data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!({"id": format!("i{i}")})).collect()
    }

    #[test]
    fn pages_follow_the_cursor_to_the_end() {
        let q = |after: Option<&str>| ListQuery {
            limit: Some(2),
            order: Some("asc".into()),
            after: after.map(String::from),
            ..Default::default()
        };
        let p1 = page(items(5), &q(None)).unwrap();
        assert_eq!(p1["first_id"], "i0");
        assert_eq!(p1["has_more"], true);
        let p2 = page(items(5), &q(p1["last_id"].as_str())).unwrap();
        assert_eq!(p2["first_id"], "i2");
        let p3 = page(items(5), &q(p2["last_id"].as_str())).unwrap();
        assert_eq!(p3["data"].as_array().unwrap().len(), 1);
        assert_eq!(p3["has_more"], false);
    }

    #[test]
    fn the_default_order_is_newest_first() {
        let p = page(items(3), &ListQuery::default()).unwrap();
        assert_eq!(p["first_id"], "i2");
    }
}
