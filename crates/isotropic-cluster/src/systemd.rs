//! Telling the service manager (systemd, or any that sets `NOTIFY_SOCKET`)
//! how this process is doing, by `sd_notify(3)`'s protocol: ready,
//! reloading, stopping, a status line, watchdog pings, a new main pid.
//!
//! These are the primary's own notices. Workers never see the service
//! manager's `NOTIFY_SOCKET`: a primary gives its workers a socket of its own
//! (see [`Readiness::Notify`](crate::primary::Readiness::Notify)), and
//! [`Upgrade`](crate::upgrade::Upgrade) hands the variable to the new
//! primary.
//!
//! # Examples
//!
//! ```no_run
//! use isotropic_cluster::systemd::{self, Notice};
//!
//! # async fn example() -> std::io::Result<()> {
//! // Once the pool is ready:
//! systemd::notify(&[Notice::Ready, Notice::Status("4 of 4 workers ready")])?;
//! // Pings, if the unit has WatchdogSec=:
//! if let Some(every) = systemd::watchdog_interval() {
//!     let mut timer = tokio::time::interval(every);
//!     loop {
//!         timer.tick().await;
//!         systemd::notify(&[Notice::Watchdog])?;
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::io;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::sys;

/// The variable that names the service manager's socket.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// One thing to tell the service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice<'a> {
    /// `READY=1`: started, or done reloading.
    Ready,
    /// `RELOADING=1`, with `MONOTONIC_USEC=` (the clock now), as
    /// `Type=notify-reload` requires: a reload began; [`Notice::Ready`] ends
    /// it.
    Reloading,
    /// `STOPPING=1`: shutting down.
    Stopping,
    /// `STATUS=`: one line for `systemctl status` (a line break in it is
    /// sent as a space).
    Status(&'a str),
    /// `WATCHDOG=1`: alive (see [`watchdog_interval`]).
    Watchdog,
    /// `MAINPID=`: another process is the service's main process now (the
    /// unit needs `NotifyAccess=main` or `all`).
    MainPid(u32),
}

/// Sends `notices` in one datagram to the socket `NOTIFY_SOCKET` names (a
/// path, or an abstract name after `@`). Returns whether there was one to
/// tell: without `NOTIFY_SOCKET`, nothing is sent.
///
/// # Errors
///
/// When the datagram cannot be sent (the socket is not there, or refuses
/// it), or the clock cannot be read for [`Notice::Reloading`].
pub fn notify(notices: &[Notice<'_>]) -> io::Result<bool> {
    let Some(address) = std::env::var_os(NOTIFY_SOCKET) else {
        return Ok(false);
    };
    // (Owned: a line break in a status becomes a space.)
    let statuses: Vec<String> = notices
        .iter()
        .filter_map(|notice| match notice {
            Notice::Status(line) => Some(line.replace('\n', " ")),
            _ => None,
        })
        .collect();
    let mut statuses = statuses.iter();
    let mut states = Vec::with_capacity(notices.len() + 1);
    for notice in notices {
        match *notice {
            Notice::Ready => states.push(NotifyState::Ready),
            Notice::Reloading => {
                states.push(NotifyState::Reloading);
                states.push(NotifyState::monotonic_usec_now()?);
            }
            Notice::Stopping => states.push(NotifyState::Stopping),
            Notice::Status(_) => {
                states.extend(statuses.next().map(|line| NotifyState::Status(line)))
            }
            Notice::Watchdog => states.push(NotifyState::Watchdog),
            Notice::MainPid(pid) => states.push(NotifyState::MainPid(pid)),
        }
    }
    use std::os::unix::ffi::OsStrExt as _;
    match address.as_bytes().strip_prefix(b"@") {
        // sd-notify takes paths only: an abstract name is sent to here, the
        // same text as it would send.
        Some(name) => {
            let text: String = states.iter().map(|state| format!("{state}\n")).collect();
            sys::send_to_abstract(name, text.as_bytes())?;
        }
        None => sd_notify::notify(&states)?,
    }
    Ok(true)
}

/// How often to send [`Notice::Watchdog`]: half of `WATCHDOG_USEC`, when
/// the service manager set it for this process (`WATCHDOG_PID` unset or
/// this process's pid), as `sd_watchdog_enabled(3)` advises.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .map(|timeout| timeout / 2)
        .filter(|interval| !interval.is_zero())
}
