//! The Responses API's stream: `response.created`, `response.in_progress`,
//! then per output item `output_item.added`, its deltas and its `done`
//! events, then exactly one of `response.completed | incomplete | failed`;
//! every event with a `sequence_number` from 0, one higher each time.
//!
//! [`Events`] turns [`Piece`]s (text and tool-call pieces, in the order the
//! answer made them) into those events and the response's output items.
//! The pieces are stored with the response, so a `GET ...?stream=true`
//! replays the same events with the same numbers and ids: the replay runs
//! the same builder over the same pieces, taking the item ids from the
//! stored output instead of making new ones.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::validate::responses::item_id;

/// One piece of an answer, as the stream showed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Piece {
    /// Assistant text.
    #[serde(rename = "t")]
    Text { d: String },
    /// A piece of a function call: the first carries its call id and name.
    #[serde(rename = "c")]
    Call {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        d: String,
    },
}

/// The output item being written.
enum Open {
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Pieces in, events and output items out.
pub struct Events {
    next_seq: i64,
    output: Vec<Value>,
    open: Option<Open>,
    /// Replay: the stored output's item ids, in order; live: empty.
    ids: VecDeque<String>,
}

impl Events {
    /// A live stream's builder (fresh item ids).
    pub fn live() -> Self {
        Self {
            next_seq: 0,
            output: Vec::new(),
            open: None,
            ids: VecDeque::new(),
        }
    }

    /// A replay's builder: the item ids of the stored `output`.
    pub fn replay(output: &[Value]) -> Self {
        let ids = output
            .iter()
            .filter_map(|item| item.get("id").and_then(Value::as_str).map(String::from))
            .collect();
        Self {
            ids,
            ..Self::live()
        }
    }

    fn id(&mut self, kind: &str) -> String {
        self.ids.pop_front().unwrap_or_else(|| item_id(kind))
    }

    fn event(&mut self, kind: &str, mut body: Value) -> Value {
        if let Value::Object(map) = &mut body {
            map.insert("type".into(), Value::from(kind));
            map.insert("sequence_number".into(), Value::from(self.next_seq));
        }
        self.next_seq += 1;
        body
    }

    /// `response.created` and `response.in_progress` with the response as
    /// it starts (no output, no usage).
    pub fn start(&mut self, skeleton: &Value) -> Vec<Value> {
        vec![
            self.event("response.created", json!({"response": skeleton})),
            self.event("response.in_progress", json!({"response": skeleton})),
        ]
    }

