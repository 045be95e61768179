//! Log-probabilities in OpenAI's two shapes: chat's
//! `{"content": [{token, logprob, bytes, top_logprobs}]}` and the legacy
//! completions' parallel arrays `{tokens, token_logprobs, top_logprobs, text_offset}`.

use std::collections::BTreeMap;

use serde::Serialize;
use sluice_models::Tokenizer;
use sluice_runtime::TokenLogprob;

/// The text of one token. Byte-level BPE tokens that hold part of a UTF-8
/// character decode to U+FFFD; their `bytes` are then those of the
/// replacement character, not the raw token bytes.
fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
    pub refusal: Option<Vec<ChatTokenLogprob>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// Chat shape.
pub fn chat(tokenizer: &Tokenizer, items: &[TokenLogprob]) -> ChatLogprobs {
    let content = items
        .iter()
        .map(|lp| {
            let token = token_text(tokenizer, lp.token);
            ChatTokenLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: lp.logprob,
                top_logprobs: lp
                    .top
                    .iter()
                    .map(|&(id, logprob)| {
                        let token = token_text(tokenizer, id);
                        TopLogprob {
                            bytes: token.as_bytes().to_vec(),
                            token,
                            logprob,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    ChatLogprobs {
        content,
        refusal: None,
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

/// Completions shape; `offset` is where the first token's text starts in the
/// choice's text (non-zero for a later chunk of a stream).
pub fn completion(
    tokenizer: &Tokenizer,
    items: &[TokenLogprob],
    offset: usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut at = offset;
    for lp in items {
        let token = token_text(tokenizer, lp.token);
        out.text_offset.push(at);
        at += token.len();
        out.tokens.push(token);
        out.token_logprobs.push(lp.logprob);
        out.top_logprobs.push(
            lp.top
                .iter()
                .map(|&(id, logprob)| (token_text(tokenizer, id), logprob))
                .collect(),
        );
    }
    out
}
