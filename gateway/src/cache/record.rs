//! The Redis record of one cache entry: versioned and checksummed bytes.
//!
//! Layout: `SLC` + version byte, 8 bytes of sha256 over the body, then the
//! body: a u32 (LE) length, that many bytes of JSON (tenant, model, scope,
//! user text, choices, usage), then the embedding as f32 LE (the rest).
//! Design choice: one value per entry (not a hash of fields) so a read is
//! one GET/MGET and a record is either whole and verified or rejected; any
//! record that fails to decode is treated as absent (and deleted by the
//! caller), never served.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_runtime::{FinishReason, Usage};

use super::key::Key;
use super::memory::EntryMeta;
use super::{StoredAnswer, StoredChoice};

const MAGIC: &[u8; 3] = b"SLC";
/// 2: choices carry their tool calls (a version-1 reader would serve an
/// answer of calls as empty text, so old records are refused, not read).
const VERSION: u8 = 2;
const HEADER: usize = 4 + 8 + 4;

#[derive(Serialize, Deserialize)]
struct Wire {
    tenant: String,
    model: String,
    scope: Option<String>,
    text: Option<String>,
    /// Absent in records written before it existed: such an entry is never
    /// a semantic candidate (who made its vector is unknown).
    #[serde(default)]
    embedder: Option<String>,
    choices: Vec<WireChoice>,
    usage: [usize; 3],
}

#[derive(Serialize, Deserialize)]
struct WireChoice {
    text: String,
    finish: String,
    /// Absent in records written before it existed (and when no stop
    /// string ended the choice): an optional field, so no version bump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stop: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireCall>,
}

#[derive(Serialize, Deserialize)]
struct WireCall {
    id: String,
    name: String,
    arguments: String,
}

/// A decoded record.
#[derive(Debug)]
pub struct Decoded {
    pub meta: EntryMeta,
    pub answer: StoredAnswer,
}

pub fn encode(meta: &EntryMeta, answer: &StoredAnswer) -> Vec<u8> {
    let wire = Wire {
        tenant: meta.tenant.to_string(),
        model: meta.model.to_string(),
        scope: meta.scope.map(|s| s.hex()),
        text: meta.text.clone(),
        embedder: meta.embedder.as_deref().map(str::to_string),
        choices: answer
            .choices
            .iter()
            .map(|c| WireChoice {
                text: c.text.clone(),
                finish: c.finish_reason.as_str().into(),
                stop: c.stop_sequence.clone(),
                tool_calls: c
                    .tool_calls
                    .iter()
                    .map(|t| WireCall {
                        id: t.id.clone(),
                        name: t.name.clone(),
                        arguments: t.arguments.clone(),
                    })
                    .collect(),
            })
            .collect(),
        usage: [
            answer.usage.prompt_tokens,
            answer.usage.completion_tokens,
            answer.usage.cached_prompt_tokens,
        ],
    };
    let json = serde_json::to_vec(&wire).unwrap_or_default();
    let mut body =
        Vec::with_capacity(4 + json.len() + meta.embedding.as_ref().map_or(0, |v| v.len() * 4));
    body.extend_from_slice(&(json.len() as u32).to_le_bytes());
    body.extend_from_slice(&json);
    for x in meta.embedding.iter().flat_map(|v| v.iter()) {
        body.extend_from_slice(&x.to_le_bytes());
    }
    let mut out = Vec::with_capacity(12 + body.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&Sha256::digest(&body)[..8]);
    out.extend_from_slice(&body);
    out
}

/// Why a record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corrupt {
    Header,
    Version,
    Checksum,
    Body,
}

pub fn decode(bytes: &[u8]) -> Result<Decoded, Corrupt> {
    if bytes.len() < HEADER || &bytes[..3] != MAGIC {
        return Err(Corrupt::Header);
    }
    if bytes[3] != VERSION {
        return Err(Corrupt::Version);
    }
    let (sum, body) = bytes[4..].split_at(8);
    if Sha256::digest(body)[..8] != *sum {
        return Err(Corrupt::Checksum);
    }
    let (len, rest) = body.split_at(4);
    let len = u32::from_le_bytes(len.try_into().map_err(|_| Corrupt::Body)?) as usize;
    if len > rest.len() || !(rest.len() - len).is_multiple_of(4) {
        return Err(Corrupt::Body);
    }
    let (json, vector) = rest.split_at(len);
    let wire: Wire = serde_json::from_slice(json).map_err(|_| Corrupt::Body)?;
    let scope = match wire.scope {
        Some(hex) => Some(parse_key(&hex).ok_or(Corrupt::Body)?),
        None => None,
    };
    let choices = wire
        .choices
        .into_iter()
        .map(|c| {
            let finish_reason = match c.finish.as_str() {
                "stop" => FinishReason::Stop,
                "length" => FinishReason::Length,
                "tool_calls" => FinishReason::ToolCalls,
                // `content_filter` is never stored (the recorder refuses
                // it), so a record that claims one is not served either.
                _ => return Err(Corrupt::Body),
            };
            Ok(StoredChoice {
                text: c.text,
                finish_reason,
                stop_sequence: c.stop,
                tool_calls: c
                    .tool_calls
                    .into_iter()
                    .map(|t| sluice_models::ToolCall {
                        id: t.id,
                        name: t.name,
                        arguments: t.arguments,
                    })
                    .collect(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let embedding: Option<Arc<[f32]>> = (!vector.is_empty()).then(|| {
        vector
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    });
    let [prompt_tokens, completion_tokens, cached_prompt_tokens] = wire.usage;
    Ok(Decoded {
        meta: EntryMeta {
            tenant: Arc::from(wire.tenant),
            model: Arc::from(wire.model),
            scope,
            text: wire.text,
            embedding,
            embedder: wire.embedder.map(Arc::from),
        },
        answer: StoredAnswer {
            choices,
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                cached_prompt_tokens,
            },
        },
    })
}

pub fn parse_key(hex: &str) -> Option<Key> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Key(out))
}
