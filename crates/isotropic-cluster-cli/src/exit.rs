//! The exit codes of the CLI.

/// How `isotropic-cluster` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ExitCode {
    /// Every worker exited when asked.
    Clean = 0,
    /// The workers were killed (a second Ctrl-C).
    Forced = 1,
    /// Bad flags, or flags that do not go together (clap's code for a usage
    /// error): nothing was started.
    Usage = 2,
    /// Workers restarted more than `--max-restarts` allows.
    GaveUp = 3,
    /// No worker was left to replace (`--restart on-failure|never`), and one
    /// of them had failed.
    WorkersFailed = 4,
    /// A new primary started by an upgrade (SIGUSR2) cannot find the
    /// sockets of its `--listen` addresses among those the old primary
    /// handed over (they changed), or they are not there: the old primary
    /// keeps serving.
    CannotAdopt = 5,
    /// A new primary started by an upgrade gave up: a worker exited before
    /// its pool was ready (the old primary keeps serving).
    UpgradeFailed = 6,
    /// The command or the primary cannot start (a command not found, an
    /// address in use, no runtime).
    CannotStart = 7,
    /// The `--listen` shim could not become the command (the shell's code
    /// for a command that cannot run).
    ExecFailed = 127,
}

/// The exit codes, as `--help` lists them (a test checks them against
/// [`ExitCode`]).
pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0    every worker exited when asked
  1    the workers were killed (a second Ctrl-C)
  2    usage error: bad flags or flags that do not go together (nothing started)
  3    gave up: more restarts than --max-restarts allows
  4    no worker left to replace (--restart on-failure|never) and one had failed
  5    an upgrade's new primary cannot adopt the old one's sockets
  6    an upgrade's new primary gave up: its workers did not all get ready
  7    cannot start: the command or the primary (not found, address in use…)
  127  a worker's command cannot run (--listen)";

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        Self::from(code as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_lists_every_exit_code() {
        let all = [
            ExitCode::Clean,
            ExitCode::Forced,
            ExitCode::Usage,
            ExitCode::GaveUp,
            ExitCode::WorkersFailed,
            ExitCode::CannotAdopt,
            ExitCode::UpgradeFailed,
            ExitCode::CannotStart,
            ExitCode::ExecFailed,
        ];
        let listed: Vec<u8> = EXIT_CODES
            .lines()
            .skip(1)
            .map(|line| {
                let code = line.split_whitespace().next().expect("a code");
                code.parse().expect("a number")
            })
            .collect();
        assert_eq!(listed, all.map(|code| code as u8));
        // (And clap's own code for a usage error is ours.)
        let error = clap::Command::new("t").try_get_matches_from(["t", "x"]);
        assert_eq!(
            error.expect_err("usage").exit_code(),
            ExitCode::Usage as i32
        );
    }
}
