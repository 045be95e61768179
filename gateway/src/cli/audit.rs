//! `sluice audit verify`: walks the store's audit hash chain and names the
//! first record that was edited or deleted; exits non-zero then.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::audit::chain::{self, Verdict};
use crate::config::{process_env, Config, Overrides};

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Check the audit log's hash chain in the store (`[store]` of the
    /// config): exit 0 when intact, 1 when a record was edited or deleted.
    Verify {
        /// The TOML config file (for `[store]`).
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
}

pub(super) fn run(command: AuditCommand) -> ExitCode {
    let AuditCommand::Verify { config } = command;
    let config = match Config::load(config.as_deref(), &Overrides::default(), &process_env) {
        Ok(c) => c,
        Err(e) => return super::config_error(&e),
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
    let verdict = runtime.block_on(async {
        let store = crate::store::Store::open(&config.store).await?;
        chain::verify(&store).await
    });
    match verdict {
        Ok(verdict @ Verdict::Intact { .. }) => {
            println!("{verdict}");
            ExitCode::SUCCESS
        }
        Ok(verdict @ Verdict::Broken { .. }) => {
            println!("{verdict}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sluice: audit verify: {e}");
            ExitCode::from(3)
        }
    }
}
