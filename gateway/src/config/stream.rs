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
//!
//! [stream.models."my-model"]  # per route (the request's model)
//! mode = "stream_first"
//! ```
//!
//! Design decision: off by default. `hold_back` changes how an answer
//! streams (text arrives a window at a time) and a loop detector that
//! stops answers changes what clients get; both are the operator's call.

use std::collections::HashMap;

use serde::Deserialize;

use super::{invalid, ConfigError};

const DEFAULT_WINDOW_TOKENS: usize = 16;
const DEFAULT_OVERLAP_BYTES: usize = 128;
/// A window longer than this would hold an answer back for seconds.
const MAX_WINDOW_TOKENS: usize = 4096;
/// Longer than any value a detector looks for (keys, cards, IBANs).
const MAX_OVERLAP_BYTES: usize = 64 << 10;

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
    #[serde(default)]
    pub models: HashMap<String, StreamRouteSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRouteSection {
    pub mode: Option<String>,
    pub window_tokens: Option<usize>,
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
    /// Per route (model id): mode and window.
    pub models: HashMap<String, (StreamMode, usize)>,
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
            models: HashMap::new(),
        }
    }
}

impl StreamSettings {
    /// The mode and window for a request to `model`.
    pub fn for_model(&self, model: &str) -> (StreamMode, usize) {
        self.models
            .get(model)
            .copied()
            .unwrap_or((self.mode, self.window_tokens))
    }

    /// Whether any route has analysers on.
    pub fn any_on(&self) -> bool {
        self.mode != StreamMode::Off || self.models.values().any(|(m, _)| *m != StreamMode::Off)
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
    pub fn resolve(self) -> Result<StreamSettings, ConfigError> {
        let Self {
            mode,
            window_tokens,
            overlap_bytes,
            pii,
            rules,
            degeneration,
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
        let mut resolved = HashMap::with_capacity(models.len());
        for (model, section) in models {
            let StreamRouteSection {
                mode: route_mode,
                window_tokens: route_window,
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
            resolved.insert(model, (route_mode, route_window));
        }
        Ok(StreamSettings {
            mode,
            window_tokens,
            overlap_bytes,
            pii: pii.unwrap_or(defaults.pii),
            rules: rules.unwrap_or(defaults.rules),
            degeneration: degeneration.unwrap_or(defaults.degeneration),
            models: resolved,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StreamSettings, ConfigError> {
        let section: StreamSection = toml::from_str(text).unwrap();
        section.resolve()
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
        assert_eq!(s.for_model("demo"), (StreamMode::StreamFirst, 8));
        assert_eq!(s.for_model("other"), (StreamMode::HoldBack, 8));
    }

    #[test]
    fn an_unknown_mode_or_a_zero_window_names_the_key() {
        let err = parse("mode = \"later\"").unwrap_err().to_string();
        assert!(err.contains("stream.mode"), "{err}");
        let err = parse("window_tokens = 0").unwrap_err().to_string();
        assert!(err.contains("stream.window_tokens"), "{err}");
    }
}
