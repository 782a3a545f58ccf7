//! Adopting and reaping orphans, for a primary that is a container's PID 1
//! or that keeps its workers' lost descendants in view.

use std::io;

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::AbortHandle;

use crate::sys;

/// Reaps the orphans this process inherits, as `tini` does for a container,
/// for as long as it is kept (dropping it stops reaping).
///
/// A worker's double-forked daemon, or the children of a worker that died,
/// become orphans; their new parent is the nearest *subreaper* above them, or
/// PID 1. Either must reap them or they stay zombies. The workers of every
/// primary of this process are left alone: tokio reaps them, and their exits
/// are reported as always.
///
/// Use it in a process that starts no children other than through its
/// primaries (as the CLI): any other child of this process would be reaped
/// before its owner could wait for it.
///
/// ```no_run
/// use isotropic_cluster::primary::OrphanReaper;
///
/// # async fn run() -> std::io::Result<()> {
/// let _reaper = OrphanReaper::start()?;
/// // … start a primary: orphaned grandchildren are reaped meanwhile.
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct OrphanReaper {
    task: AbortHandle,
}

impl OrphanReaper {
    /// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`; PID 1
    /// is one already), then reaps each orphan as soon as it exits.
    ///
    /// # Errors
    ///
    /// This process cannot become a subreaper or cannot watch `SIGCHLD`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start() -> io::Result<Self> {
        sys::become_subreaper()?;
        let mut exits = signal(SignalKind::child())?;
        let task = tokio::spawn(async move {
            loop {
                let reaped = sys::reap_orphans();
                if reaped > 0 {
                    tracing::debug!(reaped, "orphans reaped");
                }
                if exits.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(Self {
            task: task.abort_handle(),
        })
    }
}

impl Drop for OrphanReaper {
    fn drop(&mut self) {
        self.task.abort();
    }
}
