//! The orphan guard process: it holds the groups it is told of until its
//! socket ends, then ends them.

use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use rustix::process::Signal;

use super::record::{RECORD_SIZE, Record};
use super::table::{Slot, Table};

/// How long the orphan guard waits between SIGTERM and SIGKILL.
const ORPHAN_GRACE: Duration = Duration::from_millis(500);
/// How often it checks, meanwhile, whether the groups are gone.
const STEP: Duration = Duration::from_millis(10);

/// The orphan guard's life, in a freshly forked child: never returns.
///
/// # Safety
///
/// Only in a freshly forked child, which owns nothing else: it closes every
/// fd but `socket`, and `slots` must have been allocated before the fork.
pub(super) unsafe fn guard_main(socket: RawFd, slots: &mut [Slot]) -> ! {
    // SAFETY: raw, async-signal-safe system calls on plain values.
    unsafe {
        // Out of the primary's session and process group: its terminal and
        // whoever signals its group do not reach the guard.
        libc::setsid();
        libc::prctl(libc::PR_SET_NAME, c"cluster-guard".as_ptr());
        // No fd but the socket: no port, pipe or terminal stays open.
        let socket_number = socket.cast_unsigned();
        if socket_number > 0 {
            libc::syscall(libc::SYS_close_range, 0_u32, socket_number - 1, 0_u32);
        }
        libc::syscall(libc::SYS_close_range, socket_number + 1, u32::MAX, 0_u32);
        for signal in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(signal, libc::SIG_IGN);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut());
    }
    // SAFETY: the socket stays open until `_exit`.
    let socket = unsafe { BorrowedFd::borrow_raw(socket) };
    let mut table = Table::new(slots);
    // One byte more than a record: a longer packet is not one.
    let mut packet = [0_u8; RECORD_SIZE + 1];
    loop {
        match rustix::net::recv(socket, &mut packet[..], rustix::net::RecvFlags::empty()) {
            Ok((0, _)) => break,
            Ok((read, _)) => {
                if let Some(record) = Record::decode(&packet[..read]) {
                    table.apply(record);
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    end_groups(&mut table);
    // SAFETY: ends this process at once, as a forked child must.
    unsafe { libc::_exit(0) }
}

/// SIGTERM to every group still ours, SIGKILL after [`ORPHAN_GRACE`] to what
/// is left.
fn end_groups(table: &mut Table<'_>) {
    table.signal_all(Some(Signal::TERM));
    let pause = rustix::thread::Timespec {
        tv_sec: 0,
        tv_nsec: STEP.as_nanos().try_into().unwrap_or(0),
    };
    for _ in 0..ORPHAN_GRACE.as_millis() / STEP.as_millis() {
        if !table.signal_all(None) {
            return;
        }
        let _ = rustix::thread::nanosleep(&pause);
    }
    table.signal_all(Some(Signal::KILL));
}
