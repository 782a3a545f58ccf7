//! Processes: signals, this process's parent, its environment.

use std::io;

use rustix::process::{Pid, Signal};

/// Sends `signal` to the process `pid`, or to its whole process group.
///
/// Callers only pass the pid of a child that has not been reaped yet, so the
/// number cannot have been reused.
pub(crate) fn send_signal(pid: u32, group: bool, signal: i32) -> io::Result<()> {
    let pid = Pid::from_raw(pid.cast_signed())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0"))?;
    let signal = Signal::from_named_raw(signal)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unknown signal"))?;
    let result = if group {
        rustix::process::kill_process_group(pid, signal)
    } else {
        rustix::process::kill_process(pid, signal)
    };
    match result {
        Err(rustix::io::Errno::SRCH) => Ok(()),
        other => Ok(other?),
    }
}

/// The pid of this process's parent.
pub(crate) fn parent_pid() -> Option<u32> {
    rustix::process::getppid().map(|pid| pid.as_raw_pid().cast_unsigned())
}

/// Removes `keys` from the environment if that is sound, that is when this
/// process has a single thread; returns whether it did.
pub(crate) fn remove_env_if_single_threaded(keys: &[&str]) -> bool {
    if super::procfs::thread_count() != Some(1) {
        return false;
    }
    for key in keys {
        // SAFETY: this process has exactly one thread (checked just above, and
        // only this thread could start another), so no other thread can read
        // or write the environment concurrently.
        unsafe { std::env::remove_var(key) };
    }
    true
}
