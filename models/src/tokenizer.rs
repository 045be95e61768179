//! Text ⇄ token ids, built either from a Hugging Face `tokenizer.json` or from
//! the `tokenizer.ggml.*` metadata inside a GGUF file.
//!
//! Both sources end up as one `tokenizers::Tokenizer`; the GGUF path builds it
//! programmatically so that it tokenises exactly as llama.cpp does for the
//! same file (llama.cpp is the reference implementation of GGUF metadata):
//!
//! * `tokenizer.ggml.model = gpt2`: byte-level BPE from `tokens` + `merges`,
//!   pre-tokenised by the regex list that llama.cpp picks for
//!   `tokenizer.ggml.pre` (each regex splits the pieces left by the previous
//!   one, matches and gaps both kept), then mapped to the byte alphabet.
//! * `tokenizer.ggml.model = llama`: SentencePiece BPE by scores with
//!   `<0xXX>` byte fallback. Merges are derived from the vocabulary and the
//!   scores the way Hugging Face's SentencePiece converter does it (every
//!   split of a piece into two vocabulary pieces, ranked by the piece's
//!   score), spaces become "▁" and a "▁" is prepended to each run of text.
//!
//! Token types (`tokenizer.ggml.token_type`) decide which tokens are special:
//! control (3) and unknown (2) tokens are parsed out of the text and skipped by
//! `decode(.., skip_special = true)`; user-defined (4) tokens are parsed out of
//! the text but decoded like text.
//!
//! `encode` never lets the tokenizer's post-processor add anything: BOS is
//! added here, once, when the caller asks for it and the model wants it.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use tokenizers::AddedToken;

mod bytes;
mod gguf_vocab;

use gguf_vocab::*;

use crate::gguf::{GgufFile, GgufValue};
use crate::ModelError;

/// A model's tokenizer plus the facts about its special tokens that the
/// engine needs (BOS, the ids that end generation, the chat template).
///
/// Cheap to share: wrap it in an `Arc`; `Clone` copies the vocabulary.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Number of ids the tokenizer can produce (largest id + 1).
    vocab_size: usize,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    /// Whether the model was trained with BOS at the start of every sequence.
    add_bos: bool,
    /// `eos` first, then other end-of-generation ids; no duplicates.
    eos_ids: Vec<u32>,
    special_ids: HashSet<u32>,
    /// The text of every special token, longest first, so that a scan finds
    /// `<|im_end|>` before a shorter token it starts with.
    special_texts: Vec<String>,
    /// The distinct first bytes of `special_texts`: a scan tries the tokens
    /// only where one of these starts.
    special_first_bytes: Vec<u8>,
    /// `inner` with special-token parsing off, for text that must never turn
    /// into control tokens (message content). Built on first use: only
    /// text that spells a special token needs it, and it is a second copy
    /// of the vocabulary.
    plain: OnceLock<tokenizers::Tokenizer>,
    chat_template: Option<String>,
}

#[derive(Clone, Debug)]
struct SpecialToken {
    text: String,
    id: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("eos_ids", &self.eos_ids)
            .finish_non_exhaustive()
    }
}

fn tok_err(what: &str) -> impl Fn(tokenizers::Error) -> ModelError + '_ {
    move |e| ModelError::Tokenizer(format!("{what}: {e}"))
}

