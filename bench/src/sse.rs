//! A minimal server-sent-events reader: bytes in, `data:` payloads out.
//!
//! Network chunks split events anywhere (even inside a UTF-8 character), so
//! bytes are buffered until a full line is there. An event ends at a blank
//! line; its `data:` lines are joined with `\n` as the SSE spec says. Other
//! fields (`event:`, `id:`, comments) carry nothing a benchmark needs.

#[derive(Default)]
pub struct SseReader {
    buf: Vec<u8>,
    data: Option<String>,
}

impl SseReader {
    /// Feeds one network chunk; appends every event completed by it to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<String>) {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            self.line(&line, out);
        }
        self.buf.drain(..start);
    }

    /// Ends the stream: an event the server did not close with a blank line
    /// still counts.
    pub fn finish(&mut self, out: &mut Vec<String>) {
        if !self.buf.is_empty() {
            let rest = String::from_utf8_lossy(&self.buf).into_owned();
            self.buf.clear();
            self.line(rest.trim_end_matches('\r'), out);
        }
        if let Some(d) = self.data.take() {
            out.push(d);
        }
    }

    fn line(&mut self, line: &str, out: &mut Vec<String>) {
        if line.is_empty() {
            if let Some(d) = self.data.take() {
                out.push(d);
            }
            return;
        }
        let Some(value) = line.strip_prefix("data:") else {
            return;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut self.data {
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => self.data = Some(value.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let mut r = SseReader::default();
        let mut out = Vec::new();
        r.push(b"data: {\"a\":", &mut out);
        assert!(out.is_empty());
        r.push(b"1}\r\n\r\nda", &mut out);
        assert_eq!(out, vec!["{\"a\":1}".to_string()]);
        r.push(b"ta: [DONE]\n\n: comment\n", &mut out);
        r.finish(&mut out);
        assert_eq!(out, vec!["{\"a\":1}".to_string(), "[DONE]".to_string()]);
    }

    #[test]
    fn multi_line_data_is_joined_and_unterminated_event_is_flushed() {
        let mut r = SseReader::default();
        let mut out = Vec::new();
        r.push(b"event: x\ndata: one\ndata: two\n\ndata: tail", &mut out);
        assert_eq!(out, vec!["one\ntwo".to_string()]);
        r.finish(&mut out);
        assert_eq!(out.last().map(String::as_str), Some("tail"));
    }

    #[test]
    fn utf8_split_inside_a_character_survives() {
        let text = "data: héllo\n\n".as_bytes();
        let mut r = SseReader::default();
        let mut out = Vec::new();
        r.push(&text[..8], &mut out);
        r.push(&text[8..], &mut out);
        assert_eq!(out, vec!["héllo".to_string()]);
    }
}
