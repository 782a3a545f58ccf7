//! Handing sockets to a successor (see [`crate::upgrade`]): placing them at
//! fixed fds in the child, finding them again there.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// Arranges for `fds` to be at 3, 4, … (in order, without close-on-exec)
/// in the child of `command`, and for every other fd from 3 up to close on
/// `exec`; clears the signal mask it would inherit. Returns the copies the
/// child places, to be kept until it is spawned.
///
/// # Errors
///
/// When the fds cannot be copied (out of fds).
pub(crate) fn place_in_child(
    command: &mut tokio::process::Command,
    fds: &[OwnedFd],
) -> io::Result<Vec<OwnedFd>> {
    let count = RawFd::try_from(fds.len()).map_err(|_| io::Error::other("too many fds"))?;
    // Copies above every target first: placing one never closes another.
    let high: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| Ok(rustix::io::fcntl_dupfd_cloexec(fd, 3 + count)?))
        .collect::<io::Result<_>>()?;
    let raw: Vec<RawFd> = high.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure runs in the child between fork and exec: it only
    // makes raw system calls (dup2, close_range, sigprocmask) on values of
    // its own (the fds, open in the child since they are inherited over
    // fork and live until the spawn returns), and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for (target, fd) in (3..).zip(&raw) {
                // (dup2's copy has no close-on-exec: it survives exec.)
                if libc::dup2(*fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Nothing else of ours reaches the successor (Linux 5.11+; on
            // older kernels, only our close-on-exec fds close).
            libc::syscall(
                libc::SYS_close_range,
                (3 + count).cast_unsigned(),
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&raw mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut());
            Ok(())
        });
    }
    Ok(high)
}

/// A close-on-exec copy of this process's fd `fd`, if it is an open socket
/// (the sockets systemd passed, which their owner may have adopted).
///
/// # Errors
///
/// When `fd` is not an open socket.
pub(crate) fn copy_socket(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative fd"));
    }
    // SAFETY: we only borrow the number for a check and a copy; if it is not
    // open, fstat fails with EBADF and we return before copying.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = rustix::fs::fstat(borrowed)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a socket"));
    }
    borrowed.as_fd().try_clone_to_owned()
}

/// Sets `key` to `value` in the environment if that is sound, that is when
/// this process has a single thread; returns whether it did.
pub(crate) fn set_env_if_single_threaded(key: &str, value: &str) -> bool {
    if super::procfs::thread_count() != Some(1) {
        return false;
    }
    // SAFETY: this process has exactly one thread (checked just above, and
    // only this thread could start another), so no other thread can read or
    // write the environment concurrently.
    unsafe { std::env::set_var(key, value) };
    true
}
