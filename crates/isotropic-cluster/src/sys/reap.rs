//! Reaping orphans: as PID 1 or a child subreaper, this process inherits
//! the orphans of its descendants (a worker's double-forked daemon, the
//! children of a worker that died) and must reap them, without taking the
//! exit of a process a primary started (tokio reaps those and reports them).

use std::collections::BTreeSet;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rustix::process::{Pid, WaitOptions};

/// The children this process started through a primary and has not reaped
/// yet: never reaped as orphans.
static OURS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// The children this process started and has not reaped, locked: hold it
/// across a spawn and [`insert`](BTreeSet::insert) the new pid before
/// releasing it, so that no orphan sweep sees the child unrecorded.
pub(crate) fn own_children() -> MutexGuard<'static, BTreeSet<u32>> {
    OURS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes this process a child subreaper: orphaned descendants become its
/// children rather than init's (PID 1 is one already).
pub(crate) fn become_subreaper() -> io::Result<()> {
    if rustix::process::getpid().is_init() {
        return Ok(());
    }
    Ok(rustix::process::set_child_subreaper(Some(
        rustix::process::getpid(),
    ))?)
}

/// Reaps every child that has exited and is not one of [`own_children`];
/// returns how many.
pub(crate) fn reap_orphans() -> usize {
    let ours = own_children();
    children()
        .into_iter()
        .filter(|pid| !ours.contains(pid))
        .filter_map(|pid| Pid::from_raw(pid.cast_signed()))
        .filter(|&pid| {
            matches!(
                rustix::process::waitpid(Some(pid), WaitOptions::NOHANG),
                Ok(Some(_))
            )
        })
        .count()
}

/// This process's children (see [`super::procfs::children`]), or, on
/// kernels without the `children` lists, from the parent of every process.
fn children() -> Vec<u32> {
    super::procfs::children("self").unwrap_or_else(children_by_parent)
}

/// The processes whose parent (field 4 of `/proc/PID/stat`) is this one.
fn children_by_parent() -> Vec<u32> {
    let us = rustix::process::getpid().as_raw_pid().cast_unsigned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let parent = stat
                    .rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split(' ').nth(1));
                parent.and_then(|p| p.parse::<u32>().ok()) == Some(us)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways_find_the_same_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let listed = children();
        let scanned = children_by_parent();
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert!(listed.contains(&pid), "{listed:?}");
        assert!(scanned.contains(&pid), "{scanned:?}");
    }
}