impl Tokenizer {
    /// From a Hugging Face folder's `tokenizer.json`, plus `tokenizer_config.json`
    /// when given (BOS/EOS tokens, `add_bos_token`, `chat_template`).
    ///
    /// `generation_config.json` and `config.json` next to `tokenizer.json` are
    /// read when present for more end-of-generation ids (`eos_token_id`, an
    /// integer or a list) and a fallback `bos_token_id`. Padding and truncation
    /// stored in `tokenizer.json` are switched off: the engine decides lengths.
    pub fn from_hf_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
    ) -> Result<Self, ModelError> {
        let mut inner = tokenizers::Tokenizer::from_file(tokenizer_json).map_err(|e| {
            ModelError::Tokenizer(format!("cannot load {}: {e}", tokenizer_json.display()))
        })?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(tok_err("cannot switch truncation off"))?;

        let config = match tokenizer_config {
            Some(path) => read_json(path)?,
            None => serde_json::Value::Null,
        };
        let dir = tokenizer_json.parent().unwrap_or_else(|| Path::new("."));
        let optional_json = |name: &str| -> Result<serde_json::Value, ModelError> {
            let path = dir.join(name);
            if path.is_file() {
                read_json(&path)
            } else {
                Ok(serde_json::Value::Null)
            }
        };
        let generation_config = optional_json("generation_config.json")?;
        let model_config = optional_json("config.json")?;

        let special_ids: HashSet<u32> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();

        let named = |key: &str| -> Option<SpecialToken> {
            let text = token_text(config.get(key)?)?;
            let id = inner.token_to_id(&text)?;
            Some(SpecialToken { text, id })
        };
        let by_id = |id: u32| -> Option<SpecialToken> {
            let text = inner.id_to_token(id)?;
            Some(SpecialToken { text, id })
        };
        let config_id = |key: &str| -> Option<u32> {
            [&generation_config, &model_config]
                .into_iter()
                .find_map(|c| json_ids(c.get(key)?).into_iter().next())
        };
        let bos = named("bos_token").or_else(|| config_id("bos_token_id").and_then(by_id));
        let eos = named("eos_token").or_else(|| config_id("eos_token_id").and_then(by_id));

        let add_bos = match config
            .get("add_bos_token")
            .and_then(serde_json::Value::as_bool)
        {
            Some(add) => add,
            // Without the flag, the tokenizer's own post-processor is what
            // transformers would apply: does it put BOS in front?
            None => match &bos {
                Some(bos) => inner
                    .encode_fast("", true)
                    .map(|enc| enc.get_ids().first() == Some(&bos.id))
                    .unwrap_or(false),
                None => false,
            },
        };

        let mut eos_ids = Vec::new();
        eos_ids.extend(eos.as_ref().map(|t| t.id));
        for source in [&generation_config, &model_config] {
            if let Some(ids) = source.get("eos_token_id") {
                eos_ids.extend(json_ids(ids));
            }
        }
        dedup_in_order(&mut eos_ids);

        // Newer transformers save the template beside the config instead.
        let chat_template = match config
            .get("chat_template")
            .and_then(chat_template_from_config)
        {
            Some(t) => Some(t),
            None => {
                let path = dir.join("chat_template.jinja");
                if path.is_file() {
                    Some(std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?)
                } else {
                    None
                }
            }
        };
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);

        let special_texts = special_texts(&inner, &special_ids);
        Ok(Self {
            inner,
            vocab_size,
            bos,
            eos,
            add_bos,
            eos_ids,
            special_ids,
            special_first_bytes: first_bytes(&special_texts),
            special_texts,
            plain: OnceLock::new(),
            chat_template,
        })
    }

    /// Built from GGUF metadata (`tokenizer.ggml.*`), tokenising as llama.cpp
    /// does for the same file.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, ModelError> {
        let meta = GgufTokenizerMeta::read(gguf)?;
        let n = meta.tokens.len();

        let (mut inner, add_bos_default) = match meta.model.as_str() {
            "gpt2" => {
                let kind = meta.pre_kind();
                (build_byte_level_bpe(gguf, &meta, &kind)?, kind.add_bos)
            }
            "llama" => (build_sentencepiece_bpe(&meta)?, true),
            other => {
                return Err(ModelError::Unsupported(format!(
                    "tokenizer.ggml.model = {other:?} (Sluice reads \"gpt2\" and \"llama\")"
                )))
            }
        };

        let get_id = |key: &str| -> Result<Option<u32>, ModelError> {
            match gguf.get(key) {
                None => Ok(None),
                Some(v) => {
                    let id = v
                        .as_u64()
                        .and_then(|id| u32::try_from(id).ok())
                        .filter(|&id| (id as usize) < n)
                        .ok_or_else(|| {
                            ModelError::Tokenizer(format!(
                                "{key} = {v:?} is not a token id below {n}"
                            ))
                        })?;
                    Ok(Some(id))
                }
            }
        };
        // llama.cpp's defaults for SentencePiece vocabularies that do not say.
        let spm = meta.model == "llama";
        let bos_id = get_id("tokenizer.ggml.bos_token_id")?.or(if spm {
            Some(1).filter(|_| n > 1)
        } else {
            None
        });
        let eos_id = get_id("tokenizer.ggml.eos_token_id")?.or(if spm {
            Some(2).filter(|_| n > 2)
        } else {
            None
        });
        let eot_id = get_id("tokenizer.ggml.eot_token_id")?;
        let eom_id = get_id("tokenizer.ggml.eom_token_id")?;

        // The end-of-generation set, as llama.cpp builds it: EOS, EOT, EOM and
        // any token spelled like a known end-of-turn marker (its metadata has
        // no other place to say that `<|endoftext|>` also ends a turn).
        let mut eos_ids: Vec<u32> = [eos_id, eot_id, eom_id].into_iter().flatten().collect();
        let mut types = meta.token_types.clone();
        for (id, text) in meta.tokens.iter().enumerate() {
            if EOG_TEXTS.contains(&text.as_str()) {
                eos_ids.push(id as u32);
                // llama.cpp forces these to control tokens.
                types[id] = TOKEN_TYPE_CONTROL;
            }
        }
        dedup_in_order(&mut eos_ids);

        let mut special = Vec::new();
        let mut user_defined = Vec::new();
        let mut special_ids = HashSet::new();
        for (id, (text, &ty)) in meta.tokens.iter().zip(&types).enumerate() {
            match ty {
                TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN => {
                    special_ids.insert(id as u32);
                    special.push(AddedToken::from(text.clone(), true));
                }
                TOKEN_TYPE_USER_DEFINED => {
                    user_defined.push(AddedToken::from(text.clone(), false).normalized(false));
                }
                _ => {}
            }
        }
        inner.add_special_tokens(&special);
        inner.add_tokens(&user_defined);

        let token = |id: Option<u32>| {
            id.map(|id| SpecialToken {
                text: meta.tokens[id as usize].clone(),
                id,
            })
        };
        let add_bos = match gguf.get("tokenizer.ggml.add_bos_token") {
            Some(v) => v.as_bool().ok_or_else(|| {
                ModelError::Tokenizer(format!(
                    "tokenizer.ggml.add_bos_token = {v:?} is not a bool"
                ))
            })?,
            None => add_bos_default,
        };
        let chat_template = gguf
            .get("tokenizer.chat_template")
            .and_then(GgufValue::as_str)
            .map(str::to_string);

        let special_texts = special_texts(&inner, &special_ids);
        Ok(Self {
            inner,
            vocab_size: n,
            bos: token(bos_id),
            eos: token(eos_id),
            add_bos,
            eos_ids,
            special_ids,
            special_first_bytes: first_bytes(&special_texts),
            special_texts,
            plain: OnceLock::new(),
            chat_template,
        })
    }

    /// Token ids for `text`. Special tokens written in the text (for example
    /// `<|im_start|>`) become their ids. With `add_bos`, BOS is put in front
    /// when the model wants one (`add_bos_token`) and the text does not
    /// already start with it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(tok_err("cannot encode text"))?;
        let mut ids = encoding.get_ids().to_vec();
        if add_bos && self.add_bos {
            if let Some(bos) = &self.bos {
                if ids.first() != Some(&bos.id) {
                    ids.insert(0, bos.id);
                }
            }
        }
        Ok(ids)
    }

    /// Token ids for `text` read as plain text: a special token written in it
    /// (`<|im_end|>`) is encoded like any other characters, never as its id.
    /// No BOS.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let plain = self.plain.get_or_init(|| {
            let mut plain = self.inner.clone();
            plain.set_encode_special_tokens(true);
            plain
        });
        let encoding = plain
            .encode_fast(text, false)
            .map_err(tok_err("cannot encode text"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Where `encode` would read a special token in `text`: byte ranges (with
    /// any spaces the token strips) and ids, in order.
    pub fn special_token_spans(&self, text: &str) -> Result<Vec<(Range<usize>, u32)>, ModelError> {
        if self.find_special_text(text).is_none() {
            return Ok(Vec::new());
        }
        // The tokenizer's own split, so that tokens that strip neighbouring
        // spaces (`lstrip`/`rstrip`) are found exactly as `encode` finds them.
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(tok_err("cannot encode text"))?;
        Ok(encoding
            .get_ids()
            .iter()
            .zip(encoding.get_offsets())
            .filter(|(id, _)| self.special_ids.contains(id))
            .map(|(&id, &(start, end))| (start..end, id))
            .collect())
    }

    /// The first place where `text` spells a special token, as a byte range.
    pub fn find_special_text(&self, text: &str) -> Option<Range<usize>> {
        text.bytes()
            .enumerate()
            .filter(|(_, b)| self.special_first_bytes.contains(b))
            .find_map(|(i, _)| {
                let rest = text.as_bytes().get(i..)?;
                self.special_texts
                    .iter()
                    .find(|t| rest.starts_with(t.as_bytes()))
                    .map(|t| i..i + t.len())
            })
    }

    /// Token ids for `text` with the tokenizer's own post-processor applied:
    /// what encoder models expect (BERT's `[CLS] … [SEP]`). Never padded or
    /// truncated.
    pub fn encode_with_special_tokens(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .inner
            .encode_fast(text, true)
            .map_err(tok_err("cannot encode text"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`; with `skip_special`, special tokens (BOS, EOS,
    /// `<|im_start|>`, ...) are left out. Bytes that do not form UTF-8 come
    /// out as U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, ModelError> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(ModelError::Tokenizer(format!(
                "token id {bad} is out of range (vocabulary size {})",
                self.vocab_size
            )));
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(tok_err("cannot decode ids"))
    }

    /// Number of token ids (largest id + 1).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|t| t.text.as_str())
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|t| t.id)
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|t| t.text.as_str())
    }

    /// Whether `encode(.., add_bos = true)` puts BOS in front.
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Every id that ends generation: the EOS id first, then the others the
    /// model's files name (GGUF `eot_token_id`/`eom_token_id` and tokens
    /// spelled like `<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, as llama.cpp
    /// does; Hugging Face `generation_config.json`/`config.json`
    /// `eos_token_id`).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `id` is a special (control) token that `decode(.., true)` skips.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The chat template found with the tokenizer (GGUF
    /// `tokenizer.chat_template`, or `tokenizer_config.json` `chat_template`).
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The vocabulary's own spelling of `id` (byte-level BPE pieces use the
    /// byte alphabet, e.g. `Ġworld`; SentencePiece pieces use `▁`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// Tokens whose text marks the end of a turn; llama.cpp's list.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// The texts of `special_ids`, longest first; empty texts (which would match
/// everywhere) left out.
fn special_texts(inner: &tokenizers::Tokenizer, special_ids: &HashSet<u32>) -> Vec<String> {
    let mut texts: Vec<String> = special_ids
        .iter()
        .filter_map(|&id| inner.id_to_token(id))
        .filter(|t| !t.is_empty())
        .collect();
    texts.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    texts.dedup();
    texts
}

fn first_bytes(texts: &[String]) -> Vec<u8> {
    let mut bytes: Vec<u8> = texts.iter().filter_map(|t| t.bytes().next()).collect();
    bytes.sort_unstable();
    bytes.dedup();
    bytes
}

fn read_json(path: &Path) -> Result<serde_json::Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError::Tokenizer(format!("{} is not valid JSON: {e}", path.display())))
}

/// `tokenizer_config.json` writes special tokens as a string or as an
/// `AddedToken` object with a `content` field.
fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `eos_token_id` is an integer or a list of integers.
fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    let one = |v: &serde_json::Value| v.as_u64().and_then(|id| u32::try_from(id).ok());
    match v {
        serde_json::Value::Array(items) => items.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which
/// the one named `default` is the chat template.
fn chat_template_from_config(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(items) => {
            let template =
                |item: &serde_json::Value| item.get("template")?.as_str().map(str::to_string);
            items
                .iter()
                .find(|item| {
                    item.get("name").and_then(serde_json::Value::as_str) == Some("default")
                })
                .or_else(|| items.first())
                .and_then(template)
        }
        _ => None,
    }
}

fn dedup_in_order(ids: &mut Vec<u32>) {
    let mut seen = HashSet::new();
    ids.retain(|id| seen.insert(*id));
}

// The engine shares one tokenizer between threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Tokenizer>();
};
