//! `isotropic-cluster run [OPTIONS] [--] COMMAND [ARGS…]`: runs COMMAND as
//! a supervised pool of processes.
#![forbid(unsafe_code)]

mod args;
mod exit;
mod health;
mod listen;
mod metrics;
mod output;
mod render;
mod report;
mod supervise;
mod upgrade;

use clap::{CommandFactory as _, Parser as _};

use args::{Cli, Command, Plan};
use exit::ExitCode;

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Run(args) => match args.plan() {
            // (Recorded before any thread starts: see upgrade.rs.)
            Ok(plan) => run(plan, upgrade::Origin::record()),
            // A usage error, printed as clap's own.
            Err(error) => {
                let mut cli = Cli::command();
                cli.build();
                let run = cli.find_subcommand_mut("run").expect("the run command");
                let _ = run
                    .error(clap::error::ErrorKind::ArgumentConflict, error)
                    .print();
                ExitCode::Usage
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
            eprintln!("isotropic-cluster: cannot start the primary: no runtime: {error}");
            ExitCode::CannotStart
        }
    }
}
