//! The listening sockets this process got by socket activation.

use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::ListenAddress;
use crate::sys;

/// The listening sockets this process got by socket activation (`LISTEN_PID`
/// naming this process, `LISTEN_FDS` counting them from fd 3), adopted and
/// made non-blocking, with their addresses: taken by the first caller only (a
/// second primary in the same process binds its own).
pub(crate) fn take_activated() -> Vec<(OwnedFd, ListenAddress)> {
    take_activated_as_passed()
        .into_iter()
        .filter_map(|(fd, address)| {
            sys::set_nonblocking(&fd).ok()?;
            tracing::info!(%address, "adopting a socket passed by socket activation");
            Some((fd, address))
        })
        .collect()
}

/// As [`take_activated`], the sockets left as they were passed (blocking or
/// not); those with no TCP or Unix path address are closed.
pub(crate) fn take_activated_as_passed() -> Vec<(OwnedFd, ListenAddress)> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Vec::new();
    }
    let read = |key: &str| std::env::var(key).ok()?.parse::<u32>().ok();
    if read("LISTEN_PID") != Some(std::process::id()) {
        return Vec::new();
    }
    let count = read("LISTEN_FDS").unwrap_or(0).min(1024);
    (0..count)
        .filter_map(|i| sys::adopt_inherited_socket(3 + RawFd::try_from(i).ok()?).ok())
        .filter_map(|fd| Some((address_of(&fd)?, fd)))
        .map(|(address, fd)| (fd, address))
        .collect()
}

/// The address a listening socket is bound to, if TCP or a Unix path.
pub(crate) fn address_of(socket: &OwnedFd) -> Option<ListenAddress> {
    match sys::local_tcp_address(socket) {
        Ok(address) => Some(ListenAddress::Tcp(address)),
        Err(_) => sys::local_unix_path(socket).ok()?.map(ListenAddress::Unix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_activated_socket_is_known_by_the_address_it_is_bound_to() {
        let tcp: ListenAddress = "127.0.0.1:0".parse().expect("an address");
        let (socket, bound) = tcp.bind().expect("bound");
        assert_eq!(address_of(&socket), Some(bound));
        let path = std::env::temp_dir().join(format!("isotropic-activated-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let unix = ListenAddress::Unix(path.clone());
        let (socket, _) = unix.bind().expect("bound");
        assert_eq!(address_of(&socket), Some(unix));
        std::fs::remove_file(path).expect("removed");
        let (pair, _) = std::os::unix::net::UnixStream::pair().expect("a pair");
        assert_eq!(address_of(&pair.into()), None);
    }
}
