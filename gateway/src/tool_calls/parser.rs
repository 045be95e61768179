//! One choice's text, read as it arrives, split into plain text and tool
//! calls written in the model family's format ([`ToolFormat`]).
//!
//! A call region opens with the family's marker (`<tool_call>`,
//! `<|python_tag|>`, `[TOOL_CALLS]`; for Llama 3 also a `{` that starts the
//! answer) and holds one call object or an array of them, each
//! `{"name": ..., "arguments": {...}}` (`"parameters"` is read the same).
//! A call is announced once its name is read and is one of the offered
//! functions, and its arguments stream out character by character as they
//! arrive, checked as JSON on the way ([`JsonScanner`]). Text that could
//! still be the start of a marker is held back, and so is trailing
//! whitespace (so an answer that is only calls has no text). A region that
//! turns out not to be a call before any of its calls was announced comes
//! out as text, unchanged.

use sluice_models::ToolFormat;

use super::json::{JsonScanner, Scan};

/// What the parser found in the text so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// A call begins: its position among the choice's calls and its function.
    Call {
        index: usize,
        name: String,
    },
    /// More of call `index`'s arguments (JSON text).
    Arguments {
        index: usize,
        text: String,
    },
}

/// One choice's incremental tool-call reader.
#[derive(Debug)]
pub struct Parser {
    format: ToolFormat,
    /// The offered functions; a call to any other stays text.
    functions: Vec<String>,
    state: State,
    /// Text not yet let out: a marker's possible start, trailing whitespace.
    held: String,
    /// The open region's text since its last whole call, let out as text
    /// if the region turns out malformed.
    raw: String,
    /// Calls announced so far.
    calls: usize,
    /// Any non-whitespace text was let out.
    text_out: bool,
    out: Vec<Piece>,
}

#[derive(Debug)]
enum State {
    Text,
    Region(Region),
}

#[derive(Debug)]
struct Region {
    in_array: bool,
    at: At,
}

#[derive(Debug)]
enum At {
    /// After the marker: `{` or `[`.
    BodyStart,
    /// In an array: `{`, or `]` when `first`.
    Item {
        first: bool,
    },
    Object(Call),
    /// After a call object: `,`/`]` in an array, else the body ends.
    AfterObject,
    /// After the body: the closing marker, `;` (Llama 3) or anything.
    BodyEnd,
    /// Part of the closing marker read.
    Close {
        matched: usize,
    },
}

/// A call object being read.
#[derive(Debug, Default)]
struct Call {
    step: CallStep,
    key: String,
    name: Option<String>,
    name_buf: String,
    /// Arguments read before the name (not announced yet).
    early_args: String,
    has_args: bool,
    announced: bool,
}

#[derive(Debug, Default)]
enum CallStep {
    #[default]
    FirstKey,
    Key,
    KeyString {
        escaped: bool,
    },
    Colon,
    Value,
    Name {
        escaped: bool,
    },
    Arguments(JsonScanner),
    Skip(JsonScanner),
    After,
}

/// What a character did inside a region.
enum Flow {
    Consumed,
    /// Consumed, and the region is over (its closing marker).
    Closed,
    /// The region ended before this character: read it again as text.
    Reprocess,
    Malformed,
}

impl Parser {
    pub fn new(format: ToolFormat, functions: Vec<String>) -> Self {
        Self {
            format,
            functions,
            state: State::Text,
            held: String::new(),
            raw: String::new(),
            calls: 0,
            text_out: false,
            out: Vec::new(),
        }
    }

    /// Calls announced so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Reads `text`; returns what can be let out now.
    pub fn feed(&mut self, text: &str) -> Vec<Piece> {
        for c in text.chars() {
            self.feed_char(c);
        }
        if matches!(self.state, State::Text) {
            self.release(false);
        }
        std::mem::take(&mut self.out)
    }

