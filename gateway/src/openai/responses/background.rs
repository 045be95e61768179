//! `background: true`: the response is stored `queued` and returned at
//! once; a task of this instance ([`crate::sessions::runs`]) runs the
//! answer, stores `in_progress`, then the final response. `GET` shows the
//! stored status; `POST .../cancel` stores `cancelled` and stops the task,
//! which drops the answer (the engine frees the sequence's blocks within a
//! step; an upstream call is dropped). With `stream: true` the events are
//! streamed from the run as they are made, and `GET ...?stream=true&
//! starting_after=N` resumes them, live while the run lasts and from the
//! store after.
//!
//! Governance is the foreground's: the handler runs the whole request
//! chain (auth, limits, budget, defence, guard, cache, router) before the
//! task starts, so a refusal is the same 4xx at once, and the answer the
//! task drives is the chain's own, whose end (or drop, on cancel) settles
//! spend and audit exactly as a finished or abandoned foreground answer.
//!
//! Every change of state is a version-guarded write: `queued` (version 1)
//! → `in_progress` → the end, each based on the version before. A cancel
//! writes `cancelled` on the version it read; whichever write comes second
//! finds the version moved and stands down, so a cancelled response is
//! never overwritten by a late end, nor a finished one by a late cancel.

use std::sync::Arc;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use tracing::Instrument;

use super::events::Events;
use super::object::{self, Outcome, Stored, Turn};
use super::{on_step, sse_event, SessionApi};
use crate::answer::BoxAnswer;
use crate::chain::Stamp;
use crate::error::ApiError;
use crate::sessions::runs::{Refused, Run, MAX_RUNS};
use crate::sessions::{SessionError, SessionStore, Sessions};

/// How often a reader on another instance looks at the store while a run
/// it cannot follow live is unfinished, and for how long at most.
const POLL_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
const POLL_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether a stored status is a run's end.
pub fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "incomplete" | "failed" | "cancelled")
}

/// The stored response with another status.
fn with_status(response: &Value, status: &str) -> Value {
    let mut r = response.clone();
    r["status"] = json!(status);
    r
}

/// Stores the response `queued`, starts its run, answers at once: the
/// queued response, or its event stream.
pub(super) async fn start(
    api: &SessionApi,
    turn: Turn,
    skeleton: Value,
    answer: BoxAnswer,
    stream: bool,
    stamp: Stamp,
) -> Result<Response, ApiError> {
    let runs = api.sessions.runs().clone();
    let full = || ApiError::QueueFull {
        pending: MAX_RUNS,
        retry_after: std::time::Duration::from_secs(1),
    };
    // Checked again (exactly) when the run starts; this spares a store
    // write for a request that would be refused anyway.
    if runs.len() >= MAX_RUNS {
        return Err(full());
    }
    let queued = with_status(&skeleton, "queued");
    super::store_response(&api.sessions, &turn, &queued, &[]).await?;
    let (sessions, id, tenant) = (api.sessions.clone(), turn.id.clone(), turn.tenant.clone());
    let span = tracing::info_span!("background_response", id = %turn.id);
    let started = runs.start(&id, move |run| {
        drive(sessions, run, turn, skeleton, answer).instrument(span)
    });
    let run = match started {
        Ok(run) => run,
        Err(why) => {
            // Not started: the stored `queued` must not linger.
            if let Err(e) = api.sessions.delete(&tenant, &id).await {
                tracing::warn!(error = %e, %id, "a refused background response stays stored");
            }
            return Err(match why {
                Refused::Full | Refused::Closed => full(),
            });
        }
    };
    let mut reply = if stream {
        follow_response(run, -1)
    } else {
        Json(queued).into_response()
    };
    stamp.apply(reply.headers_mut(), None);
    Ok(reply)
}

/// The run: `in_progress`, the answer's steps as events, the end stored.
async fn drive(
    sessions: Arc<Sessions>,
    run: Arc<Run>,
    turn: Turn,
    skeleton: Value,
    mut answer: BoxAnswer,
) {
    let mut events = Events::live();
    run.log(events.start(&skeleton));
    let in_progress = Stored {
        response: skeleton.clone(),
        pieces: Vec::new(),
        seal: turn.seal,
    };
    let mut version = 1;
    match write(&sessions, &turn, version, in_progress).await {
        Ok(v) => version = v,
        // Cancelled while queued: nothing to run.
        Err(SessionError::Stale { .. }) | Err(SessionError::NotFound(_)) => return,
        Err(e) => tracing::error!(error = %e, "cannot store the response as in progress"),
    }
    let cancel = run.cancel_token().clone();
    let mut pieces = Vec::new();
    let mut outcome = None;
    let end = loop {
        let step = tokio::select! {
            biased;
            () = cancel.cancelled() => break None,
            step = answer.next() => step,
        };
        match step {
            Some(step) => {
                let before = pieces.len();
                let ended = on_step(step, &mut pieces);
                let new: Vec<Value> = pieces[before..]
                    .iter()
                    .flat_map(|p| events.piece(p))
                    .collect();
                run.log(new);
                match ended {
                    Some(failed @ Outcome::Failed(_)) => break Some(failed),
                    // The answer's own end comes next; wait for it.
                    Some(o) => outcome = Some(o),
                    None => {}
                }
            }
            None => break Some(outcome.take().unwrap_or(Outcome::Completed)),
        }
    };
    let usage = answer.usage();
    // Dropped before the store is written: a cancelled sequence's blocks
    // (or an upstream connection) go back now, not after the write.
    drop(answer);
    let Some(outcome) = end else {
        // A client's cancel stored `cancelled` before it fired, so this
        // write finds the version moved and stands down; at shutdown no
        // one did, and the response is stored as failed.
        let err = ApiError::Internal(
            "the server shut down before this background response finished".into(),
        );
        let response = object::finish(&skeleton, &[], &Outcome::Failed(err), &usage);
        let stored = Stored {
            response,
            pieces: Vec::new(),
            seal: turn.seal,
        };
        match write(&sessions, &turn, version, stored).await {
            // Cancelled (or deleted) by a client: that stands.
            Ok(_) | Err(SessionError::Stale { .. }) | Err(SessionError::NotFound(_)) => {}
            Err(e) => tracing::error!(error = %e, "cannot store a background response's end"),
        }
        return;
    };
    run.log(events.close());
    let response = object::finish(&skeleton, events.output(), &outcome, &usage);
    let stored = Stored {
        response: response.clone(),
        pieces,
        seal: turn.seal,
    };
    match write(&sessions, &turn, version, stored).await {
        Ok(_) => {
            if let Err(e) = super::add_to_conversation(&sessions, &turn, &response).await {
                tracing::error!(error = %e, "cannot add a background response to its conversation");
            }
            run.log([events.terminal(&response)]);
        }
        // Cancelled meanwhile: `cancelled` stands.
        Err(SessionError::Stale { .. }) | Err(SessionError::NotFound(_)) => {}
        Err(e) => tracing::error!(error = %e, "cannot store a background response's end"),
    }
}

