//! Where to listen, and the one place that binds it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::str::FromStr;

use super::{ListenError, ListenErrorKind};
use crate::sys::{self, Setup};

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

impl ListenAddress {
    /// Binds a socket to this address and listens on it, as
    /// [`TcpListener::bind`](std::net::TcpListener::bind) does: close-on-exec
    /// and blocking, ready to pass to another program (see
    /// [`socket_activation`](crate::socket_activation)); and the address it
    /// got, with the port chosen for port 0. A Unix path must not exist yet.
    ///
    /// # Errors
    ///
    /// What the system says: the address is in use, not this machine's, not
    /// allowed, or (a path) too long.
    ///
    /// # Examples
    ///
    /// ```
    /// use isotropic_cluster::ListenAddress;
    ///
    /// let address: ListenAddress = "127.0.0.1:0".parse()?;
    /// let (socket, bound) = address.bind()?;
    /// let listener = std::net::TcpListener::from(socket);
    /// assert_eq!(bound, ListenAddress::Tcp(listener.local_addr()?));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bind(&self) -> io::Result<(OwnedFd, ListenAddress)> {
        listening_socket(
            self,
            Setup {
                reuseport: false,
                listening: true,
                nonblocking: false,
            },
        )
    }
}

/// [`ListenAddress::bind`], but non-blocking: a socket the primary holds for
/// its workers.
pub(crate) fn bind(address: &ListenAddress) -> io::Result<(OwnedFd, ListenAddress)> {
    listening_socket(
        address,
        Setup {
            reuseport: false,
            listening: true,
            nonblocking: true,
        },
    )
}

/// A TCP socket bound to `address` with `SO_REUSEPORT` (and listening, for a
/// worker; the primary's own only reserves the port), non-blocking,
/// close-on-exec; and the address it got.
pub(crate) fn reuseport(address: SocketAddr, listening: bool) -> io::Result<(OwnedFd, SocketAddr)> {
    sys::tcp_listener(
        address,
        Setup {
            reuseport: true,
            listening,
            nonblocking: true,
        },
    )
}

/// A socket bound to `address` as `setup` says, and the address it got.
fn listening_socket(address: &ListenAddress, setup: Setup) -> io::Result<(OwnedFd, ListenAddress)> {
    match address {
        ListenAddress::Tcp(address) => {
            let (socket, bound) = sys::tcp_listener(*address, setup)?;
            Ok((socket, ListenAddress::Tcp(bound)))
        }
        ListenAddress::Unix(path) => Ok((
            sys::unix_listener(path, setup)?,
            ListenAddress::Unix(path.clone()),
        )),
    }
}

