//! GigaChat, natively: the OAuth token exchange (an authorization key for a
//! 30-minute access token, a fresh `RqUID` per exchange) and the chat API,
//! whose JSON and SSE match OpenAI's shapes (decoded with
//! [`super::openai_compat`]'s wire types). Its certificate chain ends at the
//! Russian Trusted Root CA, so a CA bundle is configurable.
//!
//! Design choice: the token sits behind one async mutex that is held while a
//! new token is fetched, so any number of concurrent requests that find the
//! token missing or near expiry cause exactly one exchange (single flight);
//! the others wait for its result instead of stampeding the OAuth endpoint.
//! A 401 from the chat API invalidates only the token that request used
//! (compared by identity), so fifty requests rejected with the same stale
//! token still cause one refresh.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sluice_runtime::FinishReason;
use tokio::sync::Mutex;

use super::openai_compat::{
    openai_messages, read_chat_response, refuse_structured, refuse_token_level, WireMessage,
};
use super::secret::read_secret;
use super::{
    http_client, request_error, status_error, Provider, ProviderConfig, ProviderError,
    ProviderRequest,
};
use crate::answer::BoxAnswer;
use crate::config::Secret;
use crate::validate::Sampling;

const DEFAULT_BASE_URL: &str = "https://gigachat.devices.sberbank.ru";
const DEFAULT_OAUTH_URL: &str = "https://ngw.devices.sberbank.ru:9443/api/v2/oauth";
const SCOPES: [&str; 3] = ["GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP"];
const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(60);

struct AccessToken {
    value: Secret,
    expires_at: SystemTime,
}

pub struct GigaChat {
    client: reqwest::Client,
    chat_url: String,
    oauth_url: String,
    auth_key: Secret,
    scope: String,
    refresh_margin: Duration,
    token: Mutex<Option<Arc<AccessToken>>>,
    connect_timeout: Duration,
}

impl fmt::Debug for GigaChat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GigaChat")
            .field("chat_url", &self.chat_url)
            .field("oauth_url", &self.oauth_url)
            .field("auth_key", &self.auth_key)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Milliseconds since the Unix epoch.
    expires_at: u64,
}

impl GigaChat {
    pub fn from_config(cfg: &ProviderConfig) -> Result<Self, ProviderError> {
        let ProviderConfig::Gigachat {
            name: _,
            base_url,
            oauth_url,
            auth_key_env,
            auth_key_file,
            scope,
            ca_bundle,
            token_refresh_margin_ms,
            resilience,
        } = cfg
        else {
            return Err(ProviderError::Config("not a gigachat provider".into()));
        };
        if !SCOPES.contains(&scope.as_str()) {
            return Err(ProviderError::Config(format!(
                "scope: `{scope}` is not one of {}",
                SCOPES.join(", ")
            )));
        }
        let auth_key = read_secret(
            ("auth_key_env", "auth_key_file"),
            auth_key_env.as_deref(),
            auth_key_file.as_deref(),
        )?;
        let connect_timeout = resilience.connect_timeout();
        let base = base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        Ok(Self {
            client: http_client(
                connect_timeout,
                ca_bundle.as_deref(),
                reqwest::header::HeaderMap::new(),
            )?,
            chat_url: format!("{}/api/v1/chat/completions", base.trim_end_matches('/')),
            oauth_url: oauth_url
                .as_deref()
                .unwrap_or(DEFAULT_OAUTH_URL)
                .to_string(),
            auth_key,
            scope: scope.clone(),
            refresh_margin: token_refresh_margin_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_REFRESH_MARGIN),
            token: Mutex::new(None),
            connect_timeout,
        })
    }

    /// A token valid for at least the refresh margin; fetched at most once
    /// for all concurrent callers.
    async fn token(&self) -> Result<Arc<AccessToken>, ProviderError> {
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.as_ref() {
            if token.expires_at > SystemTime::now() + self.refresh_margin {
                return Ok(token.clone());
            }
        }
        let fresh = Arc::new(self.fetch_token().await?);
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    /// Forgets `used` if it is still the current token.
    async fn invalidate(&self, used: &Arc<AccessToken>) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| Arc::ptr_eq(t, used)) {
            *slot = None;
        }
    }

    async fn fetch_token(&self) -> Result<AccessToken, ProviderError> {
        let response = self
            .client
            .post(&self.oauth_url)
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Basic {}", self.auth_key.expose()),
            )
            .header("RqUID", uuid::Uuid::new_v4().to_string())
            .header(reqwest::header::ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            // The scope is one of three fixed names: nothing to encode.
            .body(format!("scope={}", self.scope))
            .send()
            .await
            .map_err(|e| request_error(e, self.connect_timeout))?;
        let status = response.status();
        if !status.is_success() {
            let err = status_error(response).await;
            // An overloaded OAuth endpoint is worth a retry; a refused key is not.
            return Err(if status.as_u16() == 429 || status.is_server_error() {
                err
            } else {
                ProviderError::Auth(format!("token exchange: {err}"))
            });
        }
        let bytes = super::read_body(response, super::MAX_BODY_BYTES).await?;
        let token: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::Auth(format!("token exchange answer: {e}")))?;
        tracing::debug!(
            expires_at_ms = token.expires_at,
            "GigaChat access token fetched"
        );
        Ok(AccessToken {
            value: Secret::new(token.access_token),
            expires_at: UNIX_EPOCH + Duration::from_millis(token.expires_at),
        })
    }

    async fn chat_inner(&self, req: &ProviderRequest) -> Result<BoxAnswer, ProviderError> {
        let body = ChatBody::new(req)?;
        // A second pass only after a 401: the token may have been revoked or
        // expired earlier than it said.
        for pass in 0..2 {
            let token = self.token().await?;
            let response = self
                .client
                .post(&self.chat_url)
                .bearer_auth(token.value.expose())
                .header(
                    reqwest::header::ACCEPT,
                    if req.stream {
                        "text/event-stream"
                    } else {
                        "application/json"
                    },
                )
                .json(&body)
                .send()
                .await
                .map_err(|e| request_error(e, self.connect_timeout))?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && pass == 0 {
                self.invalidate(&token).await;
                continue;
            }
            if response.status() == reqwest::StatusCode::UNAUTHORIZED {
                return Err(ProviderError::Auth(
                    "the chat API refused a freshly issued token".into(),
                ));
            }
            return read_chat_response(response, req, finish_reason).await;
        }
        Err(ProviderError::Auth("no usable token".into()))
    }
}

