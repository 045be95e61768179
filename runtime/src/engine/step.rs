//! One step on the executor: the batch's rows go in, each sampled row's
//! token comes out, picked where the logits are when nothing host-only
//! (a grammar, penalties that need the history) is in the way.

use std::collections::HashSet;

use sluice_models::SeqBatch;

use super::{Active, Worker};
use crate::constraint::SeqConstraint;
use crate::executor::{RowOut, RowWant};
use crate::request::TokenLogprob;
use crate::sampler::{is_greedy, off_host_rules, sample};
use crate::scheduler::{SchedulerOutput, SeqId};
use crate::EngineError;

impl Active {
    /// What this sequence's next step wants back: only a token when the
    /// executor may pick it (no grammar, nothing host-only in its params).
    fn row_want(&self) -> RowWant {
        if self.constraint.is_some() {
            return RowWant::Logits;
        }
        off_host_rules(&self.request.params, &self.rng).map_or(RowWant::Logits, RowWant::Token)
    }
}

/// What sampling one step produced.
pub(super) struct Sampled {
    pub(super) tokens: Vec<(SeqId, u32)>,
    /// Sequences whose grammar failed; they get an error, not a token.
    pub(super) failed: Vec<(SeqId, String)>,
}

impl Worker {
    pub(super) fn run_step(&mut self, output: &SchedulerOutput) -> Result<Sampled, EngineError> {
        let batch: Vec<SeqBatch<'_>> = output
            .seqs
            .iter()
            .map(|s| SeqBatch {
                tokens: &s.tokens,
                start_pos: s.start_pos,
                block_table: &s.block_table,
                want_logits: s.sample,
            })
            .collect();
        // Rows that need only a token may be sampled by the executor where
        // the logits are (on a GPU, only the ids leave the device).
        let wants: Vec<RowWant> = output
            .seqs
            .iter()
            .filter(|s| s.sample)
            .map(|s| {
                self.active
                    .get(&s.id)
                    .map_or(RowWant::Logits, Active::row_want)
            })
            .collect();
        // The grammar masks of this step's constrained sequences are computed
        // on a second thread while the forward pass runs, so they cost the
        // step nothing unless they take longer than the model; unconstrained
        // sequences never wait for them.
        let sampling: HashSet<SeqId> = output
            .seqs
            .iter()
            .filter(|s| s.sample)
            .map(|s| s.id)
            .collect();
        let mut constrained: Vec<&mut SeqConstraint> = self
            .active
            .iter_mut()
            .filter(|(id, _)| sampling.contains(id))
            .filter_map(|(_, a)| a.constraint.as_mut())
            .collect();
        let executor = &mut self.executor;
        let rows = if constrained.is_empty() {
            executor.execute_rows(&batch, &wants)?
        } else {
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    for c in constrained.iter_mut() {
                        // A failure is reported when the mask is applied.
                        let _ = c.compute_mask();
                    }
                });
                executor.execute_rows(&batch, &wants)
            })?
        };
        let mut sampled = Sampled {
            tokens: Vec::with_capacity(rows.len()),
            failed: Vec::new(),
        };
        let sampled_seqs = output.seqs.iter().filter(|s| s.sample).zip(&wants);
        for ((seq, want), row) in sampled_seqs.zip(rows) {
            let Some(active) = self.active.get_mut(&seq.id) else {
                continue;
            };
            let mut row = match (row, want) {
                (RowOut::Logits(row), _) => row,
                (RowOut::Token(id), RowWant::Token(_)) => {
                    // The executor used the uniform that `row_want` peeked:
                    // take it from the stream, as `sample` would have.
                    if !is_greedy(&active.request.params) {
                        active.rng.next_f32();
                    }
                    sampled.tokens.push((seq.id, id));
                    continue;
                }
                (RowOut::Token(_), RowWant::Logits) => {
                    sampled.failed.push((
                        seq.id,
                        "the executor returned a token for a row that needs its logits".into(),
                    ));
                    continue;
                }
            };
            if let Some(c) = active.constraint.as_mut() {
                if let Err(e) = c.apply(&mut row) {
                    sampled.failed.push((seq.id, e.to_string()));
                    continue;
                }
            }
            let picked = sample(
                &mut row,
                &active.request.params,
                &active.request.prompt_tokens,
                &active.output,
                &mut active.rng,
            );
            if active.request.params.logprobs.is_some() {
                active.last_logprob = Some(TokenLogprob {
                    token: picked.id,
                    logprob: picked.logprob,
                    top: picked.top,
                });
            }
            sampled.tokens.push((seq.id, picked.id));
        }
        Ok(sampled)
    }
}
