//! The Redis record of one cache entry: versioned and checksummed bytes.
//!
//! Layout: `SLC` + version byte, 8 bytes of sha256 over the body, then the
//! body: a u32 (LE) length, that many bytes of JSON (tenant, model, scope,
//! user text, choices, usage), then the embedding as f32 LE (the rest).
//! Design choice: one value per entry (not a hash of fields) so a read is
//! one GET/MGET and a record is either whole and verified or rejected; any
//! record that fails to decode is treated as absent (and deleted by the
//! caller), never served.
//!
//! A regulated request's record is *sealed* (version 3): the JSON keeps in
//! clear only what the store needs to find and purge it (tenant, model,
//! scope hash, embedder id); the user text, the choices, the usage and the
//! vector are one value sealed under the tenant's data key
//! ([`crate::sealing`]) and bound to the entry's id, so Redis holds no
//! plaintext of it and a record copied under another id does not open.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_runtime::{FinishReason, Usage};

use super::key::Key;
use super::memory::EntryMeta;
use super::{StoredAnswer, StoredChoice};
use crate::sealing::TenantKey;

const MAGIC: &[u8; 3] = b"SLC";
/// 2: choices carry their tool calls (a version-1 reader would serve an
/// answer of calls as empty text, so old records are refused, not read).
const VERSION: u8 = 2;
/// A sealed record (see the module's comment).
const SEALED_VERSION: u8 = 3;
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

fn wire_choices(answer: &StoredAnswer) -> Vec<WireChoice> {
    answer
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
        .collect()
}

fn wire_usage(answer: &StoredAnswer) -> [usize; 3] {
    [
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
        answer.usage.cached_prompt_tokens,
    ]
}

pub fn encode(meta: &EntryMeta, answer: &StoredAnswer) -> Vec<u8> {
    let wire = Wire {
        tenant: meta.tenant.to_string(),
        model: meta.model.to_string(),
        scope: meta.scope.map(|s| s.hex()),
        text: meta.text.clone(),
        embedder: meta.embedder.as_deref().map(str::to_string),
        choices: wire_choices(answer),
        usage: wire_usage(answer),
    };
    let json = serde_json::to_vec(&wire).unwrap_or_default();
    let vector: Vec<u8> = meta
        .embedding
        .iter()
        .flat_map(|v| v.iter())
        .flat_map(|x| x.to_le_bytes())
        .collect();
    frame(VERSION, &json, &vector)
}

/// Magic, version, checksum, then the JSON's length, the JSON and `tail`.
fn frame(version: u8, json: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + json.len() + tail.len());
    body.extend_from_slice(&(json.len() as u32).to_le_bytes());
    body.extend_from_slice(json);
    body.extend_from_slice(tail);
    let mut out = Vec::with_capacity(12 + body.len());
    out.extend_from_slice(MAGIC);
    out.push(version);
    out.extend_from_slice(&Sha256::digest(&body)[..8]);
    out.extend_from_slice(&body);
    out
}

/// What a sealed record keeps in clear.
#[derive(Serialize, Deserialize)]
struct SealedWire {
    tenant: String,
    model: String,
    scope: Option<String>,
    embedder: Option<String>,
    /// [`Hidden`] sealed under the tenant's data key.
    sealed: serde_json::Value,
}

/// What a sealed record hides.
#[derive(Serialize, Deserialize)]
struct Hidden {
    text: Option<String>,
    choices: Vec<WireChoice>,
    usage: [usize; 3],
    embedding: Option<Vec<f32>>,
}

/// What a sealed record is bound to: its entry's id.
pub fn place(id: &str) -> String {
    format!("cache\u{1f}{id}")
}

