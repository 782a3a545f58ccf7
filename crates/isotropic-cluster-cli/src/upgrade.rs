//! SIGUSR2: the primary upgrades itself without refusing a connection (see
//! `docs/upgrade.md`). The old primary starts the program file it was
//! started from (at the same path: the file a deploy put there), with the
//! same arguments and its `--listen` sockets; the new primary adopts them,
//! starts its workers and, once they are all ready, says so; the old one
//! then tells the service manager the new main pid, drains its workers as on
//! SIGTERM and exits 0. If the new one fails, the old one serves on.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use isotropic_cluster::primary::{ClusterPrimary, WorkerHandle};
use isotropic_cluster::upgrade::{self, Handover, Upgrade, UpgradeError};
use tokio::task::JoinHandle;

use crate::args::Plan;
use crate::exit::ExitCode;
use crate::listen::{CannotAdopt, SocketFiles};
use crate::report::{Report, source_chain};

/// How long a new primary has to be ready without `--ready-timeout`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// What a new primary has on top of `--ready-timeout`: its own start.
const START_TIME: Duration = Duration::from_secs(10);

/// What this process was started as, recorded first thing: its program
/// file's path (later, `/proc/self/exe` names the replaced file as
/// "(deleted)") and arguments; and what an old primary handed it, if one
/// started it.
#[derive(Debug)]
pub(crate) struct Origin {
    exe: std::io::Result<PathBuf>,
    args: Vec<OsString>,
    handover: Option<std::io::Result<Handover>>,
}

impl Origin {
    /// Call it first thing in `main`, before any thread starts.
    pub(crate) fn record() -> Self {
        Self {
            handover: upgrade::handover().transpose(),
            exe: std::env::current_exe(),
            args: std::env::args_os().skip(1).collect(),
        }
    }

    /// What an old primary handed over, if this one is its upgrade (taken
    /// once).
    pub(crate) fn take_handover(&mut self) -> Result<Option<Handover>, CannotAdopt> {
        self.handover.take().transpose().map_err(|error| {
            CannotAdopt(format!(
                "cannot take what the old primary handed over: {error}"
            ))
        })
    }
}

/// The old primary's side: the upgrade under way (its new primary's pid).
#[derive(Debug, Default)]
pub(crate) struct Upgrading(Option<(u32, JoinHandle<Result<u32, UpgradeError>>)>);

impl Upgrading {
    /// SIGUSR2: starts a new primary, unless one is starting already, or
    /// this process is PID 1 or a subreaper.
    pub(crate) fn begin(
        &mut self,
        origin: &Origin,
        plan: &Plan,
        sockets: &SocketFiles,
        report: &Report,
    ) {
        if let Some((pid, _)) = &self.0 {
            let text = format!("an upgrade is under way (new primary pid {pid}): SIGUSR2 ignored");
            return report.line("upgrade", &text);
        }
        if plan.reap_orphans {
            let text = "SIGUSR2 refused: no upgrade as PID 1 or with --subreaper (the exit of \
                        this process would end the container, or leave its orphans unreaped)";
            return report.warn("upgradeFailed", text);
        }
        let exe = match &origin.exe {
            Ok(exe) => exe,
            Err(error) => {
                let text = format!("upgrade failed: the path of this program is unknown: {error}");
                return report.warn("upgradeFailed", &text);
            }
        };
        let timeout = plan
            .ready_timeout
            .map_or(READY_TIMEOUT, |timeout| timeout + START_TIME);
        let upgrade = Upgrade::new(exe)
            .args(&origin.args)
            .ready_timeout(timeout)
            .grace(plan.grace);
        let upgrade = sockets
            .sockets()
            .iter()
            .fold(upgrade, |upgrade, (name, fd)| upgrade.socket(name, fd));
        match upgrade.start() {
            Ok(successor) => {
                let pid = successor.pid();
                let text = format!(
                    "upgrading: started a new primary (pid {pid}) from {}; waiting up to {timeout:?} for its workers",
                    exe.display()
                );
                report.line("upgrade", &text);
                self.0 = Some((pid, tokio::spawn(successor.ready())));
            }
            Err(error) => failed(&error, report),
        }
    }

