//! The process groups the orphan guard holds, and whether a group is still
//! ours to signal. Allocation-free: the guard runs it after a fork.

use rustix::io::Errno;
use rustix::process::{Pid, Signal};

use super::record::Record;
use crate::sys::procfs;

/// Who process `group` (the leader of a registered group) is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::sys) enum Leader {
    /// The registered process, alive or a zombie: the group number is ours.
    Ours,
    /// No process has that pid: the leader was reaped. Members of its group
    /// may live on (a group's number is not reused while it has members).
    Gone,
    /// Another process has that pid: the number was reused.
    Stranger,
}

/// Who the leader of a group registered with start time `start`, known to
/// `/proc` as `seen` (0: unknown), is now.
pub(in crate::sys) fn leader(group: i32, seen: i32, start: u64) -> Leader {
    let now = if seen > 0 {
        procfs::start_time(seen)
    } else {
        None
    };
    if now == Some(start) {
        return Leader::Ours;
    }
    // Not the process registered, or unknown: whether some process has the
    // pid tells a reaped leader from a stranger.
    match Pid::from_raw(group).map(rustix::process::test_kill_process) {
        Some(Err(Errno::SRCH)) => Leader::Gone,
        // Its identity was never known (no `/proc` at registration).
        _ if start == 0 && now.is_none() => Leader::Ours,
        _ => Leader::Stranger,
    }
}

/// The groups held, in memory allocated before the fork: slot `i` holds
/// group `groups[i]` (0: free), whose leader, known to `/proc` as
/// `seens[i]`, started at `starts[i]`.
pub(in crate::sys) struct Table<'a> {
    groups: &'a mut [i32],
    seens: &'a mut [i32],
    starts: &'a mut [u64],
}

impl<'a> Table<'a> {
    /// A table of as many slots as the shortest of `groups`, `seens` and
    /// `starts` (zeroed: free).
    pub(in crate::sys) fn new(
        groups: &'a mut [i32],
        seens: &'a mut [i32],
        starts: &'a mut [u64],
    ) -> Self {
        let slots = groups.len().min(seens.len()).min(starts.len());
        Self {
            groups: &mut groups[..slots],
            seens: &mut seens[..slots],
            starts: &mut starts[..slots],
        }
    }

    /// Applies what the guard was told.
    pub(in crate::sys) fn apply(&mut self, record: Record) {
        match record {
            Record::Register { group, seen, start } => self.register(group, seen, start),
            Record::Forget { group } => {
                if let Some(slot) = self.slot(group) {
                    self.groups[slot] = 0;
                }
            }
            Record::Sweep => self.sweep(),
        }
    }

    /// The slot holding `group` (0: a free slot).
    fn slot(&self, group: i32) -> Option<usize> {
        self.groups.iter().position(|&held| held == group)
    }

    fn register(&mut self, group: i32, seen: i32, start: u64) {
        // The worker registers itself, then the primary registers it again.
        let slot = self.slot(group).or_else(|| {
            if self.slot(0).is_none() {
                self.sweep();
            }
            self.slot(0)
        });
        if let Some(slot) = slot {
            self.groups[slot] = group;
            self.seens[slot] = seen;
            self.starts[slot] = start;
        }
    }

    /// Drops every group whose leader is not the process registered. While
    /// the primary lives, only it reaps its workers, and it kills what is left
    /// of a group and forgets it right after: such a group is done with.
    fn sweep(&mut self) {
        for ((group, &seen), &start) in self.groups.iter_mut().zip(&*self.seens).zip(&*self.starts)
        {
            if *group != 0 && leader(*group, seen, start) != Leader::Ours {
                *group = 0;
            }
        }
    }

    /// Sends `signal` (`None`: only checks) to every group still held, and
    /// drops the groups that are gone or no longer ours; returns whether any
    /// is left.
    ///
    /// A group whose leader is [`Leader::Gone`] is signalled: its number
    /// cannot have been reused while any of its members lived, and the guard
    /// only gets there after the primary ended (its orphans are reaped by
    /// another process), a moment after the leader was still ours.
    pub(in crate::sys) fn signal_all(&mut self, signal: Option<Signal>) -> bool {
        let mut left = false;
        for ((group, &seen), &start) in self.groups.iter_mut().zip(&*self.seens).zip(&*self.starts)
        {
            if *group == 0 {
                continue;
            }
            let sent = match (leader(*group, seen, start), Pid::from_raw(*group)) {
                (Leader::Stranger, _) | (_, None) => Err(Errno::SRCH),
                (Leader::Ours | Leader::Gone, Some(pid)) => match signal {
                    Some(signal) => rustix::process::kill_process_group(pid, signal),
                    None => rustix::process::test_kill_process_group(pid),
                },
            };
            if sent.is_err() {
                *group = 0;
            }
            left |= *group != 0;
        }
        left
    }

    /// How many groups are held.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.groups.iter().filter(|&&group| group != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt as _;

