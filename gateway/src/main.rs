//! The `sluice` binary; everything lives in the library.

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Logs go to stderr so that commands such as `check-config` print only
    // their result on stdout. `SLUICE_LOG` (or `RUST_LOG`) sets the filter,
    // `SLUICE_LOG_FORMAT` (or `[telemetry] log_format`) text or JSON.
    sluice_gateway::telemetry::logs::init();
    sluice_gateway::cli::run(sluice_gateway::cli::Cli::parse())
}
