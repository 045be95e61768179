//! From `tokenizer.ggml.*` GGUF metadata to a `tokenizers::Tokenizer` that
//! tokenises exactly as llama.cpp does for the same file: the metadata keys,
//! the pre-tokenizer regexes `tokenizer.ggml.pre` names, byte-level BPE
//! (`gpt2`) and SentencePiece BPE by scores (`llama`).

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::tok_err;
use crate::gguf::{GgufFile, GgufValue};
use crate::ModelError;

// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub(super) const TOKEN_TYPE_NORMAL: i64 = 1;
pub(super) const TOKEN_TYPE_UNKNOWN: i64 = 2;
pub(super) const TOKEN_TYPE_CONTROL: i64 = 3;
pub(super) const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The `tokenizer.ggml.*` keys both GGUF tokenizer kinds need.
pub(super) struct GgufTokenizerMeta {
    pub(super) model: String,
    pub(super) pre: Option<String>,
    pub(super) tokens: Vec<String>,
    pub(super) token_types: Vec<i64>,
    /// `tokenizer.ggml.scores` (SentencePiece merge priorities).
    pub(super) scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub(super) add_space_prefix: Option<bool>,
}

/// How a `gpt2` GGUF vocabulary is pre-tokenised (llama.cpp `llm_tokenizer_bpe`).
pub(super) struct PreKind {
    pub(super) regexes: &'static [&'static str],
    /// Whole pre-tokens found in the vocabulary skip merging (Llama 3).
    pub(super) ignore_merges: bool,
    /// llama.cpp's `add_bos` default for this pre-tokenizer when the file has
    /// no `tokenizer.ggml.add_bos_token`.
    pub(super) add_bos: bool,
}

// Regexes copied from llama.cpp (`llama-vocab.cpp`); each splits the pieces
// the previous one left.
pub(super) const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
pub(super) const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(super) const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl GgufTokenizerMeta {
    pub(super) fn read(gguf: &GgufFile) -> Result<Self, ModelError> {
        let model = gguf
            .get("tokenizer.ggml.model")
            .and_then(GgufValue::as_str)
            .ok_or_else(|| ModelError::Tokenizer("GGUF has no tokenizer.ggml.model".into()))?
            .to_string();
        let pre = gguf
            .get("tokenizer.ggml.pre")
            .and_then(GgufValue::as_str)
            .map(str::to_string);
        let tokens = string_array(gguf, "tokenizer.ggml.tokens")?
            .ok_or_else(|| ModelError::Tokenizer("GGUF has no tokenizer.ggml.tokens".into()))?;
        if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
            return Err(ModelError::Tokenizer(format!(
                "tokenizer.ggml.tokens has {} entries",
                tokens.len()
            )));
        }
        let token_types = match gguf.get("tokenizer.ggml.token_type") {
            None => vec![TOKEN_TYPE_NORMAL; tokens.len()],
            Some(v) => {
                let items = v.as_array().ok_or_else(|| {
                    ModelError::Tokenizer("tokenizer.ggml.token_type is not an array".into())
                })?;
                if items.len() != tokens.len() {
                    return Err(ModelError::Tokenizer(format!(
                        "tokenizer.ggml.token_type has {} entries for {} tokens",
                        items.len(),
                        tokens.len()
                    )));
                }
                items
                    .iter()
                    .map(|t| t.as_f64().map(|t| t as i64))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ModelError::Tokenizer("tokenizer.ggml.token_type holds a non-number".into())
                    })?
            }
        };
        let scores = match gguf.get("tokenizer.ggml.scores") {
            None => None,
            Some(v) => {
                let items = v.as_array().ok_or_else(|| {
                    ModelError::Tokenizer("tokenizer.ggml.scores is not an array".into())
                })?;
                let scores = items
                    .iter()
                    .map(|s| s.as_f64().map(|s| s as f32))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ModelError::Tokenizer("tokenizer.ggml.scores holds a non-number".into())
                    })?;
                Some(scores)
            }
        };
        let add_space_prefix = gguf
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(GgufValue::as_bool);
        Ok(Self {
            model,
            pre,
            tokens,
            token_types,
            scores,
            add_space_prefix,
        })
    }

    pub(super) fn pre_kind(&self) -> PreKind {
        let pre = self.pre.as_deref().unwrap_or("default");
        let kind = |regexes, ignore_merges, add_bos| PreKind {
            regexes,
            ignore_merges,
            add_bos,
        };
        match pre {
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" => kind(&[LLAMA3_REGEX], true, true),
            "dbrx" | "smaug-bpe" => kind(&[LLAMA3_REGEX], false, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "stablelm2" | "megrez" | "hunyuan" => {
                kind(&[QWEN2_REGEX], false, false)
            }
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => kind(&[r"\p{N}", GPT2_REGEX], false, false),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "jina-v1-en" | "jina-v2-code"
            | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling"
            | "exaone4" => kind(&[GPT2_REGEX], false, false),
            "falcon" => kind(
                &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_REGEX, "[0-9][0-9][0-9]"],
                false,
                false,
            ),
            other => {
                if other != "default" {
                    tracing::warn!(
                        pre = other,
                        "unknown tokenizer.ggml.pre; using llama.cpp's default BPE pre-tokenizer, \
                         tokenisation may differ from the model's own"
                    );
                }
                kind(
                    &[
                        r"[\p{P}\$\+<=>\^~\|]+",
                        GPT2_REGEX,
                        r"\p{N}+",
                        "[0-9][0-9][0-9]",
                    ],
                    false,
                    false,
                )
            }
        }
    }
}