/// Replaces the stored response, based on `version`; the new version.
async fn write(
    sessions: &Sessions,
    turn: &Turn,
    version: i64,
    stored: Stored,
) -> Result<i64, SessionError> {
    let seal = stored.seal;
    sessions
        .update_sealed(&turn.tenant, &turn.id, Some(version), stored.write(), seal)
        .await
}

/// An SSE response that follows a live run from `starting_after`.
pub(super) fn follow_response(run: Arc<Run>, starting_after: i64) -> Response {
    let follower = run.follow(starting_after);
    let events = stream::unfold(follower, |mut f| async move {
        let batch = f.next_batch().await;
        if batch.is_empty() {
            return None;
        }
        let events: Vec<Result<Event, std::convert::Infallible>> =
            batch.iter().map(|e| Ok(sse_event(e))).collect();
        Some((stream::iter(events), f))
    })
    .flatten();
    Sse::new(events).into_response()
}

/// A background response that is unfinished in the store and not running
/// here (another instance runs it): its events once the store shows its
/// end, replayed from `starting_after`.
pub(super) fn replay_when_final(
    sessions: Arc<Sessions>,
    tenant: String,
    id: String,
    starting_after: i64,
) -> Response {
    let events = stream::once(async move {
        let deadline = tokio::time::Instant::now() + POLL_FOR;
        loop {
            tokio::time::sleep(POLL_EVERY).await;
            let Ok(snapshot) = sessions.load(&tenant, &id).await else {
                return Vec::new();
            };
            let Ok(stored) = Stored::read(&snapshot.session.body) else {
                return Vec::new();
            };
            let status = stored.response["status"].as_str().unwrap_or_default();
            if is_final(status) || tokio::time::Instant::now() >= deadline {
                return super::replayed(&stored, starting_after);
            }
        }
    })
    .flat_map(|events| {
        stream::iter(
            events
                .iter()
                .map(|e| Ok::<_, std::convert::Infallible>(sse_event(e)))
                .collect::<Vec<_>>(),
        )
    });
    Sse::new(events).into_response()
}

/// `POST /v1/responses/{id}/cancel` of a stored response: `cancelled`
/// when it was queued or in progress (and its run here is stopped), the
/// same object again when it already was; a finished or foreground one is
/// a 400.
pub(super) async fn cancel(sessions: &Sessions, tenant: &str, id: &str) -> Result<Value, ApiError> {
    // A lost race with the run's own writes (queued → in_progress → end)
    // is read again; a handful of rounds is plenty for three writes.
    for _ in 0..5 {
        let snapshot = super::load_response(sessions, tenant, id).await?;
        let stored = Stored::read(&snapshot.session.body)?;
        if stored.response["background"] != json!(true) {
            return Err(ApiError::invalid(
                "response_id",
                "Only responses created with background=true can be cancelled",
            ));
        }
        let status = stored.response["status"].as_str().unwrap_or_default();
        match status {
            "cancelled" => return Ok(stored.response),
            "queued" | "in_progress" => {}
            other => {
                return Err(ApiError::invalid(
                    "response_id",
                    format!("Cannot cancel a response that has already finished ({other})"),
                ))
            }
        }
        let cancelled = with_status(&stored.response, "cancelled");
        let seal = stored.seal;
        let body = Stored {
            response: cancelled.clone(),
            pieces: Vec::new(),
            seal,
        };
        match sessions
            .update_sealed(
                tenant,
                id,
                Some(snapshot.session.version),
                body.write(),
                seal,
            )
            .await
        {
            Ok(_) => {
                if let Some(run) = sessions.runs().get(id) {
                    run.cancel_token().cancel();
                }
                return Ok(cancelled);
            }
            Err(SessionError::Stale { .. }) => continue,
            Err(e) => return Err(e.to_api("Response")),
        }
    }
    Err(ApiError::Conflict(
        "the response changed while it was being cancelled; retry".into(),
    ))
}
