//! The primary's `NOTIFY_SOCKET`: a datagram socket with an abstract name,
//! whose datagrams come with their sender's credentials (`SO_PASSCRED`).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SocketAddrUnix, SocketFlags, SocketType, recvmsg, sockopt,
};

/// A datagram socket bound to the abstract name `name` (no leading `@` or
/// NUL), close-on-exec and non-blocking, receiving credentials. An abstract
/// name needs no file: workers of any user can reach it.
pub(crate) fn notify_socket(name: &str) -> io::Result<OwnedFd> {
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    sockopt::set_socket_passcred(&socket, true)?;
    let address = SocketAddrUnix::new_abstract_name(name.as_bytes())?;
    rustix::net::bind(&socket, &address)?;
    Ok(socket)
}

/// One datagram received by [`recv_credentials`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Datagram {
    /// Its length in the buffer.
    pub(crate) len: usize,
    /// The sender's pid as the kernel vouches for it (`None`: no
    /// credentials, or a sender outside our PID namespace).
    pub(crate) pid: Option<u32>,
    /// It was longer than the buffer (and cut).
    pub(crate) truncated: bool,
}

/// Receives one datagram into `buf` with its sender's credentials; fds sent
/// with it are closed.
pub(crate) fn recv_credentials(socket: impl AsFd, buf: &mut [u8]) -> io::Result<Datagram> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1), ScmRights(16))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(buf)];
    let received = recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut pid = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmCredentials(credentials) = message {
            // (Pid 0: a sender the kernel cannot name in our namespace.)
            pid = Some(credentials.pid.as_raw_pid().cast_unsigned()).filter(|&pid| pid != 0);
        }
    }
    Ok(Datagram {
        len: received.bytes,
        pid,
        truncated: received.flags.contains(ReturnFlags::TRUNC),
    })
}

/// Sends `datagram` to the abstract socket `name` (no leading `@` or NUL):
/// a service manager's `NOTIFY_SOCKET` of that form.
pub(crate) fn send_to_abstract(name: &[u8], datagram: &[u8]) -> io::Result<()> {
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let address = SocketAddrUnix::new_abstract_name(name)?;
    rustix::net::sendto(&socket, datagram, rustix::net::SendFlags::empty(), &address)?;
    Ok(())
}

/// The process group of process `pid` (`None`: it has exited).
pub(crate) fn process_group(pid: u32) -> Option<u32> {
    let pid = rustix::process::Pid::from_raw(pid.cast_signed())?;
    let group = rustix::process::getpgid(Some(pid)).ok()?;
    Some(group.as_raw_pid().cast_unsigned())
}

#[cfg(test)]
mod tests {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    use super::*;

    #[test]
    fn a_datagram_comes_with_its_senders_pid_and_a_long_one_is_cut() {
        let name = format!("isotropic-cluster-test/{}/sys", std::process::id());
        let socket = notify_socket(&name).expect("bound");
        let sender = UnixDatagram::unbound().expect("a socket");
        let to = SocketAddr::from_abstract_name(&name).expect("an address");
        sender.send_to_addr(b"READY=1", &to).expect("sent");
        let mut buf = [0; 16];
        let got = recv_credentials(&socket, &mut buf).expect("received");
        assert_eq!(&buf[..got.len], b"READY=1");
        assert_eq!(got.pid, Some(std::process::id()));
        assert!(!got.truncated);
        sender.send_to_addr(&[b'x'; 32], &to).expect("sent");
        assert!(
            recv_credentials(&socket, &mut buf)
                .expect("received")
                .truncated
        );
        // (As a service manager's abstract NOTIFY_SOCKET is told.)
        send_to_abstract(name.as_bytes(), b"STATUS=abstract").expect("sent");
        let got = recv_credentials(&socket, &mut buf).expect("received");
        assert_eq!(&buf[..got.len], b"STATUS=abstract");
        let group = rustix::process::getpgrp().as_raw_pid().cast_unsigned();
        assert_eq!(process_group(std::process::id()), Some(group));
    }
}
