//! What a deployment can do beyond plain chat: `capabilities = [...]` on a
//! `[[routes.deployments]]` entry, else the defaults of its target's kind.
//! The router keeps a request off deployments that lack what it asks
//! (tools, a response format, a grammar, token biases).
//!
//! Design choice: a deployment's list replaces the default instead of
//! adding to it, so an operator can also take a capability away (an
//! OpenAI-compatible upstream whose model cannot call tools). What each
//! provider kind can express is decided here, once, from its API: a
//! capability a provider's wire format has no field for is not a default,
//! and the provider still refuses it if a config claims it anyway.

use super::providers::{OpenAiDialect, ProviderConfig};

/// One thing a request may ask that not every deployment can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// `tools` (and a conversation that carries tool calls or results),
    /// with `tool_choice` `auto`, `none` or a named function.
    Tools,
    /// `tool_choice: "required"`.
    ToolChoiceRequired,
    /// `response_format: {"type": "json_object"}`.
    JsonObject,
    /// `response_format: {"type": "json_schema", ...}` (and `guided_json`).
    JsonSchema,
    /// A regular expression or Lark grammar (`guided_regex`, `guided_grammar`).
    Grammar,
    /// `logit_bias` (token ids mean the same only to the same tokenizer).
    LogitBias,
}

impl Capability {
    pub const ALL: [Capability; 6] = [
        Self::Tools,
        Self::ToolChoiceRequired,
        Self::JsonObject,
        Self::JsonSchema,
        Self::Grammar,
        Self::LogitBias,
    ];

    /// The name used in the config and in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::ToolChoiceRequired => "tool_choice_required",
            Self::JsonObject => "json_object",
            Self::JsonSchema => "json_schema",
            Self::Grammar => "grammar",
            Self::LogitBias => "logit_bias",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`Capability`]s.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities(u8);

impl Capabilities {
    pub const NONE: Self = Self(0);

    pub fn all() -> Self {
        Self::of(&Capability::ALL)
    }

    pub fn of(caps: &[Capability]) -> Self {
        Self(caps.iter().fold(0, |bits, c| bits | c.bit()))
    }

    pub fn has(self, cap: Capability) -> bool {
        self.0 & cap.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL.into_iter().filter(move |c| self.has(*c))
    }

    /// The local engine does everything (grammars, biases, tools).
    pub fn local_default() -> Self {
        Self::all()
    }

    /// What a provider kind's API can express, as documented:
    /// - OpenAI-compatible: tools (`required` included) and both JSON
    ///   formats; not a grammar (no such field) nor `logit_bias` (its ids
    ///   are the upstream tokenizer's, unknown here).
    /// - vLLM: everything (`guided_regex` / `guided_grammar`, and the same
    ///   model's token ids).
    /// - GigaChat: functions with `function_call` `auto` / `none` /
    ///   `{"name"}` (no "required", one call per answer), no response format.
    /// - YandexGPT: `tools`, `toolChoice` (`mode` NONE / AUTO / REQUIRED or
    ///   `functionName`), `jsonObject` and `jsonSchema`.
    pub fn provider_default(provider: &ProviderConfig) -> Self {
        use Capability::*;
        match provider {
            ProviderConfig::Openai { dialect, .. } => match dialect {
                OpenAiDialect::Openai => {
                    Self::of(&[Tools, ToolChoiceRequired, JsonObject, JsonSchema])
                }
                OpenAiDialect::Vllm => Self::all(),
            },
            ProviderConfig::Gigachat { .. } => Self::of(&[Tools]),
            ProviderConfig::Yandex { .. } => {
                Self::of(&[Tools, ToolChoiceRequired, JsonObject, JsonSchema])
            }
        }
    }

    /// Reads a config list; an unknown name is the error, naming it.
    pub fn parse_list(names: &[String]) -> Result<Self, String> {
        let mut caps = Vec::with_capacity(names.len());
        for name in names {
            caps.push(Capability::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
                format!("`{name}` is not one of {}", known.join(", "))
            })?);
        }
        Ok(Self::of(&caps))
    }
}

impl std::fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(Capability::as_str))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for c in Capability::ALL {
            assert_eq!(Capability::parse(c.as_str()), Some(c));
        }
        let caps = Capabilities::parse_list(&["tools".into(), "json_schema".into()]).unwrap();
        assert!(caps.has(Capability::Tools) && caps.has(Capability::JsonSchema));
        assert!(!caps.has(Capability::Grammar));
        let err = Capabilities::parse_list(&["telepathy".into()]).unwrap_err();
        assert!(
            err.contains("telepathy") && err.contains("logit_bias"),
            "{err}"
        );
        assert_eq!(format!("{caps:?}"), r#"["tools", "json_schema"]"#);
    }
}
