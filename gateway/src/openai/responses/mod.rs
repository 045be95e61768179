//! `/v1/responses`: create (a thin adapter of the request chain, like
//! chat), retrieve (JSON, or the stored stream replayed from
//! `starting_after`), delete, cancel and `input_items`.
//!
//! A turn's history is read before the chain runs: the stored responses of
//! a `previous_response_id` chain (each one's input items, then its output,
//! oldest first; never their `instructions`), or a conversation's items.
//! The answer is stored (`store`, default true) before the client sees it
//! end: the JSON body is sent after the durable commit, and a stream's
//! terminal event after it too, so a turn chained right after completion
//! finds its parent, on this instance or any other sharing the store.
//!
//! Ids are scoped to the caller's tenant: another tenant's id is a 404,
//! exactly like an id that never existed.

mod background;
mod events;
mod object;
pub mod paging;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRef, Path, Query, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream;
use serde_json::{json, Value};
use tracing::Instrument;

use crate::answer::{BoxAnswer, Step};
use crate::chain::{Answered, Caller, Chain, Head, Stamp};
use crate::error::ApiError;
use crate::openai::json::ApiJson;
use crate::sessions::{Kind, NewItem, NewSession, SessionStore, Sessions, Snapshot};
use crate::state::AppState;
use crate::validate::responses::{self as valid, ResponsesTurn, Truncation};
use crate::wire::responses::{ListQuery, ResponseCreateRequest, RetrieveQuery};

use events::Events;
pub use events::Piece;
use object::{Outcome, Stored, Turn};

/// Responses in one `previous_response_id` chain at most.
const MAX_CHAIN: usize = 1000;

/// What the sessions APIs read: the chain and the session store.
#[derive(Clone)]
pub struct SessionApi {
    pub chain: Arc<Chain>,
    pub sessions: Arc<Sessions>,
}

impl FromRef<AppState> for SessionApi {
    fn from_ref(state: &AppState) -> Self {
        Self {
            chain: state.chain.clone(),
            sessions: state.sessions.clone(),
        }
    }
}

/// A query string in the OpenAI error shape.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::invalid_body(format!("bad query string: {}", e.body_text())))
}

/// Whom a session's content is about: the key's user, else the request's
/// `user` (erasure by user finds it by this).
fn user_of(caller: &Caller, request_user: Option<&str>) -> Option<String> {
    caller
        .principal
        .user
        .as_deref()
        .or(request_user)
        .map(String::from)
}

/// `POST /v1/responses`.
pub async fn create(
    State(api): State<SessionApi>,
    caller: Caller,
    ApiJson(body): ApiJson<ResponseCreateRequest>,
) -> Result<Response, ApiError> {
    valid::check_create(&body)?;
    let tenant = caller.tenant.0.to_string();
    let input = valid::input_items(body.input.clone())?;
    let metadata = valid::metadata(body.metadata.clone())?;
    let truncation = Truncation::parse(body.truncation.as_deref())?;
    let conversation = conversation_id(body.conversation.as_ref())?;
    let (history, root) = match (&body.previous_response_id, &conversation) {
        (Some(previous), _) => chain_history(&api.sessions, &tenant, previous).await?,
        (None, Some(conv)) => (
            conversation_items(&api.sessions, &tenant, conv).await?,
            conv.clone(),
        ),
        (None, None) => (Vec::new(), String::new()),
    };
    let turn = Turn {
        id: object::response_id(),
        created_at: crate::util::unix_now(),
        tenant: tenant.clone(),
        user: user_of(
            &caller,
            body.user.as_deref().or(body.safety_identifier.as_deref()),
        ),
        store: body.store.unwrap_or(true),
        previous: body.previous_response_id.clone(),
        conversation,
        metadata,
        truncation,
        input,
        root: String::new(),
        seal: caller.sensitive,
        background: body.background == Some(true),
    };
    let root = if root.is_empty() {
        turn.id.clone()
    } else {
        root
    };
    let turn = Turn { root, ..turn };
    // `truncation: auto`: the oldest turns go, half at a time, until the
    // rest fits the model's context.
    let mut dropped = 0;
    let (head, answered) = loop {
        let mut items = history[dropped..].to_vec();
        items.extend(turn.input.iter().cloned());
        let request = ResponsesTurn {
            request: body.clone(),
            messages: valid::messages(&items),
            session: Some((tenant.clone(), turn.root.clone())),
        };
        match api.chain.answer(&caller, request).await {
            Err(ApiError::InvalidRequest {
                code: Some("context_length_exceeded"),
                ..
            }) if truncation == Truncation::Auto && dropped < history.len() => {
                dropped += (history.len() - dropped).div_ceil(2);
            }
            other => break other?,
        }
    };
    let skeleton = object::skeleton(&turn, &body, &head.model);
    let Answered {
        answer,
        tokenizer: _,
        stamp,
    } = answered;
    let Head { stream, .. } = head;
    if turn.background {
        return background::start(&api, turn, skeleton, answer, stream, stamp).await;
    }
    if stream {
        return Ok(stream_response(
            api.sessions.clone(),
            turn,
            skeleton,
            answer,
            stamp,
        ));
    }
    let mut answer = answer;
    let (pieces, outcome) = collect(&mut answer).await;
    let usage = answer.usage();
    let mut events = Events::live();
    for piece in &pieces {
        events.piece(piece);
    }
    events.close();
    let response = object::finish(&skeleton, events.output(), &outcome, &usage);
    if let Outcome::Failed(err) = &outcome {
        // Nothing was made: the client gets the error, as from chat.
        return Err(err.clone());
    }
    persist(&api.sessions, &turn, &response, &pieces).await?;
    let mut reply = Json(response).into_response();
    stamp.apply(reply.headers_mut(), Some(&usage));
    Ok(reply)
}

