//! The one door to the operating system: every platform call and every `unsafe`
//! block of the crate lives here, each with a `// SAFETY:` comment.
//!
//! Linux is the supported platform (`close_range`, `/proc`).
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use rustix::io::FdFlags;
use rustix::process::{Pid, Signal};

/// The socket buffer size asked for on each end of a channel.
const CHANNEL_BUFFER: usize = 1024 * 1024;

/// A connected pair of Unix stream sockets, both close-on-exec.
pub(crate) fn channel_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair, sockopt};
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // Larger buffers mean fewer wake-ups for bulk traffic; the kernel caps
    // them at net.core.wmem_max / rmem_max.
    if CHANNEL_BUFFER > 0 {
        for fd in [&a, &b] {
            let _ = sockopt::set_socket_send_buffer_size(fd, CHANNEL_BUFFER);
            let _ = sockopt::set_socket_recv_buffer_size(fd, CHANNEL_BUFFER);
        }
    }
    Ok((a, b))
}

/// Arranges for `fd` (if any) and `passed` to be the only fds above stdio
/// that survive `exec` in the child of `command` (not even ones the primary
/// itself inherited without close-on-exec), clears the signal mask the child
/// would inherit, and has the child register its process group with the
/// orphan guard (see [`orphan_guard`]) before it runs anything.
pub(crate) fn prepare_child(
    command: &mut tokio::process::Command,
    fd: Option<RawFd>,
    passed: Vec<RawFd>,
    primary: u32,
    guard: BorrowedFd<'static>,
) {
    let primary = Pid::from_raw(primary.cast_signed());
    let guard = guard.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec, so it must be
    // async-signal-safe: it only makes raw system calls (close_range, fcntl,
    // sigprocmask, getpid, send, getppid) on values captured by copy, and
    // allocates nothing.
    unsafe {
        command.pre_exec(move || {
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
            // The child leads its own process group by now (std sets it up
            // before this closure): register it before anything else can
            // join it. The guard's socket is open for the process's lifetime.
            let group = libc::getpid().to_ne_bytes();
            libc::send(
                guard,
                group.as_ptr().cast(),
                group.len(),
                libc::MSG_NOSIGNAL,
            );
            // The primary may have died before the group was registered.
            if rustix::process::getppid() != primary {
                return Err(io::Error::other("primary exited during spawn"));
            }
            Ok(())
        });
    }
}

/// How long the orphan guard waits between SIGTERM and SIGKILL.
pub(crate) const ORPHAN_GRACE: Duration = Duration::from_millis(500);
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
/// [`prepare_child`]); the primary forgets it once it has reaped the worker
/// and killed what was left of the group ([`forget_group`]).
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

/// Takes ownership of a socket fd this process inherited (a worker's channel,
/// or a socket-activation socket), after checking that it is an open socket,
/// and marks it close-on-exec so that the process's own children never
/// inherit it.
///
/// The caller guarantees that each fd is adopted at most once per process (see
/// `role::take_channel` and `net::take_activated`), so no other owner exists.
pub(crate) fn adopt_inherited_socket(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative fd"));
    }
    // SAFETY: we only borrow the number for the duration of two checks; if it is
    // not open, fstat fails with EBADF and we return before taking ownership.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let stat = rustix::fs::fstat(borrowed)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the inherited fd is not a socket",
        ));
    }
    rustix::io::fcntl_setfd(borrowed, FdFlags::CLOEXEC)?;
    // SAFETY: the fd is open (fstat succeeded), it was handed to this process
    // for the library alone (by the primary, or by the socket-activation
    // convention), and the caller takes it at most once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process `pid`, or to its whole process group.
///
/// Callers only pass the pid of a child that has not been reaped yet, so the
/// number cannot have been reused.
pub(crate) fn send_signal(pid: u32, group: bool, signal: i32) -> io::Result<()> {
    let pid = Pid::from_raw(pid.cast_signed())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0"))?;
    let signal = Signal::from_named_raw(signal)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unknown signal"))?;
    let result = if group {
        rustix::process::kill_process_group(pid, signal)
    } else {
        rustix::process::kill_process(pid, signal)
    };
    match result {
        Err(rustix::io::Errno::SRCH) => Ok(()),
        other => Ok(other?),
    }
}

/// The pid of this process's parent.
pub(crate) fn parent_pid() -> Option<u32> {
    rustix::process::getppid().map(|pid| pid.as_raw_pid().cast_unsigned())
}

/// The number of threads of this process (from `/proc/self/stat`).
fn thread_count() -> Option<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(17)?.parse().ok()
}

/// Removes `keys` from the environment if that is sound, that is when this
/// process has a single thread; returns whether it did.
pub(crate) fn remove_env_if_single_threaded(keys: &[&str]) -> bool {
    if thread_count() != Some(1) {
        return false;
    }
    for key in keys {
        // SAFETY: this process has exactly one thread (checked just above, and
        // only this thread could start another), so no other thread can read
        // or write the environment concurrently.
        unsafe { std::env::remove_var(key) };
    }
    true
}

