//! Passing fds over a Unix socket (`SCM_RIGHTS`).

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

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

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn an_fd_sent_with_bytes_arrives_with_them_close_on_exec() {
        let (ours, theirs) = super::super::channel_pair().expect("a channel");
        let (passed, mut peer) = UnixStream::pair().expect("a socket to pass");
        assert_eq!(send_with_fd(&ours, b"hi", &passed).expect("sent"), 2);
        drop(passed);
        let mut buf = [0; 8];
        let mut fds = VecDeque::new();
        let read = recv_with_fds(&theirs, &mut buf, &mut fds).expect("received");
        assert_eq!(&buf[..read], b"hi");
        let fd = fds.pop_front().expect("the fd came with the bytes");
        assert!(fds.is_empty());
        let flags = rustix::io::fcntl_getfd(&fd).expect("fd flags");
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        // The same socket: what is written to it reaches its peer.
        UnixStream::from(fd).write_all(b"x").expect("written");
        let mut byte = [0];
        peer.read_exact(&mut byte).expect("read");
        assert_eq!(&byte, b"x");
    }
}
