//! Streaming detokenisation: text for each generated token as soon as it is
//! complete, never half a UTF-8 character.
//!
//! Decoding one token at a time is wrong in two ways: a byte-level token can
//! hold part of a character (Cyrillic, CJK and emoji often span tokens), and
//! SentencePiece decoders drop the leading space of whatever they decode
//! first. So, as TGI and vLLM do, the decoder keeps two offsets into the ids
//! it has seen: text is produced by decoding `ids[prefix..]` and subtracting
//! the text of `ids[prefix..read]`, which gives every new token the left
//! context of the previous chunk. While that text ends in U+FFFD (a character
//! still missing bytes) nothing is emitted and the offsets stay put.
//!
//! Invariant (tested): the concatenation of every `push` and the final
//! `finish` equals `Tokenizer::decode(all_ids, true)`.

use crate::tokenizer::Tokenizer;
use crate::ModelError;

/// If this many tokens are held back and the text still ends in U+FFFD, the
/// bytes are not going to form a character (a UTF-8 character is at most four
/// bytes, each at least one token): emit them as they are rather than stall
/// the stream.
const MAX_HELD_TOKENS: usize = 8;

/// Incremental decoder for one generated sequence. Special tokens are skipped.
///
/// Start it with [`IncrementalDecoder::new`] when generation starts; the
/// prompt is not part of its input, so the first generated token decodes as
/// it would at the start of a text (`decode(generated_ids, true)`).
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Start of the context window: the tokens of the last emitted chunk.
    prefix_offset: usize,
    /// End of what has been emitted.
    read_offset: usize,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one generated token; returns the text it completes (maybe empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, ModelError> {
        self.ids.push(id);
        let (prefix_text, new_text) = self.window(tok)?;
        let held = self.ids.len() - self.read_offset;
        if new_text.len() > prefix_text.len()
            && (!new_text.ends_with('\u{FFFD}') || held >= MAX_HELD_TOKENS)
        {
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(suffix_after(new_text, &prefix_text))
        } else {
            Ok(String::new())
        }
    }

    /// Flushes whatever is held back (incomplete characters become U+FFFD).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String, ModelError> {
        let (prefix_text, new_text) = self.window(tok)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        if new_text.len() > prefix_text.len() {
            Ok(suffix_after(new_text, &prefix_text))
        } else {
            Ok(String::new())
        }
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The text of the context window without and with the unread tokens.
    fn window(&self, tok: &Tokenizer) -> Result<(String, String), ModelError> {
        let prefix_text = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let new_text = tok.decode(&self.ids[self.prefix_offset..], true)?;
        Ok((prefix_text, new_text))
    }
}

/// `new_text` without its leading `prefix_text`. The two normally share that
/// prefix exactly; if a decoder rewrote it, only the part past their common
/// prefix is new.
fn suffix_after(new_text: String, prefix_text: &str) -> String {
    if let Some(rest) = new_text.strip_prefix(prefix_text) {
        return rest.to_string();
    }
    let common = new_text
        .char_indices()
        .zip(prefix_text.chars())
        .take_while(|((_, a), b)| a == b)
        .last()
        .map(|((i, c), _)| i + c.len_utf8())
        .unwrap_or(0);
    new_text[common..].to_string()
}
