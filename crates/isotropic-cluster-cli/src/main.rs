//! `isotropic-cluster run [OPTIONS] [--] COMMAND [ARGS…]`: runs COMMAND as
//! a supervised pool of processes.
#![forbid(unsafe_code)]

mod args;
mod config;
mod control;
mod exit;
mod health;
mod listen;
mod metrics;
mod output;
mod pool;
mod render;
mod report;
mod service;
mod supervise;
mod sys;
mod upgrade;

use clap::CommandFactory as _;

use args::{Cli, Command, Setup};
use exit::ExitCode;

fn main() -> std::process::ExitCode {
    match Cli::parse_line().command {
        Command::Run(args) => match args.setup() {
            // (Recorded before any thread starts: see upgrade.rs.)
            Ok(setup) => run(setup, upgrade::Origin::record()).into(),
            // A usage error (flags, or --config), printed as clap's own.
            Err(error) => {
                // (A TOML error ends with a newline of its own.)
                let error = format!("{error:#}").trim_end().to_owned();
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

/// Runs `setup` on a single-threaded runtime.
fn run(setup: Setup, origin: upgrade::Origin) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(supervise::run(setup, origin)),
        Err(error) => {
            eprintln!("isotropic-cluster: cannot start the primary: no runtime: {error}");
            ExitCode::CannotStart
        }
    }
}