    pub(crate) fn under_way(&self) -> bool {
        self.0.is_some()
    }

    /// The end of the upgrade under way: the new primary's pid once ready.
    ///
    /// Cancel safe.
    pub(crate) async fn outcome(&mut self) -> Result<u32, UpgradeError> {
        let (_, task) = self.0.as_mut().expect("an upgrade under way");
        let outcome = task
            .await
            .unwrap_or_else(|error| Err(UpgradeError::Start(std::io::Error::other(error))));
        self.0 = None;
        outcome
    }

    /// Reports `outcome`; whether the new primary took over (then this one
    /// drains and exits), after the service manager was told.
    pub(crate) fn took_over(outcome: Result<u32, UpgradeError>, report: &Report) -> bool {
        let pid = match outcome {
            Ok(pid) => pid,
            Err(error) => {
                failed(&error, report);
                return false;
            }
        };
        let text = format!(
            "the new primary (pid {pid}) is ready: this one (pid {}) hands over and shuts down",
            std::process::id()
        );
        report.line("upgradeReady", &text);
        match upgrade::notify_main_pid(pid) {
            Ok(false) => {}
            Ok(true) => {
                let text = format!("told the service manager the new main pid: MAINPID={pid}");
                report.line("upgradeMainPid", &text);
            }
            Err(error) => {
                let text = format!("cannot tell the service manager MAINPID={pid}: {error}");
                report.line("upgradeMainPid", &text);
            }
        }
        true
    }
}

impl Drop for Upgrading {
    /// An upgrade under way when this primary ends (it was shut down): the
    /// new primary is stopped (dropping its successor sends it SIGTERM).
    fn drop(&mut self) {
        if let Some((_, task)) = &self.0 {
            task.abort();
        }
    }
}

/// `upgradeFailed`: why, and that this primary serves on.
fn failed(error: &UpgradeError, report: &Report) {
    let text = format!(
        "upgrade failed: {}; this primary serves on",
        source_chain(error)
    );
    report.warn("upgradeFailed", &text);
}

/// The new primary's side: its first workers, then "ready" to the old one.
#[derive(Debug)]
pub(crate) struct Takeover {
    handover: Option<Handover>,
    ready: JoinHandle<Result<Vec<WorkerHandle>, isotropic_cluster::Error>>,
}

impl Takeover {
    /// Starts `workers` workers on `primary`, for the old primary that
    /// handed `handover` over.
    pub(crate) fn start(primary: &ClusterPrimary, workers: usize, handover: Handover) -> Self {
        let primary = primary.clone();
        Self {
            handover: Some(handover),
            ready: tokio::spawn(async move { primary.fork(workers).ready().await }),
        }
    }

    /// Whether the old primary still waits for word.
    pub(crate) fn waiting(&self) -> bool {
        self.handover.is_some()
    }

    /// Once every first worker is ready, tells the old primary; or, when one
    /// could not start or exited first, gives up: the code to exit with
    /// (after a shutdown).
    ///
    /// Cancel safe.
    pub(crate) async fn settle(&mut self, report: &Report) -> Option<ExitCode> {
        let ready = (&mut self.ready).await;
        let handover = self.handover.take()?;
        let (us, from) = (std::process::id(), handover.from_pid());
        match ready {
            Ok(Ok(workers)) => {
                let told = match handover.ready() {
                    Ok(()) => format!("told the old primary (pid {from})"),
                    Err(error) => format!("the old primary (pid {from}) is gone: {error}"),
                };
                let text = format!(
                    "new primary (pid {us}): its {} workers are ready; {told}",
                    workers.len()
                );
                report.line("upgradeReady", &text);
                None
            }
            Ok(Err(error)) => {
                let text = format!(
                    "new primary (pid {us}): its workers are not all ready ({}): giving up, the old primary (pid {from}) serves on",
                    source_chain(&error)
                );
                report.warn("upgradeFailed", &text);
                Some(ExitCode::UpgradeFailed)
            }
            Err(error) => {
                let text = format!("new primary (pid {us}): {error}");
                report.warn("upgradeFailed", &text);
                Some(ExitCode::UpgradeFailed)
            }
        }
    }
}
