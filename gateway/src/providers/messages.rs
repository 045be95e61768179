//! The walk over a request's messages that every provider's body shares.
//! Each provider keeps its own wire type (OpenAI sends `{role, content,
//! tool_calls | tool_call_id}`, GigaChat `{role, content, function_call |
//! name}`, YandexGPT `{role, text | toolCallList | toolResultList}`); what
//! they have in common — every message, in order, as plain text, an
//! assistant turn's calls, or a tool's result with the name of the function
//! it answers — is written once here, so a change to how messages reach an
//! upstream is made in one place.

use sluice_models::{ChatMessage, ToolCall};

/// One message, as every provider needs to see it.
#[derive(Debug, PartialEq)]
pub(super) enum Turn<'a> {
    /// A turn of plain text (system, user, or an assistant that called nothing).
    Text { role: &'a str, text: &'a str },
    /// An assistant turn that called tools (its text may be empty).
    Calls {
        text: &'a str,
        calls: &'a [ToolCall],
    },
    /// A `tool` turn: the result of the call `call_id`, made to the function
    /// `name` (found in the assistant turn that made the call; `None` when
    /// no earlier turn made it: the upstreams that need the name refuse it).
    Result {
        call_id: &'a str,
        name: Option<&'a str>,
        text: &'a str,
    },
}

/// Every message, in order, as a [`Turn`].
pub(super) fn turns(messages: &[ChatMessage]) -> Vec<Turn<'_>> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| match (&m.tool_call_id, m.tool_calls.is_empty()) {
            (Some(id), _) => Turn::Result {
                call_id: id,
                name: called_name(&messages[..i], id),
                text: &m.content,
            },
            (None, false) => Turn::Calls {
                text: &m.content,
                calls: &m.tool_calls,
            },
            (None, true) => Turn::Text {
                role: &m.role,
                text: &m.content,
            },
        })
        .collect()
}

/// Builds each plain message, in order, into a provider's wire type from its
/// role and its text (for bodies that carry no tool turns).
#[cfg(test)]
pub(super) fn wire_messages<'a, W>(
    messages: &'a [ChatMessage],
    to_wire: impl Fn(&'a str, &'a str) -> W,
) -> Vec<W> {
    messages
        .iter()
        .map(|m| to_wire(&m.role, &m.content))
        .collect()
}

/// The function the latest earlier call with this id was made to.
fn called_name<'a>(earlier: &'a [ChatMessage], id: &str) -> Option<&'a str> {
    earlier
        .iter()
        .rev()
        .flat_map(|m| m.tool_calls.iter())
        .find(|c| c.id == id)
        .map(|c| c.name.as_str())
}

/// Whether a request's conversation carries tool calls or results (then an
/// upstream must understand tools even when this request offers none).
pub(crate) fn has_tool_turns(messages: &[ChatMessage]) -> bool {
    messages
        .iter()
        .any(|m| !m.tool_calls.is_empty() || m.tool_call_id.is_some())
}

/// A call id in OpenAI's shape, for upstreams whose calls carry none
/// (GigaChat, YandexGPT) or an upstream that left it out.
pub(super) fn new_call_id() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_keeps_its_order_role_and_text() {
        let messages = [
            ("system", "Be terse."),
            ("user", "Hi"),
            ("assistant", "Hello"),
        ]
        .map(|(role, content)| ChatMessage::text(role, content));
        let wire = wire_messages(&messages, |role, text| format!("{role}:{text}"));
        assert_eq!(wire, ["system:Be terse.", "user:Hi", "assistant:Hello"]);
    }

    #[test]
    fn a_tool_result_finds_the_name_of_the_call_it_answers() {
        let call = |id: &str, name: &str| ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: "{}".into(),
        };
        let mut asked = ChatMessage::text("assistant", "");
        asked.tool_calls = vec![call("call_a", "get_weather"), call("call_b", "get_time")];
        let mut answer_b = ChatMessage::text("tool", "12:00");
        answer_b.tool_call_id = Some("call_b".into());
        let mut orphan = ChatMessage::text("tool", "?");
        orphan.tool_call_id = Some("call_z".into());
        let messages = vec![ChatMessage::text("user", "Hi"), asked, answer_b, orphan];
        assert!(has_tool_turns(&messages));
        let turns = turns(&messages);
        assert_eq!(
            turns[0],
            Turn::Text {
                role: "user",
                text: "Hi"
            }
        );
        assert!(matches!(turns[1], Turn::Calls { calls, .. } if calls.len() == 2));
        assert_eq!(
            turns[2],
            Turn::Result {
                call_id: "call_b",
                name: Some("get_time"),
                text: "12:00"
            }
        );
        assert_eq!(
            turns[3],
            Turn::Result {
                call_id: "call_z",
                name: None,
                text: "?"
            }
        );
        let id = new_call_id();
        assert!(id.starts_with("call_") && id.len() == 29, "{id}");
        assert!(!has_tool_turns(&messages[..1]));
    }
}
