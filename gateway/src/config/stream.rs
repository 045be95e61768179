//! The `[stream]` section: the analysers that read every answer stream
//! on its way to the client ([`crate::config`] only holds the settings;
//! the analysers live in `analyse`).
//!
//! ```toml
//! [stream]
//! mode = "hold_back"      # "off" (default) | "hold_back" | "stream_first" | "buffer_full"
//! window_tokens = 16      # hold_back: text is analysed (and released) every N tokens
//! overlap_bytes = 128     # bytes held back and analysed again with the next window
//! pii = true              # a PII kind set to "block" in [pii] stops the answer
//! rules = true            # the [defence] rules over the answer's windows
//! degeneration = true     # repetition loops stop the answer
//! guard = false           # the [guard] scores each window (an encoder pass per window)
//! guard_in_flight = 2     # windows awaiting the guard before the producer is read no further
//! guard_head = "answer"  # the head that scores windows (below)
//!
//! [stream.models."my-model"]  # per route (the request's model)
//! mode = "stream_first"
//! guard = true
//! ```
//!
//! Design decision: off by default. `hold_back` changes how an answer
//! streams (text arrives a window at a time) and a loop detector that
//! stops answers changes what clients get; both are the operator's call.
//! The guard is off even when the mode is on: it costs an encoder pass per
//! window, where the other analysers cost microseconds.
//!
//! `guard_head` picks the head that scores windows: absent or
//! `"answer"`, the answer head built into the binary
//! (`models/guard/minilm-answer-injection.*`, trained on windows of
//! answers, code, data and verse against windows of injections);
//! `"input"`, the `[guard]`'s own head (trained on prompts); otherwise a
//! head file written by `sluice guard train`, relative to the config file.
//! Why not the input head: it flags most list, table and code layout in
//! answers (every held-out ordinary answer would be stopped). Each reads
//! the same encoder: no second model is loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Table, Value};

use super::{invalid, ConfigError};

const DEFAULT_WINDOW_TOKENS: usize = 16;
const DEFAULT_OVERLAP_BYTES: usize = 128;
/// A window longer than this would hold an answer back for seconds.
const MAX_WINDOW_TOKENS: usize = 4096;
/// Longer than any value a detector looks for (keys, cards, IBANs).
const MAX_OVERLAP_BYTES: usize = 64 << 10;
/// Two windows in flight: the guard scores one while the next fills.
const DEFAULT_GUARD_IN_FLIGHT: usize = 2;
/// Each window in flight is text held back from the client.
const MAX_GUARD_IN_FLIGHT: usize = 64;

/// The head the stream guard scores windows with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamGuardHead {
    /// The answer head built into the binary (absent, or `guard_head =
    /// "answer"`).
    Answer,
    /// The `[guard]`'s head (`guard_head = "input"`).
    Input,
    /// A head written by `sluice guard train` (`.safetensors`; its `.json`
    /// sits beside it).
    File(PathBuf),
}

impl StreamGuardHead {
    /// The word `guard_head` takes for the built-in answer head.
    pub const ANSWER: &'static str = "answer";
    /// The word `guard_head` takes for the input guard's head.
    pub const INPUT: &'static str = "input";

    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(invalid(
                "stream.guard_head",
                "is empty: give a head file, \"answer\" for the built-in answer head or \
                 \"input\" for the [guard]'s head",
            ));
        }
        match text {
            Self::ANSWER => return Ok(Self::Answer),
            Self::INPUT => return Ok(Self::Input),
            _ => {}
        }
        let path = PathBuf::from(text);
        Ok(Self::File(if path.is_absolute() {
            path
        } else {
            base_dir.join(path)
        }))
    }

    /// As `check-config` shows it (and as it parses back).
    fn as_value(&self) -> String {
        match self {
            Self::Answer => Self::ANSWER.into(),
            Self::Input => Self::INPUT.into(),
            Self::File(path) => path.display().to_string(),
        }
    }
}

