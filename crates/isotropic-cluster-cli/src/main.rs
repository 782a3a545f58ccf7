//! `isotropic-cluster run [OPTIONS] -- COMMAND [ARGS…]`: runs COMMAND as a
//! supervised pool of processes.
#![forbid(unsafe_code)]

mod run;

use clap::{Parser, Subcommand};

/// Local process clusters: run any program as a supervised pool.
#[derive(Debug, Parser)]
#[command(name = "isotropic-cluster", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs COMMAND as a pool of workers: replaces the ones that exit (with
    /// backoff when they keep dying), prefixes their output with their id,
    /// and shuts them down gracefully on SIGINT/SIGTERM (a second signal
    /// kills them).
    Run(run::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("isotropic-cluster: cannot start a runtime: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Run(args) => runtime.block_on(run::run(args)),
    }
}
