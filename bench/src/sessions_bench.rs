//! `sluice-bench sessions`: the latency of one session append as the
//! `/v1/conversations/{id}/items` route makes it: one item (~200 bytes of
//! JSON) with a version check and an idempotency key, written through to
//! the durable store (SQLite file or PostgreSQL) and then, with `--redis`,
//! copied into the Redis hot layer. One append at a time, after
//! `--warmup` untimed ones; p50/p99 in milliseconds.
//!
//! For PostgreSQL, give a URL whose `search_path` names a schema of the
//! benchmark's own (`bench/RESULTS.md` shows the commands), so its tables
//! never mix with anyone else's.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use sluice_gateway::config::{Secret, StoreLocation, StoreSettings};
use sluice_gateway::sessions::{Durable, Hot, Kind, NewItem, NewSession, SessionStore, Sessions};
use sluice_gateway::store::Store;

use crate::stats::{cell, Summary};

#[derive(Args, Debug)]
pub struct SessionsArgs {
    /// `postgres://...` or a SQLite file path (created).
    #[arg(long)]
    store: String,
    /// A Redis URL for the hot layer (none: the store alone).
    #[arg(long)]
    redis: Option<String>,
    /// Appends timed.
    #[arg(long, default_value_t = 2000)]
    appends: usize,
    /// Appends run first and not timed.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct SessionsReport {
    store: &'static str,
    redis: bool,
    appends: usize,
    millis: Summary,
}

pub fn run(args: SessionsArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(measure(args))
}

async fn measure(args: SessionsArgs) -> Result<()> {
    let (location, kind) = if args.store.starts_with("postgres") {
        (
            StoreLocation::Postgres(Secret::new(args.store.clone())),
            "postgresql",
        )
    } else {
        (StoreLocation::Sqlite(args.store.clone().into()), "sqlite")
    };
    let store = Store::open(&StoreSettings { location })
        .await
        .map_err(|e| anyhow!("opening the store: {e}"))?;
    let hot = args
        .redis
        .as_deref()
        .map(|url| {
            let prefix = format!("sluice-bench-sessions:{}", std::process::id());
            Hot::new(url, &prefix, Duration::from_secs(600)).map_err(|e| anyhow!(e))
        })
        .transpose()?;
    let sessions = Sessions::new(Durable::new(store), hot, None);
    let id = format!(
        "conv_bench_{}_{}",
        std::process::id(),
        sluice_gateway::util::unix_now_ms()
    );
    let tenant = "bench";
    let created = sessions
        .create(
            NewSession {
                id: id.clone(),
                tenant: tenant.into(),
                user: Some("bench-user".into()),
                kind: Kind::Conversation,
                parent: None,
                conversation: None,
                body: json!({"metadata": {}}),
                seal: false,
            },
            Vec::new(),
        )
        .await
        .map_err(|e| anyhow!("creating the session: {e}"))?;
    let mut version = created.session.version;
    let mut samples = Vec::with_capacity(args.appends);
    for i in 0..args.warmup + args.appends {
        let item = NewItem {
            id: format!("msg_{i:08}"),
            key: format!("bench-{i}"),
            body: json!({
                "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_text",
                             "text": "A user turn of about two hundred bytes, as a chat client sends one: a question with a little context around it."}],
            }),
            seal: false,
        };
        let started = Instant::now();
        let appended = sessions
            .append(tenant, &id, Some(version), vec![item])
            .await
            .map_err(|e| anyhow!("append {i}: {e}"))?;
        if i >= args.warmup {
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
        version = appended.version;
    }
    // Leave nothing behind.
    sessions
        .delete(tenant, &id)
        .await
        .map_err(|e| anyhow!("cleaning up: {e}"))?;
    let millis = Summary::of(&samples);
    println!(
        "session append ({kind}{}), {} appends: p50 {} ms, p99 {} ms, max {} ms",
        if args.redis.is_some() { " + redis" } else { "" },
        args.appends,
        cell(millis.p50, 3),
        cell(millis.p99, 3),
        cell(millis.max, 3),
    );
    let report = SessionsReport {
        store: kind,
        redis: args.redis.is_some(),
        appends: args.appends,
        millis,
    };
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
