//! What a worker does between `fork` and `exec`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use rustix::io::FdFlags;

use super::cgroup::WorkerCgroup;
use super::guard::Record;

/// Arranges for `fd` (if any) and `passed` to be the only fds above stdio
/// that survive `exec` in the child of `command` (not even ones the primary
/// itself inherited without close-on-exec), clears the signal mask the child
/// would inherit, makes the child lead a session of its own (and so a
/// process group), and has the child register its process group with the
/// orphan guard (see [`orphan_guard`](super::orphan_guard)) before it runs
/// anything. Where workers run in cgroups of their own, makes worker `id`'s
/// and has the child join it first; the cgroup is returned, to be kept as
/// long as the worker runs (see [`WorkerCgroup`]).
pub(super) fn prepare_child(
    command: &mut tokio::process::Command,
    fd: Option<RawFd>,
    passed: Vec<RawFd>,
    guard: BorrowedFd<'static>,
    id: u64,
) -> Option<WorkerCgroup> {
    let primary = rustix::process::getpid();
    let guard = guard.as_raw_fd();
    let cgroup = WorkerCgroup::make(id);
    let procs = cgroup
        .as_ref()
        .and_then(WorkerCgroup::procs)
        .map(|fd| fd.as_raw_fd());
    // SAFETY: the closure runs in the child between fork and exec, so it must be
    // async-signal-safe: it only makes raw system calls (close_range, fcntl,
    // write, sigprocmask, setsid, getpid, readlink, open, read, close, send, getppid) on values
    // captured by copy and memory of its own frame, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // Into the worker's cgroup before anything else: what it starts
            // is in it too. Where that fails, its process group still holds
            // what does not leave it.
            if let Some(procs) = procs {
                libc::write(procs, b"0".as_ptr().cast(), 1);
            }
            // Every fd from 3 up closes on exec (Linux 5.11+; on older
            // kernels this fails and only our own close-on-exec fds close).
            #[cfg(target_os = "linux")]
            libc::syscall(
                libc::SYS_close_range,
                3_u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            for fd in fd.iter().chain(&passed) {
                // SAFETY: `fd` is the child's end of the channel, or an fd the
                // primary passes to every worker; both are open in this
                // process (inherited over fork) for the whole closure.
                let borrowed = std::os::fd::BorrowedFd::borrow_raw(*fd);
                rustix::io::fcntl_setfd(borrowed, FdFlags::empty())?;
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&raw mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut());
            // The child leads its own session, so its own process group,
            // which no process of another session can join (`setpgid` joins
            // only a group of its own session): nothing outside its tree
            // takes its group, to speak for it on NOTIFY_SOCKET or to be
            // signalled with it. (A child is no group leader: this succeeds.)
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Register its group, with the start time that
            // tells this process from a later one given the same pid, before
            // anything else can join it, and the pid by which `/proc` knows
            // it (another where `/proc` is another PID namespace's). The
            // guard's socket is open for the process's lifetime.
            let record = Record::Register {
                group: libc::getpid(),
                seen: super::procfs::seen_self().cast_signed(),
                start: super::procfs::start_time(0).unwrap_or(0),
            }
            .encode();
            libc::send(
                guard,
                record.as_ptr().cast(),
                record.len(),
                libc::MSG_NOSIGNAL,
            );
            // The primary may have died before the group was registered.
            if rustix::process::getppid() != Some(primary) {
                return Err(io::Error::other("primary exited during spawn"));
            }
            Ok(())
        });
    }
    cgroup
}

/// Has the child of `command` SIGKILLed when the thread that forks it ends
/// (the spawner thread: when this process ends).
pub(super) fn die_with_parent(command: &mut tokio::process::Command) {
    let primary = rustix::process::getpid();
    // SAFETY: the closure runs in the child between fork and exec: it only
    // makes raw system calls (prctl, getppid) on a value captured by copy.
    unsafe {
        command.pre_exec(move || {
            // After any change of user (std makes it before these closures),
            // which would clear it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The primary may have died before: then nothing would fire.
            if rustix::process::getppid() != Some(primary) {
                return Err(io::Error::other("primary exited during spawn"));
            }
            Ok(())
        });
    }
}