/// `conversation`: an id, or `{"id": ...}`.
fn conversation_id(value: Option<&Value>) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if !id.is_empty() => Ok(Some(id.clone())),
        Some(Value::Object(o)) => match o.get("id") {
            Some(Value::String(id)) if !id.is_empty() => Ok(Some(id.clone())),
            _ => Err(ApiError::invalid(
                "conversation.id",
                "'conversation.id' must be a string",
            )),
        },
        Some(_) => Err(ApiError::invalid(
            "conversation",
            "'conversation' must be a conversation id or {\"id\": ...}",
        )),
    }
}

/// A stored response, or 404 (another tenant's, another kind, deleted).
async fn load_response(sessions: &Sessions, tenant: &str, id: &str) -> Result<Snapshot, ApiError> {
    let snapshot = sessions
        .load(tenant, id)
        .await
        .map_err(|e| e.to_api("Response"))?;
    if snapshot.session.kind != Kind::Response {
        return Err(ApiError::NotFound {
            what: "Response",
            id: id.to_string(),
        });
    }
    Ok(snapshot)
}

/// The items of a `previous_response_id` chain, oldest first, and the
/// chain's first response id.
async fn chain_history(
    sessions: &Sessions,
    tenant: &str,
    previous: &str,
) -> Result<(Vec<Value>, String), ApiError> {
    let mut turns: Vec<Vec<Value>> = Vec::new();
    let mut next = Some(previous.to_string());
    let mut root = previous.to_string();
    while let Some(id) = next {
        if turns.len() >= MAX_CHAIN {
            return Err(ApiError::invalid(
                "previous_response_id",
                format!("the chain is longer than {MAX_CHAIN} responses; start a conversation"),
            ));
        }
        let snapshot = load_response(sessions, tenant, &id).await?;
        let mut items: Vec<Value> = snapshot.items.into_iter().map(|i| i.body).collect();
        let stored = Stored::read(&snapshot.session.body)?;
        items.extend(
            stored.response["output"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        turns.push(items);
        root = id;
        next = snapshot.session.parent;
    }
    Ok((turns.into_iter().rev().flatten().collect(), root))
}

async fn conversation_items(
    sessions: &Sessions,
    tenant: &str,
    id: &str,
) -> Result<Vec<Value>, ApiError> {
    let snapshot = sessions
        .load(tenant, id)
        .await
        .map_err(|e| e.to_api("Conversation"))?;
    if snapshot.session.kind != Kind::Conversation {
        return Err(ApiError::NotFound {
            what: "Conversation",
            id: id.to_string(),
        });
    }
    Ok(snapshot.items.into_iter().map(|i| i.body).collect())
}

/// Runs an answer to its end, as pieces.
async fn collect(answer: &mut BoxAnswer) -> (Vec<Piece>, Outcome) {
    let mut pieces = Vec::new();
    let mut outcome = Outcome::Completed;
    while let Some(step) = answer.next().await {
        if let Some(o) = on_step(step, &mut pieces) {
            outcome = o;
        }
    }
    (pieces, outcome)
}

/// Adds a step's piece; the outcome when the step ends the answer.
fn on_step(step: Step, pieces: &mut Vec<Piece>) -> Option<Outcome> {
    match step {
        Step::Token { text, .. } => {
            if !text.is_empty() {
                pieces.push(Piece::Text { d: text });
            }
            None
        }
        Step::Finished { reason, text, .. } => {
            if !text.is_empty() {
                pieces.push(Piece::Text { d: text });
            }
            Some(match reason {
                sluice_runtime::FinishReason::Length => Outcome::Incomplete,
                _ => Outcome::Completed,
            })
        }
        Step::ToolCall {
            id,
            name,
            arguments,
            ..
        } => {
            pieces.push(Piece::Call {
                call_id: id,
                name,
                d: arguments,
            });
            None
        }
        Step::Failed(err) => Some(Outcome::Failed(err)),
    }
}

/// Stores the response (unless `store: false`) and adds the turn's items
/// to its conversation; the durable commit comes before the client learns
/// the answer ended.
async fn persist(
    sessions: &Sessions,
    turn: &Turn,
    response: &Value,
    pieces: &[Piece],
) -> Result<(), ApiError> {
    if turn.store {
        store_response(sessions, turn, response, pieces).await?;
    }
    add_to_conversation(sessions, turn, response).await
}

/// Stores the response with the turn's input items (version 1).
async fn store_response(
    sessions: &Sessions,
    turn: &Turn,
    response: &Value,
    pieces: &[Piece],
) -> Result<(), ApiError> {
    let items = turn
        .input
        .iter()
        .map(|item| {
            let id = item["id"].as_str().unwrap_or_default().to_string();
            NewItem {
                key: id.clone(),
                id,
                body: item.clone(),
                seal: turn.seal,
            }
        })
        .collect();
    let body = Stored {
        response: response.clone(),
        pieces: pieces.to_vec(),
        seal: turn.seal,
    }
    .write();
    sessions
        .create(
            NewSession {
                id: turn.id.clone(),
                tenant: turn.tenant.clone(),
                user: turn.user.clone(),
                kind: Kind::Response,
                parent: turn.previous.clone(),
                conversation: turn.conversation.clone(),
                body,
                seal: turn.seal,
            },
            items,
        )
        .await
        .map_err(|e| e.to_api("Response"))?;
    Ok(())
}

/// Adds the turn's input and output items to its conversation, if any.
async fn add_to_conversation(
    sessions: &Sessions,
    turn: &Turn,
    response: &Value,
) -> Result<(), ApiError> {
    if let Some(conversation) = &turn.conversation {
        let output = response["output"].as_array().cloned().unwrap_or_default();
        let items: Vec<NewItem> = turn
            .input
            .iter()
            .chain(output.iter())
            .enumerate()
            .map(|(i, item)| NewItem {
                id: item["id"].as_str().unwrap_or_default().to_string(),
                // A retried flush of this turn writes nothing twice.
                key: format!("{}:{i}", turn.id),
                body: item.clone(),
                seal: turn.seal,
            })
            .collect();
        sessions
            .append(&turn.tenant, conversation, None, items)
            .await
            .map_err(|e| e.to_api("Conversation"))?;
    }
    Ok(())
}

/// A live stream: the answer's steps become events; at its end the
/// response is stored, then the terminal event goes out.
struct Live {
    answer: BoxAnswer,
    sessions: Arc<Sessions>,
    turn: Turn,
    skeleton: Value,
    events: Events,
    pieces: Vec<Piece>,
    queue: std::collections::VecDeque<Value>,
    /// How the answer ended, once a step said so.
    outcome: Option<Outcome>,
    ended: bool,
}

impl Live {
    async fn next_event(&mut self) -> Option<Value> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            match self.answer.next().await {
                Some(step) => {
                    let before = self.pieces.len();
                    let outcome = on_step(step, &mut self.pieces);
                    for piece in &self.pieces[before..] {
                        self.queue.extend(self.events.piece(piece));
                    }
                    match outcome {
                        Some(Outcome::Failed(err)) => self.end(Outcome::Failed(err)).await,
                        // The answer's own end comes next; wait for it.
                        Some(o) => self.outcome = Some(o),
                        None => {}
                    }
                }
                None => {
                    let outcome = self.outcome.take().unwrap_or(Outcome::Completed);
                    self.end(outcome).await;
                }
            }
        }
    }

    /// Closes the output, stores the response, queues the terminal event.
    async fn end(&mut self, outcome: Outcome) {
        self.ended = true;
        let closing = self.events.close();
        self.queue.extend(closing);
        let usage = self.answer.usage();
        let mut response = object::finish(&self.skeleton, self.events.output(), &outcome, &usage);
        if let Err(err) = persist(&self.sessions, &self.turn, &response, &self.pieces).await {
            tracing::error!(error = %err, id = %self.turn.id, "a streamed response could not be stored");
            response = object::finish(
                &self.skeleton,
                self.events.output(),
                &Outcome::Failed(err),
                &usage,
            );
        }
        let terminal = self.events.terminal(&response);
        self.queue.push_back(terminal);
    }
}

