//! Sockets: the channel pair, and listening sockets.

use std::ffi::OsStr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, socketpair, sockopt};

/// The socket buffer size asked for on each end of a channel.
const CHANNEL_BUFFER: usize = 1024 * 1024;

/// A connected pair of Unix stream sockets, both close-on-exec.
pub(crate) fn channel_pair() -> io::Result<(OwnedFd, OwnedFd)> {
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

/// The connections a listening socket queues for `accept`.
const BACKLOG: i32 = 1024;

/// How a listening socket is set up; it is close-on-exec either way.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    /// `SO_REUSEPORT`: a socket of each worker's own on one TCP port (Unix
    /// paths ignore it).
    pub(crate) reuseport: bool,
    /// Listening; otherwise only bound, which reserves the port.
    pub(crate) listening: bool,
    /// Non-blocking, as tokio wants it; otherwise blocking, as socket
    /// activation passes sockets.
    pub(crate) nonblocking: bool,
}

impl Setup {
    fn socket(self, family: AddressFamily) -> io::Result<OwnedFd> {
        let flags = if self.nonblocking {
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK
        } else {
            SocketFlags::CLOEXEC
        };
        Ok(rustix::net::socket_with(
            family,
            SocketType::STREAM,
            flags,
            None,
        )?)
    }

    fn listen(self, socket: &OwnedFd) -> io::Result<()> {
        if self.listening {
            rustix::net::listen(socket, BACKLOG)?;
        }
        Ok(())
    }
}

/// A TCP socket bound to `address` (with `SO_REUSEADDR`, as std binds) and
/// set up as `setup` says; and the address it got (the port chosen for port
/// 0).
pub(crate) fn tcp_listener(address: SocketAddr, setup: Setup) -> io::Result<(OwnedFd, SocketAddr)> {
    let family = if address.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let socket = setup.socket(family)?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    if setup.reuseport {
        sockopt::set_socket_reuseport(&socket, true)?;
    }
    rustix::net::bind(&socket, &address)?;
    setup.listen(&socket)?;
    let bound = local_tcp_address(&socket)?;
    Ok((socket, bound))
}

/// A Unix stream socket bound to `path` (which must not exist) and set up
/// as `setup` says.
pub(crate) fn unix_listener(path: &Path, setup: Setup) -> io::Result<OwnedFd> {
    // A path too long for a socket address is an invalid address.
    let address = SocketAddrUnix::new(path)
        .map_err(|errno| io::Error::new(io::ErrorKind::InvalidInput, io::Error::from(errno)))?;
    let socket = setup.socket(AddressFamily::UNIX)?;
    rustix::net::bind(&socket, &address)?;
    setup.listen(&socket)?;
    Ok(socket)
}

/// The address an IPv4 or IPv6 socket is bound to.
pub(crate) fn local_tcp_address(socket: impl AsFd) -> io::Result<SocketAddr> {
    Ok(SocketAddr::try_from(rustix::net::getsockname(socket)?)?)
}

/// The path a Unix socket is bound to; `None` when it has none (unnamed or
/// abstract).
pub(crate) fn local_unix_path(socket: impl AsFd) -> io::Result<Option<PathBuf>> {
    let address = SocketAddrUnix::try_from(rustix::net::getsockname(socket)?)?;
    Ok(address
        .path_bytes()
        .map(|path| PathBuf::from(OsStr::from_bytes(path))))
}

/// Makes `socket` non-blocking (for everyone who shares it).
pub(crate) fn set_nonblocking(socket: impl AsFd) -> io::Result<()> {
    Ok(rustix::io::ioctl_fionbio(socket, true)?)
}

/// Runs `work` on a thread of its own that has taken user `uid` and group
/// `gid` (and, when we are root, no supplementary groups): what it binds or
/// removes, the kernel checks against that user's rights, and the sockets it
/// makes are that user's (`SO_REUSEPORT` groups are per user). On Linux
/// credentials belong to each thread: the rest of the process keeps its own.
///
/// # Errors
///
/// The thread cannot be started or take that user (`EPERM` unless we are
/// root or that user), or what `work` returns.
pub(crate) fn as_user<T: Send>(
    uid: u32,
    gid: u32,
    work: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    use rustix::process::{Gid, Uid};
    use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("isotropic-as-user".into())
            .spawn_scoped(scope, move || {
                let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
                if rustix::process::geteuid().is_root() {
                    set_thread_groups(&[])?;
                }
                // Group first: once the uid is not root, it could not be changed.
                set_thread_res_gid(gid, gid, gid)?;
                set_thread_res_uid(uid, uid, uid)?;
                work()
            })?;
        thread.join().unwrap_or_else(|_| {
            Err(io::Error::other(
                "a thread acting as a worker's user panicked",
            ))
        })
    })
}
