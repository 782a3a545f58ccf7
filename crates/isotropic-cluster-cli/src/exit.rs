//! The exit codes of the CLI.

/// How `isotropic-cluster` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ExitCode {
    /// Every worker exited when asked.
    Clean = 0,
    /// The workers were killed (a second Ctrl-C).
    Forced = 1,
    /// Bad flags, or the command or the primary cannot start.
    CannotStart = 2,
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
    /// The `--listen` shim could not become the command (the shell's code
    /// for a command that cannot run).
    ExecFailed = 127,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        Self::from(code as u8)
    }
}
