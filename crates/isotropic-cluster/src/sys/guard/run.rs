//! The orphan guard process: it holds the groups it is told of until its
//! socket ends, then ends them.

use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use rustix::process::Signal;

use super::record::{RECORD_SIZE, Record};
use super::table::Table;
use crate::sys::cgroup::{Base, GuardCgroup};
use crate::sys::procfs;

/// How long the orphan guard waits between SIGTERM and SIGKILL.
const ORPHAN_GRACE: Duration = Duration::from_millis(500);
/// How often it checks, meanwhile, whether the groups are gone.
const STEP: Duration = Duration::from_millis(10);
/// How long it waits, after the SIGKILL, for the workers' cgroups to empty
/// before it removes them.
const EMPTYING: Duration = Duration::from_secs(2);

/// The orphan guard's life, in a freshly forked child: never returns.
///
/// # Safety
///
/// Only in a freshly forked child, which owns nothing else: it closes every
/// fd but `socket` and `cgroup`'s, overwrites its command line with `title`,
/// and `groups`, `seens` and `starts` must have been allocated before the
/// fork.
pub(super) unsafe fn guard_main(
    socket: RawFd,
    cgroup: Option<&Base>,
    title: &[u8],
    groups: &mut [i32],
    seens: &mut [i32],
    starts: &mut [u64],
) -> ! {
    let [dir, parent] = cgroup.map_or([socket; 2], Base::fds);
    // SAFETY: raw, async-signal-safe system calls on plain values.
    unsafe {
        // Out of the primary's session and process group: its terminal and
        // whoever signals its group do not reach the guard.
        libc::setsid();
        libc::prctl(libc::PR_SET_NAME, c"cluster-guard".as_ptr());
        retitle(title);
        // No fd but these: no port, pipe or terminal stays open.
        close_all_but([socket, dir, parent]);
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
    // SAFETY: these fds stay open until `_exit`.
    let cgroup = cgroup.map(|base| unsafe {
        GuardCgroup::new(
            BorrowedFd::borrow_raw(dir),
            BorrowedFd::borrow_raw(parent),
            base.name(),
        )
    });
    // SAFETY: the socket stays open until `_exit`.
    let socket = unsafe { BorrowedFd::borrow_raw(socket) };
    let mut table = Table::new(groups, seens, starts);
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
    end_groups(&mut table, cgroup);
    // SAFETY: ends this process at once, as a forked child must.
    unsafe { libc::_exit(0) }
}

/// SIGTERM to every group still ours, SIGKILL after [`ORPHAN_GRACE`] to what
/// is left of them and to every process in the workers' cgroups, which are
/// then removed.
fn end_groups(table: &mut Table<'_>, cgroup: Option<GuardCgroup<'_>>) {
    let populated = || cgroup.is_some_and(GuardCgroup::populated);
    table.signal_all(Some(Signal::TERM));
    for _ in 0..ORPHAN_GRACE.as_millis() / STEP.as_millis() {
        if !table.signal_all(None) && !populated() {
            break;
        }
        pause();
    }
    table.signal_all(Some(Signal::KILL));
    if let Some(cgroup) = cgroup {
        cgroup.kill();
        for _ in 0..EMPTYING.as_millis() / STEP.as_millis() {
            if !cgroup.populated() {
                break;
            }
            pause();
        }
        cgroup.remove();
    }
}

/// Writes `title` over this process's command line (what `ps` and `pgrep -f`
/// show), NUL-padded, cut to the room there is: a guard forked without
/// `exec` would show the primary's.
///
/// # Safety
///
/// Only where nothing reads the arguments any longer: a forked child.
unsafe fn retitle(title: &[u8]) {
    let mut stat = [0; procfs::STAT_SIZE];
    let Some(stat) = procfs::read_stat(0, &mut stat) else {
        return;
    };
    let (Some(start), Some(end)) = (
        procfs::stat_field(stat, procfs::ARG_START),
        procfs::stat_field(stat, procfs::ARG_END),
    ) else {
        return;
    };
    let (Ok(start), Ok(room)) = (
        usize::try_from(start),
        usize::try_from(end.saturating_sub(start)),
    ) else {
        return;
    };
    if start == 0 || room == 0 {
        return;
    }
    // SAFETY: `start..start + room` is this process's argument area (the
    // kernel's `arg_start`/`arg_end`), mapped and writable for its whole
    // life; nothing else in this forked child reads or writes it.
    let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, room) };
    let kept = title.len().min(room - 1);
    area.fill(0);
    area[..kept].copy_from_slice(&title[..kept]);
}

/// Sleeps for [`STEP`].
fn pause() {
    let step = rustix::thread::Timespec {
        tv_sec: 0,
        tv_nsec: STEP.as_nanos().try_into().unwrap_or(0),
    };
    let _ = rustix::thread::nanosleep(&step);
}

/// Closes every fd of this process but `keep`'s.
///
/// # Safety
///
/// Only where nothing else uses the fds closed: a freshly forked child.
unsafe fn close_all_but(mut keep: [RawFd; 3]) {
    keep.sort_unstable();
    let mut from = 0_u32;
    for fd in keep.map(i32::cast_unsigned) {
        if fd > from {
            // SAFETY: closes fds nothing uses (see the function's contract).
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0_u32) };
        }
        from = from.max(fd + 1);
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0_u32) };
}
