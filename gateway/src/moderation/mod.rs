//! L3 of the input defence: an external moderation service asked for a
//! second opinion on the requests the guard (L2) calls uncertain, and only
//! on those: a score between `[guard] t_low` and `t_high`. Rules and the
//! local head decide the rest in milliseconds; a cloud call costs hundreds
//! of them and sends the text off the machine, so it is kept for the band
//! where the head cannot tell.
//!
//! Three APIs, one adapter each, each owning its wire types and the
//! thresholds that API needs: Azure AI Content Safety Prompt Shields
//! ([`prompt_shields`]: the prompt, and tool results as `documents`), Azure
//! `text:analyze` ([`text_analyze`]: a severity per harm category) and
//! OpenAI-style `/v1/moderations` ([`openai`]: `flagged`, or scores per
//! category). An adapter turns [`Texts`] into request bodies and an answer
//! into a [`Verdict`]; it does no I/O, so its mapping is tested without a
//! server. [`Moderation`] sends the bodies and combines the answers;
//! [`stage`] is the chain's stage around it.
//!
//! Design decision: one deadline for the whole check (`timeout_ms`, default
//! 300 ms), not per HTTP call and with no retries: the caller is waiting,
//! and a service that misses it gets the operator's explicit `on_error`
//! policy (allow or block) rather than a longer wait. A service that
//! answers non-2xx, or a body this adapter cannot read (a field missing,
//! a document count that does not match what was sent), is an error under
//! the same policy, never a silent "clean".
//!
//! This module sees a validated request and the guard's screening only: no
//! HTTP server types, no server state.

pub mod openai;
pub mod prompt_shields;
pub mod stage;
pub mod text_analyze;

use std::time::Duration;

use reqwest::header::HeaderValue;
use serde_json::Value;

use crate::config::{ModerationApi, ModerationConfig, OnModerationError, Secret};

pub use stage::{ModerationStamp, Review};

/// The longest text one Azure call takes (characters): longer texts are
/// cut and sent in several calls.
pub const AZURE_MAX_CHARS: usize = 10_000;
/// Calls one check may make at most; texts that need more are an error
/// (under `on_error`), so one huge request cannot fan out without bound.
pub const MAX_CALLS: usize = 8;

/// What the service reads: the texts the guard found uncertain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Texts {
    /// Turns written by the user, the operator or the model (system, user,
    /// assistant) and completion prompts.
    pub prompt: Vec<String>,
    /// Content no one in the conversation wrote: tool (and function)
    /// results, where retrieved pages and files arrive. Prompt Shields
    /// reads these as `documents`, for indirect injection.
    pub documents: Vec<String>,
}

impl Texts {
    pub fn is_empty(&self) -> bool {
        self.prompt.is_empty() && self.documents.is_empty()
    }

    /// Every text, prompt first.
    fn all(&self) -> impl Iterator<Item = &String> {
        self.prompt.iter().chain(&self.documents)
    }
}

/// The service's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub flagged: bool,
    /// What flagged it (`userPrompt`, `documents[1]`, `Violence severity
    /// 6 >= 4`, `category violence 0.81 >= 0.5`): names and numbers from
    /// the answer, never text of the request.
    pub reason: Option<String>,
}

impl Verdict {
    pub fn clean() -> Self {
        Self {
            flagged: false,
            reason: None,
        }
    }

    pub fn flagged(reason: impl Into<String>) -> Self {
        Self {
            flagged: true,
            reason: Some(reason.into()),
        }
    }

    /// Flagged when any part is; the first part's reason.
    fn combine(parts: Vec<Verdict>) -> Verdict {
        parts
            .into_iter()
            .find(|v| v.flagged)
            .unwrap_or_else(Verdict::clean)
    }
}

/// Why a check gave no verdict; each is handled by `on_error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModerationError {
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("the service answered HTTP {0}")]
    Status(u16),
    #[error("the service's answer is malformed: {0}")]
    Malformed(String),
    #[error("the service could not be reached: {0}")]
    Transport(String),
    #[error("the texts need {needed} calls, more than {MAX_CALLS}")]
    TooLong { needed: usize },
}

impl ModerationError {
    /// The metric label and header value.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Status(_) => "status",
            Self::Malformed(_) => "malformed",
            Self::Transport(_) => "transport",
            Self::TooLong { .. } => "too_long",
        }
    }
}

/// One HTTP call an adapter wants made: a body for the API's one path.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub body: Value,
}

