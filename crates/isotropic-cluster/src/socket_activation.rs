//! Socket activation: systemd's convention for handing listening sockets to
//! a program (fds 3, 4, … named by `LISTEN_PID`, `LISTEN_FDS` and
//! `LISTEN_FDNAMES`), which many servers support.
//!
//! A primary hands its sockets to any program this way: it binds them
//! ([`ListenAddress::bind`](crate::ListenAddress::bind)), passes them to
//! every worker
//! ([`PrimaryBuilder::pass_fds`](crate::primary::PrimaryBuilder::pass_fds)),
//! and each worker becomes the program through [`exec_with_listen_fds`], as
//! `isotropic-cluster run --listen` does.
//!
//! The other way round, a primary started by socket activation serves the
//! addresses its workers listen on with the sockets it got, instead of
//! binding them.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;

use crate::ListenAddress;
use crate::sys;

/// The listening sockets this process got by socket activation
/// (`LISTEN_PID` naming this process, `LISTEN_FDS` counting them from fd 3),
/// with the addresses they are bound to, adopted (close-on-exec) as they
/// were passed, blocking or not; a socket with no TCP or Unix path address is
/// closed. Taken once: a later call, or a primary started later, gets none.
///
/// `isotropic-cluster run --listen ADDR` serves ADDR with the socket passed
/// bound to it (a systemd `.socket` unit's), if there is one.
pub fn take_listen_fds() -> Vec<(OwnedFd, ListenAddress)> {
    crate::net::take_activated_as_passed()
}

/// Replaces this process with `program` and `args`, the fds its primary
/// passed (see [`PrimaryBuilder::pass_fds`](crate::primary::PrimaryBuilder::pass_fds))
/// placed at 3, 4, … with `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`
/// set (`LISTEN_PID` is this process, which `exec` keeps). Call it first
/// thing in a fresh, single-threaded process; it returns only on failure.
///
/// `isotropic-cluster run --listen` starts its workers through it.
pub fn exec_with_listen_fds(names: &str, program: &OsStr, args: &[OsString]) -> io::Error {
    let passed: Vec<RawFd> = std::env::var(sys::PASS_FDS)
        .unwrap_or_default()
        .split(',')
        .filter_map(|fd| fd.parse().ok())
        .collect();
    let placed = match sys::place_listen_fds(&passed) {
        Ok(placed) => placed,
        Err(error) => return error,
    };
    let error = std::process::Command::new(program)
        .args(args)
        .env_remove(sys::PASS_FDS)
        .env("LISTEN_PID", std::process::id().to_string())
        .env("LISTEN_FDS", placed.len().to_string())
        .env("LISTEN_FDNAMES", names)
        .exec();
    drop(placed);
    error
}
