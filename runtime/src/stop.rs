//! Stop strings, matched on the decoded text stream.
//!
//! The detokeniser hands us text piece by piece; a stop string may straddle
//! pieces ("Hel" + "lo STOP"). [`StopMatcher`] therefore holds back the
//! longest tail of what it has seen that could still be the start of a stop
//! string, and releases it once it can no longer match (or at the end). The
//! stop string itself, and anything after it, is never emitted (OpenAI
//! semantics).
//!
//! Invariant: the held-back buffer is always shorter than the longest stop
//! string, so each `push` costs O(held + new text) per stop string, not
//! O(whole output).

/// Streaming matcher for a request's stop strings.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    /// Non-empty stop strings; an empty one would match everywhere, so it is
    /// dropped at construction.
    stops: Vec<String>,
    /// Text received but not yet emitted: a possible stop-string prefix.
    held: String,
    /// Index into `stops` of the string that matched, once one has; later
    /// input is discarded. Kept so the caller can say which one ended the
    /// answer (Anthropic's `stop_sequence`, vLLM's `stop_reason`).
    matched: Option<usize>,
}

impl StopMatcher {
    pub fn new(stop_strings: &[String]) -> Self {
        Self {
            stops: stop_strings
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            held: String::new(),
            matched: None,
        }
    }

    /// Whether a stop string has matched.
    pub fn matched(&self) -> bool {
        self.matched.is_some()
    }

    /// The stop string that ended generation, once one has matched.
    pub fn matched_string(&self) -> Option<&str> {
        self.matched
            .and_then(|i| self.stops.get(i))
            .map(String::as_str)
    }

