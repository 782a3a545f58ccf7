//! A fake service manager: the `NOTIFY_SOCKET` the CLI is given (a path, or
//! an abstract name), and what it hears.

use std::os::linux::net::SocketAddrExt as _;
use std::path::PathBuf;

use tokio::net::UnixDatagram;

use super::DEADLINE;

/// The fake service manager's socket, and its file (removed when dropped).
pub(crate) struct Manager {
    socket: UnixDatagram,
    path: Option<PathBuf>,
}

impl Manager {
    /// Bound to a path in the temporary directory.
    pub(crate) fn at_path(test: &str) -> (Self, String) {
        let path = std::env::temp_dir().join(format!(
            "isotropic-cli-systemd-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bound");
        let address = path.to_str().expect("a UTF-8 path").to_owned();
        let path = Some(path);
        (Self { socket, path }, address)
    }

    /// Bound to an abstract name (`@…` in `NOTIFY_SOCKET`).
    pub(crate) fn abstract_name(test: &str) -> (Self, String) {
        let name = format!("isotropic-cli-systemd/{test}/{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).expect("a name");
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&address).expect("bound");
        socket.set_nonblocking(true).expect("non-blocking");
        let socket = UnixDatagram::from_std(socket).expect("a tokio socket");
        (Self { socket, path: None }, format!("@{name}"))
    }

    /// The datagrams received until one holding the line `line`, that one
    /// last.
    pub(crate) async fn until(&self, line: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let read = async {
            let mut buf = [0; 4096];
            loop {
                let n = self.socket.recv(&mut buf).await.expect("a datagram");
                let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = datagram.lines().any(|l| l == line);
                seen.push(datagram);
                if done {
                    return;
                }
            }
        };
        if tokio::time::timeout(DEADLINE, read).await.is_err() {
            panic!("no {line:?} in time; received {seen:?}");
        }
        seen
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The value of `key` in `datagram`.
pub(crate) fn field<'a>(datagram: &'a str, key: &str) -> Option<&'a str> {
    datagram
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

/// Every `STATUS=` of `datagrams`.
pub(crate) fn statuses(datagrams: &[String]) -> Vec<&str> {
    datagrams
        .iter()
        .filter_map(|d| field(d, "STATUS"))
        .collect()
}
