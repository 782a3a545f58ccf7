//! Addresses to listen on, and listeners shared by the workers of a primary.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a worker listens: a TCP address (IPv4 or IPv6) or a Unix socket path.
///
/// Parsed from `"127.0.0.1:3000"`, `"[::1]:0"`, or `"unix:/run/app.sock"` (a
/// string starting with `/` is a path too). Port 0 means one ephemeral port,
/// shared by every worker that asks for the same address.
///
/// # Examples
///
/// ```
/// use isotropic_cluster::ListenAddress;
///
/// let tcp: ListenAddress = "127.0.0.1:3000".parse()?;
/// let unix: ListenAddress = "unix:/tmp/app.sock".parse()?;
/// assert_eq!(tcp.to_string(), "127.0.0.1:3000");
/// assert_eq!(unix.to_string(), "unix:/tmp/app.sock");
/// # Ok::<(), isotropic_cluster::ListenError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddress {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix stream socket path.
    Unix(PathBuf),
}

impl From<SocketAddr> for ListenAddress {
    fn from(address: SocketAddr) -> Self {
        Self::Tcp(address)
    }
}

impl From<PathBuf> for ListenAddress {
    fn from(path: PathBuf) -> Self {
        Self::Unix(path)
    }
}

impl FromStr for ListenAddress {
    type Err = ListenError;

    fn from_str(text: &str) -> Result<Self, ListenError> {
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(Self::Unix(path.into()));
        }
        if text.starts_with('/') {
            return Ok(Self::Unix(text.into()));
        }
        text.parse().map(Self::Tcp).map_err(|_| ListenError {
            address: text.to_owned(),
            kind: ListenErrorKind::InvalidAddress,
            message: "not an IP address with a port, nor unix:PATH".into(),
        })
    }
}

impl TryFrom<&str> for ListenAddress {
    type Error = ListenError;
    fn try_from(text: &str) -> Result<Self, ListenError> {
        text.parse()
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(address) => address.fmt(f),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Why a listening socket could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenErrorKind {
    /// The address is already in use.
    AddrInUse,
    /// Binding was not permitted (a low port, a protected path).
    PermissionDenied,
    /// The address is not one of this machine's.
    AddrNotAvailable,
    /// The address did not parse.
    InvalidAddress,
    /// The channel to the primary is closed.
    Disconnected,
    /// Anything else (see the message).
    Other,
}

impl ListenErrorKind {
    pub(crate) fn of(error: &std::io::Error) -> Self {
        match error.kind() {
            std::io::ErrorKind::AddrInUse => Self::AddrInUse,
            std::io::ErrorKind::PermissionDenied => Self::PermissionDenied,
            std::io::ErrorKind::AddrNotAvailable => Self::AddrNotAvailable,
            std::io::ErrorKind::InvalidInput => Self::InvalidAddress,
            _ => Self::Other,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::AddrInUse => "AddrInUse",
            Self::PermissionDenied => "PermissionDenied",
            Self::AddrNotAvailable => "AddrNotAvailable",
            Self::InvalidAddress => "InvalidAddress",
            Self::Disconnected => "Disconnected",
            Self::Other => "Other",
        }
    }

    pub(crate) fn from_name(name: &str) -> Self {
        [
            Self::AddrInUse,
            Self::PermissionDenied,
            Self::AddrNotAvailable,
            Self::InvalidAddress,
            Self::Disconnected,
        ]
        .into_iter()
        .find(|kind| kind.name() == name)
        .unwrap_or(Self::Other)
    }
}

/// A listening socket could not be had: the address, why, and what the
/// system said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot listen on {address}: {message}")]
#[non_exhaustive]
pub struct ListenError {
    /// The address asked for.
    pub address: String,
    /// Why, as a kind.
    pub kind: ListenErrorKind,
    /// What the system said.
    pub message: String,
}

impl From<std::convert::Infallible> for ListenError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// A listening socket shared with the other workers, ready for tokio; or,
/// with [`Distribution::RoundRobin`], the connections the primary accepted
/// and passed to this worker.
#[derive(Debug)]
#[non_exhaustive]
pub enum Listener {
    /// A TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A Unix stream listener.
    Unix(tokio::net::UnixListener),
    /// Connections accepted by the primary.
    Passed(PassedListener),
}

/// An accepted connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum Connection {
    /// A TCP connection.
    Tcp(tokio::net::TcpStream),
    /// A Unix stream connection.
    Unix(tokio::net::UnixStream),
}

/// The connections the primary accepts on an address and passes to this
/// worker, in turn with the other workers.
#[derive(Debug)]
pub struct PassedListener {
    address: ListenAddress,
    connections: tokio::sync::mpsc::Receiver<std::os::fd::OwnedFd>,
}

impl PassedListener {
    pub(crate) fn new(
        address: ListenAddress,
        connections: tokio::sync::mpsc::Receiver<std::os::fd::OwnedFd>,
    ) -> Self {
        Self {
            address,
            connections,
        }
    }

    /// The address the primary listens on.
    pub fn address(&self) -> &ListenAddress {
        &self.address
    }

