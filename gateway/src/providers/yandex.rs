//! YandexGPT, natively: the Foundation Models `completion` call
//! (`modelUri` `gpt://<folder>/<model>`, `completionOptions`, messages with
//! `role` and `text`), authorised by an `Api-Key` or an IAM `Bearer` token
//! plus `x-folder-id`.
//!
//! Its stream is newline-delimited JSON, and each line carries the whole
//! text so far (cumulative alternatives), not a delta. Design choice: we
//! remember what was sent per choice and emit only the new suffix; if an
//! update is not an extension of what was sent (the upstream rewrote its
//! text), the client cannot be made to unsee it, so we log it, resynchronise
//! on the new text and go on: no duplicated text, no panic on a cut
//! character.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sluice_runtime::FinishReason;

use super::answer::{Decoded, EventDecoder, ReadyAnswer, StreamAnswer};
use super::messages::wire_messages;
use super::openai_compat::{refuse_structured, refuse_token_level};
use super::secret::read_secret;
use super::sse_client::Framing;
use super::usage::saturating_count;
use super::{
    http_client, request_error, sensitive_header, status_error, Provider, ProviderConfig,
    ProviderError, ProviderRequest,
};
use crate::answer::BoxAnswer;
use crate::config::Secret;
use crate::validate::Sampling;

const DEFAULT_BASE_URL: &str = "https://llm.api.cloud.yandex.net";

enum Credential {
    ApiKey(Secret),
    Iam(Secret),
}

impl Credential {
    fn header(&self) -> String {
        match self {
            Self::ApiKey(key) => format!("Api-Key {}", key.expose()),
            Self::Iam(token) => format!("Bearer {}", token.expose()),
        }
    }
}

pub struct Yandex {
    client: reqwest::Client,
    url: String,
    folder_id: String,
    credential: Credential,
    connect_timeout: Duration,
}

impl fmt::Debug for Yandex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, secret) = match &self.credential {
            Credential::ApiKey(s) => ("api_key", s),
            Credential::Iam(s) => ("iam_token", s),
        };
        f.debug_struct("Yandex")
            .field("url", &self.url)
            .field("folder_id", &self.folder_id)
            .field(kind, secret)
            .finish_non_exhaustive()
    }
}

impl Yandex {
    pub fn from_config(cfg: &ProviderConfig) -> Result<Self, ProviderError> {
        let ProviderConfig::Yandex {
            name: _,
            base_url,
            folder_id,
            api_key_env,
            api_key_file,
            iam_token_env,
            iam_token_file,
            resilience,
        } = cfg
        else {
            return Err(ProviderError::Config("not a yandex provider".into()));
        };
        let has_key = api_key_env.is_some() || api_key_file.is_some();
        let has_iam = iam_token_env.is_some() || iam_token_file.is_some();
        let credential = match (has_key, has_iam) {
            (true, false) => Credential::ApiKey(read_secret(
                ("api_key_env", "api_key_file"),
                api_key_env.as_deref(),
                api_key_file.as_deref(),
            )?),
            (false, true) => Credential::Iam(read_secret(
                ("iam_token_env", "iam_token_file"),
                iam_token_env.as_deref(),
                iam_token_file.as_deref(),
            )?),
            _ => {
                return Err(ProviderError::Config(
                    "give an API key (api_key_env / api_key_file) or an IAM token \
                     (iam_token_env / iam_token_file), exactly one"
                        .into(),
                ))
            }
        };
        if folder_id.trim().is_empty() {
            return Err(ProviderError::Config("folder_id is empty".into()));
        }
        let connect_timeout = resilience.connect_timeout();
        let base = base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            sensitive_header(credential.header())?,
        );
        headers.insert(
            "x-folder-id",
            reqwest::header::HeaderValue::try_from(folder_id.as_str()).map_err(|_| {
                ProviderError::Config("folder_id is not a valid header value".into())
            })?,
        );
        Ok(Self {
            client: http_client(connect_timeout, None, headers)?,
            url: format!(
                "{}/foundationModels/v1/completion",
                base.trim_end_matches('/')
            ),
            folder_id: folder_id.clone(),
            credential,
            connect_timeout,
        })
    }

    /// `yandexgpt/latest` becomes `gpt://<folder>/yandexgpt/latest`; a full
    /// URI is used as given.
    fn model_uri(&self, model: &str) -> String {
        if model.contains("://") {
            model.to_string()
        } else {
            format!("gpt://{}/{model}", self.folder_id)
        }
    }

    async fn chat_inner(&self, req: &ProviderRequest) -> Result<BoxAnswer, ProviderError> {
        let body = CompletionBody::new(req, self.model_uri(&req.upstream_model))?;
        let response = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| request_error(e, self.connect_timeout))?;
        if !response.status().is_success() {
            return Err(status_error(response).await);
        }
        if req.stream {
            StreamAnswer::open(response, Framing::Ndjson, CumulativeDecoder::new(1), 1).await
        } else {
            let bytes = super::read_body(response, super::MAX_BODY_BYTES).await?;
            let mut decoded = Decoded::new(1);
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ProviderError::Malformed("a body that is not UTF-8".into()))?;
            CumulativeDecoder::new(1).decode(text, &mut decoded)?;
            ReadyAnswer::boxed(decoded)
        }
    }
}

