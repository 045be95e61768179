//! A JSON value read one character at a time: it says when the value ends
//! and refuses the first character that cannot belong to it, so a call's
//! arguments can be streamed as they arrive and still be known to be JSON.

/// What one more character did to the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Part of the value, which goes on.
    More,
    /// Part of the value, and its last character.
    Done,
    /// Not part of the value, which had ended just before it (a number is
    /// only known to end at the character after it).
    EndedBefore,
    /// Not JSON.
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A value must start here.
    Value,
    /// Just after `[`: a value or `]`.
    FirstItem,
    /// Just after `{`: a key or `}`.
    FirstKey,
    /// After `,` in an object: a key.
    Key,
    KeyString {
        escaped: bool,
    },
    Colon,
    String {
        escaped: bool,
    },
    Number,
    /// The rest of `true`, `false` or `null`.
    Literal {
        rest: &'static str,
    },
    /// After a value inside a container: `,` or its closer.
    After,
}

/// One JSON value's syntax, checked as it arrives.
#[derive(Debug, Clone)]
pub struct JsonScanner {
    stack: Vec<Container>,
    state: State,
}

impl Default for JsonScanner {
    fn default() -> Self {
        Self {
            stack: Vec::new(),
            state: State::Value,
        }
    }
}

impl JsonScanner {
    pub fn push(&mut self, c: char) -> Scan {
        let ws = matches!(c, ' ' | '\n' | '\r' | '\t');
        match self.state {
            State::Value | State::FirstItem if ws => Scan::More,
            State::FirstItem if c == ']' => self.close(Container::Array),
            State::Value | State::FirstItem => self.start_value(c),
            State::FirstKey | State::Key if ws => Scan::More,
            State::FirstKey if c == '}' => self.close(Container::Object),
            State::FirstKey | State::Key if c == '"' => {
                self.state = State::KeyString { escaped: false };
                Scan::More
            }
            State::FirstKey | State::Key => Scan::Invalid,
            State::KeyString { escaped } => match string_char(c, escaped) {
                StringChar::Invalid => Scan::Invalid,
                StringChar::End => {
                    self.state = State::Colon;
                    Scan::More
                }
                StringChar::Escape => {
                    self.state = State::KeyString { escaped: true };
                    Scan::More
                }
                StringChar::Plain => {
                    self.state = State::KeyString { escaped: false };
                    Scan::More
                }
            },
            State::Colon if ws => Scan::More,
            State::Colon if c == ':' => {
                self.state = State::Value;
                Scan::More
            }
            State::Colon => Scan::Invalid,
            State::String { escaped } => match string_char(c, escaped) {
                StringChar::Invalid => Scan::Invalid,
                StringChar::End => self.value_done(),
                StringChar::Escape => {
                    self.state = State::String { escaped: true };
                    Scan::More
                }
                StringChar::Plain => {
                    self.state = State::String { escaped: false };
                    Scan::More
                }
            },
            State::Number if c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-') => {
                Scan::More
            }
            State::Number => {
                if self.stack.is_empty() {
                    return Scan::EndedBefore;
                }
                self.state = State::After;
                self.push(c)
            }
            State::Literal { rest } => {
                let mut chars = rest.chars();
                if chars.next() != Some(c) {
                    return Scan::Invalid;
                }
                let rest = chars.as_str();
                if rest.is_empty() {
                    self.value_done()
                } else {
                    self.state = State::Literal { rest };
                    Scan::More
                }
            }
            State::After if ws => Scan::More,
            State::After => match (c, self.stack.last()) {
                (',', Some(Container::Object)) => {
                    self.state = State::Key;
                    Scan::More
                }
                (',', Some(Container::Array)) => {
                    self.state = State::Value;
                    Scan::More
                }
                ('}', Some(Container::Object)) => self.close(Container::Object),
                (']', Some(Container::Array)) => self.close(Container::Array),
                _ => Scan::Invalid,
            },
        }
    }

    fn start_value(&mut self, c: char) -> Scan {
        self.state = match c {
            '{' => {
                self.stack.push(Container::Object);
                State::FirstKey
            }
            '[' => {
                self.stack.push(Container::Array);
                State::FirstItem
            }
            '"' => State::String { escaped: false },
            '-' | '0'..='9' => State::Number,
            't' => State::Literal { rest: "rue" },
            'f' => State::Literal { rest: "alse" },
            'n' => State::Literal { rest: "ull" },
            _ => return Scan::Invalid,
        };
        Scan::More
    }

    fn close(&mut self, container: Container) -> Scan {
        if self.stack.pop() != Some(container) {
            return Scan::Invalid;
        }
        self.value_done()
    }

    fn value_done(&mut self) -> Scan {
        if self.stack.is_empty() {
            // Anything more is not part of this value.
            self.state = State::After;
            Scan::Done
        } else {
            self.state = State::After;
            Scan::More
        }
    }
}

enum StringChar {
    Plain,
    Escape,
    End,
    Invalid,
}

fn string_char(c: char, escaped: bool) -> StringChar {
    if escaped {
        return StringChar::Plain;
    }
    match c {
        '"' => StringChar::End,
        '\\' => StringChar::Escape,
        // JSON strings hold no raw control characters.
        c if (c as u32) < 0x20 => StringChar::Invalid,
        _ => StringChar::Plain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan of `text`: the index of the character that ended the value
    /// (or came right after it), and how.
    fn scan(text: &str) -> Option<(usize, Scan)> {
        let mut s = JsonScanner::default();
        for (i, c) in text.chars().enumerate() {
            match s.push(c) {
                Scan::More => {}
                other => return Some((i, other)),
            }
        }
        None
    }

    #[test]
    fn finds_where_a_value_ends() {
        let obj = r#"{"a": [1, -2.5e3, "x\"}"], "b": {"c": null, "d": true}} tail"#;
        assert_eq!(
            scan(obj),
            Some((obj.find(" tail").unwrap() - 1, Scan::Done))
        );
        assert_eq!(scan("\"s\\\\\" x"), Some((4, Scan::Done)));
        assert_eq!(scan("12 "), Some((2, Scan::EndedBefore)));
        assert_eq!(scan("[] "), Some((1, Scan::Done)));
        assert_eq!(scan("{}"), Some((1, Scan::Done)));
        assert_eq!(scan("{\"a\": 1"), None);
    }

    #[test]
    fn refuses_what_is_not_json() {
        for bad in [
            "{a: 1}",
            "{\"a\" 1}",
            "{\"a\": 1,}",
            "[1 2]",
            "{\"a\": tru}",
            "{\"a\": \"x\ny\"}",
            "}",
            "{\"a\": 1]",
        ] {
            assert!(
                matches!(scan(bad), Some((_, Scan::Invalid))),
                "{bad}: {:?}",
                scan(bad)
            );
        }
    }
}