pub(super) fn string_array(gguf: &GgufFile, key: &str) -> Result<Option<Vec<String>>, ModelError> {
    let Some(v) = gguf.get(key) else {
        return Ok(None);
    };
    let items = v
        .as_array()
        .ok_or_else(|| ModelError::Tokenizer(format!("{key} is not an array")))?;
    items
        .iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .map(Some)
        .ok_or_else(|| ModelError::Tokenizer(format!("{key} holds a non-string")))
}

pub(super) fn vocab_map(tokens: &[String]) -> Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect()
}

/// Byte-level BPE (`tokenizer.ggml.model = gpt2`).
pub(super) fn build_byte_level_bpe(
    gguf: &GgufFile,
    meta: &GgufTokenizerMeta,
    kind: &PreKind,
) -> Result<tokenizers::Tokenizer, ModelError> {
    let merges = string_array(gguf, "tokenizer.ggml.merges")?.ok_or_else(|| {
        ModelError::Tokenizer("gpt2 GGUF tokenizer has no tokenizer.ggml.merges".into())
    })?;
    let merges = merges
        .iter()
        .map(|m| {
            // llama.cpp splits at the first space after the first character
            // (a merge can start with a space: "  " is "Ġ"-free in some vocabularies).
            let first = m.chars().next().map_or(0, char::len_utf8);
            m[first..]
                .find(' ')
                .map(|i| (m[..first + i].to_string(), m[first + i + 1..].to_string()))
                .ok_or_else(|| ModelError::Tokenizer(format!("merge {m:?} has no space")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let model = BPE::builder()
        .vocab_and_merges(vocab_map(&meta.tokens), merges)
        .ignore_merges(kind.ignore_merges)
        .build()
        .map_err(tok_err(
            "cannot build the BPE model from GGUF tokens and merges",
        ))?;

    let mut pre = Vec::with_capacity(kind.regexes.len() + 1);
    for regex in kind.regexes {
        let split = Split::new(
            SplitPattern::Regex((*regex).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err("cannot compile a pre-tokenizer regex"))?;
        pre.push(PreTokenizerWrapper::Split(split));
    }
    // The regexes already split the text: ByteLevel only maps bytes to the
    // byte alphabet, with no regex of its own and no prefix space.
    pre.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    )));

    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer
        .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(
            PreTokenizerSequence::new(pre),
        )))
        .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(
            false, false, false,
        ))));
    Ok(tokenizer)
}

/// SentencePiece BPE by scores with byte fallback (`tokenizer.ggml.model = llama`).
pub(super) fn build_sentencepiece_bpe(
    meta: &GgufTokenizerMeta,
) -> Result<tokenizers::Tokenizer, ModelError> {
    let n = meta.tokens.len();
    // A missing score list is what llama.cpp reads as all zeros.
    let scores = meta.scores.clone().unwrap_or_else(|| vec![0.0; n]);
    if scores.len() != n {
        return Err(ModelError::Tokenizer(format!(
            "tokenizer.ggml.scores has {} entries for {n} tokens",
            scores.len()
        )));
    }
    let vocab = vocab_map(&meta.tokens);

    // Merges as Hugging Face's SentencePiece converter derives them: every way
    // to split a mergeable piece into two vocabulary pieces, best-scored piece
    // first; a piece's own splits ordered by the ids of their parts.
    let mut merges: Vec<(f32, u32, u32, usize)> = Vec::new();
    for (id, piece) in meta.tokens.iter().enumerate() {
        let ty = meta.token_types[id];
        if ty != TOKEN_TYPE_NORMAL && ty != TOKEN_TYPE_USER_DEFINED {
            continue;
        }
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&l), Some(&r)) = (vocab.get(l), vocab.get(r)) {
                merges.push((scores[id], l, r, cut));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges = merges
        .into_iter()
        .map(|(_, l, r, _)| {
            (
                meta.tokens[l as usize].clone(),
                meta.tokens[r as usize].clone(),
            )
        })
        .collect();

    let unk = meta
        .token_types
        .iter()
        .position(|&t| t == TOKEN_TYPE_UNKNOWN)
        .map(|id| meta.tokens[id].clone());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let model = builder.build().map_err(tok_err(
        "cannot build the SentencePiece BPE model from GGUF tokens and scores",
    ))?;

    // llama.cpp: `tokenizer.ggml.add_space_prefix`, true unless the file says otherwise.
    let add_space_prefix = meta.add_space_prefix.unwrap_or(true);
    let to_metaspace =
        Replace::new(" ", "▁").map_err(tok_err("cannot build the space normaliser"))?;
    let normalizer = if add_space_prefix {
        NormalizerWrapper::Sequence(NormalizerSequence::new(vec![
            NormalizerWrapper::Prepend(Prepend::new("▁".to_string())),
            NormalizerWrapper::Replace(to_metaspace),
        ]))
    } else {
        NormalizerWrapper::Replace(to_metaspace)
    };
    let from_metaspace =
        Replace::new("▁", " ").map_err(tok_err("cannot build the space decoder"))?;
    let mut decoders = vec![
        DecoderWrapper::Replace(from_metaspace),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        // The space the encoder put in front comes off again.
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }

    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(normalizer))
        .with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(
            decoders,
        ))));
    Ok(tokenizer)
}