impl Provider for Yandex {
    fn kind(&self) -> &'static str {
        "yandex"
    }

    fn chat<'a>(
        &'a self,
        req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<BoxAnswer, ProviderError>> {
        Box::pin(self.chat_inner(req))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CompletionBody<'a> {
    model_uri: String,
    completion_options: CompletionOptions,
    messages: Vec<Message<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CompletionOptions {
    stream: bool,
    temperature: f32,
    /// An int64, which the API's JSON mapping writes as a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<String>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    text: &'a str,
}

impl<'a> CompletionBody<'a> {
    fn new(req: &'a ProviderRequest, model_uri: String) -> Result<Self, ProviderError> {
        let Sampling {
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            seed,
            stop_token_ids,
            stop_strings,
            ignore_eos,
            logprobs,
            logit_bias,
            constraint,
        } = &req.sampling;
        refuse_token_level(stop_token_ids, *logprobs)?;
        refuse_structured(logit_bias, constraint.as_ref())?;
        let unsupported = [
            ("n", req.n != 1),
            ("top_k", *top_k != 0),
            ("top_p", *top_p != 1.0),
            ("min_p", *min_p != 0.0),
            ("repetition_penalty", *repetition_penalty != 1.0),
            ("presence_penalty", *presence_penalty != 0.0),
            ("frequency_penalty", *frequency_penalty != 0.0),
            ("seed", seed.is_some()),
            ("stop", !stop_strings.is_empty()),
            ("ignore_eos", *ignore_eos),
        ];
        if let Some((param, _)) = unsupported.iter().find(|(_, used)| *used) {
            return Err(ProviderError::Unsupported {
                param: (*param).into(),
                message: format!("`{param}` is not supported by YandexGPT"),
            });
        }
        if *temperature > 1.0 {
            return Err(ProviderError::Unsupported {
                param: "temperature".into(),
                message: "YandexGPT accepts a temperature from 0 to 1".into(),
            });
        }
        Ok(Self {
            model_uri,
            completion_options: CompletionOptions {
                stream: req.stream,
                temperature: *temperature,
                max_tokens: max_tokens.map(|m| m.to_string()),
            },
            messages: wire_messages(&req.messages, |role, text| Message { role, text }),
        })
    }
}

#[derive(Deserialize)]
struct Envelope {
    result: Option<CompletionResult>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompletionResult {
    alternatives: Vec<Alternative>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Alternative {
    message: AlternativeMessage,
    status: String,
}

#[derive(Deserialize)]
struct AlternativeMessage {
    #[serde(default)]
    text: String,
}

/// Token counts are int64s, written as strings (numbers accepted too).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default, deserialize_with = "saturating_count")]
    input_text_tokens: usize,
    #[serde(default, deserialize_with = "saturating_count")]
    completion_tokens: usize,
}

/// Turns cumulative alternatives into deltas.
struct CumulativeDecoder {
    sent: Vec<String>,
}

impl CumulativeDecoder {
    fn new(num_choices: usize) -> Self {
        Self {
            sent: vec![String::new(); num_choices],
        }
    }
}

impl EventDecoder for CumulativeDecoder {
    fn decode(&mut self, payload: &str, out: &mut Decoded) -> Result<bool, ProviderError> {
        let envelope: Envelope = serde_json::from_str(payload)
            .map_err(|e| ProviderError::Malformed(format!("completion result: {e}")))?;
        if let Some(err) = envelope.error {
            let message = err
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("unknown error")
                .to_string();
            return Err(ProviderError::Transport(format!(
                "the upstream reported an error: {message}"
            )));
        }
        let result = envelope
            .result
            .ok_or_else(|| ProviderError::Malformed("a line without `result`".into()))?;
        for (choice, alt) in result.alternatives.into_iter().enumerate() {
            let Some(sent) = self.sent.get_mut(choice) else {
                return Err(ProviderError::Malformed(format!(
                    "alternative {choice} was not asked for"
                )));
            };
            let text = alt.message.text;
            match text.strip_prefix(sent.as_str()) {
                Some(suffix) => {
                    let suffix = suffix.to_string();
                    out.token(choice, suffix)?;
                }
                None => {
                    tracing::warn!(
                        choice,
                        "YandexGPT rewrote text it had already sent; continuing from its new text"
                    );
                }
            }
            *sent = text;
            let reason = match alt.status.as_str() {
                "ALTERNATIVE_STATUS_PARTIAL" | "ALTERNATIVE_STATUS_UNSPECIFIED" => None,
                "ALTERNATIVE_STATUS_TRUNCATED_FINAL" => Some(FinishReason::Length),
                // The client must see it, and the answer is never cached.
                "ALTERNATIVE_STATUS_CONTENT_FILTER" => Some(FinishReason::ContentFilter),
                _ => Some(FinishReason::Stop),
            };
            if let Some(reason) = reason {
                out.finish(choice, reason)?;
            }
        }
        if let Some(u) = result.usage {
            out.usage.prompt_tokens = u.input_text_tokens;
            out.usage.completion_tokens = u.completion_tokens;
        }
        // The stream has no end marker: it ends with the body.
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::Step;

    fn line(text: &str, status: &str) -> String {
        serde_json::json!({"result": {"alternatives": [{"message": {"role": "assistant", "text": text}, "status": status}],
            "usage": {"inputTextTokens": "7", "completionTokens": "3", "totalTokens": "10"}, "modelVersion": "23.10.2024"}})
        .to_string()
    }

    fn tokens(d: &mut Decoded) -> Vec<String> {
        d.steps
            .drain(..)
            .filter_map(|s| match s {
                Step::Token { text, .. } => Some(text),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn cumulative_text_becomes_deltas() {
        let mut dec = CumulativeDecoder::new(1);
        let mut out = Decoded::new(1);
        dec.decode(&line("При", "ALTERNATIVE_STATUS_PARTIAL"), &mut out)
            .unwrap();
        dec.decode(&line("Привет", "ALTERNATIVE_STATUS_PARTIAL"), &mut out)
            .unwrap();
        dec.decode(&line("Привет, мир", "ALTERNATIVE_STATUS_FINAL"), &mut out)
            .unwrap();
        assert!(out.all_finished());
        assert_eq!(out.usage.prompt_tokens, 7);
        assert_eq!(out.usage.completion_tokens, 3);
        assert_eq!(tokens(&mut out), vec!["При", "вет", ", мир"]);
    }

    #[test]
    fn a_rewritten_prefix_emits_nothing_and_resynchronises() {
        let mut dec = CumulativeDecoder::new(1);
        let mut out = Decoded::new(1);
        dec.decode(&line("Hello wor", "ALTERNATIVE_STATUS_PARTIAL"), &mut out)
            .unwrap();
        dec.decode(
            &line("Hello, world", "ALTERNATIVE_STATUS_PARTIAL"),
            &mut out,
        )
        .unwrap();
        dec.decode(
            &line("Hello, world!", "ALTERNATIVE_STATUS_TRUNCATED_FINAL"),
            &mut out,
        )
        .unwrap();
        let steps: Vec<_> = out.steps.iter().map(|s| format!("{s:?}")).collect();
        assert!(steps.last().unwrap().contains("Length"), "{steps:?}");
        assert_eq!(tokens(&mut out), vec!["Hello wor", "!"]);
    }

    #[test]
    fn content_filter_status_finishes_as_content_filter() {
        let mut dec = CumulativeDecoder::new(1);
        let mut out = Decoded::new(1);
        dec.decode(&line("Я не", "ALTERNATIVE_STATUS_PARTIAL"), &mut out)
            .unwrap();
        dec.decode(&line("", "ALTERNATIVE_STATUS_CONTENT_FILTER"), &mut out)
            .unwrap();
        assert!(out.all_finished());
        assert!(out.steps.iter().any(|s| matches!(
            s,
            Step::Finished {
                reason: FinishReason::ContentFilter,
                ..
            }
        )));
    }

    #[test]
    fn huge_token_counts_saturate() {
        let mut dec = CumulativeDecoder::new(1);
        let mut out = Decoded::new(1);
        let line = serde_json::json!({"result": {"alternatives": [{"message": {"role": "assistant", "text": "Hi"}, "status": "ALTERNATIVE_STATUS_FINAL"}],
            "usage": {"inputTextTokens": "99999999999999999999999999", "completionTokens": usize::MAX.to_string()}}});
        dec.decode(&line.to_string(), &mut out).unwrap();
        assert_eq!(out.usage.prompt_tokens, usize::MAX);
        assert_eq!(out.usage.completion_tokens, usize::MAX);
    }
}
