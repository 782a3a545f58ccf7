//! Which role this process has, read once from the environment markers that a
//! primary sets for its workers.

use std::os::fd::{OwnedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::WorkerId;
use crate::message::Codec;
use crate::sys;

/// Names the fd of the worker's end of its channel.
pub(crate) const CHANNEL_FD: &str = "ISOTROPIC_CLUSTER_CHANNEL_FD";
/// The worker's slot (see `WorkerHandle::slot`), as decimal; left in the
/// worker's environment for the app.
pub(crate) const SLOT: &str = "ISOTROPIC_CLUSTER_SLOT";
/// The generation of the program the worker runs (see
/// `WorkerHandle::generation`), as decimal; left for the app.
pub(crate) const GENERATION: &str = "ISOTROPIC_CLUSTER_GENERATION";
/// The framed channel's message codec, by name (`Codec::name`).
pub(crate) const CODEC: &str = "ISOTROPIC_CLUSTER_CODEC";
/// The worker's id, as decimal.
pub(crate) const WORKER_ID: &str = "ISOTROPIC_CLUSTER_WORKER_ID";
/// The pid of the primary that started the worker: a process whose parent is
/// not that primary (a worker's own child) is not a worker.
pub(crate) const PRIMARY_PID: &str = "ISOTROPIC_CLUSTER_PRIMARY_PID";

/// What the markers said, when they named this process a worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerMarkers {
    pub(crate) id: WorkerId,
    pub(crate) fd: RawFd,
    /// The message codec the primary named (JSON when it named none, or
    /// one this library does not speak: the primary's hello then says
    /// which, and the channel fails with `ProtocolError::CodecMismatch`).
    pub(crate) codec: Codec,
}

static ROLE: OnceLock<Option<WorkerMarkers>> = OnceLock::new();
static CHANNEL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Reads the markers (once). When this process is a worker and still has a
/// single thread, the markers are also removed from the environment so that the
/// worker's own children do not inherit them; either way a child could not
/// pass for a worker, because its parent is not the primary.
pub(crate) fn markers() -> Option<WorkerMarkers> {
    *ROLE.get_or_init(|| {
        let read = |key: &str| std::env::var(key).ok()?.parse::<u64>().ok();
        let id = read(WORKER_ID)?;
        let fd = read(CHANNEL_FD)?;
        let primary = read(PRIMARY_PID)?;
        let codec = std::env::var(CODEC).ok();
        if sys::parent_pid().map(u64::from) != Some(primary) {
            return None;
        }
        sys::remove_env_if_single_threaded(&[CHANNEL_FD, WORKER_ID, PRIMARY_PID, CODEC]);
        Some(WorkerMarkers {
            id: WorkerId(id),
            fd: RawFd::try_from(fd).ok()?,
            codec: codec
                .as_deref()
                .and_then(Codec::from_name)
                .unwrap_or_default(),
        })
    })
}

/// Takes the inherited channel; only the first call in a process succeeds.
pub(crate) fn take_channel(markers: WorkerMarkers) -> std::io::Result<OwnedFd> {
    if CHANNEL_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the worker channel was already taken by another ClusterWorker",
        ));
    }
    sys::adopt_inherited_socket(markers.fd)
}

/// Whether this process is a worker started by an isotropic-cluster primary.
///
/// Call it at the top of `main`, before starting a runtime: the answer is read
/// once and never changes, and while the process has a single thread the role
/// markers are also removed from the environment, so children of a worker do
/// not see them.
///
/// # Examples
///
/// ```
/// if isotropic_cluster::is_worker() {
///     // run the worker side
/// } else {
///     // run the primary side
/// }
/// ```
pub fn is_worker() -> bool {
    markers().is_some()
}

/// Whether this process is not a worker: the opposite of [`is_worker`].
pub fn is_primary() -> bool {
    !is_worker()
}