fn sse_event(event: &Value) -> Event {
    let kind = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    Event::default()
        .event(kind)
        .data(serde_json::to_string(event).unwrap_or_default())
}

fn stream_response(
    sessions: Arc<Sessions>,
    turn: Turn,
    skeleton: Value,
    answer: BoxAnswer,
    stamp: Stamp,
) -> Response {
    let mut events = Events::live();
    let queue = events.start(&skeleton).into();
    let live = Live {
        answer,
        sessions,
        turn,
        skeleton,
        events,
        pieces: Vec::new(),
        queue,
        outcome: None,
        ended: false,
    };
    let span = tracing::Span::current();
    let stream = stream::unfold(live, move |mut live| {
        let span = span.clone();
        async move {
            let event = live.next_event().instrument(span).await?;
            Some((Ok::<_, std::convert::Infallible>(sse_event(&event)), live))
        }
    });
    let mut response = Sse::new(stream).into_response();
    stamp.apply(response.headers_mut(), None);
    response
}

/// `GET /v1/responses/{id}`: the stored response, or with `stream=true`
/// its events again, those after `starting_after`.
pub async fn retrieve(
    State(api): State<SessionApi>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<RetrieveQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let tenant = &caller.tenant.0;
    let snapshot = load_response(&api.sessions, tenant, &id).await?;
    let stored = Stored::read(&snapshot.session.body)?;
    if q.stream != Some(true) {
        if q.starting_after.is_some() {
            return Err(ApiError::invalid(
                "starting_after",
                "'starting_after' is only allowed with stream=true",
            ));
        }
        return Ok(Json(stored.response).into_response());
    }
    let after = q.starting_after.unwrap_or(-1);
    let status = stored.response["status"].as_str().unwrap_or_default();
    if !background::is_final(status) {
        // A background run: followed live here, or (run by another
        // instance) replayed once the store shows its end.
        if let Some(run) = api.sessions.runs().get(&id) {
            return Ok(background::follow_response(run, after));
        }
        return Ok(background::replay_when_final(
            api.sessions.clone(),
            tenant.to_string(),
            id,
            after,
        ));
    }
    let events: Vec<Result<Event, std::convert::Infallible>> = replayed(&stored, after)
        .iter()
        .map(|e| Ok(sse_event(e)))
        .collect();
    Ok(Sse::new(stream::iter(events)).into_response())
}

