//! How many tokens a request reserves against tokens-per-minute limits at
//! admission: its prompt, counted exactly with the local model's tokenizer
//! and chat template where the route has a local model (an estimate of
//! four characters a token for a provider), plus the most it may generate
//! (`max_tokens`, else the model's default or `provider_token_estimate`),
//! for every choice. What the answer did not use is refunded when it ends.

use std::sync::Arc;

use sluice_models::{ChatMessage, ModelError};

use crate::registry::{ReadyModel, Registry};
use crate::router::Router;
use crate::validate::{Input, Job};

/// Counts a request's reservation.
pub struct TokenCounter {
    router: Arc<Router>,
    registry: Arc<Registry>,
    provider_estimate: u64,
}

impl TokenCounter {
    pub fn new(router: Arc<Router>, registry: Arc<Registry>, provider_estimate: u64) -> Self {
        Self {
            router,
            registry,
            provider_estimate,
        }
    }

    /// Tokens to reserve for `job` on `model`.
    pub async fn reservation(&self, model: &str, job: &Job) -> u64 {
        let local = self
            .router
            .local_model(model)
            .and_then(|id| self.registry.ready(id).ok());
        let Some(ready) = local else {
            return estimate(
                &job.input,
                job.sampling.max_tokens,
                job.n,
                self.provider_estimate,
            );
        };
        let (input, max_tokens, n) = (job.input.clone(), job.sampling.max_tokens, job.n);
        // Rendering and BPE are CPU work proportional to the prompt: off the
        // async workers, as the engine's own tokenising is.
        let counted =
            tokio::task::spawn_blocking(move || exact(&ready, &input, max_tokens, n)).await;
        match counted {
            Ok(Ok(tokens)) => tokens,
            // A prompt the model cannot take fails at the engine with a clear
            // 400; until then it reserves the estimate.
            _ => estimate(
                &job.input,
                job.sampling.max_tokens,
                job.n,
                self.provider_estimate,
            ),
        }
    }
}

/// The exact prompt counts and the model's generation cap.
fn exact(
    ready: &ReadyModel,
    input: &Input,
    max_tokens: Option<usize>,
    n: usize,
) -> Result<u64, ModelError> {
    let engine = &ready.engine;
    let tokenizer = engine.tokenizer();
    let prompts: Vec<usize> = match input {
        Input::Chat(messages) => match engine.chat_template() {
            Some(template) => vec![template.render_tokens(tokenizer, messages, true)?.len()],
            None => vec![chat_estimate(messages)],
        },
        Input::Text(prompts) => prompts
            .iter()
            .map(|p| tokenizer.encode(p, true).map(|ids| ids.len()))
            .collect::<Result<_, _>>()?,
        Input::Tokens(prompts) => prompts.iter().map(Vec::len).collect(),
    };
    let cap = max_tokens.unwrap_or(ready.slot.config.default_max_tokens);
    let context = engine.info().max_model_len;
    let per_choice: u64 = prompts
        .iter()
        .map(|&p| (p + cap.min(context.saturating_sub(p))) as u64)
        .sum();
    Ok(per_choice * n.max(1) as u64)
}

/// Four characters a token, the usual rule of thumb for English and code.
fn estimate(input: &Input, max_tokens: Option<usize>, n: usize, provider_estimate: u64) -> u64 {
    let prompt: usize = match input {
        Input::Chat(messages) => chat_estimate(messages),
        Input::Text(prompts) => prompts.iter().map(|p| p.chars().count().div_ceil(4)).sum(),
        Input::Tokens(prompts) => prompts.iter().map(Vec::len).sum(),
    };
    let prompt = prompt as u64;
    let completion = max_tokens.map_or(provider_estimate, |m| m as u64);
    let prompts = input.num_prompts().max(1) as u64;
    prompt + completion * prompts * n.max(1) as u64
}

/// The estimated tokens of chat messages (their text, four characters a
/// token, and a few tokens of framing each).
fn chat_estimate(messages: &[ChatMessage]) -> usize {
    messages
        .iter()
        .map(|m| m.content.chars().count().div_ceil(4) + 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_request_reserves_its_estimate_and_max_tokens() {
        let input = Input::Chat(vec![ChatMessage::text("user", "x".repeat(40))]);
        // 10 tokens of text + 4 of framing, plus max_tokens per choice.
        assert_eq!(estimate(&input, Some(100), 1, 1024), 114);
        assert_eq!(estimate(&input, None, 2, 1024), 14 + 2048);
        let text = Input::Text(vec!["abcdefgh".into()]);
        assert_eq!(estimate(&text, Some(5), 1, 1024), 2 + 5);
    }
}
