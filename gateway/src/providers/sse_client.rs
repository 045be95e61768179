//! Framing of upstream streams: Server-Sent Events (OpenAI, GigaChat) and
//! newline-delimited JSON (YandexGPT). Bytes go in as the network hands them
//! over; complete event payloads come out.
//!
//! Design choice: the parser works on bytes and splits on `\n` before any
//! UTF-8 decoding, so a multi-byte character cut between two network chunks
//! is reassembled instead of being mangled; and the unfinished line it holds
//! is bounded ([`MAX_LINE_BYTES`]), so an upstream that never sends a newline
//! cannot grow our memory without limit.

use std::collections::VecDeque;

use super::ProviderError;

/// The longest line (or SSE event) accepted from an upstream.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// How the stream is cut into payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `data:` lines, events separated by a blank line; comments (`:`) and
    /// other fields (`event:`, `id:`, `retry:`) are ignored.
    Sse,
    /// One JSON value per line.
    Ndjson,
}

/// An incremental parser of one stream.
#[derive(Debug)]
pub struct StreamParser {
    framing: Framing,
    line: Vec<u8>,
    /// The `data:` lines of the SSE event being read.
    data: String,
    has_data: bool,
    ready: VecDeque<String>,
}

impl StreamParser {
    pub fn new(framing: Framing) -> Self {
        Self {
            framing,
            line: Vec::new(),
            data: String::new(),
            has_data: false,
            ready: VecDeque::new(),
        }
    }

    /// Feeds bytes; complete payloads become available from [`Self::next_payload`].
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ProviderError> {
        let mut rest = bytes;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..pos]);
            rest = &rest[pos + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.on_line(&line)?;
        }
        self.line.extend_from_slice(rest);
        if self.line.len() + self.data.len() > MAX_LINE_BYTES {
            return Err(ProviderError::Malformed(format!(
                "an event longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// The stream ended: a last line without its newline still counts.
    pub fn finish(&mut self) -> Result<(), ProviderError> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.on_line(&line)?;
        }
        if self.framing == Framing::Sse {
            self.dispatch();
        }
        Ok(())
    }

    pub fn next_payload(&mut self) -> Option<String> {
        self.ready.pop_front()
    }

    fn on_line(&mut self, line: &[u8]) -> Result<(), ProviderError> {
        let text = std::str::from_utf8(line)
            .map_err(|_| ProviderError::Malformed("a stream line that is not UTF-8".into()))?;
        match self.framing {
            Framing::Ndjson => {
                if !text.trim().is_empty() {
                    self.ready.push_back(text.to_string());
                }
            }
            Framing::Sse => {
                if text.is_empty() {
                    self.dispatch();
                } else if text.starts_with(':') {
                    // A comment (keep-alive).
                } else {
                    let (field, value) = match text.split_once(':') {
                        Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                        None => (text, ""),
                    };
                    if field == "data" {
                        if self.has_data {
                            self.data.push('\n');
                        }
                        self.data.push_str(value);
                        self.has_data = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn dispatch(&mut self) {
        if self.has_data {
            self.ready.push_back(std::mem::take(&mut self.data));
            self.has_data = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(p: &mut StreamParser) -> Vec<String> {
        std::iter::from_fn(|| p.next_payload()).collect()
    }

    #[test]
    fn sse_events_split_across_chunks_and_crlf() {
        let mut p = StreamParser::new(Framing::Sse);
        p.feed(b": keep-alive\r\n\r\ndata: {\"a\"").unwrap();
        assert!(payloads(&mut p).is_empty());
        p.feed(b":1}\r\n\r\nevent: x\ndata: [DONE]\n\n").unwrap();
        assert_eq!(payloads(&mut p), vec!["{\"a\":1}", "[DONE]"]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let mut p = StreamParser::new(Framing::Sse);
        p.feed(b"data: a\ndata:b\n\n").unwrap();
        assert_eq!(payloads(&mut p), vec!["a\nb"]);
    }

    #[test]
    fn a_character_cut_between_chunks_is_reassembled() {
        let text = "data: привет\n\n".as_bytes();
        let mut p = StreamParser::new(Framing::Sse);
        p.feed(&text[..8]).unwrap();
        p.feed(&text[8..]).unwrap();
        assert_eq!(payloads(&mut p), vec!["привет"]);
    }

    #[test]
    fn ndjson_lines_and_a_last_line_without_newline() {
        let mut p = StreamParser::new(Framing::Ndjson);
        p.feed(b"{\"a\":1}\n\n{\"b\"").unwrap();
        p.feed(b":2}").unwrap();
        p.finish().unwrap();
        assert_eq!(payloads(&mut p), vec!["{\"a\":1}", "{\"b\":2}"]);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut p = StreamParser::new(Framing::Ndjson);
        let chunk = vec![b'x'; 64 * 1024];
        let mut result = Ok(());
        for _ in 0..20 {
            result = p.feed(&chunk);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(ProviderError::Malformed(_))));
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let mut p = StreamParser::new(Framing::Sse);
        assert!(p.feed(b"data: \xff\xfe\n\n").is_err());
    }
}
