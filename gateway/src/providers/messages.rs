//! The walk over a request's messages that every provider's body shares.
//! Each provider keeps its own wire type (OpenAI and GigaChat send
//! `{role, content}`, YandexGPT `{role, text}`); what they have in common —
//! every message, in order, its role as validated and its text as plain
//! text — is written once here, so a change to how messages reach an
//! upstream (a role mapping, content parts) is made in one place.

use sluice_models::ChatMessage;

/// Builds each message, in order, into a provider's wire type from its role
/// and its text.
pub(super) fn wire_messages<'a, W>(
    messages: &'a [ChatMessage],
    to_wire: impl Fn(&'a str, &'a str) -> W,
) -> Vec<W> {
    messages
        .iter()
        .map(|m| to_wire(&m.role, &m.content))
        .collect()
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
}