    /// Feeds newly decoded text. Returns the text that is safe to emit now and
    /// whether a stop string matched. On a match the returned text is what
    /// precedes the stop string; after a match every call returns `("", true)`.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.matched.is_some() {
            return (String::new(), true);
        }
        if self.stops.is_empty() {
            return (text.to_owned(), false);
        }
        self.held.push_str(text);

        // Earliest start wins: with stops ["abc", "b"] on "abc", nothing of
        // "abc" may be emitted, since generation ended inside it either way.
        // Two matches at the same start: the shorter one, which a stream cut
        // finer (one character per push) would have completed first.
        let first_match = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|pos| (pos, s.len(), i)))
            .min();
        if let Some((pos, _, index)) = first_match {
            self.matched = Some(index);
            let mut out = std::mem::take(&mut self.held);
            out.truncate(pos);
            return (out, true);
        }

        let keep = self.longest_partial_suffix();
        let split = self.held.len() - keep;
        let rest = self.held.split_off(split);
        let out = std::mem::replace(&mut self.held, rest);
        (out, false)
    }

    /// At the end of generation without a match: the held-back text.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest suffix of `held` that is a proper
    /// prefix of some stop string. Only suffixes starting on a character
    /// boundary are considered, so both the emitted and the held part stay
    /// valid UTF-8 (a stop string never starts mid-character).
    fn longest_partial_suffix(&self) -> usize {
        let len = self.held.len();
        let max_stop = self.stops.iter().map(String::len).max().unwrap_or(0);
        let longest = len.min(max_stop.saturating_sub(1));
        (1..=longest)
            .rev()
            .find(|&k| {
                let start = len - k;
                self.held.is_char_boundary(start) && {
                    let tail = &self.held[start..];
                    self.stops.iter().any(|s| s.starts_with(tail))
                }
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        StopMatcher::new(&stops)
    }

    #[test]
    fn stop_string_split_across_pushes_is_matched() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("Hel"), ("Hel".to_string(), false));
        assert_eq!(m.push("lo STOP"), ("lo ".to_string(), true));
        assert!(m.matched());
        assert_eq!(m.push("more"), (String::new(), true));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn stop_string_straddling_three_pushes_is_matched() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("a S"), ("a ".to_string(), false));
        assert_eq!(m.push("T"), (String::new(), false));
        assert_eq!(m.push("OP tail"), (String::new(), true));
    }

    #[test]
    fn partial_prefix_is_held_then_released_when_it_diverges() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("go ST"), ("go ".to_string(), false));
        assert_eq!(m.push("ART"), ("START".to_string(), false));
    }

    #[test]
    fn partial_prefix_is_released_on_flush() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("end STO"), ("end ".to_string(), false));
        assert_eq!(m.flush(), "STO");
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn held_suffix_restarts_inside_a_failed_prefix() {
        // "aab" contains "ab": the first "a" must not have been emitted as
        // soon as the second "a" arrived if "ab" is the stop string.
        let mut m = matcher(&["ab"]);
        assert_eq!(m.push("a"), (String::new(), false));
        assert_eq!(m.push("a"), ("a".to_string(), false));
        assert_eq!(m.push("b"), (String::new(), true));
    }

    #[test]
    fn multibyte_text_is_never_split_inside_a_character() {
        let mut m = matcher(&["конец"]);
        let (out, matched) = m.push("привет ко");
        assert_eq!((out.as_str(), matched), ("привет ", false));
        let (out, matched) = m.push("т");
        assert_eq!((out.as_str(), matched), ("кот", false));
        let (out, matched) = m.push("🙂 кон");
        assert_eq!((out.as_str(), matched), ("🙂 ", false));
        let (out, matched) = m.push("ец!");
        assert_eq!((out.as_str(), matched), ("", true));
    }

    #[test]
    fn stop_string_sharing_a_multibyte_lead_does_not_split_characters() {
        // "é" and "è" share their first UTF-8 byte; a byte-wise prefix test
        // would try to hold half a character back.
        let mut m = matcher(&["è!"]);
        assert_eq!(m.push("café"), ("café".to_string(), false));
        assert_eq!(m.push(" è"), (" ".to_string(), false));
        assert_eq!(m.push("!"), (String::new(), true));
    }

    #[test]
    fn earliest_of_multiple_stop_strings_wins() {
        let mut m = matcher(&["world", "lo w"]);
        assert_eq!(m.push("hello world"), ("hel".to_string(), true));

        let mut m = matcher(&["\n\n", "User:"]);
        assert_eq!(m.push("answer"), ("answer".to_string(), false));
        // "\nU" cannot start "\n\n" any more, but "Us" may start "User:".
        assert_eq!(m.push("\nUs"), ("\n".to_string(), false));
        assert_eq!(m.push("er: hi"), (String::new(), true));
    }

    #[test]
    fn the_matched_string_is_reported_even_when_split_across_pushes() {
        let mut m = matcher(&["END", "STOP"]);
        assert_eq!(m.matched_string(), None);
        assert_eq!(m.push("Hel"), ("Hel".to_string(), false));
        assert_eq!(m.push("lo ST"), ("lo ".to_string(), false));
        assert_eq!(m.matched_string(), None);
        assert_eq!(m.push("OP and END"), (String::new(), true));
        assert_eq!(m.matched_string(), Some("STOP"));
        // Later input changes nothing.
        assert_eq!(m.push("END"), (String::new(), true));
        assert_eq!(m.matched_string(), Some("STOP"));
    }

    #[test]
    fn the_reported_string_is_the_earliest_then_the_shortest() {
        let mut m = matcher(&["world", "lo w"]);
        assert_eq!(m.push("hello world"), ("hel".to_string(), true));
        assert_eq!(m.matched_string(), Some("lo w"));

        let mut m = matcher(&["abc", "ab"]);
        assert_eq!(m.push("xabc"), ("x".to_string(), true));
        assert_eq!(m.matched_string(), Some("ab"));

        // An empty stop string is dropped, so the indices still name the
        // right one.
        let mut m = matcher(&["", "\n\n"]);
        assert_eq!(m.push("a\n\nb"), ("a".to_string(), true));
        assert_eq!(m.matched_string(), Some("\n\n"));
    }

    #[test]
    fn no_stop_strings_passes_text_through() {
        let mut m = matcher(&[]);
        assert_eq!(m.push("anything"), ("anything".to_string(), false));
        let mut m = matcher(&[""]);
        assert_eq!(m.push("x"), ("x".to_string(), false));
        assert_eq!(m.flush(), "");
    }
}
