//! Azure AI Content Safety Prompt Shields:
//! `POST {endpoint}/contentsafety/text:shieldPrompt?api-version=2024-09-01`
//! with `{"userPrompt": "...", "documents": ["...", ...]}`, answered with
//! `{"userPromptAnalysis": {"attackDetected": bool}, "documentsAnalysis":
//! [{"attackDetected": bool}, ...]}` (one entry per document, in order).
//!
//! The prompt turns go as `userPrompt` (joined by blank lines), tool
//! results as `documents`: Prompt Shields looks for direct attacks in the
//! first and indirect ones (instructions hidden in content) in the second.
//! Each text field takes at most [`AZURE_MAX_CHARS`]; documents go at most
//! [`MAX_DOCUMENTS`] to a call and [`AZURE_MAX_CHARS`] in all, so a long
//! request is cut into several calls.

use serde::Deserialize;
use serde_json::json;

use super::{char_chunks, parse, Call, ModerationError, Texts, Verdict, AZURE_MAX_CHARS};

pub const API_VERSION: &str = "2024-09-01";
/// Documents one call carries at most.
pub const MAX_DOCUMENTS: usize = 5;

pub fn url(endpoint: &str) -> String {
    format!("{endpoint}/contentsafety/text:shieldPrompt?api-version={API_VERSION}")
}

/// The request bodies for `texts`: the prompt's pieces and the documents'
/// groups side by side, one call per pair.
pub fn calls(texts: &Texts) -> Vec<Call> {
    let prompts = char_chunks(&texts.prompt.join("\n\n"), AZURE_MAX_CHARS);
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut chars_in_last = 0;
    for piece in texts
        .documents
        .iter()
        .flat_map(|d| char_chunks(d, AZURE_MAX_CHARS))
    {
        let n = piece.chars().count();
        let fits = groups
            .last()
            .is_some_and(|g| g.len() < MAX_DOCUMENTS && chars_in_last + n <= AZURE_MAX_CHARS);
        if !fits {
            groups.push(Vec::new());
            chars_in_last = 0;
        }
        chars_in_last += n;
        if let Some(group) = groups.last_mut() {
            group.push(piece);
        }
    }
    let n = prompts.len().max(groups.len());
    let mut prompts = prompts.into_iter();
    let mut groups = groups.into_iter();
    (0..n)
        .map(|_| Call {
            body: json!({
                "userPrompt": prompts.next().unwrap_or_default(),
                "documents": groups.next().unwrap_or_default(),
            }),
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShieldResponse {
    user_prompt_analysis: Option<Analysis>,
    #[serde(default)]
    documents_analysis: Vec<Analysis>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Analysis {
    attack_detected: bool,
}

/// The verdict on one call's answer; an answer that does not cover what
/// was sent (no prompt analysis for a prompt, a document count that
/// differs) is malformed.
pub fn read(call: &Call, body: &[u8]) -> Result<Verdict, ModerationError> {
    let answer: ShieldResponse = parse(body)?;
    let sent_prompt = call.body["userPrompt"]
        .as_str()
        .is_some_and(|p| !p.is_empty());
    let sent_documents = call.body["documents"].as_array().map_or(0, Vec::len);
    if sent_prompt && answer.user_prompt_analysis.is_none() {
        return Err(ModerationError::Malformed(
            "no `userPromptAnalysis` for the prompt sent".into(),
        ));
    }
    if answer.documents_analysis.len() != sent_documents {
        return Err(ModerationError::Malformed(format!(
            "{} entries in `documentsAnalysis` for {sent_documents} documents sent",
            answer.documents_analysis.len()
        )));
    }
    if answer
        .user_prompt_analysis
        .is_some_and(|a| a.attack_detected)
    {
        return Ok(Verdict::flagged("userPrompt"));
    }
    Ok(
        match answer
            .documents_analysis
            .iter()
            .position(|a| a.attack_detected)
        {
            Some(i) => Verdict::flagged(format!("documents[{i}]")),
            None => Verdict::clean(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(prompt: &[&str], documents: &[&str]) -> Texts {
        Texts {
            prompt: prompt.iter().map(|s| s.to_string()).collect(),
            documents: documents.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_url_carries_the_path_and_api_version() {
        assert_eq!(
            url("https://cs.example.com"),
            "https://cs.example.com/contentsafety/text:shieldPrompt?api-version=2024-09-01"
        );
    }

    #[test]
    fn prompt_turns_go_as_user_prompt_and_tool_results_as_documents() {
        let calls = calls(&texts(
            &["be brief", "what is up"],
            &["page one", "page two"],
        ));
        assert_eq!(calls.len(), 1);
        assert_eq!(
            calls[0].body,
            json!({"userPrompt": "be brief\n\nwhat is up", "documents": ["page one", "page two"]})
        );
        // Documents only: an empty prompt beside them.
        let calls = super::calls(&texts(&[], &["page"]));
        assert_eq!(
            calls[0].body,
            json!({"userPrompt": "", "documents": ["page"]})
        );
    }

    #[test]
    fn long_texts_and_many_documents_are_cut_into_calls_within_the_limits() {
        let long = "x".repeat(AZURE_MAX_CHARS + 5);
        let docs: Vec<String> = (0..7).map(|i| format!("doc {i}")).collect();
        let docs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let calls = calls(&texts(&[&long], &docs));
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[0].body["userPrompt"].as_str().unwrap().len(),
            AZURE_MAX_CHARS
        );
        assert_eq!(calls[1].body["userPrompt"], "xxxxx");
        assert_eq!(calls[0].body["documents"].as_array().unwrap().len(), 5);
        assert_eq!(calls[1].body["documents"], json!(["doc 5", "doc 6"]));
        // Two documents that together pass the limit go to two calls.
        let half = "y".repeat(AZURE_MAX_CHARS / 2 + 1);
        assert_eq!(super::calls(&texts(&[], &[&half, &half])).len(), 2);
    }

    #[test]
    fn an_attack_in_the_prompt_or_a_document_flags_and_names_where() {
        let call = &calls(&texts(&["hi"], &["a", "b"]))[0];
        let read = |body: &str| read(call, body.as_bytes());
        assert_eq!(
            read(
                r#"{"userPromptAnalysis":{"attackDetected":false},"documentsAnalysis":[{"attackDetected":false},{"attackDetected":false}]}"#
            ),
            Ok(Verdict::clean())
        );
        assert_eq!(
            read(
                r#"{"userPromptAnalysis":{"attackDetected":true},"documentsAnalysis":[{"attackDetected":false},{"attackDetected":false}]}"#
            ),
            Ok(Verdict::flagged("userPrompt"))
        );
        assert_eq!(
            read(
                r#"{"userPromptAnalysis":{"attackDetected":false},"documentsAnalysis":[{"attackDetected":false},{"attackDetected":true}]}"#
            ),
            Ok(Verdict::flagged("documents[1]"))
        );
    }

    #[test]
    fn answers_that_do_not_cover_what_was_sent_are_malformed() {
        let call = &calls(&texts(&["hi"], &["a"]))[0];
        for body in [
            "not json",
            r#"{"documentsAnalysis":[{"attackDetected":false}]}"#,
            r#"{"userPromptAnalysis":{"attackDetected":false},"documentsAnalysis":[]}"#,
            r#"{"userPromptAnalysis":{"attackDetected":"yes"},"documentsAnalysis":[{"attackDetected":false}]}"#,
        ] {
            let err = read(call, body.as_bytes()).unwrap_err();
            assert_eq!(err.kind(), "malformed", "{body}: {err}");
        }
    }
}