/// Text cut into pieces of at most `max` characters (on character
/// boundaries); an empty text gives no piece.
fn char_chunks(text: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut count = 0;
    for c in text.chars() {
        if count == max {
            out.push(std::mem::take(&mut current));
            count = 0;
        }
        current.push(c);
        count += 1;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The configured service, ready to call.
pub struct Moderation {
    client: reqwest::Client,
    api: ModerationApi,
    /// The full URL of the API's one path.
    url: String,
    key: Option<Secret>,
    timeout: Duration,
    on_error: OnModerationError,
    on_prem: bool,
}

impl Moderation {
    /// The service of `[moderation]`; fails only when the HTTP client
    /// cannot be built.
    pub fn new(config: &ModerationConfig) -> Result<Self, String> {
        let ModerationConfig {
            api,
            endpoint,
            key,
            timeout,
            on_error,
            on_prem,
        } = config;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(*timeout)
            // Kept warm: a new TLS handshake per call would eat most of a
            // 300 ms budget.
            .pool_max_idle_per_host(16)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("the moderation service's HTTP client: {e}"))?;
        let url = match api {
            ModerationApi::AzurePromptShields => prompt_shields::url(endpoint),
            ModerationApi::AzureTextAnalyze { .. } => text_analyze::url(endpoint),
            ModerationApi::OpenAi { .. } => openai::url(endpoint),
        };
        Ok(Self {
            client,
            api: api.clone(),
            url,
            key: key.as_ref().map(|(_, secret)| secret.clone()),
            timeout: *timeout,
            on_error: *on_error,
            on_prem: *on_prem,
        })
    }

    /// The `provider` name in metrics, headers and audit records.
    pub fn provider(&self) -> &'static str {
        self.api.name()
    }

    /// Asks the service about `texts`, within the timeout.
    pub async fn check(&self, texts: &Texts) -> Result<Verdict, ModerationError> {
        let calls = self.calls(texts);
        if calls.len() > MAX_CALLS {
            return Err(ModerationError::TooLong {
                needed: calls.len(),
            });
        }
        let answers = futures_util::future::join_all(calls.iter().map(|c| self.send(c)));
        let answers = tokio::time::timeout(self.timeout, answers)
            .await
            .map_err(|_| ModerationError::Timeout(self.timeout))?;
        let mut verdicts = Vec::with_capacity(answers.len());
        for (call, answer) in calls.iter().zip(answers) {
            verdicts.push(self.read(call, &answer?)?);
        }
        Ok(Verdict::combine(verdicts))
    }

    fn calls(&self, texts: &Texts) -> Vec<Call> {
        match &self.api {
            ModerationApi::AzurePromptShields => prompt_shields::calls(texts),
            ModerationApi::AzureTextAnalyze {
                severity_thresholds,
            } => text_analyze::calls(texts, severity_thresholds),
            ModerationApi::OpenAi { model, .. } => openai::calls(texts, model.as_deref()),
        }
    }

    fn read(&self, call: &Call, body: &[u8]) -> Result<Verdict, ModerationError> {
        match &self.api {
            ModerationApi::AzurePromptShields => prompt_shields::read(call, body),
            ModerationApi::AzureTextAnalyze {
                severity_thresholds,
            } => text_analyze::read(call, body, severity_thresholds),
            ModerationApi::OpenAi {
                category_thresholds,
                ..
            } => openai::read(call, body, category_thresholds),
        }
    }

    /// One POST; the body of a 2xx answer.
    async fn send(&self, call: &Call) -> Result<bytes::Bytes, ModerationError> {
        let mut request = self.client.post(&self.url).json(&call.body);
        if let Some(key) = &self.key {
            let (name, value) = match self.api {
                ModerationApi::OpenAi { .. } => {
                    ("authorization", format!("Bearer {}", key.expose()))
                }
                ModerationApi::AzurePromptShields | ModerationApi::AzureTextAnalyze { .. } => {
                    ("ocp-apim-subscription-key", key.expose().to_string())
                }
            };
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| ModerationError::Transport("the key is not a header value".into()))?;
            value.set_sensitive(true);
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| {
            // The URL carries no secret; reqwest's message names the host.
            ModerationError::Transport(e.without_url().to_string())
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(ModerationError::Status(status.as_u16()));
        }
        response
            .bytes()
            .await
            .map_err(|e| ModerationError::Transport(e.without_url().to_string()))
    }
}

impl std::fmt::Debug for Moderation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moderation")
            .field("provider", &self.provider())
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .field("on_prem", &self.on_prem)
            .finish_non_exhaustive()
    }
}

/// Parses an answer into the adapter's wire type; a mismatch is
/// `Malformed` with serde's path (`documentsAnalysis[0].attackDetected`).
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ModerationError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ModerationError::Malformed(format!("at `{path}`: {}", e.inner()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cut_on_character_boundaries() {
        assert_eq!(char_chunks("", 3), Vec::<String>::new());
        assert_eq!(char_chunks("абвгд", 2), ["аб", "вг", "д"]);
        assert_eq!(char_chunks("abc", 3), ["abc"]);
    }

    #[test]
    fn a_combined_verdict_is_flagged_by_any_part_and_keeps_its_reason() {
        assert_eq!(
            Verdict::combine(vec![Verdict::clean(), Verdict::flagged("documents[0]")]),
            Verdict::flagged("documents[0]")
        );
        assert_eq!(Verdict::combine(vec![]), Verdict::clean());
    }
}
