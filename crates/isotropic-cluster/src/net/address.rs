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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
    use std::os::unix::net::{UnixListener, UnixStream};

    use rustix::fs::OFlags;
    use rustix::io::FdFlags;

    use super::*;

    fn nonblocking(socket: &OwnedFd) -> bool {
        let flags = rustix::fs::fcntl_getfl(socket).expect("status flags");
        flags.contains(OFlags::NONBLOCK)
    }

    fn close_on_exec(socket: &OwnedFd) -> bool {
        let flags = rustix::io::fcntl_getfd(socket).expect("fd flags");
        flags.contains(FdFlags::CLOEXEC)
    }

    /// A path for a Unix socket of this test alone, free.
    fn socket_path(name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("isotropic-net-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn addresses_parse_and_print_back() {
        for (text, printed) in [
            ("127.0.0.1:3000", "127.0.0.1:3000"),
            ("[::1]:0", "[::1]:0"),
            ("unix:/run/app.sock", "unix:/run/app.sock"),
            ("/run/app.sock", "unix:/run/app.sock"),
        ] {
            let address: ListenAddress = text.parse().expect(text);
            assert_eq!(address.to_string(), printed);
        }
        for text in ["localhost:3000", "127.0.0.1", ""] {
            let error = text.parse::<ListenAddress>().expect_err(text);
            assert_eq!(error.kind, ListenErrorKind::InvalidAddress);
            assert_eq!(error.address, text);
        }
    }

    #[test]
    fn port_0_on_ipv4_and_ipv6_loopback_binds_a_chosen_port_that_accepts() {
        for asked in [
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        ] {
            let (socket, bound) = ListenAddress::Tcp(asked).bind().expect("bound");
            let ListenAddress::Tcp(bound) = bound else {
                panic!("{asked} bound as {bound}");
            };
            assert_eq!(bound.ip(), asked.ip());
            assert_ne!(bound.port(), 0);
            assert!(!nonblocking(&socket), "passed sockets are blocking");
            assert!(close_on_exec(&socket));
            let listener = TcpListener::from(socket);
            let client = TcpStream::connect(bound).expect("connected");
            let (_, peer) = listener.accept().expect("accepted");
            assert_eq!(peer, client.local_addr().expect("client address"));
        }
    }

    #[test]
    fn the_primarys_sockets_are_non_blocking() {
        let address = ListenAddress::Tcp((Ipv4Addr::LOCALHOST, 0).into());
        let (socket, _) = bind(&address).expect("bound");
        assert!(nonblocking(&socket));
        assert!(close_on_exec(&socket));
        let listener = TcpListener::from(socket);
        let error = listener.accept().expect_err("nothing to accept");
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn an_address_in_use_cannot_be_bound_again() {
        let address = ListenAddress::Tcp((Ipv4Addr::LOCALHOST, 0).into());
        let (_socket, bound) = address.bind().expect("bound");
        let error = bound.bind().expect_err("the port is taken");
        assert_eq!(ListenErrorKind::of(&error), ListenErrorKind::AddrInUse);
        let error = bind(&bound).expect_err("the port is taken");
        assert_eq!(ListenErrorKind::of(&error), ListenErrorKind::AddrInUse);
    }

    #[test]
    fn the_reserved_reuseport_port_takes_connections_only_on_workers_sockets() {
        let (anchor, port) = reuseport((Ipv4Addr::LOCALHOST, 0).into(), false).expect("reserved");
        assert!(nonblocking(&anchor));
        let error = TcpStream::connect(port).expect_err("nobody listens yet");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        let (worker, bound) = reuseport(port, true).expect("a worker's socket");
        assert_eq!(bound, port);
        assert!(nonblocking(&worker));
        TcpStream::connect(port).expect("the worker's socket listens");
        let (_second, bound) = reuseport(port, true).expect("another worker's socket");
        assert_eq!(bound, port);
        let error = bind(&ListenAddress::Tcp(port)).expect_err("the port is reserved");
        assert_eq!(ListenErrorKind::of(&error), ListenErrorKind::AddrInUse);
    }

    #[test]
    fn a_unix_path_binds_once_and_accepts() {
        let path = socket_path("accepts");
        let address = ListenAddress::Unix(path.clone());
        let (socket, bound) = address.bind().expect("bound");
        assert_eq!(bound, address);
        assert!(!nonblocking(&socket));
        assert!(close_on_exec(&socket));
        let listener = UnixListener::from(socket);
        UnixStream::connect(&path).expect("connected");
        listener.accept().expect("accepted");
        let error = bind(&address).expect_err("the path exists");
        assert_eq!(ListenErrorKind::of(&error), ListenErrorKind::AddrInUse);
        std::fs::remove_file(path).expect("removed");
    }

    #[test]
    fn a_unix_path_too_long_is_an_invalid_address() {
        let address = ListenAddress::Unix(PathBuf::from(format!("/tmp/{}", "x".repeat(200))));
        let error = address.bind().expect_err("too long");
        assert_eq!(ListenErrorKind::of(&error), ListenErrorKind::InvalidAddress);
    }
}