/// The most fds accepted with one read; more is a protocol error (the extra
/// ones are closed by the kernel, and `recv_with_fds` reports it).
const MAX_FDS: usize = 4;

/// Reads into `buf` with `recvmsg`, queueing any fds that came with the bytes
/// (received close-on-exec). Never use a plain `read` on a channel that can
/// carry fds: it would drop them.
pub(crate) fn recv_with_fds(
    socket: impl AsFd,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, recvmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(buf)];
    let received = recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received_fds) = message {
            fds.extend(received_fds);
        }
    }
    if received.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many fds in one message",
        ));
    }
    Ok(received.bytes)
}

/// Writes `buf` with `fd` attached to its first byte; returns the bytes
/// written (the fd went with them if that is at least one).
pub(crate) fn send_with_fd(socket: impl AsFd, buf: &[u8], fd: impl AsFd) -> io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd.as_fd()];
    control.push(SendAncillaryMessage::ScmRights(&fds));
    Ok(sendmsg(
        socket,
        &[io::IoSlice::new(buf)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// The fds passed by socket activation (`LISTEN_PID` naming this process,
/// `LISTEN_FDS` counting them from fd 3), adopted; empty otherwise. The
/// caller guarantees a single call per process.
pub(crate) fn activated_sockets() -> Vec<OwnedFd> {
    let read = |key: &str| std::env::var(key).ok()?.parse::<u32>().ok();
    if read("LISTEN_PID") != Some(std::process::id()) {
        return Vec::new();
    }
    let count = read("LISTEN_FDS").unwrap_or(0).min(1024);
    (0..count)
        .filter_map(|i| adopt_inherited_socket(3 + RawFd::try_from(i).ok()?).ok())
        .collect()
}

/// Replaces this process with `program`, the sockets passed by the primary
/// (`PASS_FDS`) placed at fds 3, 4, … and named by the socket-activation
/// variables (`LISTEN_PID` is this process, which `exec` keeps). Returns only
/// on failure. Called early by a fresh, single-threaded process.
pub(crate) fn exec_with_listen_fds(
    names: &str,
    program: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
) -> io::Error {
    use std::os::unix::process::CommandExt as _;
    let passed: Vec<RawFd> = std::env::var(PASS_FDS)
        .unwrap_or_default()
        .split(',')
        .filter_map(|fd| fd.parse().ok())
        .collect();
    let placed = (|| -> io::Result<Vec<OwnedFd>> {
        // Out of the way first (the originals close), then at the lowest free
        // numbers from 3: which are 3, 4, … in a process that holds nothing else.
        let adopted: Vec<OwnedFd> = passed
            .iter()
            .map(|fd| adopt_inherited_socket(*fd))
            .collect::<io::Result<_>>()?;
        let high: Vec<OwnedFd> = adopted
            .iter()
            .map(|fd| Ok(rustix::io::fcntl_dupfd_cloexec(fd, 1000)?))
            .collect::<io::Result<_>>()?;
        drop(adopted);
        let mut placed = Vec::new();
        for (i, fd) in high.iter().enumerate() {
            let fd = rustix::io::fcntl_dupfd_cloexec(fd, 3)?;
            if std::os::fd::AsRawFd::as_raw_fd(&fd) != 3 + RawFd::try_from(i).unwrap_or(RawFd::MAX)
            {
                return Err(io::Error::other("fds from 3 up are not free"));
            }
            rustix::io::fcntl_setfd(&fd, FdFlags::empty())?;
            placed.push(fd);
        }
        Ok(placed)
    })();
    let placed = match placed {
        Ok(placed) => placed,
        Err(error) => return error,
    };
    let error = std::process::Command::new(program)
        .args(args)
        .env_remove(PASS_FDS)
        .env("LISTEN_PID", std::process::id().to_string())
        .env("LISTEN_FDS", placed.len().to_string())
        .env("LISTEN_FDNAMES", names)
        .exec();
    drop(placed);
    error
}

/// Names the fds a primary passes to every worker (see `exec_with_listen_fds`).
pub(crate) const PASS_FDS: &str = "ISOTROPIC_CLUSTER_PASS_FDS";

/// Whether process `pid` holds a TCP (v4 or v6) or Unix stream socket in the
/// listening state: the inodes of listening sockets in its network namespace
/// (`/proc/PID/net/…`) against the sockets among its fds. False when it has
/// gone or cannot be read.
pub(crate) fn holds_listening_socket(pid: u32) -> bool {
    let table = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{name}"));
    let mut listening = std::collections::HashSet::new();
    for name in ["tcp", "tcp6"] {
        // `sl local rem st … inode`: st 0A is LISTEN; the inode is field 9.
        for line in table(name).unwrap_or_default().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) == Some(&"0A") {
                listening.extend(fields.get(9).map(|inode| inode.to_string()));
            }
        }
    }
    // `Num RefCount Protocol Flags Type St Inode`: flag 00010000 is accepting.
    for line in table("unix").unwrap_or_default().lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(3) == Some(&"00010000") {
            listening.extend(fields.get(6).map(|inode| inode.to_string()));
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .is_some_and(|inode| listening.contains(inode))
        })
    })
}