    /// The answer ended: everything held comes out, an unfinished region
    /// as text (unless one of its calls was announced).
    pub fn finish(&mut self) -> Vec<Piece> {
        match &self.state {
            // The body is whole: what is left is the wrapper's end.
            State::Region(Region {
                at: At::BodyEnd | At::Close { .. },
                ..
            }) => self.end_region(),
            // A cut-off call is text, unless announced.
            State::Region(_) => self.malformed(),
            State::Text => {}
        }
        self.release(true);
        std::mem::take(&mut self.out)
    }

    fn marker(&self) -> &'static str {
        match self.format {
            ToolFormat::Hermes | ToolFormat::SmolLm2 => "<tool_call>",
            ToolFormat::Llama3 => "<|python_tag|>",
            ToolFormat::Mistral => "[TOOL_CALLS]",
        }
    }

    fn feed_char(&mut self, c: char) {
        loop {
            let State::Region(region) = &mut self.state else {
                self.text_char(c);
                return;
            };
            self.raw.push(c);
            match step_region(region, c, self.format, &self.functions) {
                (Flow::Consumed, events) => {
                    self.apply(events);
                    return;
                }
                (Flow::Closed, events) => {
                    self.apply(events);
                    self.end_region();
                    return;
                }
                (Flow::Reprocess, events) => {
                    self.apply(events);
                    self.raw.pop();
                    self.end_region();
                }
                (Flow::Malformed, _) => {
                    self.malformed();
                    return;
                }
            }
        }
    }

    fn text_char(&mut self, c: char) {
        self.held.push(c);
        let marker = self.marker();
        if let Some(before) = self.held.strip_suffix(marker) {
            // Whitespace before a call is not content; it goes with the
            // region, and back to text only if the region is no call.
            let text_len = before.trim_end().len();
            let text = before[..text_len].to_string();
            self.raw = self.held[text_len..].to_string();
            self.held.clear();
            self.emit_text(text);
            self.open_region();
            return;
        }
        // Llama 3 writes a call as a bare JSON object opening its answer.
        let starts_answer = !self.text_out && self.calls == 0;
        if c == '{' && self.format == ToolFormat::Llama3 && starts_answer {
            let before = &self.held[..self.held.len() - 1];
            if before.trim().is_empty() {
                self.raw = before.to_string();
                self.held.clear();
                self.open_region();
                self.feed_char(c);
            }
        }
    }

    fn open_region(&mut self) {
        self.state = State::Region(Region {
            in_array: false,
            at: At::BodyStart,
        });
    }

    fn end_region(&mut self) {
        self.state = State::Text;
        self.raw.clear();
    }

    /// The region is not (or no longer) a call: its text since its last
    /// whole call comes out as text, unless that text is a call already
    /// announced (its arguments then end where they went wrong: the client
    /// holds the call's start and cannot be told otherwise).
    fn malformed(&mut self) {
        let raw = std::mem::take(&mut self.raw);
        let announced = matches!(
            &self.state,
            State::Region(Region { at: At::Object(call), .. }) if call.announced
        );
        self.end_region();
        if !announced {
            self.held.push_str(&raw);
        }
    }

    fn apply(&mut self, events: Vec<RegionEvent>) {
        for event in events {
            match event {
                RegionEvent::Announce(name) => {
                    self.out.push(Piece::Call {
                        index: self.calls,
                        name,
                    });
                }
                RegionEvent::Arguments(text) => {
                    let index = self.calls;
                    match self.out.last_mut() {
                        Some(Piece::Arguments { index: i, text: t }) if *i == index => {
                            t.push_str(&text)
                        }
                        _ => self.out.push(Piece::Arguments { index, text }),
                    }
                }
                RegionEvent::CallDone => {
                    self.calls += 1;
                    self.raw.clear();
                }
            }
        }
    }

    /// Lets held text out, except (unless `last`) what may start a marker
    /// and trailing whitespace. At the end, whitespace alone comes out only
    /// when the answer has no calls.
    fn release(&mut self, last: bool) {
        let held = std::mem::take(&mut self.held);
        if last {
            if self.calls == 0 || !held.trim().is_empty() {
                self.emit_text(held);
            }
            return;
        }
        let keep_from = marker_prefix_start(&held, self.marker());
        let ready = held[..keep_from].trim_end();
        if ready.is_empty() {
            self.held = held;
            return;
        }
        let ready_len = ready.len();
        self.emit_text(held[..ready_len].to_string());
        self.held = held[ready_len..].to_string();
    }

    fn emit_text(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        self.text_out |= !text.trim().is_empty();
        match self.out.last_mut() {
            Some(Piece::Text(t)) => t.push_str(&text),
            _ => self.out.push(Piece::Text(text)),
        }
    }
}

