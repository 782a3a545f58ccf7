//! The orphan guard: a forked process that ends the workers' process groups
//! once this process ends, however it ends.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// How long the orphan guard waits between SIGTERM and SIGKILL.
const ORPHAN_GRACE: Duration = Duration::from_millis(500);
/// The most worker process groups the orphan guard holds at once.
const GUARD_CAPACITY: usize = 16 * 1024;

/// The orphan guard's end of its socket, once started.
static GUARD: OnceLock<OwnedFd> = OnceLock::new();

/// The socket to the orphan guard of this process, started on first use: a
/// process forked (without `exec`) that holds the process groups of the
/// workers alive. When every copy of this end closes, that is when this
/// process ends however it ends (even by SIGKILL), the guard sends SIGTERM to
/// each group it holds, SIGKILL after [`ORPHAN_GRACE`] to what is left, and
/// exits. Workers register their group themselves before `exec` (see
/// [`prepare_child`](super::prepare_child)); the primary forgets it once it
/// has reaped the worker and killed what was left of the group ([`forget_group`]).
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
    if let (Some(guard), Ok(group)) = (GUARD.get(), i32::try_from(group)) {
        let record = (-group).to_ne_bytes();
        let flags = rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT;
        if let Err(error) = rustix::net::send(guard, &record, flags) {
            tracing::warn!(%error, "cannot reach the orphan guard");
        }
    }
}

fn start_guard() -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    // Packets keep the 4-byte records whole; the guard reads an end of file
    // once every copy of our end is closed.
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // Allocated before the fork: the guard must not allocate.
    let mut groups = vec![0_i32; GUARD_CAPACITY];
    // SAFETY: in the child, only async-signal-safe code runs (`guard_main`
    // makes raw system calls on memory allocated before the fork, and never
    // returns); the parent just goes on.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        // SAFETY: this is the freshly forked child, which owns nothing else.
        0 => unsafe { guard_main(theirs.as_raw_fd(), &mut groups) },
        pid => {
            tracing::debug!(pid, "orphan guard started");
            Ok(ours)
        }
    }
}

/// The orphan guard: holds the groups it is told of until its socket ends,
/// then ends them.
///
/// # Safety
///
/// Only in a freshly forked child: it closes every fd but `socket`.
unsafe fn guard_main(socket: RawFd, groups: &mut [i32]) -> ! {
    // SAFETY: raw, async-signal-safe system calls on plain values; `groups`
    // was allocated before the fork and is only indexed.
    unsafe {
        // Out of the primary's session and process group: its terminal and
        // whoever signals its group do not reach the guard.
        libc::setsid();
        libc::prctl(libc::PR_SET_NAME, c"cluster-guard".as_ptr());
        // No fd but the socket: no port, pipe or terminal stays open.
        let socket_number = socket.cast_unsigned();
        if socket_number > 0 {
            libc::syscall(libc::SYS_close_range, 0_u32, socket_number - 1, 0_u32);
        }
        libc::syscall(libc::SYS_close_range, socket_number + 1, u32::MAX, 0_u32);
        for signal in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(signal, libc::SIG_IGN);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut());
        let mut record = [0_u8; 4];
        loop {
            let read = libc::recv(socket, record.as_mut_ptr().cast(), record.len(), 0);
            if read == 0 || (read < 0 && *libc::__errno_location() != libc::EINTR) {
                break;
            }
            match i32::from_ne_bytes(record) {
                _ if read != 4 => {}
                group if group > 0 => {
                    if let Some(free) = groups.iter_mut().find(|g| **g == 0) {
                        *free = group;
                    }
                }
                group => {
                    if let Some(held) = groups.iter_mut().find(|g| **g == -group) {
                        *held = 0;
                    }
                }
            }
        }
        // A group that cannot be signalled is gone (or not ours).
        let signal_all = |groups: &mut [i32], signal| {
            for group in groups.iter_mut().filter(|g| **g > 0) {
                if libc::kill(-*group, signal) != 0 {
                    *group = 0;
                }
            }
        };
        signal_all(groups, libc::SIGTERM);
        let step = Duration::from_millis(10);
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: step.as_nanos().try_into().unwrap_or(0),
        };
        for _ in 0..ORPHAN_GRACE.as_millis() / step.as_millis() {
            if groups.iter().all(|g| *g == 0) {
                break;
            }
            libc::nanosleep(&raw const pause, std::ptr::null_mut());
            signal_all(groups, 0);
        }
        signal_all(groups, libc::SIGKILL);
        libc::_exit(0)
    }
}
