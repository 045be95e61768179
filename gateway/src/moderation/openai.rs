//! OpenAI-style moderation: `POST {endpoint}/moderations` (the endpoint up
//! to and including `/v1`) with `{"input": ["...", ...], "model": ...}`,
//! answered with `{"results": [{"flagged": bool, "categories": {...},
//! "category_scores": {"violence": 0.01, ...}}, ...]}`, one result per
//! input, in order. OpenAI, Azure OpenAI's compatible face, and
//! self-hosted services that copy the shape (another Sluice's
//! `/v1/moderations` among them) all speak it.
//!
//! Without `category_thresholds` the service's own `flagged` decides; with
//! them, a listed category whose score reaches its threshold does (and the
//! service's `flagged` is not read): an operator who tunes thresholds
//! wants their numbers, not the vendor's.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;

use super::{parse, Call, ModerationError, Texts, Verdict};

pub fn url(endpoint: &str) -> String {
    format!("{endpoint}/moderations")
}

/// One call with every text as an input.
pub fn calls(texts: &Texts, model: Option<&str>) -> Vec<Call> {
    let input: Vec<&String> = texts.all().collect();
    let mut body = json!({ "input": input });
    if let Some(model) = model {
        body["model"] = json!(model);
    }
    vec![Call { body }]
}

#[derive(Deserialize)]
struct ModerationResponse {
    results: Vec<ModerationResult>,
}

#[derive(Deserialize)]
struct ModerationResult {
    flagged: bool,
    #[serde(default)]
    category_scores: BTreeMap<String, f64>,
}

/// Flagged by the first input that is; an answer whose result count
/// differs from the inputs sent is malformed.
pub fn read(
    call: &Call,
    body: &[u8],
    thresholds: &BTreeMap<String, f64>,
) -> Result<Verdict, ModerationError> {
    let answer: ModerationResponse = parse(body)?;
    let sent = call.body["input"].as_array().map_or(0, Vec::len);
    if answer.results.len() != sent {
        return Err(ModerationError::Malformed(format!(
            "{} results for {sent} inputs",
            answer.results.len()
        )));
    }
    for (i, result) in answer.results.iter().enumerate() {
        if thresholds.is_empty() {
            if result.flagged {
                return Ok(Verdict::flagged(format!("input[{i}] flagged")));
            }
            continue;
        }
        for (category, &threshold) in thresholds {
            if let Some(&score) = result.category_scores.get(category) {
                if score >= threshold {
                    return Ok(Verdict::flagged(format!(
                        "input[{i}] {category} {score:.3} >= {threshold}"
                    )));
                }
            }
        }
    }
    Ok(Verdict::clean())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> Call {
        calls(
            &Texts {
                prompt: vec!["a".into()],
                documents: vec!["b".into()],
            },
            Some("omni-moderation-latest"),
        )
        .remove(0)
    }

    #[test]
    fn every_text_is_one_input_and_the_model_is_named_when_set() {
        assert_eq!(
            two().body,
            json!({"input": ["a", "b"], "model": "omni-moderation-latest"})
        );
        let bare = calls(
            &Texts {
                prompt: vec!["a".into()],
                documents: vec![],
            },
            None,
        );
        assert_eq!(bare[0].body, json!({"input": ["a"]}));
        assert_eq!(url("http://h/v1"), "http://h/v1/moderations");
    }

    #[test]
    fn flagged_decides_without_thresholds_and_scores_decide_with_them() {
        let body = r#"{"id":"modr-1","model":"omni-moderation-latest","results":[
            {"flagged":false,"categories":{"violence":false},"category_scores":{"violence":0.2}},
            {"flagged":true,"categories":{"violence":true},"category_scores":{"violence":0.7}}]}"#;
        let none = BTreeMap::new();
        assert_eq!(
            read(&two(), body.as_bytes(), &none),
            Ok(Verdict::flagged("input[1] flagged"))
        );
        // The operator's threshold above the service's call: clean.
        let high: BTreeMap<String, f64> = [("violence".to_string(), 0.9)].into();
        assert_eq!(read(&two(), body.as_bytes(), &high), Ok(Verdict::clean()));
        // Below it: the first input already flags, though the service did not.
        let low: BTreeMap<String, f64> = [("violence".to_string(), 0.1)].into();
        assert_eq!(
            read(&two(), body.as_bytes(), &low),
            Ok(Verdict::flagged("input[0] violence 0.200 >= 0.1"))
        );
    }

    #[test]
    fn a_result_count_that_differs_or_a_missing_field_is_malformed() {
        for body in [
            r#"{"results":[{"flagged":false}]}"#,
            r#"{"results":[{"flagged":false},{"category_scores":{}}]}"#,
            r#"{"error":{"message":"overloaded"}}"#,
            "",
        ] {
            let err = read(&two(), body.as_bytes(), &BTreeMap::new()).unwrap_err();
            assert_eq!(err.kind(), "malformed", "{body}: {err}");
        }
    }
}