/// Where the longest suffix of `text` that is a proper prefix of `marker` starts.
fn marker_prefix_start(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .filter(|&n| marker.is_char_boundary(n))
        .find(|&n| text.ends_with(&marker[..n]))
        .map_or(text.len(), |n| text.len() - n)
}

enum RegionEvent {
    Announce(String),
    Arguments(String),
    CallDone,
}

fn step_region(
    region: &mut Region,
    c: char,
    format: ToolFormat,
    functions: &[String],
) -> (Flow, Vec<RegionEvent>) {
    let ws = c.is_whitespace();
    let mut events = Vec::new();
    let flow = match &mut region.at {
        At::BodyStart if ws => Flow::Consumed,
        At::BodyStart if c == '[' => {
            region.in_array = true;
            region.at = At::Item { first: true };
            Flow::Consumed
        }
        At::BodyStart | At::Item { .. } if c == '{' => {
            region.at = At::Object(Call::default());
            Flow::Consumed
        }
        At::BodyStart => Flow::Malformed,
        At::Item { .. } if ws => Flow::Consumed,
        At::Item { first: true } if c == ']' => {
            region.at = At::BodyEnd;
            Flow::Consumed
        }
        At::Item { .. } => Flow::Malformed,
        At::Object(call) => {
            let (flow, done) = step_call(call, c, functions, &mut events);
            if done {
                if !call.announced {
                    let Some(name) = call.name.take() else {
                        return (Flow::Malformed, Vec::new());
                    };
                    let args = if call.has_args {
                        std::mem::take(&mut call.early_args)
                    } else {
                        "{}".to_string()
                    };
                    events.push(RegionEvent::Announce(name));
                    events.push(RegionEvent::Arguments(args));
                }
                events.push(RegionEvent::CallDone);
                region.at = At::AfterObject;
            }
            flow
        }
        At::AfterObject if region.in_array => match c {
            c if c.is_whitespace() => Flow::Consumed,
            ',' => {
                region.at = At::Item { first: false };
                Flow::Consumed
            }
            ']' => {
                region.at = At::BodyEnd;
                Flow::Consumed
            }
            _ => Flow::Malformed,
        },
        At::AfterObject => {
            region.at = At::BodyEnd;
            return step_region(region, c, format, functions);
        }
        At::BodyEnd => match format {
            ToolFormat::Hermes | ToolFormat::SmolLm2 => {
                region.at = At::Close { matched: 0 };
                return step_region(region, c, format, functions);
            }
            ToolFormat::Llama3 if ws => Flow::Consumed,
            ToolFormat::Llama3 if c == ';' => {
                region.in_array = false;
                region.at = At::BodyStart;
                Flow::Consumed
            }
            ToolFormat::Llama3 | ToolFormat::Mistral => Flow::Reprocess,
        },
        At::Close { matched } => {
            const CLOSE: &str = "</tool_call>";
            if *matched == 0 && ws {
                Flow::Consumed
            } else if CLOSE[*matched..].starts_with(c) {
                *matched += c.len_utf8();
                if *matched == CLOSE.len() {
                    // The region is over; what follows is text again.
                    return (Flow::Closed, events);
                }
                Flow::Consumed
            } else {
                Flow::Malformed
            }
        }
    };
    (flow, events)
}

