//! Passing fds over a Unix socket (`SCM_RIGHTS`).

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The most fds accepted with one read: a message's, and the memfd of a
/// large payload. More is a protocol error: the kernel closes the extra
/// ones, and `recv_with_fds` reports it.
const MAX_FDS: usize = crate::fds::MAX_FDS + 1;

/// Reads up to `max` bytes with `recvmsg`, appended to `buf` (straight into
/// its spare capacity, not through a buffer of our own), queueing any fds
/// that came with them (received close-on-exec); returns how many bytes
/// came, and whether fds were dropped because more came than [`MAX_FDS`].
/// Never use a plain `read` on a channel that can carry fds: it would drop
/// them.
pub(crate) fn recv_with_fds(
    socket: impl AsFd,
    buf: &mut bytes::BytesMut,
    max: usize,
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<(usize, bool)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, recvmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    buf.reserve(max);
    let spare = &mut buf.spare_capacity_mut()[..max];
    // SAFETY: `recvmsg` only writes to the slice (the kernel never reads
    // it), so viewing the uninitialized bytes as `u8`s for the call is
    // sound (tokio's `try_read_buf` does the same); only the bytes it says
    // it wrote are counted as initialized below.
    let spare = unsafe { &mut *(std::ptr::from_mut(spare) as *mut [u8]) };
    let mut iov = [io::IoSliceMut::new(spare)];
    let received = recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let read = received.bytes.min(max);
    // SAFETY: the kernel wrote `read` bytes at the start of the spare
    // capacity (of at least `max` bytes, reserved above).
    unsafe { buf.set_len(buf.len() + read) };
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received_fds) = message {
            fds.extend(received_fds);
        }
    }
    Ok((read, received.flags.contains(ReturnFlags::CTRUNC)))
}

/// Writes `parts` (gathered) with `fds` attached to their first byte;
/// returns the bytes written (the fds went with them if that is at least
/// one).
pub(crate) fn send_with_fds(
    socket: impl AsFd,
    parts: &[io::IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds for one message",
        ));
    }
    Ok(sendmsg(socket, parts, &mut control, SendFlags::NOSIGNAL)?)
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
        let parts = [io::IoSlice::new(b"h"), io::IoSlice::new(b"i")];
        let sent = send_with_fds(&ours, &parts, &[passed.as_fd()]).expect("sent");
        assert_eq!(sent, 2);
        drop(passed);
        let mut buf = bytes::BytesMut::from(&b"<"[..]);
        let mut fds = VecDeque::new();
        let (read, dropped) = recv_with_fds(&theirs, &mut buf, 8, &mut fds).expect("received");
        assert!(!dropped);
        assert_eq!((read, &buf[..]), (2, &b"<hi"[..]), "appended");
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
