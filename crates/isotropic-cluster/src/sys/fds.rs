//! Fds this process inherited: adopting them, and placing them for a
//! program that follows the socket-activation convention.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use rustix::io::FdFlags;

/// Names the fds a primary passes to every worker (see
/// [`exec_with_listen_fds`](crate::socket_activation::exec_with_listen_fds)).
pub(crate) const PASS_FDS: &str = "ISOTROPIC_CLUSTER_PASS_FDS";

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

/// Adopts the inherited sockets `fds` and moves them to 3, 4, … in order,
/// without close-on-exec (the originals close). For a fresh process that
/// holds nothing else from fd 3 up.
pub(crate) fn place_listen_fds(fds: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
    // Out of the way first (the originals close), then at the lowest free
    // numbers from 3: which are 3, 4, … in a process that holds nothing else.
    let adopted: Vec<OwnedFd> = fds
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
        if std::os::fd::AsRawFd::as_raw_fd(&fd) != 3 + RawFd::try_from(i).unwrap_or(RawFd::MAX) {
            return Err(io::Error::other("fds from 3 up are not free"));
        }
        rustix::io::fcntl_setfd(&fd, FdFlags::empty())?;
        placed.push(fd);
    }
    Ok(placed)
}
