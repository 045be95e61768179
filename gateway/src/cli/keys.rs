//! `sluice keys create|list|rotate|revoke`: virtual keys managed directly
//! on the store the config names (the same code as the admin API, so the
//! other instances hear of each change). A new key is printed once, alone
//! on stdout; everything else goes to stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::audit::{actions, Audit, AuditEvent, AuditOutcome};
use crate::config::{process_env, Config, Overrides};
use crate::keys::{KeyChanges, KeyRecord, VirtualKeys};

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// Create a key and print it (the only time it is shown).
    Create(CreateArgs),
    /// List the keys (never the keys themselves: prefixes and fields).
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this team's keys.
        #[arg(long)]
        team: Option<String>,
    },
    /// Issue a new key with the same fields; the old one works for the grace.
    Rotate {
        #[command(flatten)]
        config: ConfigArg,
        /// The key's public prefix (`sk-sl-<prefix>_...`).
        prefix: String,
        /// How long the old key keeps working.
        #[arg(long, default_value_t = 0)]
        grace_seconds: u64,
    },
    /// Refuse a key from now on.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        prefix: String,
    },
}

#[derive(Debug, Args)]
pub(super) struct ConfigArg {
    /// The TOML config file (its `[store]` and `[auth]` are used).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct CreateArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[arg(long)]
    name: Option<String>,
    /// Default: the team's tenant, else `default`.
    #[arg(long)]
    tenant: Option<String>,
    /// An existing team.
    #[arg(long)]
    team: Option<String>,
    #[arg(long)]
    user: Option<String>,
    /// admin, auditor, team_admin, user or service (repeat for several; default user).
    #[arg(long = "role")]
    roles: Vec<String>,
    /// A model the key may use (repeat; default: every model).
    #[arg(long = "allowed-model")]
    allowed_models: Vec<String>,
    #[arg(long)]
    rpm: Option<u32>,
    #[arg(long)]
    tpm: Option<u64>,
    #[arg(long)]
    max_parallel: Option<u32>,
    /// The key stops working this many seconds from now.
    #[arg(long)]
    expires_in: Option<u64>,
    /// Every request of this key is sensitive.
    #[arg(long)]
    sensitive: bool,
    /// Every request of this key is regulated: sensitive (on-prem only),
    /// never cached when its prompt carries PII, what it stores encrypted,
    /// the audit fail-closed.
    #[arg(long)]
    regulated: bool,
    /// What the guard does with this key's flagged requests: flag, block or off.
    #[arg(long)]
    guard: Option<String>,
    /// How this key's answers are analysed: off, hold_back, stream_first or
    /// buffer_full (default: the route's `[stream] mode`).
    #[arg(long)]
    stream: Option<String>,
    /// The guard scores this key's answer windows (`true`/`false`; default:
    /// the route's `[stream] guard`).
    #[arg(long)]
    stream_guard: Option<bool>,
}

impl CreateArgs {
    fn changes(&self) -> KeyChanges {
        let expires_at = self.expires_in.map(|s| {
            let ms = i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
            Some(crate::util::unix_now_ms().saturating_add(ms))
        });
        KeyChanges {
            name: self.name.clone().map(Some),
            tenant: self.tenant.clone(),
            team: self.team.clone().map(Some),
            user: self.user.clone().map(Some),
            roles: (!self.roles.is_empty()).then(|| self.roles.clone()),
            allowed_models: (!self.allowed_models.is_empty())
                .then(|| Some(self.allowed_models.clone())),
            rpm: self.rpm.map(Some),
            tpm: self.tpm.map(Some),
            max_parallel: self.max_parallel.map(Some),
            expires_at,
            blocked: None,
            sensitive: self.sensitive.then_some(true),
            regulated: self.regulated.then_some(true),
            guard: self.guard.clone().map(Some),
            stream: self.stream.clone().map(Some),
            stream_guard: self.stream_guard.map(Some),
        }
    }
}

