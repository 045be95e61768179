//! Each token's bytes, for grammar engines that match generated text byte by
//! byte (constrained decoding in the runtime).
//!
//! A vocabulary spells its pieces in one of two alphabets, and the decoder
//! says which: byte-level BPE (GPT-2 style: every byte is one printable
//! character, `Ġ` for a space) or SentencePiece with byte fallback (`▁` for a
//! space, `<0xXX>` pieces for single bytes). Both are mapped back to the raw
//! bytes the detokeniser would produce.

use std::collections::HashMap;

use tokenizers::DecoderWrapper;

use super::Tokenizer;
use crate::ModelError;

/// How the vocabulary spells bytes, as its decoder reveals.
#[derive(Debug, Default)]
struct Alphabet {
    byte_level: bool,
    byte_fallback: bool,
    /// The character a SentencePiece vocabulary writes for a space.
    space: Option<char>,
}

impl Alphabet {
    fn inspect(&mut self, decoder: &DecoderWrapper) {
        match decoder {
            DecoderWrapper::ByteLevel(_) => self.byte_level = true,
            DecoderWrapper::ByteFallback(_) => self.byte_fallback = true,
            DecoderWrapper::Metaspace(m) => self.space = Some(m.get_replacement()),
            DecoderWrapper::Replace(r) => {
                // The pattern is private; its serialised form names it.
                if let Ok(v) = serde_json::to_value(r) {
                    let from = v["pattern"]["String"].as_str().unwrap_or_default();
                    let to = v["content"].as_str().unwrap_or_default();
                    let mut chars = from.chars();
                    if let (Some(c), None, " ") = (chars.next(), chars.next(), to) {
                        self.space = Some(c);
                    }
                }
            }
            DecoderWrapper::Sequence(seq) => {
                for d in seq.get_decoders() {
                    self.inspect(d);
                }
            }
            _ => {}
        }
    }
}

/// GPT-2's byte alphabet: printable bytes stand for themselves, the rest
/// are shifted to U+0100 onwards in order.
fn byte_level_chars() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut shifted = 0x100u32;
    for b in 0..=255u8 {
        if printable(b) {
            map.insert(b as char, b);
        } else {
            if let Some(c) = char::from_u32(shifted) {
                map.insert(c, b);
            }
            shifted += 1;
        }
    }
    map
}

/// `<0xAB>` → 0xAB.
fn fallback_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer {
    /// The bytes of every id below [`Tokenizer::vocab_size`], as text would
    /// contain them. Special tokens get their text (callers that must keep
    /// them apart ask [`Tokenizer::is_special`]); ids the vocabulary lacks
    /// get no bytes.
    pub fn token_bytes(&self) -> Result<Vec<Vec<u8>>, ModelError> {
        let mut alphabet = Alphabet::default();
        if let Some(d) = self.inner.get_decoder() {
            alphabet.inspect(d);
        }
        if !alphabet.byte_level && !alphabet.byte_fallback {
            return Err(ModelError::Tokenizer(
                "cannot map this vocabulary to bytes: its decoder is neither byte-level BPE nor \
                 byte fallback, so constrained decoding is not available for this model"
                    .into(),
            ));
        }
        let chars = byte_level_chars();
        let added = self.inner.get_added_tokens_decoder();
        let space = alphabet.space.unwrap_or('▁');
        let bytes = (0..self.vocab_size as u32)
            .map(|id| {
                if let Some(token) = added.get(&id) {
                    return token.content.as_bytes().to_vec();
                }
                let Some(piece) = self.inner.id_to_token(id) else {
                    return Vec::new();
                };
                if alphabet.byte_fallback {
                    if let Some(b) = fallback_byte(&piece) {
                        return vec![b];
                    }
                }
                if alphabet.byte_level {
                    let mapped: Option<Vec<u8>> =
                        piece.chars().map(|c| chars.get(&c).copied()).collect();
                    if let Some(b) = mapped {
                        return b;
                    }
                }
                piece.replace(space, " ").into_bytes()
            })
            .collect();
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_alphabet_covers_every_byte_once() {
        let map = byte_level_chars();
        assert_eq!(map.len(), 256);
        assert_eq!(map.get(&'Ġ'), Some(&b' '));
        assert_eq!(map.get(&'Ċ'), Some(&b'\n'));
        assert_eq!(map.get(&'a'), Some(&b'a'));
    }

    #[test]
    fn fallback_pieces_are_single_bytes() {
        assert_eq!(fallback_byte("<0x0A>"), Some(b'\n'));
        assert_eq!(fallback_byte("<0xZZ>"), None);
        assert_eq!(fallback_byte("<0x0A0>"), None);
        assert_eq!(fallback_byte("a"), None);
    }
}