    /// The events of one piece.
    pub fn piece(&mut self, piece: &Piece) -> Vec<Value> {
        let mut out = Vec::new();
        match piece {
            Piece::Text { d } => {
                if d.is_empty() {
                    return out;
                }
                if !matches!(self.open, Some(Open::Message { .. })) {
                    out.extend(self.close());
                    let index = self.output.len();
                    let id = self.id("message");
                    out.push(self.event(
                        "response.output_item.added",
                        json!({"output_index": index, "item": {
                            "id": id, "type": "message", "status": "in_progress",
                            "role": "assistant", "content": [],
                        }}),
                    ));
                    out.push(self.event(
                        "response.content_part.added",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                               "part": {"type": "output_text", "text": "", "annotations": []}}),
                    ));
                    self.open = Some(Open::Message {
                        id,
                        text: String::new(),
                    });
                }
                let index = self.output.len();
                if let Some(Open::Message { id, text }) = &mut self.open {
                    text.push_str(d);
                    let id = id.clone();
                    out.push(self.event(
                        "response.output_text.delta",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                               "delta": d, "logprobs": []}),
                    ));
                }
            }
            Piece::Call { call_id, name, d } => {
                let starts = call_id.is_some() || !matches!(self.open, Some(Open::Call { .. }));
                if starts {
                    out.extend(self.close());
                    let index = self.output.len();
                    let id = self.id("function_call");
                    let call_id = call_id.clone().unwrap_or_else(|| id.clone());
                    let name = name.clone().unwrap_or_default();
                    out.push(self.event(
                        "response.output_item.added",
                        json!({"output_index": index, "item": {
                            "id": id, "type": "function_call", "status": "in_progress",
                            "call_id": call_id, "name": name, "arguments": "",
                        }}),
                    ));
                    self.open = Some(Open::Call {
                        id,
                        call_id,
                        name,
                        arguments: String::new(),
                    });
                }
                let index = self.output.len();
                if let Some(Open::Call { id, arguments, .. }) = &mut self.open {
                    if !d.is_empty() {
                        arguments.push_str(d);
                        let id = id.clone();
                        out.push(self.event(
                            "response.function_call_arguments.delta",
                            json!({"item_id": id, "output_index": index, "delta": d}),
                        ));
                    }
                }
            }
        }
        out
    }

    /// Closes the open item: its `done` events; it joins the output.
    pub fn close(&mut self) -> Vec<Value> {
        let index = self.output.len();
        let Some(open) = self.open.take() else {
            return Vec::new();
        };
        match open {
            Open::Message { id, text } => {
                let part = json!({"type": "output_text", "text": text, "annotations": [],
                                  "logprobs": []});
                let item = json!({"id": id, "type": "message", "status": "completed",
                                  "role": "assistant", "content": [part.clone()]});
                let events = vec![
                    self.event(
                        "response.output_text.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                               "text": text, "logprobs": []}),
                    ),
                    self.event(
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                               "part": part}),
                    ),
                    self.event(
                        "response.output_item.done",
                        json!({"output_index": index, "item": item.clone()}),
                    ),
                ];
                self.output.push(item);
                events
            }
            Open::Call {
                id,
                call_id,
                name,
                arguments,
            } => {
                let item = json!({"id": id, "type": "function_call", "status": "completed",
                                  "call_id": call_id, "name": name, "arguments": arguments});
                let events = vec![
                    self.event(
                        "response.function_call_arguments.done",
                        json!({"item_id": id, "output_index": index, "name": name,
                               "arguments": arguments}),
                    ),
                    self.event(
                        "response.output_item.done",
                        json!({"output_index": index, "item": item.clone()}),
                    ),
                ];
                self.output.push(item);
                events
            }
        }
    }

    /// The output items so far (call after [`Events::close`]).
    pub fn output(&self) -> &[Value] {
        &self.output
    }

    /// The one terminal event, named after the final response's status.
    pub fn terminal(&mut self, response: &Value) -> Value {
        let kind = match response.get("status").and_then(Value::as_str) {
            Some("incomplete") => "response.incomplete",
            Some("failed") => "response.failed",
            _ => "response.completed",
        };
        self.event(kind, json!({"response": response}))
    }
}

/// Every event of a stored response, as its stream sent them.
pub fn replay(skeleton: &Value, response: &Value, pieces: &[Piece]) -> Vec<Value> {
    let output = response
        .get("output")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut events = Events::replay(&output);
    let mut all = events.start(skeleton);
    for piece in pieces {
        all.extend(events.piece(piece));
    }
    all.extend(events.close());
    // A cancelled (or still unfinished) background response has no
    // terminal event: the stream just ends.
    let status = response.get("status").and_then(Value::as_str);
    if matches!(status, Some("completed" | "incomplete" | "failed")) {
        all.push(events.terminal(response));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces() -> Vec<Piece> {
        vec![
            Piece::Text { d: "Hel".into() },
            Piece::Text { d: "lo".into() },
            Piece::Call {
                call_id: Some("call_1".into()),
                name: Some("weather".into()),
                d: "{\"city\":".into(),
            },
            Piece::Call {
                call_id: None,
                name: None,
                d: "\"Oslo\"}".into(),
            },
        ]
    }

    #[test]
    fn sequence_numbers_rise_by_one_and_one_terminal_event_ends_the_stream() {
        let skeleton = json!({"id": "resp_1", "status": "in_progress", "output": []});
        let mut live = Events::live();
        let mut events = live.start(&skeleton);
        for p in pieces() {
            events.extend(live.piece(&p));
        }
        events.extend(live.close());
        let output = live.output().to_vec();
        assert_eq!(output.len(), 2);
        assert_eq!(output[0]["content"][0]["text"], "Hello");
        assert_eq!(output[1]["arguments"], "{\"city\":\"Oslo\"}");
        assert_eq!(output[1]["call_id"], "call_1");
        let response = json!({"id": "resp_1", "status": "completed", "output": output});
        events.push(live.terminal(&response));
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i as i64, "{e}");
        }
        let terminals = events
            .iter()
            .filter(|e| {
                let t = e["type"].as_str().unwrap();
                t == "response.completed" || t == "response.failed" || t == "response.incomplete"
            })
            .count();
        assert_eq!(terminals, 1);
        // The replay of the stored pieces is the same stream.
        assert_eq!(replay(&skeleton, &response, &pieces()), events);
    }
}
