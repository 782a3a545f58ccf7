//! `isotropic-cluster run [OPTIONS] -- COMMAND [ARGS…]`: runs COMMAND as a
//! supervised pool of processes.
#![forbid(unsafe_code)]

mod args;
mod config;
mod exit;
mod health;
mod listen;
mod output;
mod pool;
mod report;
mod supervise;
mod upgrade;

use args::{Cli, Command, Setup};
use exit::ExitCode;

fn main() -> std::process::ExitCode {
    match Cli::parse_line().command {
        Command::Run(args) => match args.setup() {
            // (Recorded before any thread starts: see upgrade.rs.)
            Ok(setup) => run(setup, upgrade::Origin::record()),
            Err(error) => {
                // (A TOML error ends with a newline of its own.)
                eprintln!("isotropic-cluster: {}", format!("{error:#}").trim_end());
                ExitCode::CannotStart
            }
        },
        Command::ExecWithSockets { names, command } => listen::exec_with_sockets(&names, &command),
    }
    .into()
}

/// Runs `setup` on a single-threaded runtime.
fn run(setup: Setup, origin: upgrade::Origin) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(supervise::run(setup, origin)),
        Err(error) => {
            eprintln!("isotropic-cluster: cannot start a runtime: {error}");
            ExitCode::CannotStart
        }
    }
}