/// One character of a call object; `true` once the object's `}` is read.
fn step_call(
    call: &mut Call,
    c: char,
    functions: &[String],
    events: &mut Vec<RegionEvent>,
) -> (Flow, bool) {
    let ws = c.is_whitespace();
    let flow = match &mut call.step {
        CallStep::FirstKey | CallStep::Key if ws => Flow::Consumed,
        CallStep::FirstKey | CallStep::Key if c == '"' => {
            call.key.clear();
            call.step = CallStep::KeyString { escaped: false };
            Flow::Consumed
        }
        CallStep::FirstKey if c == '}' => return (Flow::Consumed, true),
        CallStep::FirstKey | CallStep::Key => Flow::Malformed,
        CallStep::KeyString { escaped } => {
            if *escaped || (c != '"' && c != '\\') {
                call.key.push(c);
                *escaped = false;
            } else if c == '\\' {
                *escaped = true;
            } else {
                call.step = CallStep::Colon;
            }
            Flow::Consumed
        }
        CallStep::Colon if ws => Flow::Consumed,
        CallStep::Colon if c == ':' => {
            call.step = CallStep::Value;
            Flow::Consumed
        }
        CallStep::Colon => Flow::Malformed,
        CallStep::Value if ws => Flow::Consumed,
        CallStep::Value => match call.key.as_str() {
            "name" if call.name.is_none() && c == '"' => {
                call.name_buf.clear();
                call.step = CallStep::Name { escaped: false };
                Flow::Consumed
            }
            "arguments" | "parameters" if !call.has_args && c == '{' => {
                call.has_args = true;
                let mut scanner = JsonScanner::default();
                scanner.push(c);
                call.step = CallStep::Arguments(scanner);
                arguments_text(call, c, events);
                Flow::Consumed
            }
            "name" | "arguments" | "parameters" => Flow::Malformed,
            _ => {
                let mut scanner = JsonScanner::default();
                match scanner.push(c) {
                    Scan::More => {
                        call.step = CallStep::Skip(scanner);
                        Flow::Consumed
                    }
                    _ => Flow::Malformed,
                }
            }
        },
        CallStep::Name { escaped } => {
            if *escaped || (c != '"' && c != '\\') {
                call.name_buf.push(c);
                *escaped = false;
                Flow::Consumed
            } else if c == '\\' {
                *escaped = true;
                Flow::Consumed
            } else if functions.contains(&call.name_buf) {
                call.name = Some(std::mem::take(&mut call.name_buf));
                call.step = CallStep::After;
                Flow::Consumed
            } else {
                Flow::Malformed
            }
        }
        CallStep::Arguments(scanner) => match scanner.push(c) {
            Scan::More => {
                arguments_text(call, c, events);
                Flow::Consumed
            }
            Scan::Done => {
                call.step = CallStep::After;
                arguments_text(call, c, events);
                Flow::Consumed
            }
            Scan::EndedBefore | Scan::Invalid => Flow::Malformed,
        },
        CallStep::Skip(scanner) => match scanner.push(c) {
            Scan::More => Flow::Consumed,
            Scan::Done => {
                call.step = CallStep::After;
                Flow::Consumed
            }
            Scan::EndedBefore => {
                call.step = CallStep::After;
                return step_call(call, c, functions, events);
            }
            Scan::Invalid => Flow::Malformed,
        },
        CallStep::After if ws => Flow::Consumed,
        CallStep::After if c == ',' => {
            call.step = CallStep::Key;
            Flow::Consumed
        }
        CallStep::After if c == '}' => return (Flow::Consumed, true),
        CallStep::After => Flow::Malformed,
    };
    (flow, false)
}

/// Arguments stream out once the call's name is known; before, they wait.
fn arguments_text(call: &mut Call, c: char, events: &mut Vec<RegionEvent>) {
    match &call.name {
        Some(name) => {
            if !call.announced {
                call.announced = true;
                events.push(RegionEvent::Announce(name.clone()));
            }
            events.push(RegionEvent::Arguments(c.to_string()));
        }
        None => call.early_args.push(c),
    }
}
