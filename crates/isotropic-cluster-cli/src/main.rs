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
    /// restarts them one at a time on SIGHUP, and shuts them down gracefully
    /// on SIGINT/SIGTERM (a second SIGINT kills them).
    Run(run::Args),
    /// (Internal) How `run --listen` starts each worker: places the passed
    /// sockets at fd 3… with the socket-activation variables, then becomes
    /// COMMAND.
    #[command(name = "__exec-with-sockets", hide = true)]
    ExecWithSockets {
        /// LISTEN_FDNAMES.
        names: String,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Run(args) => {
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
            runtime.block_on(run::run(args))
        }
        Command::ExecWithSockets { names, command } => {
            // Still a single thread here: place the sockets and exec.
            let (program, args) = command.split_first().expect("clap requires a command");
            let error =
                isotropic_cluster::socket_activation::exec_with_listen_fds(&names, program, args);
            eprintln!(
                "isotropic-cluster: cannot start {}: {error}",
                program.to_string_lossy()
            );
            std::process::ExitCode::from(127)
        }
    }
}
