//! The orphan guard: a forked process that ends the workers' process groups
//! once this process ends, however it ends.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, OnceLock, PoisonError};

mod record;
mod run;
mod table;

pub(super) use record::Record;

/// The most worker process groups the orphan guard holds at once.
const GUARD_CAPACITY: usize = 16 * 1024;

/// The orphan guard's end of its socket, once started.
static GUARD: OnceLock<OwnedFd> = OnceLock::new();

/// The socket to the orphan guard of this process, started on first use: a
/// process forked (without `exec`) that holds the process groups of the
/// workers alive. When every copy of this end closes, that is when this
/// process ends however it ends (even by SIGKILL), the guard sends SIGTERM to
/// each group it holds whose leader is still the process registered (or
/// reaped since, see [`table::Table::signal_all`]), SIGKILL 500 ms later to
/// what is left and to every process in the workers' cgroups (where they run
/// in cgroups: [`WorkerCgroup`](super::WorkerCgroup)), removes those, and
/// exits. Workers register their group themselves before
/// `exec` (see [`prepare_child`](super::prepare_child)); the primary forgets
/// it once it has reaped the worker and killed what was left of the group
/// ([`forget_group`]), and has the guard drop the registration of a child
/// whose `exec` failed ([`sweep_guard`]).
///
/// The guard is one per process, shared by every primary, and never exits
/// while this process runs.
pub(crate) fn orphan_guard() -> io::Result<BorrowedFd<'static>> {
    static STARTING: Mutex<()> = Mutex::new(());
    if let Some(fd) = GUARD.get() {
        return Ok(fd.as_fd());
    }
    let _starting = STARTING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(fd) = GUARD.get() {
        return Ok(fd.as_fd());
    }
    let fd = start_guard()?;
    Ok(GUARD.get_or_init(|| fd).as_fd())
}

/// Tells the orphan guard that process group `group` is gone.
pub(crate) fn forget_group(group: u32) {
    if let Ok(group) = i32::try_from(group) {
        tell(Record::Forget { group });
    }
}

/// Has the orphan guard drop the groups whose leader is no longer the process
/// registered: after a failed spawn, whose child registered its group before
/// its `exec` failed (the primary never learns its pid).
pub(crate) fn sweep_guard() {
    tell(Record::Sweep);
}

fn tell(record: Record) {
    if let Some(guard) = GUARD.get() {
        let flags = rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT;
        if let Err(error) = rustix::net::send(guard, &record.encode(), flags) {
            tracing::warn!(%error, "cannot reach the orphan guard");
        }
    }
}

fn start_guard() -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    // Packets keep the records whole; the guard reads an end of file once
    // every copy of our end is closed.
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // Allocated before the fork: the guard must not allocate.
    let mut slots = vec![table::Slot::default(); GUARD_CAPACITY];
    let cgroup = super::cgroup::base();
    // SAFETY: in the child, only async-signal-safe code runs (`guard_main`
    // makes raw system calls on memory allocated before the fork, and never
    // returns); the parent just goes on.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        // SAFETY: this is the freshly forked child, which owns nothing else;
        // the base cgroup's fds are open in it (they never close).
        0 => unsafe { run::guard_main(theirs.as_raw_fd(), cgroup, &mut slots) },
        pid => {
            tracing::debug!(pid, "orphan guard started");
            Ok(ours)
        }
    }
}