    use super::*;

    /// A `sleep` leading its own process group, killed and reaped on drop.
    struct Sleeper(std::process::Child, i32);

    impl Sleeper {
        fn start() -> Self {
            let child = std::process::Command::new("sleep")
                .arg("30")
                .process_group(0)
                .spawn()
                .expect("sleep");
            let pid = i32::try_from(child.id()).expect("pid");
            Self(child, pid)
        }

        fn start_time(&self) -> u64 {
            procfs::start_time(self.1).expect("a start time")
        }

        fn alive(&mut self) -> bool {
            matches!(self.0.try_wait(), Ok(None))
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_leader_is_ours_until_reaped_then_gone_and_another_start_time_is_a_stranger() {
        let mut process = Sleeper::start();
        let (group, start) = (process.1, process.start_time());
        assert_eq!(leader(group, group, start), Leader::Ours);
        assert_eq!(leader(group, group, start + 1), Leader::Stranger);
        process.0.kill().expect("kill");
        // A zombie still holds its number.
        let killed = std::time::Instant::now();
        while !std::fs::read_to_string(format!("/proc/{group}/stat"))
            .is_ok_and(|s| s.contains(") Z "))
        {
            assert!(
                killed.elapsed() < std::time::Duration::from_secs(30),
                "never a zombie"
            );
            std::thread::yield_now();
        }
        assert_eq!(
            leader(group, group, start),
            Leader::Ours,
            "a zombie is still ours"
        );
        process.0.wait().expect("reap");
        assert_eq!(leader(group, group, start), Leader::Gone);
        assert!(!process.alive());
    }

    #[test]
    fn a_leader_is_told_by_its_pid_in_proc_which_may_differ_from_its_group() {
        // As where `/proc` is another PID namespace's: the leader of group
        // `group` is known there as `seen`.
        let (mut group, seen) = (Sleeper::start(), Sleeper::start());
        let start = seen.start_time();
        assert_eq!(leader(group.1, seen.1, start), Leader::Ours);
        // `/proc/SEEN` is another process: whoever has pid `group` is not
        // the one registered.
        assert_eq!(leader(group.1, seen.1, start + 1), Leader::Stranger);
        assert_eq!(leader(group.1, 0, start), Leader::Stranger, "unknown");
        group.0.kill().expect("kill");
        group.0.wait().expect("reap");
        assert_eq!(leader(group.1, seen.1, start + 1), Leader::Gone);
    }

    #[test]
    fn a_group_whose_pid_another_process_took_is_never_signalled() {
        let mut stranger = Sleeper::start();
        let (mut groups, mut seens, mut starts) = ([0; 4], [0; 4], [0; 4]);
        let mut table = Table::new(&mut groups, &mut seens, &mut starts);
        // As if a failed spawn had registered this pid, with its own start
        // time, and the stranger had then been given the same pid.
        table.apply(Record::Register {
            group: stranger.1,
            seen: stranger.1,
            start: stranger.start_time() + 1,
        });
        assert_eq!(table.held(), 1);
        assert!(
            !table.signal_all(Some(Signal::KILL)),
            "dropped, not signalled"
        );
        assert!(stranger.alive(), "the stranger was killed");
    }

    #[test]
    fn a_sweep_drops_the_groups_that_are_not_ours_and_keeps_the_others() {
        let mut ours = Sleeper::start();
        let stranger = Sleeper::start();
        let mut failed = Sleeper::start();
        let failed_start = failed.start_time();
        failed.0.kill().expect("kill");
        failed.0.wait().expect("reap");
        let (mut groups, mut seens, mut starts) = ([0; 4], [0; 4], [0; 4]);
        let mut table = Table::new(&mut groups, &mut seens, &mut starts);
        for (group, start) in [
            (ours.1, ours.start_time()),
            (stranger.1, stranger.start_time() + 1),
            (failed.1, failed_start),
        ] {
            table.apply(Record::Register {
                group,
                seen: group,
                start,
            });
        }
        table.apply(Record::Sweep);
        assert_eq!(table.groups, [ours.1, 0, 0, 0]);
        assert_eq!(table.starts[0], ours.start_time());
        table.apply(Record::Forget { group: ours.1 });
        assert_eq!(table.held(), 0);
        assert!(ours.alive(), "forgetting signals nothing");
    }

    #[test]
    fn a_full_table_makes_room_by_sweeping() {
        let ours = Sleeper::start();
        let (mut groups, mut seens, mut starts) = ([0; 1], [0; 1], [0; 1]);
        let mut table = Table::new(&mut groups, &mut seens, &mut starts);
        // The leader of this group is gone (pid_max is at most 2^22).
        table.apply(Record::Register {
            group: i32::MAX,
            seen: i32::MAX,
            start: 1,
        });
        table.apply(Record::Register {
            group: ours.1,
            seen: ours.1,
            start: ours.start_time(),
        });
        assert_eq!(table.groups, [ours.1]);
    }
}
