//! Constrained decoding: a grammar (a JSON schema, "any JSON object", a
//! regular expression or a Lark grammar) restricts which tokens a sequence
//! may sample next, so that its output always parses.
//!
//! The grammar engine is `llguidance` (an Earley parser over a lazily built
//! lexer, with the vocabulary in a byte trie): it compiles a schema in
//! milliseconds, computes a step's mask in tens of microseconds, and supports
//! the JSON-schema features agents use (`$ref`, `anyOf`, patterns, bounds).
//! It is hidden behind three types: [`Grammars`] (one per model: the
//! vocabulary as bytes, and a cache of compiled grammars), [`Grammar`] (one
//! compiled grammar, shared by every sequence that asks for it) and
//! [`SeqConstraint`] (one sequence's position in its grammar: the mask for
//! the next token, and the tokens it consumed).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use sluice_models::Tokenizer;

/// Compiled grammars kept per model; the oldest is dropped beyond this.
const CACHE_CAPACITY: usize = 256;

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GrammarSpec {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON schema, as JSON text. `strict: false` ignores keywords the
    /// engine does not know instead of refusing the schema.
    JsonSchema { schema: String, strict: bool },
    /// A regular expression the whole output must match.
    Regex(String),
    /// A Lark grammar (llguidance's dialect, a superset of Lark's).
    Lark(String),
}

impl GrammarSpec {
    fn to_grammar(&self) -> Result<TopLevelGrammar, ConstraintError> {
        Ok(match self {
            Self::JsonObject => TopLevelGrammar::from_json_schema(with_layout(
                serde_json::json!({"type": "object"}),
                true,
            )),
            Self::JsonSchema { schema, strict } => {
                let schema: Value = serde_json::from_str(schema)
                    .map_err(|e| ConstraintError(format!("the schema is not JSON: {e}")))?;
                if !matches!(schema, Value::Object(_) | Value::Bool(_)) {
                    return Err(ConstraintError(
                        "the schema must be a JSON object (or true/false)".into(),
                    ));
                }
                TopLevelGrammar::from_json_schema(with_layout(schema, *strict))
            }
            Self::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Self::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        })
    }
}

/// JSON laid out the way models write it (`{"a": 1, "b": 2}`), with no free
/// whitespace: flexible whitespace lets a small model pad forever. Public
/// so that a Lark grammar's `%json{...}` (tool calls) is laid out the same.
pub fn with_layout(mut schema: Value, strict: bool) -> Value {
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({
                "item_separator": ", ",
                "key_separator": ": ",
                "whitespace_flexible": false,
                "lenient": !strict,
            })
        });
    }
    schema
}

/// Why a grammar cannot be compiled or followed; the message names the fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConstraintError(pub String);

/// A model's grammar compiler and its cache of compiled grammars.
pub struct Grammars {
    factory: ParserFactory,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    grammars: HashMap<GrammarSpec, Arc<Grammar>>,
    order: VecDeque<GrammarSpec>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").finish_non_exhaustive()
    }
}