    /// The next connection the primary passes to this worker.
    ///
    /// # Errors
    ///
    /// [`std::io::ErrorKind::ConnectionAborted`] once the primary is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn accept(&mut self) -> std::io::Result<Connection> {
        let fd = self.connections.recv().await.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the primary stopped passing connections",
            )
        })?;
        Ok(match self.address {
            ListenAddress::Tcp(_) => {
                let stream = std::net::TcpStream::from(fd);
                stream.set_nonblocking(true)?;
                Connection::Tcp(tokio::net::TcpStream::from_std(stream)?)
            }
            ListenAddress::Unix(_) => {
                let stream = std::os::unix::net::UnixStream::from(fd);
                stream.set_nonblocking(true)?;
                Connection::Unix(tokio::net::UnixStream::from_std(stream)?)
            }
        })
    }
}

impl Listener {
    /// The next connection, whatever the kind of listener.
    ///
    /// # Errors
    ///
    /// What `accept` gives.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn accept(&mut self) -> std::io::Result<Connection> {
        Ok(match self {
            Self::Tcp(listener) => Connection::Tcp(listener.accept().await?.0),
            Self::Unix(listener) => Connection::Unix(listener.accept().await?.0),
            Self::Passed(listener) => return listener.accept().await,
        })
    }

    /// The TCP listener, if this is one.
    pub fn into_tcp(self) -> Option<tokio::net::TcpListener> {
        match self {
            Self::Tcp(listener) => Some(listener),
            _ => None,
        }
    }

    /// The Unix listener, if this is one.
    pub fn into_unix(self) -> Option<tokio::net::UnixListener> {
        match self {
            Self::Unix(listener) => Some(listener),
            _ => None,
        }
    }
}

/// How the connections to a shared address are spread over the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Distribution {
    /// One listening socket shared by every worker: the kernel hands each
    /// connection to whichever worker accepts first. Connections waiting in
    /// the queue survive the death of any worker. Can be very uneven under
    /// keep-alive load (one worker may take every connection of a burst).
    #[default]
    Shared,
    /// One listening socket per worker, all bound to the same address with
    /// `SO_REUSEPORT`: the kernel spreads connections evenly by hash. The
    /// primary keeps the port reserved (bound, not listening). Connections
    /// queued on a worker that dies are reset. TCP only; Unix paths are
    /// always shared.
    ReusePort,
    /// The primary accepts, and passes each connection to the next worker
    /// listening on that address, in turn (Node's default): even, and a
    /// connection is never queued on a worker that dies. Workers get a
    /// [`Listener::Passed`]; the primary is on the path of every new
    /// connection (not of its data).
    RoundRobin,
}

/// A TCP socket bound to `address` with `SO_REUSEPORT` (and listening, for a
/// worker; the primary's own only reserves the port), non-blocking,
/// close-on-exec; and the address it got.
pub(crate) fn reuseport(
    address: SocketAddr,
    listening: bool,
) -> std::io::Result<(std::os::fd::OwnedFd, SocketAddr)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let family = if address.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let socket = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    sockopt::set_socket_reuseport(&socket, true)?;
    rustix::net::bind(&socket, &address)?;
    if listening {
        rustix::net::listen(&socket, 1024)?;
    }
    let probe = std::net::TcpListener::from(socket.try_clone()?);
    let bound = probe.local_addr()?;
    Ok((socket, bound))
}

/// Binds `address` (in the primary), non-blocking, close-on-exec.
pub(crate) fn bind(
    address: &ListenAddress,
) -> std::io::Result<(std::os::fd::OwnedFd, ListenAddress)> {
    match address {
        ListenAddress::Tcp(address) => {
            let listener = std::net::TcpListener::bind(address)?;
            listener.set_nonblocking(true)?;
            let bound = listener.local_addr()?;
            Ok((listener.into(), ListenAddress::Tcp(bound)))
        }
        ListenAddress::Unix(path) => {
            let listener = std::os::unix::net::UnixListener::bind(path)?;
            listener.set_nonblocking(true)?;
            Ok((listener.into(), ListenAddress::Unix(path.clone())))
        }
    }
}

/// Makes a tokio listener of a socket received from the primary.
pub(crate) fn adopt(
    address: &ListenAddress,
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<Listener> {
    Ok(match address {
        ListenAddress::Tcp(_) => Listener::Tcp(tokio::net::TcpListener::from_std(fd.into())?),
        ListenAddress::Unix(_) => Listener::Unix(tokio::net::UnixListener::from_std(fd.into())?),
    })
}

/// The listening sockets this process got by socket activation, with their
/// addresses: taken by the first caller only (a second primary in the same
/// process binds its own).
pub(crate) fn take_activated() -> Vec<(std::os::fd::OwnedFd, ListenAddress)> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Vec::new();
    }
    crate::sys::activated_sockets()
        .into_iter()
        .filter_map(|fd| {
            let address = activated_address(&fd)?;
            let probe = std::net::TcpListener::from(fd.try_clone().ok()?);
            probe.set_nonblocking(true).ok()?;
            tracing::info!(%address, "adopting a socket passed by socket activation");
            Some((fd, address))
        })
        .collect()
}

fn activated_address(fd: &std::os::fd::OwnedFd) -> Option<ListenAddress> {
    let copy = fd.try_clone().ok()?;
    if let Ok(address) = std::net::TcpListener::from(copy).local_addr() {
        return Some(ListenAddress::Tcp(address));
    }
    let unix = std::os::unix::net::UnixListener::from(fd.try_clone().ok()?);
    let address = unix.local_addr().ok()?;
    Some(ListenAddress::Unix(address.as_pathname()?.to_path_buf()))
}