/// A stored response's events after `starting_after`.
fn replayed(stored: &Stored, starting_after: i64) -> Vec<Value> {
    let skeleton = object::skeleton_of(&stored.response);
    events::replay(&skeleton, &stored.response, &stored.pieces)
        .into_iter()
        .filter(|e| e["sequence_number"].as_i64().unwrap_or(-1) > starting_after)
        .collect()
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    State(api): State<SessionApi>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    load_response(&api.sessions, &caller.tenant.0, &id).await?;
    api.sessions
        .delete(&caller.tenant.0, &id)
        .await
        .map_err(|e| e.to_api("Response"))?;
    // A background run of it stops: nothing would be left to store its end.
    if let Some(run) = api.sessions.runs().get(&id) {
        run.cancel_token().cancel();
    }
    Ok(Json(
        json!({"id": id, "object": "response", "deleted": true}),
    ))
}

/// `POST /v1/responses/{id}/cancel`: a queued or in-progress background
/// response becomes `cancelled` and its run stops (see [`background`]).
pub async fn cancel(
    State(api): State<SessionApi>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    background::cancel(&api.sessions, &caller.tenant.0, &id)
        .await
        .map(Json)
}

/// `GET /v1/responses/{id}/input_items`.
pub async fn input_items(
    State(api): State<SessionApi>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let snapshot = load_response(&api.sessions, &caller.tenant.0, &id).await?;
    let items: Vec<Value> = snapshot.items.into_iter().map(|i| i.body).collect();
    Ok(Json(paging::page(items, &q)?))
}
