//! The orphan guard: a forked process that ends the workers' process groups
//! once this process ends, however it ends.

use std::collections::BTreeMap;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use rustix::process::Pid;

mod record;
mod run;
mod table;

pub(super) use record::Record;

/// The most worker process groups the orphan guard holds at once.
const GUARD_CAPACITY: usize = 16 * 1024;
/// How long the watch waits before it tries again to start a guard.
const RETRY: Duration = Duration::from_secs(1);

/// Our end of the socket to the orphan guard, once started. Its number never
/// changes: a new guard's socket takes the place of a dead one's, so a child
/// forked at any moment holds a socket to a guard.
static SOCKET: OnceLock<OwnedFd> = OnceLock::new();

/// The guard's pid, and the groups of the live workers as the primary knows
/// them (to register them with a new guard).
static STATE: Mutex<State> = Mutex::new(State {
    guard: None,
    live: BTreeMap::new(),
});

struct State {
    guard: Option<Pid>,
    /// Group (the worker's pid) -> its leader's pid in `/proc` and start time.
    live: BTreeMap<i32, (i32, u64)>,
}

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The socket to the orphan guard of this process, started on first use: a
/// process forked (without `exec`) that holds the process groups of the
/// workers alive. When every copy of this end closes, that is when this
/// process ends however it ends (even by SIGKILL), the guard sends SIGTERM to
/// each group it holds whose leader is still the process registered (or
/// reaped since, see [`table::Table::signal_all`]), SIGKILL 500 ms later to
/// what is left and to every process in the workers' cgroups (where they run
/// in cgroups: [`WorkerCgroup`](super::WorkerCgroup)), removes those, and
/// exits. Workers register their group themselves before `exec` (see
/// [`prepare_child`](super::child::prepare_child)), and the primary again once
/// spawned ([`register_worker`]); it forgets it once it has reaped the worker
/// and killed what was left of the group ([`forget_group`]), and has the
/// guard drop the registration of a child whose `exec` failed
/// ([`sweep_guard`]).
///
/// The guard is one per process, shared by every primary. It is named
/// `isotropic-cluster-guard (primary PID)` in `ps`. A thread of this process
/// watches it: should it die, the thread reaps it, says so loudly, starts
/// another and registers the live workers' groups with it.
pub(crate) fn orphan_guard() -> io::Result<BorrowedFd<'static>> {
    if let Some(fd) = SOCKET.get() {
        return Ok(fd.as_fd());
    }
    let mut state = state();
    if let Some(fd) = SOCKET.get() {
        return Ok(fd.as_fd());
    }
    let (socket, pid) = start_guard()?;
    state.guard = Some(pid);
    let socket = SOCKET.get_or_init(|| socket);
    if let Err(error) = std::thread::Builder::new()
        .name("cluster-guard-watch".into())
        .spawn(watch)
    {
        tracing::warn!(%error, "cannot watch the orphan guard: it is not restarted should it die");
    }
    Ok(socket.as_fd())
}

/// Tells the orphan guard (again: the child did before `exec`) of worker
/// `pid`'s group, just spawned, and keeps it to tell a new guard.
pub(crate) fn register_worker(pid: u32) {
    let (Ok(group), mut state) = (i32::try_from(pid), state()) else {
        return;
    };
    // Not reaped yet: the pid is still this worker's.
    let seen = super::procfs::seen_pid(pid).and_then(|seen| i32::try_from(seen).ok());
    let start = seen.and_then(super::procfs::start_time).unwrap_or(0);
    let seen = seen.unwrap_or(0);
    state.live.insert(group, (seen, start));
    tell(Record::Register { group, seen, start }, false);
}

/// Tells the orphan guard that process group `group` is gone.
pub(crate) fn forget_group(group: u32) {
    let (Ok(group), mut state) = (i32::try_from(group), state()) else {
        return;
    };
    state.live.remove(&group);
    tell(Record::Forget { group }, false);
}