impl Provider for GigaChat {
    fn kind(&self) -> &'static str {
        "gigachat"
    }

    fn chat<'a>(
        &'a self,
        req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<BoxAnswer, ProviderError>> {
        Box::pin(self.chat_inner(req))
    }
}

#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    temperature: f32,
    top_p: f32,
    n: usize,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<usize>,
    repetition_penalty: f32,
}

/// GigaChat refuses a temperature of 0; greedy becomes its smallest step.
const MIN_TEMPERATURE: f32 = 0.001;

impl<'a> ChatBody<'a> {
    fn new(req: &'a ProviderRequest) -> Result<Self, ProviderError> {
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
            ("top_k", *top_k != 0),
            ("min_p", *min_p != 0.0),
            ("presence_penalty", *presence_penalty != 0.0),
            ("frequency_penalty", *frequency_penalty != 0.0),
            ("seed", seed.is_some()),
            ("stop", !stop_strings.is_empty()),
            ("ignore_eos", *ignore_eos),
        ];
        if let Some((param, _)) = unsupported.iter().find(|(_, used)| *used) {
            return Err(ProviderError::Unsupported {
                param: (*param).into(),
                message: format!("`{param}` is not supported by GigaChat"),
            });
        }
        Ok(Self {
            model: &req.upstream_model,
            messages: openai_messages(req),
            temperature: temperature.max(MIN_TEMPERATURE),
            top_p: *top_p,
            n: req.n,
            stream: req.stream,
            max_tokens: *max_tokens,
            repetition_penalty: *repetition_penalty,
        })
    }
}

/// GigaChat's finish reasons: OpenAI's names, plus `blacklist` when its
/// censor replaced the answer (with a canned refusal): the client must see
/// `content_filter`, and the answer is never cached.
fn finish_reason(wire: &str) -> FinishReason {
    match wire {
        "blacklist" => FinishReason::ContentFilter,
        other => super::answer::finish_reason(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blacklist_is_reported_as_content_filter() {
        assert_eq!(finish_reason("blacklist"), FinishReason::ContentFilter);
        assert_eq!(finish_reason("length"), FinishReason::Length);
        assert_eq!(finish_reason("stop"), FinishReason::Stop);
    }
}
