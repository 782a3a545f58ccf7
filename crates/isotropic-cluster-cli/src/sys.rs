//! The CLI's own platform calls, through rustix (no `unsafe`): who is at
//! the other end of a Unix socket, and who we are.

use std::os::fd::AsFd;

/// Who a socket's peer is, as the kernel recorded it when it connected
/// (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
}

/// The credentials of the peer of the connected Unix socket `socket`.
///
/// # Errors
///
/// `getsockopt(SO_PEERCRED)` failed (not a connected Unix socket).
pub(crate) fn peer_credentials(socket: impl AsFd) -> std::io::Result<Credentials> {
    let credentials = rustix::net::sockopt::socket_peercred(socket)?;
    Ok(Credentials {
        pid: credentials.pid.as_raw_nonzero().get().unsigned_abs(),
        uid: credentials.uid.as_raw(),
    })
}

/// Our real user id.
pub(crate) fn own_uid() -> u32 {
    rustix::process::getuid().as_raw()
}
