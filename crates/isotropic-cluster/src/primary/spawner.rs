//! The seam between the lifecycle and the operating system: starting a
//! worker. [`ProcessSpawner`](super::process::ProcessSpawner) starts real
//! processes; the lifecycle's unit tests use a fake that starts none.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::WorkerHandle;
use super::input::Input;
use super::metrics::Latency;
use super::resources::Usage;
use super::rollout::Release;
use crate::error::Error;
use crate::sys;
use crate::{Signal, WorkerId};

/// Starts workers.
pub(crate) trait Spawn: Send + Sync + fmt::Debug {
    /// Starts worker `start`; what happens to it is reported to `inputs`,
    /// in order (frames, output, the channel's end, then its exit).
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] when it cannot be started.
    fn spawn(&self, start: Start<'_>, inputs: mpsc::Sender<Input>) -> Result<Spawned, Error>;

    /// Whether process `pid` holds a listening socket (readiness of workers
    /// without a channel, when they count as ready once listening).
    fn is_listening(&self, pid: u32) -> bool {
        sys::holds_listening_socket(pid)
    }

    /// What worker `pid` uses now (its CPU time and memory, see
    /// `resources.rs`), `cgroup` being its cgroup's directory if it runs in
    /// one; `None` when it cannot be read.
    fn usage(&self, pid: u32, cgroup: Option<&Path>) -> Option<Usage> {
        Usage::read(pid, cgroup)
    }
}

/// A worker to start: its id, its slot, the release it runs, and where
/// its requests' latencies go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Start<'a> {
    pub(crate) id: WorkerId,
    pub(crate) slot: u32,
    pub(crate) release: &'a Release,
    pub(crate) requests: &'a Arc<Latency>,
}

/// A started worker: its handle, and where to send it signals (sent only
/// while it has not been reaped, to it and its process group).
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) worker: WorkerHandle,
    pub(crate) signals: mpsc::UnboundedSender<Signal>,
    /// The directory of its cgroup, if it runs in one of its own.
    pub(crate) cgroup: Option<PathBuf>,
}