pub(super) fn run(command: KeysCommand) -> ExitCode {
    let config_path = match &command {
        KeysCommand::Create(args) => &args.config,
        KeysCommand::List { config, .. }
        | KeysCommand::Rotate { config, .. }
        | KeysCommand::Revoke { config, .. } => config,
    };
    let config = match Config::load(
        config_path.config.as_deref(),
        &Overrides::default(),
        &process_env,
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(&config, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sluice: keys: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(config: &Config, command: KeysCommand) -> Result<(), String> {
    let store = crate::store::Store::open(&config.store)
        .await
        .map_err(|e| e.to_string())?;
    let keys = crate::keys::open_configured(config, store.clone())
        .await
        .map_err(|e| e.to_string())?;
    // Key changes made here are audited like the admin API's, into the
    // same sinks, so the log holds every change whoever made it.
    let (log, writers) =
        crate::audit::AuditLog::start(&config.audit, &store).map_err(|e| e.to_string())?;
    let audit = Audit::new(log);
    let result = change(&keys, &audit, command).await;
    writers.finish(Duration::from_secs(10)).await;
    result
}

/// Who ran the command, for the audit log: the operating-system user.
fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

fn audit_change(audit: &Audit, action: &'static str, target: &str, detail: &str) {
    let event = AuditEvent::new(action, cli_actor(), AuditOutcome::Success)
        .target(target)
        .detail(detail);
    if audit.record(event).is_err() {
        eprintln!("sluice: warning: the audit log could not record this change");
    }
}

async fn change(keys: &VirtualKeys, audit: &Audit, command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Create(args) => {
            let (new, record) = keys
                .create(&args.changes())
                .await
                .map_err(|e| e.to_string())?;
            audit_change(audit, actions::KEY_CREATED, &record.prefix, "created");
            println!("{}", new.key);
            eprintln!(
                "sluice: created key {} (tenant {}{}); it is shown this once",
                record.prefix,
                record.tenant,
                record
                    .team
                    .map(|t| format!(", team {t}"))
                    .unwrap_or_default()
            );
        }
        KeysCommand::List { team, .. } => {
            let list = keys
                .list(team.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            print_table(&list);
        }
        KeysCommand::Rotate {
            prefix,
            grace_seconds,
            ..
        } => {
            let (new, record, _) = keys
                .rotate(&prefix, Duration::from_secs(grace_seconds))
                .await
                .map_err(|e| e.to_string())?;
            audit_change(
                audit,
                actions::KEY_ROTATED,
                &prefix,
                &format!("rotated to {}", record.prefix),
            );
            println!("{}", new.key);
            eprintln!(
                "sluice: {prefix} rotated to {}; the old key works for {grace_seconds} s more",
                record.prefix
            );
        }
        KeysCommand::Revoke { prefix, .. } => {
            keys.revoke(&prefix).await.map_err(|e| e.to_string())?;
            audit_change(audit, actions::KEY_REVOKED, &prefix, "revoked");
            eprintln!("sluice: {prefix} revoked");
        }
    }
    Ok(())
}

fn print_table(keys: &[KeyRecord]) {
    let now = crate::util::unix_now_ms();
    println!(
        "{:10}  {:12}  {:12}  {:20}  {:8}  NAME",
        "PREFIX", "TENANT", "TEAM", "ROLES", "STATE"
    );
    for k in keys {
        let state = if k.blocked {
            "blocked"
        } else if k.revoke_at.is_some_and(|at| at <= now) {
            "revoked"
        } else if k.expires_at.is_some_and(|at| at <= now) {
            "expired"
        } else if k.revoke_at.is_some() {
            "rotating"
        } else {
            "active"
        };
        let roles: Vec<&str> = k.roles.iter().map(|r| r.as_str()).collect();
        println!(
            "{:10}  {:12}  {:12}  {:20}  {:8}  {}",
            k.prefix,
            k.tenant,
            k.team.as_deref().unwrap_or("-"),
            roles.join(","),
            state,
            k.name.as_deref().unwrap_or("")
        );
    }
}
