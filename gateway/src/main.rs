//! The `sluice` binary; everything lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Logs go to stderr so that commands such as `check-config` print only
    // their result on stdout. `SLUICE_LOG` (or `RUST_LOG`) sets the filter.
    let filter = EnvFilter::try_from_env("SLUICE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A failed write would be reported with `eprint!`, which panics when
        // stderr is closed (a supervisor that died): every log line would
        // then panic the task or thread that wrote it. Lose the line instead.
        .log_internal_errors(false)
        .init();
    sluice_gateway::cli::run(sluice_gateway::cli::Cli::parse())
}
