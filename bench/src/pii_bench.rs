//! `sluice-bench pii`: the PII detector's scan of one request-sized text
//! (8 KB by default: Russian and English business prose with e-mail
//! addresses, phones, cards, INNs, an account with its BIK, an IP and an
//! API key planted in it), in process, one scan at a time.
//!
//! Design decision: the detector is the gateway's own (`Pii` built from a
//! `[pii]` section with every kind masked), and what is timed is
//! [`Pii::scan`], the one pass every request, answer window and upstream
//! attempt runs; the redaction that follows is a copy of the text. The
//! first `--warmup` scans are not counted (the regex's lazy DFA fills its
//! cache on them, as a server's does on its first requests).

use std::time::Instant;

use anyhow::{anyhow, Result};
use clap::Args;
use serde::Serialize;
use sluice_gateway::config::PiiSettings;
use sluice_gateway::pii::Pii;

use crate::stats::{cell, Summary};

#[derive(Args, Debug)]
pub struct PiiArgs {
    /// Bytes of text per scan.
    #[arg(long, default_value_t = 8 * 1024)]
    bytes: usize,
    /// Scans timed.
    #[arg(long, default_value_t = 5000)]
    iterations: usize,
    /// Scans run first and not timed.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct PiiReport {
    bytes: usize,
    iterations: usize,
    values_found: usize,
    micros: Summary,
}

const PROSE: &[&str] = &[
    "Добрый день! Направляем счёт на оплату поставки оборудования по договору поставки. ",
    "Please confirm the delivery window for the second batch and the invoice currency. ",
    "Контактное лицо: Иванова Мария, e-mail m.ivanova@example-supplier.ru, тел. +7 (912) 345-67-89. ",
    "Реквизиты: ИНН 7707083893, р/с 40702810938000012345, БИК 044525225. ",
    "The staging host 10.20.30.40 answers on port 8443; rotate the key sk-proj-abcdefghijklmnopqrstuvwx0123 weekly. ",
    "Оплата картой 2200 7012 3456 7896 возможна до конца месяца, версия прайса 3.2.1. ",
    "We reviewed 12 open items, 4 of them blocking, and agreed to meet again on the 14th at 10:30. ",
];

/// Prose of `bytes` bytes (whole sentences, so the last may run over).
fn text_of(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 256);
    let mut i = 0;
    while text.len() < bytes {
        text.push_str(PROSE[i % PROSE.len()]);
        i += 1;
    }
    text
}

pub fn run(args: PiiArgs) -> Result<()> {
    let settings = PiiSettings {
        enabled: true,
        ..PiiSettings::default()
    };
    let pii = Pii::new(&settings)
        .map_err(|e| anyhow!("building the detector: {e}"))?
        .ok_or_else(|| anyhow!("[pii] is off"))?;
    let text = text_of(args.bytes);
    let mut found = 0;
    for _ in 0..args.warmup {
        found = pii.scan(&text).len();
    }
    let mut samples = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let started = Instant::now();
        let n = pii.scan(std::hint::black_box(&text)).len();
        samples.push(started.elapsed().as_secs_f64() * 1e6);
        found = n;
    }
    let micros = Summary::of(&samples);
    println!(
        "pii scan of {} bytes ({found} values found), {} scans: p50 {} µs, p99 {} µs, max {} µs",
        text.len(),
        args.iterations,
        cell(micros.p50, 1),
        cell(micros.p99, 1),
        cell(micros.max, 1),
    );
    let report = PiiReport {
        bytes: text.len(),
        iterations: args.iterations,
        values_found: found,
        micros,
    };
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