/// How an answer's text is released while it is analysed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// No analysers on the stream.
    Off,
    /// A window is held and released only once the analysers passed it;
    /// the client never receives bytes an analyser blocks.
    HoldBack,
    /// Text is forwarded at once; policy analysers only record (audit,
    /// metrics); compute stops (loops) still stop.
    StreamFirst,
    /// Nothing is released before the answer ends.
    BufferFull,
}

impl StreamMode {
    pub fn parse(key: &str, text: &str) -> Result<Self, ConfigError> {
        match text {
            "off" => Ok(Self::Off),
            "hold_back" => Ok(Self::HoldBack),
            "stream_first" => Ok(Self::StreamFirst),
            "buffer_full" => Ok(Self::BufferFull),
            other => Err(invalid(
                key,
                format!(
                    "`{other}` is not \"off\", \"hold_back\", \"stream_first\" or \"buffer_full\""
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::HoldBack => "hold_back",
            Self::StreamFirst => "stream_first",
            Self::BufferFull => "buffer_full",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    pub mode: Option<String>,
    pub window_tokens: Option<usize>,
    pub overlap_bytes: Option<usize>,
    pub pii: Option<bool>,
    pub rules: Option<bool>,
    pub degeneration: Option<bool>,
    pub guard: Option<bool>,
    pub guard_in_flight: Option<usize>,
    pub guard_head: Option<String>,
    #[serde(default)]
    pub models: HashMap<String, StreamRouteSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRouteSection {
    pub mode: Option<String>,
    pub window_tokens: Option<usize>,
    pub guard: Option<bool>,
}

/// How one route's answers are analysed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteStream {
    pub mode: StreamMode,
    pub window_tokens: usize,
    /// Whether the guard scores each window.
    pub guard: bool,
}

/// The resolved `[stream]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    pub mode: StreamMode,
    pub window_tokens: usize,
    pub overlap_bytes: usize,
    pub pii: bool,
    pub rules: bool,
    pub degeneration: bool,
    /// The `[guard]` over each window (unless a key says otherwise).
    pub guard: bool,
    /// Windows of one answer awaiting the guard at most; past it the
    /// producer is not read (the text it makes waits in its own queue).
    pub guard_in_flight: usize,
    /// The head that scores windows.
    pub guard_head: StreamGuardHead,
    /// Per route (model id).
    pub models: HashMap<String, RouteStream>,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            mode: StreamMode::Off,
            window_tokens: DEFAULT_WINDOW_TOKENS,
            overlap_bytes: DEFAULT_OVERLAP_BYTES,
            pii: true,
            rules: true,
            degeneration: true,
            guard: false,
            guard_in_flight: DEFAULT_GUARD_IN_FLIGHT,
            guard_head: StreamGuardHead::Answer,
            models: HashMap::new(),
        }
    }
}

impl StreamSettings {
    /// The mode, window and guard for a request to `model`.
    pub fn for_model(&self, model: &str) -> RouteStream {
        self.models.get(model).copied().unwrap_or(RouteStream {
            mode: self.mode,
            window_tokens: self.window_tokens,
            guard: self.guard,
        })
    }

    /// As `check-config` shows it: every setting, defaults included.
    pub fn table(&self) -> Table {
        let int = |n: usize| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        let mut t = Table::new();
        t.insert("mode".into(), Value::String(self.mode.as_str().into()));
        t.insert("window_tokens".into(), int(self.window_tokens));
        t.insert("overlap_bytes".into(), int(self.overlap_bytes));
        t.insert("pii".into(), Value::Boolean(self.pii));
        t.insert("rules".into(), Value::Boolean(self.rules));
        t.insert("degeneration".into(), Value::Boolean(self.degeneration));
        t.insert("guard".into(), Value::Boolean(self.guard));
        t.insert("guard_in_flight".into(), int(self.guard_in_flight));
        t.insert(
            "guard_head".into(),
            Value::String(self.guard_head.as_value()),
        );
        if !self.models.is_empty() {
            let models = self
                .models
                .iter()
                .map(|(model, r)| {
                    let mut route = Table::new();
                    route.insert("mode".into(), Value::String(r.mode.as_str().into()));
                    route.insert("window_tokens".into(), int(r.window_tokens));
                    route.insert("guard".into(), Value::Boolean(r.guard));
                    (model.clone(), Value::Table(route))
                })
                .collect();
            t.insert("models".into(), Value::Table(models));
        }
        t
    }

    /// Whether any route has analysers on.
    pub fn any_on(&self) -> bool {
        self.mode != StreamMode::Off || self.models.values().any(|r| r.mode != StreamMode::Off)
    }
}

fn window(key: &str, value: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(n) if (1..=MAX_WINDOW_TOKENS).contains(&n) => Ok(n),
        Some(n) => Err(invalid(
            key,
            format!("{n} is outside 1..={MAX_WINDOW_TOKENS} tokens"),
        )),
    }
}

impl StreamSection {
    /// `base_dir`: the config file's folder, which a relative
    /// `guard_head` is read from.
    pub fn resolve(self, base_dir: &Path) -> Result<StreamSettings, ConfigError> {
        let Self {
            mode,
            window_tokens,
            overlap_bytes,
            pii,
            rules,
            degeneration,
            guard,
            guard_in_flight,
            guard_head,
            models,
        } = self;
        let defaults = StreamSettings::default();
        let mode = match mode {
            Some(text) => StreamMode::parse("stream.mode", &text)?,
            None => defaults.mode,
        };
        let window_tokens = window(
            "stream.window_tokens",
            window_tokens,
            defaults.window_tokens,
        )?;
        let overlap_bytes = match overlap_bytes {
            None => defaults.overlap_bytes,
            Some(n) if (1..=MAX_OVERLAP_BYTES).contains(&n) => n,
            Some(n) => {
                return Err(invalid(
                    "stream.overlap_bytes",
                    format!("{n} is outside 1..={MAX_OVERLAP_BYTES} bytes"),
                ))
            }
        };
        let guard = guard.unwrap_or(defaults.guard);
        let guard_in_flight = match guard_in_flight {
            None => defaults.guard_in_flight,
            Some(n) if (1..=MAX_GUARD_IN_FLIGHT).contains(&n) => n,
            Some(n) => {
                return Err(invalid(
                    "stream.guard_in_flight",
                    format!("{n} is outside 1..={MAX_GUARD_IN_FLIGHT} windows"),
                ))
            }
        };
        let guard_head = match guard_head {
            None => defaults.guard_head,
            Some(text) => StreamGuardHead::parse(&text, base_dir)?,
        };
        let mut resolved = HashMap::with_capacity(models.len());
        for (model, section) in models {
            let StreamRouteSection {
                mode: route_mode,
                window_tokens: route_window,
                guard: route_guard,
            } = section;
            let route_mode = match route_mode {
                Some(text) => StreamMode::parse(&format!("stream.models.{model}.mode"), &text)?,
                None => mode,
            };
            let route_window = window(
                &format!("stream.models.{model}.window_tokens"),
                route_window,
                window_tokens,
            )?;
            resolved.insert(
                model,
                RouteStream {
                    mode: route_mode,
                    window_tokens: route_window,
                    guard: route_guard.unwrap_or(guard),
                },
            );
        }
        Ok(StreamSettings {
            mode,
            window_tokens,
            overlap_bytes,
            pii: pii.unwrap_or(defaults.pii),
            rules: rules.unwrap_or(defaults.rules),
            degeneration: degeneration.unwrap_or(defaults.degeneration),
            guard,
            guard_in_flight,
            guard_head,
            models: resolved,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StreamSettings, ConfigError> {
        let section: StreamSection = toml::from_str(text).unwrap();
        section.resolve(Path::new("/etc/sluice"))
    }

    #[test]
    fn stream_analysers_are_off_unless_configured() {
        let s = parse("").unwrap();
        assert_eq!(s.mode, StreamMode::Off);
        assert!(!s.any_on());
    }

    #[test]
    fn a_route_overrides_the_mode_and_window() {
        let s = parse(
            "mode = \"hold_back\"\nwindow_tokens = 8\n[models.demo]\nmode = \"stream_first\"\n",
        )
        .unwrap();
        let demo = s.for_model("demo");
        assert_eq!(
            (demo.mode, demo.window_tokens),
            (StreamMode::StreamFirst, 8)
        );
        let other = s.for_model("other");
        assert_eq!((other.mode, other.window_tokens), (StreamMode::HoldBack, 8));
    }

    #[test]
    fn the_table_reads_back_as_the_same_settings() {
        let s =
            parse("mode = \"hold_back\"\nguard = true\n[models.demo]\nmode = \"stream_first\"\n")
                .unwrap();
        let text = toml::to_string(&s.table()).unwrap();
        assert_eq!(parse(&text).unwrap(), s, "{text}");
    }

    #[test]
    fn the_guard_is_off_unless_asked_and_a_route_may_turn_it_on() {
        let s = parse("mode = \"hold_back\"\n[models.demo]\nguard = true\n").unwrap();
        assert!(!s.guard);
        assert!(!s.for_model("other").guard);
        assert!(s.for_model("demo").guard);
        assert_eq!(s.guard_in_flight, DEFAULT_GUARD_IN_FLIGHT);
        let s = parse("guard = true\n[models.demo]\nguard = false\n").unwrap();
        assert!(s.for_model("other").guard);
        assert!(!s.for_model("demo").guard);
        let err = parse("guard_in_flight = 0").unwrap_err().to_string();
        assert!(err.contains("stream.guard_in_flight"), "{err}");
    }

    #[test]
    fn an_unknown_mode_or_a_zero_window_names_the_key() {
        let err = parse("mode = \"later\"").unwrap_err().to_string();
        assert!(err.contains("stream.mode"), "{err}");
        let err = parse("window_tokens = 0").unwrap_err().to_string();
        assert!(err.contains("stream.window_tokens"), "{err}");
    }

    #[test]
    fn the_guard_head_is_the_answer_head_unless_another_is_named() {
        assert_eq!(parse("").unwrap().guard_head, StreamGuardHead::Answer);
        assert_eq!(
            parse("guard_head = \"answer\"").unwrap().guard_head,
            StreamGuardHead::Answer
        );
        assert_eq!(
            parse("guard_head = \"input\"").unwrap().guard_head,
            StreamGuardHead::Input
        );
        assert_eq!(
            parse("guard_head = \"heads/answers.safetensors\"")
                .unwrap()
                .guard_head,
            StreamGuardHead::File(PathBuf::from("/etc/sluice/heads/answers.safetensors"))
        );
        assert_eq!(
            parse("guard_head = \"/opt/h.safetensors\"")
                .unwrap()
                .guard_head,
            StreamGuardHead::File(PathBuf::from("/opt/h.safetensors"))
        );
        let err = parse("guard_head = \" \"").unwrap_err().to_string();
        assert!(err.contains("stream.guard_head"), "{err}");
        // A per-route head is not a key: the head serves every route.
        let section: Result<StreamSection, _> =
            toml::from_str("[models.demo]\nguard_head = \"input\"\n");
        assert!(section.is_err());
        // check-config's table parses back to the same head.
        for text in [
            "",
            "guard_head = \"input\"",
            "guard_head = \"/opt/h.safetensors\"",
        ] {
            let s = parse(text).unwrap();
            let back = toml::to_string(&s.table()).unwrap();
            assert_eq!(parse(&back).unwrap(), s, "{back}");
        }
    }
}