impl Grammars {
    /// Builds the byte trie of `tokenizer`'s vocabulary (tens of ms for
    /// 50k tokens). `vocab_size` is the model's (logit rows may be longer
    /// than the tokenizer's vocabulary); the extra ids are never allowed.
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> Result<Self, ConstraintError> {
        let mut words = tokenizer
            .token_bytes()
            .map_err(|e| ConstraintError(e.to_string()))?;
        for (id, word) in words.iter_mut().enumerate() {
            // The trie keeps special tokens apart by a marker byte, so that
            // no grammar matches `<|im_end|>` as text.
            if tokenizer.is_special(id as u32) || word.is_empty() {
                let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                if word.is_empty() {
                    marked.extend_from_slice(format!("<[{id}]>").as_bytes());
                } else {
                    marked.append(word);
                }
                *word = marked;
            }
        }
        while words.len() < vocab_size {
            let id = words.len();
            let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
            marked.extend_from_slice(format!("<[{id}]>").as_bytes());
            words.push(marked);
        }
        let eos = tokenizer.eos_ids().to_vec();
        let Some(&first_eos) = eos.first() else {
            return Err(ConstraintError(
                "this model has no end-of-sequence token, so a grammar could never end it".into(),
            ));
        };
        let info = TokRxInfo::new(words.len() as u32, first_eos);
        let mut trie = TokTrie::from(&info, &words);
        if eos.len() > 1 {
            trie = trie.with_eos_tokens(&eos);
        }
        let env: TokEnv = Arc::new(Vocabulary { trie, tokenizer });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| ConstraintError(e.to_string()))?;
        factory.quiet();
        Ok(Self {
            factory,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// The compiled grammar for `spec`, from the cache when it was compiled
    /// before. Compiling is CPU work (milliseconds to tens of ms for large
    /// schemas): call it off async workers.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Arc<Grammar>, ConstraintError> {
        if let Some(g) = self.lock().grammars.get(spec) {
            return Ok(g.clone());
        }
        let parser = self
            .factory
            .create_parser(spec.to_grammar()?)
            .map_err(|e| ConstraintError(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError(e));
        }
        let grammar = Arc::new(Grammar {
            fresh: Mutex::new(matcher),
        });
        let mut cache = self.lock();
        if !cache.grammars.contains_key(spec) {
            if cache.order.len() >= CACHE_CAPACITY {
                if let Some(old) = cache.order.pop_front() {
                    cache.grammars.remove(&old);
                }
            }
            cache.order.push_back(spec.clone());
            cache.grammars.insert(spec.clone(), grammar.clone());
        }
        Ok(grammar)
    }

    /// Compiled grammars held.
    pub fn cached(&self) -> usize {
        self.lock().grammars.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The vocabulary as the grammar engine sees it.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer
                .encode_plain(text)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(text.as_bytes()))
        })
    }
}

/// One compiled grammar, ready to start sequences on.
pub struct Grammar {
    /// The matcher at the grammar's start; each sequence deep-clones it.
    fresh: Mutex<Matcher>,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar").finish_non_exhaustive()
    }
}

impl Grammar {
    /// A sequence at the grammar's start.
    pub fn start(&self) -> SeqConstraint {
        let matcher = self
            .fresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .deep_clone();
        SeqConstraint {
            matcher,
            mask: None,
        }
    }
}

/// One sequence's position in its grammar.
pub struct SeqConstraint {
    matcher: Matcher,
    /// Allowed next tokens, computed by [`SeqConstraint::compute_mask`] and
    /// used up by the next [`SeqConstraint::consume`].
    mask: Option<SimpleVob>,
}

impl std::fmt::Debug for SeqConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqConstraint")
            .field("mask_ready", &self.mask.is_some())
            .finish_non_exhaustive()
    }
}

impl SeqConstraint {
    /// Computes the mask of allowed next tokens, unless it already is.
    pub fn compute_mask(&mut self) -> Result<(), ConstraintError> {
        if self.mask.is_none() {
            let mask = self.matcher.compute_mask_or_eos().map_err(grammar_failed)?;
            self.mask = Some(mask);
        }
        Ok(())
    }

    /// Sets every disallowed token's logit to -inf. Computes the mask first
    /// if [`SeqConstraint::compute_mask`] was not called.
    pub fn apply(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        self.compute_mask()?;
        let Some(mask) = &self.mask else {
            return Ok(());
        };
        if mask.num_set() == 0 {
            return Err(ConstraintError(
                "the grammar allows no next token (the schema cannot be satisfied from here)"
                    .into(),
            ));
        }
        let allowed = mask.len().min(logits.len());
        mask.iter_unset_entries(|i| {
            if let Some(l) = logits.get_mut(i) {
                *l = f32::NEG_INFINITY;
            }
        });
        for l in logits.iter_mut().skip(allowed) {
            *l = f32::NEG_INFINITY;
        }
        Ok(())
    }

    /// Advances past the sampled `token`.
    pub fn consume(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.mask = None;
        self.matcher.consume_token(token).map_err(grammar_failed)
    }

    /// The grammar is complete and admits nothing more: the sequence must stop.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

fn grammar_failed(e: impl std::fmt::Display) -> ConstraintError {
    ConstraintError(format!("the grammar engine failed: {e}"))
}

#[cfg(test)]
mod tests;
