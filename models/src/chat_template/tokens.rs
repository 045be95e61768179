//! From messages to prompt token ids, with control tokens coming only from
//! the template's own text.
//!
//! Rendering the template to one string and encoding it with special tokens
//! parsed lets a message that contains `<|im_end|>\n<|im_start|>system` end
//! its own turn and open a system turn: role injection. So every piece of
//! special-token text inside a message is swapped for a marker before
//! rendering (private-use characters no tokenizer treats as special), the
//! special tokens still present in the rendered text are therefore the
//! template's, and each stretch between them is encoded as plain text after
//! its markers are put back. A stretch is what the tokenizer would encode on
//! its own anyway (it splits at special tokens before BPE), so a message
//! holding special-token text gets the ids that text would have as prose.
//!
//! Messages without special-token text (nearly all) take the old path,
//! render + encode, so their ids are those of the model's reference
//! tokenisation by construction.

use crate::{ChatMessage, ChatTemplate, ModelError, Tokenizer, ToolFormat};

/// Opens a marker: `MARK_OPEN`, the literal's index in decimal, `MARK_CLOSE`.
/// Private-use code points: no model's special token contains them, and a
/// message that contains `MARK_OPEN` itself has it escaped like a special
/// token, so every `MARK_OPEN` in the rendered text opens one of our markers.
const MARK_OPEN: char = '\u{E000}';
const MARK_CLOSE: char = '\u{E001}';

impl ChatTemplate {
    /// The prompt's token ids for `messages`: the template's own special
    /// tokens (`<|im_start|>`, BOS written by the template...) as control
    /// ids, and every message's role and content as plain text, whatever it
    /// spells. BOS is only where the template writes it.
    pub fn render_tokens(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, ModelError> {
        self.render_tokens_with_tools(
            tokenizer,
            messages,
            &[],
            self.tool_format(),
            add_generation_prompt,
        )
    }

    /// [`ChatTemplate::render_tokens`] with tools offered (see
    /// [`ChatTemplate::render_with_tools`]). Every string of the tools and of
    /// the calls (names, arguments, descriptions) is the client's text, so
    /// it is escaped like message content.
    pub fn render_tokens_with_tools(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
        format: ToolFormat,
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, ModelError> {
        let (mut messages, mut tools) = self.prompt_values(messages, tools, format);
        let mut literals = Vec::new();
        for value in messages.iter_mut().chain(tools.iter_mut()) {
            escape_strings(tokenizer, value, &mut literals);
        }
        let rendered = self.render_values(&messages, tools.as_ref(), add_generation_prompt)?;
        if literals.is_empty() {
            return tokenizer.encode(&rendered, false);
        }
        let stretch = |range: std::ops::Range<usize>| {
            rendered.get(range.clone()).ok_or_else(|| {
                ModelError::Tokenizer(format!(
                    "special tokens found at bytes {range:?} of a {}-byte prompt",
                    rendered.len()
                ))
            })
        };
        let mut ids = Vec::new();
        let mut plain_from = 0;
        for (span, id) in tokenizer.special_token_spans(&rendered)? {
            let between = stretch(plain_from..span.start)?;
            ids.extend(tokenizer.encode_plain(&unescape(between, &literals)?)?);
            ids.push(id);
            plain_from = span.end;
        }
        let rest = stretch(plain_from..rendered.len())?;
        ids.extend(tokenizer.encode_plain(&unescape(rest, &literals)?)?);
        Ok(ids)
    }
}

/// Escapes every string inside `value` (see [`escape`]); object keys are
/// left as they are (a template prints schema keys, but a key that spells a
/// special token would only confuse its own tool's schema).
fn escape_strings(
    tokenizer: &Tokenizer,
    value: &mut serde_json::Value,
    literals: &mut Vec<String>,
) {
    match value {
        serde_json::Value::String(s) => {
            let escaped = escape(tokenizer, s, literals);
            *s = escaped;
        }
        serde_json::Value::Array(items) => {
            for item in items {
                escape_strings(tokenizer, item, literals);
            }
        }
        serde_json::Value::Object(map) => {
            for (_, item) in map.iter_mut() {
                escape_strings(tokenizer, item, literals);
            }
        }
        _ => {}
    }
}

/// `text` with each special-token text (and each `MARK_OPEN`) replaced by a
/// marker naming its index in `literals`.
fn escape(tokenizer: &Tokenizer, text: &str, literals: &mut Vec<String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    loop {
        let special = tokenizer.find_special_text(rest);
        let mark = rest.find(MARK_OPEN).map(|i| i..i + MARK_OPEN.len_utf8());
        let next = match (special, mark) {
            (Some(s), Some(m)) => Some(if m.start < s.start { m } else { s }),
            (s, m) => s.or(m),
        };
        let Some(range) = next else {
            if out.is_empty() {
                return text.to_string();
            }
            out.push_str(rest);
            return out;
        };
        let (Some(before), Some(literal), Some(after)) = (
            rest.get(..range.start),
            rest.get(range.clone()),
            rest.get(range.end..),
        ) else {
            // Not reachable: both searches return char-aligned ranges.
            out.push_str(rest);
            return out;
        };
        out.push_str(before);
        out.push(MARK_OPEN);
        out.push_str(&literals.len().to_string());
        out.push(MARK_CLOSE);
        literals.push(literal.to_string());
        rest = after;
    }
}

/// `text` with its markers replaced by their literals.
fn unescape(text: &str, literals: &[String]) -> Result<String, ModelError> {
    let mut out = String::with_capacity(text.len());
    let mut parts = text.split(MARK_OPEN);
    out.push_str(parts.next().unwrap_or_default());
    for part in parts {
        let literal = part
            .split_once(MARK_CLOSE)
            .and_then(|(index, after)| Some((literals.get(index.parse::<usize>().ok()?)?, after)));
        let Some((literal, after)) = literal else {
            // The template cut a marker apart or wrote U+E000 itself: the
            // content can no longer be told from the template's text.
            return Err(ModelError::Template(
                "a message holds special-token text that this model's chat template does not \
                 pass through unchanged; remove it from the message"
                    .into(),
            ));
        };
        out.push_str(literal);
        out.push_str(after);
    }
    Ok(out)
}