/// Has the orphan guard drop the groups whose leader is no longer the process
/// registered: after a failed spawn, whose child registered its group before
/// its `exec` failed (the primary never learns its pid).
pub(crate) fn sweep_guard() {
    tell(Record::Sweep, false);
}

/// Sends `record` to the guard; without waiting unless `wait` (the guard
/// reads all the time: its socket is full only for a moment).
fn tell(record: Record, wait: bool) {
    if let Some(guard) = SOCKET.get() {
        let mut flags = rustix::net::SendFlags::NOSIGNAL;
        if !wait {
            flags |= rustix::net::SendFlags::DONTWAIT;
        }
        if let Err(error) = rustix::net::send(guard, &record.encode(), flags) {
            tracing::warn!(%error, "cannot reach the orphan guard");
        }
    }
}

/// The watch: the guard never writes, so its socket reads an end of file
/// only once the guard is gone (or a reset, when it died with records
/// unread). Then the guard is reaped, another started in its place, and told
/// of every live worker's group.
fn watch() {
    let Some(socket) = SOCKET.get() else { return };
    loop {
        let mut byte = [0_u8; 1];
        match rustix::net::recv(socket, &mut byte[..], rustix::net::RecvFlags::empty()) {
            Ok((0, _)) | Err(rustix::io::Errno::CONNRESET) => {}
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(error) => {
                tracing::error!(%error, "cannot watch the orphan guard any longer");
                return;
            }
        }
        let mut state = state();
        if let Some(pid) = state.guard.take() {
            tracing::error!(
                pid = pid.as_raw_pid(),
                "the orphan guard died: starting another (workers would outlive this process without it)"
            );
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
        }
        match start_guard() {
            Ok((new, pid)) => {
                // SAFETY: the number is `SOCKET`'s, open for the process's
                // lifetime; `dup3` puts the new socket in its place at once
                // (closing the old one), and `ManuallyDrop` never closes it.
                let mut fixed =
                    ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(socket.as_raw_fd()) });
                if let Err(error) =
                    rustix::io::dup3(&new, &mut fixed, rustix::io::DupFlags::CLOEXEC)
                {
                    tracing::error!(%error, "cannot put a new orphan guard in place");
                    return;
                }
                state.guard = Some(pid);
                for (&group, &(seen, start)) in &state.live {
                    tell(Record::Register { group, seen, start }, true);
                }
                // Said once it holds the groups: from now on, this process
                // may die and its workers go.
                tracing::info!(
                    pid = pid.as_raw_pid(),
                    groups = state.live.len(),
                    "a new orphan guard runs"
                );
            }
            Err(error) => {
                tracing::error!(%error, "cannot start another orphan guard: trying again");
                drop(state);
                std::thread::sleep(RETRY);
            }
        }
    }
}

/// Starts a guard; returns our end of its socket, and its pid.
fn start_guard() -> io::Result<(OwnedFd, Pid)> {
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
    // Zeroed, they are mapped only as the guard uses them.
    let mut groups = vec![0_i32; GUARD_CAPACITY];
    let mut seens = vec![0_i32; GUARD_CAPACITY];
    let mut starts = vec![0_u64; GUARD_CAPACITY];
    let cgroup = super::cgroup::base();
    let title = format!("isotropic-cluster-guard (primary {})", std::process::id());
    // SAFETY: in the child, only async-signal-safe code runs (`guard_main`
    // makes raw system calls on memory allocated before the fork, and never
    // returns); the parent just goes on.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        // SAFETY: this is the freshly forked child, which owns nothing else;
        // the base cgroup's fds are open in it (they never close).
        0 => unsafe {
            run::guard_main(
                theirs.as_raw_fd(),
                cgroup,
                title.as_bytes(),
                &mut groups,
                &mut seens,
                &mut starts,
            )
        },
        pid => {
            tracing::debug!(pid, "orphan guard started");
            let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::other("fork gave pid 0"))?;
            Ok((ours, pid))
        }
    }
}
