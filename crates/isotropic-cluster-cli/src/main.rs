//! `isotropic-cluster run [OPTIONS] -- COMMAND [ARGS…]`: runs COMMAND as a
//! supervised pool of processes.
#![forbid(unsafe_code)]

mod args;
mod exit;
mod health;
mod listen;
mod metrics;
mod output;
mod report;
mod supervise;
mod upgrade;

use clap::Parser as _;

use args::{Cli, Command, Plan};
use exit::ExitCode;

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Run(args) => match args.plan() {
            // (Recorded before any thread starts: see upgrade.rs.)
            Ok(plan) => run(plan, upgrade::Origin::record()),
            Err(error) => {
                eprintln!("isotropic-cluster: {error}");
                ExitCode::CannotStart
            }
        },
        Command::ExecWithSockets { names, command } => listen::exec_with_sockets(&names, &command),
    }
    .into()
}

/// Runs `plan` on a single-threaded runtime.
fn run(plan: Plan, origin: upgrade::Origin) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(supervise::run(plan, origin)),
        Err(error) => {
            eprintln!("isotropic-cluster: cannot start a runtime: {error}");
            ExitCode::CannotStart
        }
    }
}
