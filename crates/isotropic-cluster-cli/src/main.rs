//! `isotropic-cluster run [OPTIONS] [--] COMMAND [ARGS…]`: runs COMMAND as
//! a supervised pool of processes.
#![forbid(unsafe_code)]

mod args;
mod control;
mod exit;
mod health;
mod listen;
mod metrics;
mod output;
mod render;
mod report;
mod service;
mod supervise;
mod sys;
mod upgrade;

use clap::{CommandFactory as _, Parser as _};

use args::{Cli, Command, Plan};
use exit::ExitCode;

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Run(args) => match args.plan() {
            // (Recorded before any thread starts: see upgrade.rs.)
            Ok(plan) => run(plan, upgrade::Origin::record()).into(),
            // A usage error, printed as clap's own.
            Err(error) => {
                let mut cli = Cli::command();
                cli.build();
                let run = cli.find_subcommand_mut("run").expect("the run command");
                let _ = run
                    .error(clap::error::ErrorKind::ArgumentConflict, error)
                    .print();
                ExitCode::Usage.into()
            }
        },
        Command::ExecWithSockets { names, command } => {
            listen::exec_with_sockets(&names, &command).into()
        }
        Command::Status { json, control } => talk(control::status(&control.path(), json)),
        Command::Scale { workers, pool } => talk(control::scale(
            &pool.control.path(),
            usize::from(workers),
            pool.pool,
        )),
        Command::Reload { pool } => talk(control::reload(&pool.control.path(), pool.pool)),
        Command::Stop { control } => talk(control::stop(&control.path())),
        Command::Logs {
            follow,
            lines,
            control,
        } => talk(control::logs(&control.path(), lines, follow)),
    }
}

/// How a control command ends: 0, or 1 with its error.
fn talk(done: anyhow::Result<()>) -> std::process::ExitCode {
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("isotropic-cluster: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