/// The record of a regulated request, sealed under `key` for the entry `id`.
pub fn encode_sealed(
    meta: &EntryMeta,
    answer: &StoredAnswer,
    key: &TenantKey,
    id: &str,
) -> Result<Vec<u8>, crate::sealing::SealError> {
    let secret = Hidden {
        text: meta.text.clone(),
        choices: wire_choices(answer),
        usage: wire_usage(answer),
        embedding: meta.embedding.as_ref().map(|v| v.to_vec()),
    };
    let secret = serde_json::to_value(&secret)
        .map_err(|e| crate::sealing::SealError::Corrupt(e.to_string()))?;
    let wire = SealedWire {
        tenant: meta.tenant.to_string(),
        model: meta.model.to_string(),
        scope: meta.scope.map(|s| s.hex()),
        embedder: meta.embedder.as_deref().map(str::to_string),
        sealed: key.seal(&place(id), &secret)?,
    };
    let json =
        serde_json::to_vec(&wire).map_err(|e| crate::sealing::SealError::Corrupt(e.to_string()))?;
    Ok(frame(SEALED_VERSION, &json, &[]))
}

/// A record as read: plain, or sealed (opened with its tenant's key).
pub enum Record {
    Plain(Decoded),
    Sealed(Sealed),
}

/// A sealed record before it is opened.
pub struct Sealed {
    pub tenant: String,
    wire: SealedWire,
}

impl Sealed {
    /// The record opened with its tenant's key; `Corrupt::Body` when it
    /// does not open (another tenant's key, another entry's id, damage).
    pub fn open(self, key: &TenantKey, id: &str) -> Result<Decoded, Corrupt> {
        let SealedWire {
            tenant,
            model,
            scope,
            embedder,
            sealed,
        } = self.wire;
        let secret = key.open(&place(id), sealed).map_err(|_| Corrupt::Body)?;
        let secret: Hidden = serde_json::from_value(secret).map_err(|_| Corrupt::Body)?;
        let scope = match scope {
            Some(hex) => Some(parse_key(&hex).ok_or(Corrupt::Body)?),
            None => None,
        };
        let [prompt_tokens, completion_tokens, cached_prompt_tokens] = secret.usage;
        Ok(Decoded {
            meta: EntryMeta {
                tenant: Arc::from(tenant),
                model: Arc::from(model),
                scope,
                text: secret.text,
                embedding: secret.embedding.map(Arc::from),
                embedder: embedder.map(Arc::from),
            },
            answer: StoredAnswer {
                choices: stored_choices(secret.choices)?,
                usage: Usage {
                    prompt_tokens,
                    completion_tokens,
                    cached_prompt_tokens,
                },
            },
        })
    }
}

/// A plain or a sealed record.
pub fn decode_any(bytes: &[u8]) -> Result<Record, Corrupt> {
    if bytes.len() >= HEADER && &bytes[..3] == MAGIC && bytes[3] == SEALED_VERSION {
        let (json, tail) = checked_body(bytes)?;
        if !tail.is_empty() {
            return Err(Corrupt::Body);
        }
        let wire: SealedWire = serde_json::from_slice(json).map_err(|_| Corrupt::Body)?;
        return Ok(Record::Sealed(Sealed {
            tenant: wire.tenant.clone(),
            wire,
        }));
    }
    decode(bytes).map(Record::Plain)
}

/// The JSON and the tail of a record whose header and checksum hold.
fn checked_body(bytes: &[u8]) -> Result<(&[u8], &[u8]), Corrupt> {
    let (sum, body) = bytes[4..].split_at(8);
    if Sha256::digest(body)[..8] != *sum {
        return Err(Corrupt::Checksum);
    }
    let (len, rest) = body.split_at(4);
    let len = u32::from_le_bytes(len.try_into().map_err(|_| Corrupt::Body)?) as usize;
    if len > rest.len() {
        return Err(Corrupt::Body);
    }
    Ok(rest.split_at(len))
}

fn stored_choices(choices: Vec<WireChoice>) -> Result<Vec<StoredChoice>, Corrupt> {
    choices
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
        .collect()
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
    let (json, vector) = checked_body(bytes)?;
    if !vector.len().is_multiple_of(4) {
        return Err(Corrupt::Body);
    }
    let wire: Wire = serde_json::from_slice(json).map_err(|_| Corrupt::Body)?;
    let scope = match wire.scope {
        Some(hex) => Some(parse_key(&hex).ok_or(Corrupt::Body)?),
        None => None,
    };
    let choices = stored_choices(wire.choices)?;
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
