//! `sluice guard evaluate`: how the head generalises across sources. Each
//! source is held out in turn: a head is fitted on the others (with the
//! same settings `sluice guard train` uses), calibrated and given its two
//! thresholds on their validation parts, then scores every row of the
//! held-out source, segments-max as serving does. The "before" column is
//! an existing head (the built-in one unless `--head` names another) at
//! its own threshold on the same rows.
//!
//! Design decision: a held-out source is judged at the thresholds the
//! other sources chose, not at one tuned on itself: that is what a
//! deployment meets on traffic unlike its training data. For sources with
//! both classes the table also gives the recall at the held-out source's
//! own 5% false-positive point (a ranking figure, the "recall at FPR 0.05"
//! of the issue), and the AUC. Positive-only and benign-only sources give
//! only the figure they can; a positive-only source is scored on its
//! whole-text windows without sentence pieces (a lower bound of what the
//! server computes: see `EmbeddedSource::embed`).

use std::collections::HashSet;
use std::fmt::Write as _;

use sluice_models::guard::metrics::{choose_threshold, rates_at, roc_auc};
use sluice_models::guard::GuardHead;
use sluice_models::SentenceEncoder;

use super::sources::{dedupe_key, SourceSpec};
use super::train_sources::{embed_sources, fit_on_sources, EmbeddedSource, FitSettings};

/// The false-positive rate at which the held-out source's own ranking
/// recall is read.
const OWN_POINT_FPR: f64 = 0.05;

/// `sluice guard evaluate`.
pub struct EvaluateJob {
    pub sources: Vec<SourceSpec>,
    pub encoder_dir: std::path::PathBuf,
    pub embedding_model: String,
    pub settings: FitSettings,
    /// The "before" head and its threshold.
    pub before: (GuardHead, f32),
    pub embedding_cache: Option<std::path::PathBuf>,
}

/// One held-out source's figures.
#[derive(Debug, Clone)]
pub struct HeldOut {
    pub name: String,
    pub rows: usize,
    pub positives: usize,
    /// Before: (recall, FPR) at the old head's threshold.
    pub before: (f64, f64),
    pub before_auc: Option<f64>,
    /// After, at `t_low` and at `t_high`: (recall, FPR).
    pub at_low: (f64, f64),
    pub at_high: (f64, f64),
    pub thresholds: (f32, f32),
    pub auc: Option<f64>,
    /// Recall at the held-out source's own FPR 0.05 point (before, after).
    pub own_point: Option<(f64, f64)>,
}

/// Runs every hold-out; the table goes to stdout, progress to stderr.
pub fn run(job: &EvaluateJob) -> Result<Vec<HeldOut>, String> {
    let encoder = SentenceEncoder::load(&job.encoder_dir)
        .map_err(|e| format!("cannot load the encoder {}: {e}", job.encoder_dir.display()))?;
    let sources = embed_sources(
        &job.sources,
        &encoder,
        &job.settings,
        job.embedding_cache.as_deref(),
        &job.embedding_model,
    )?;
    let mut out = Vec::new();
    for (k, held) in sources.iter().enumerate() {
        let exclude: HashSet<String> = held
            .source
            .rows
            .iter()
            .map(|r| dedupe_key(&r.text))
            .collect();
        let fitted = fit_on_sources(&sources, Some(k), &exclude, &job.settings)?;
        let row = judge(
            held,
            &job.before,
            &fitted.head,
            (fitted.low.threshold, fitted.high.threshold),
        )?;
        eprintln!("guard evaluate: {}", markdown_row(&row));
        out.push(row);
    }
    println!("{}", markdown_table(&out));
    Ok(out)
}

fn judge(
    held: &EmbeddedSource,
    before: &(GuardHead, f32),
    after: &GuardHead,
    (t_low, t_high): (f32, f32),
) -> Result<HeldOut, String> {
    let positive: Vec<bool> = held.source.rows.iter().map(|r| r.injection).collect();
    let old = held.scores(&before.0)?;
    let new = held.scores(after)?;
    let own = |scores: &[f32]| choose_threshold(scores, &positive, OWN_POINT_FPR).map(|c| c.recall);
    Ok(HeldOut {
        name: held.source.name.clone(),
        rows: positive.len(),
        positives: positive.iter().filter(|&&p| p).count(),
        before: rates_at(&old, &positive, before.1),
        before_auc: roc_auc(&old, &positive),
        at_low: rates_at(&new, &positive, t_low),
        at_high: rates_at(&new, &positive, t_high),
        thresholds: (t_low, t_high),
        auc: roc_auc(&new, &positive),
        own_point: own(&old).zip(own(&new)),
    })
}

fn cell(rate: f64, applies: bool) -> String {
    if applies {
        format!("{rate:.3}")
    } else {
        "-".into()
    }
}

fn markdown_row(r: &HeldOut) -> String {
    let has_pos = r.positives > 0;
    let has_neg = r.positives < r.rows;
    let auc = |a: Option<f64>| a.map_or("-".into(), |a| format!("{a:.3}"));
    let own = r
        .own_point
        .map_or("-".into(), |(b, a)| format!("{b:.3} / {a:.3}"));
    format!(
        "| {} | {} / {} | {} / {} | {} / {} | {} / {} | {:.3} / {:.3} | {} / {} | {} |",
        r.name,
        r.rows,
        r.positives,
        cell(r.before.0, has_pos),
        cell(r.before.1, has_neg),
        cell(r.at_low.0, has_pos),
        cell(r.at_low.1, has_neg),
        cell(r.at_high.0, has_pos),
        cell(r.at_high.1, has_neg),
        r.thresholds.0,
        r.thresholds.1,
        auc(r.before_auc),
        auc(r.auc),
        own
    )
}

/// The hold-out table in Markdown, as pasted into the notes.
pub fn markdown_table(rows: &[HeldOut]) -> String {
    let mut s = String::new();
    s.push_str(
        "| held-out source | rows / injections | before: recall / FPR | after at t_low: recall / FPR | after at t_high: recall / FPR | t_low / t_high | AUC before / after | recall at own FPR 0.05, before / after |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(s, "{}", markdown_row(r));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_leave_out_the_figures_a_source_cannot_give() {
        let r = HeldOut {
            name: "benign-ru".into(),
            rows: 100,
            positives: 0,
            before: (0.0, 0.31),
            before_auc: None,
            at_low: (0.0, 0.02),
            at_high: (0.0, 0.0),
            thresholds: (0.2, 0.6),
            auc: None,
            own_point: None,
        };
        let line = markdown_row(&r);
        assert_eq!(
            line,
            "| benign-ru | 100 / 0 | - / 0.310 | - / 0.020 | - / 0.000 | 0.200 / 0.600 | - / - | - |"
        );
        let table = markdown_table(&[r]);
        assert_eq!(table.lines().count(), 3);
        assert!(table.starts_with("| held-out source |"));
    }
}
