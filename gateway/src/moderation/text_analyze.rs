//! Azure AI Content Safety text analysis:
//! `POST {endpoint}/contentsafety/text:analyze?api-version=2024-09-01` with
//! `{"text": "...", "categories": [...], "outputType": ...}`, answered with
//! `{"categoriesAnalysis": [{"category": "Hate", "severity": 2}, ...],
//! "blocklistsMatch": [...]}`.
//!
//! Harm categories (hate, self-harm, sexual, violence), not injection: the
//! right service where the uncertain band is about abuse rather than
//! instructions. Flagged when a category's severity reaches its threshold
//! (`[moderation] severity_thresholds`, default 4 each). Every text is one
//! `text` (prompt and documents joined by blank lines), cut at
//! [`AZURE_MAX_CHARS`] into several calls.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;

use super::{char_chunks, parse, Call, ModerationError, Texts, Verdict, AZURE_MAX_CHARS};

pub const API_VERSION: &str = "2024-09-01";

pub fn url(endpoint: &str) -> String {
    format!("{endpoint}/contentsafety/text:analyze?api-version={API_VERSION}")
}

/// One call per [`AZURE_MAX_CHARS`] of text, asking for the categories that
/// have a threshold. Four severity levels (0, 2, 4, 6) unless a threshold
/// is odd, which only the eight-level scale can reach exactly.
pub fn calls(texts: &Texts, thresholds: &BTreeMap<String, u8>) -> Vec<Call> {
    let joined = texts.all().cloned().collect::<Vec<_>>().join("\n\n");
    let output_type = if thresholds.values().any(|s| s % 2 == 1) {
        "EightSeverityLevels"
    } else {
        "FourSeverityLevels"
    };
    let categories: Vec<&String> = thresholds.keys().collect();
    char_chunks(&joined, AZURE_MAX_CHARS)
        .into_iter()
        .map(|text| Call {
            body: json!({
                "text": text,
                "categories": categories,
                "outputType": output_type,
            }),
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnalyzeResponse {
    categories_analysis: Vec<CategoryAnalysis>,
}

#[derive(Deserialize)]
struct CategoryAnalysis {
    category: String,
    /// Absent reads as 0 (the SDKs type it optional).
    #[serde(default)]
    severity: Option<u8>,
}

/// Flagged by the first category at or above its threshold; an answer that
/// leaves out a category asked for is malformed.
pub fn read(
    _call: &Call,
    body: &[u8],
    thresholds: &BTreeMap<String, u8>,
) -> Result<Verdict, ModerationError> {
    let answer: AnalyzeResponse = parse(body)?;
    for category in thresholds.keys() {
        if !answer
            .categories_analysis
            .iter()
            .any(|a| &a.category == category)
        {
            return Err(ModerationError::Malformed(format!(
                "no `{category}` in `categoriesAnalysis`"
            )));
        }
    }
    for analysis in &answer.categories_analysis {
        let severity = analysis.severity.unwrap_or(0);
        match thresholds.get(&analysis.category) {
            Some(&threshold) if severity >= threshold => {
                return Ok(Verdict::flagged(format!(
                    "{} severity {severity} >= {threshold}",
                    analysis.category
                )))
            }
            _ => {}
        }
    }
    Ok(Verdict::clean())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds(pairs: &[(&str, u8)]) -> BTreeMap<String, u8> {
        pairs.iter().map(|(c, s)| (c.to_string(), *s)).collect()
    }

    fn four() -> BTreeMap<String, u8> {
        thresholds(&[("Hate", 4), ("SelfHarm", 4), ("Sexual", 4), ("Violence", 4)])
    }

    #[test]
    fn the_text_is_joined_cut_and_asks_for_the_thresholded_categories() {
        let texts = Texts {
            prompt: vec!["one".into()],
            documents: vec!["two".into()],
        };
        let calls = calls(&texts, &four());
        assert_eq!(calls.len(), 1);
        assert_eq!(
            calls[0].body,
            json!({
                "text": "one\n\ntwo",
                "categories": ["Hate", "SelfHarm", "Sexual", "Violence"],
                "outputType": "FourSeverityLevels",
            })
        );
        let long = Texts {
            prompt: vec!["z".repeat(2 * AZURE_MAX_CHARS + 1)],
            documents: vec![],
        };
        let odd = thresholds(&[("Violence", 3)]);
        let calls = super::calls(&long, &odd);
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].body["outputType"], "EightSeverityLevels");
        assert_eq!(calls[2].body["text"], "z");
    }

    #[test]
    fn a_category_at_its_threshold_flags_and_below_it_does_not() {
        let call = &calls(
            &Texts {
                prompt: vec!["x".into()],
                documents: vec![],
            },
            &four(),
        )[0];
        let body = |violence: u8| {
            format!(
                r#"{{"blocklistsMatch":[],"categoriesAnalysis":[{{"category":"Hate","severity":0}},{{"category":"SelfHarm","severity":2}},{{"category":"Sexual","severity":0}},{{"category":"Violence","severity":{violence}}}]}}"#
            )
        };
        assert_eq!(
            read(call, body(2).as_bytes(), &four()),
            Ok(Verdict::clean())
        );
        assert_eq!(
            read(call, body(4).as_bytes(), &four()),
            Ok(Verdict::flagged("Violence severity 4 >= 4"))
        );
        // A lower threshold for one category.
        let strict = thresholds(&[("Hate", 4), ("SelfHarm", 2), ("Sexual", 4), ("Violence", 4)]);
        assert_eq!(
            read(call, body(0).as_bytes(), &strict),
            Ok(Verdict::flagged("SelfHarm severity 2 >= 2"))
        );
    }

    #[test]
    fn an_answer_missing_a_category_or_mistyped_is_malformed() {
        let call = Call { body: json!({}) };
        for body in [
            r#"{"categoriesAnalysis":[{"category":"Hate","severity":0}]}"#,
            r#"{"categoriesAnalysis":"none"}"#,
            r#"{"blocklistsMatch":[]}"#,
            "<html>502</html>",
        ] {
            let err = read(&call, body.as_bytes(), &four()).unwrap_err();
            assert_eq!(err.kind(), "malformed", "{body}: {err}");
        }
    }
}
