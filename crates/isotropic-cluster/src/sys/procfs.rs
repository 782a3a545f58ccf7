//! Reading `/proc`: this process's threads, a process's identity (its start
//! time), whether a process listens, and what a process tree uses (CPU time,
//! resident memory).
//!
//! `/proc` may be another PID namespace's (`unshare --pid --fork` without
//! `--mount-proc`): then `/proc/PID` names whoever has that pid *there*, not
//! our process `PID`. [`seen_pid`] gives the number by which `/proc` knows
//! one of our children; `/proc/self` is always this process.

use std::collections::HashSet;
use std::sync::OnceLock;

/// Fields 14 to 17 of `/proc/PID/stat`: user and system CPU time, then
/// those of its children it waited for, in clock ticks.
const CPU_TIMES: [usize; 4] = [14, 15, 16, 17];
/// Field 24 of `/proc/PID/stat`: the resident set size, in pages.
const RSS_PAGES: usize = 24;
/// Most processes of one tree that [`tree_usage`] reads (a fork bomb does not
/// make the sampler slow).
const MAX_TREE: usize = 1024;

/// Field 20 of `/proc/PID/stat`: the number of threads.
const THREADS: usize = 20;
/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks
/// since boot.
pub(super) const START_TIME: usize = 22;
/// Fields 48 and 49 of `/proc/PID/stat`: where the command line's arguments
/// begin and end in the process's memory.
pub(super) const ARG_START: usize = 48;
/// See [`ARG_START`].
pub(super) const ARG_END: usize = 49;

/// Room for a `/proc/PID/stat` line (52 numbers and a command name of at
/// most 64 bytes).
pub(super) const STAT_SIZE: usize = 1024;

/// The number of threads of this process (from `/proc/self/stat`).
pub(super) fn thread_count() -> Option<usize> {
    let stat = std::fs::read("/proc/self/stat").ok()?;
    usize::try_from(stat_field(&stat, THREADS)?).ok()
}

/// Numeric field `field` (numbered from 1 as in `proc(5)`, 4 or above) of the
/// text of a `/proc/PID/stat`. Allocation-free: the orphan guard and children
/// between fork and exec use it.
pub(super) fn stat_field(stat: &[u8], field: usize) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces and
    // parentheses: fields are counted from the last `)`.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = stat.get(close + 2..)?;
    let text = rest
        .split(|&b| b == b' ' || b == b'\n')
        .filter(|f| !f.is_empty())
        .nth(field.checked_sub(3)?)?;
    let mut value: u64 = 0;
    for &digit in text {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    Some(value)
}

/// Reads `/proc/PID/stat` (`pid` 0: this process's) into `buffer`, and
/// returns what was read. Allocation-free and async-signal-safe.
pub(super) fn read_stat(pid: i32, buffer: &mut [u8; STAT_SIZE]) -> Option<&[u8]> {
    let mut path = [0_u8; 32];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        for &b in bytes {
            path[at] = b;
            at += 1;
        }
    };
    put(b"/proc/");
    if pid == 0 {
        put(b"self");
    } else {
        let mut digits = [0_u8; 10];
        let mut n = pid.unsigned_abs();
        let mut len = 0;
        loop {
            digits[len] = b'0' + u8::try_from(n % 10).unwrap_or(0);
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        digits[..len].reverse();
        put(&digits[..len]);
    }
    put(b"/stat\0");
    let path = std::ffi::CStr::from_bytes_until_nul(&path).ok()?;
    // rustix makes raw system calls: nothing here allocates.
    let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC;
    let file = rustix::fs::open(path, flags, rustix::fs::Mode::empty()).ok()?;
    let read = rustix::io::read(&file, &mut buffer[..]).ok()?;
    Some(&buffer[..read])
}

/// The start time of process `pid` (0: this process), allocation-free.
pub(super) fn start_time(pid: i32) -> Option<u64> {
    let mut buffer = [0; STAT_SIZE];
    stat_field(read_stat(pid, &mut buffer)?, START_TIME)
}

/// Whether `/proc` is our PID namespace's: it knows this process by the pid
/// it has (`/proc/self`), and by no other (`NSpid` lists one pid).
pub(super) fn is_ours() -> bool {
    static OURS: OnceLock<bool> = OnceLock::new();
    *OURS.get_or_init(|| {
        let seen = std::fs::read_link("/proc/self")
            .ok()
            .and_then(|link| link.to_str()?.parse::<u32>().ok());
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        seen == Some(std::process::id()) && ns_pids(&status).is_none_or(|pids| pids.len() == 1)
    })
}

/// The pids of the `NSpid` line of a `/proc/PID/status`: the process's pid
/// in the namespace of `/proc`, then in each one below, down to its own.
fn ns_pids(status: &str) -> Option<Vec<u32>> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?;
    line.split_whitespace()
        .map(|pid| pid.parse().ok())
        .collect()
}

/// The pid by which `/proc` knows `child`, a child of this process (not
/// reaped): `child` itself where `/proc` is our namespace's, else the child
/// of ours whose `NSpid` ends with it. None when not found.
pub(super) fn seen_pid(child: u32) -> Option<u32> {
    if is_ours() {
        return Some(child);
    }
    find_child(child)
}

/// The child of ours, by its pid in `/proc`, whose own pid (the last of its
/// `NSpid`) is `child`.
fn find_child(child: u32) -> Option<u32> {
    children("self")?.into_iter().find(|seen| {
        std::fs::read_to_string(format!("/proc/{seen}/status"))
            .ok()
            .and_then(|status| ns_pids(&status)?.last().copied())
            == Some(child)
    })
}

/// The children of `process` (`"self"` or a pid), from every thread's
/// `children` list (an orphan's new parent is one of its reaper's threads);
/// `None` where `/proc` has no such lists.
pub(super) fn children(process: &str) -> Option<Vec<u32>> {
    let lists: Vec<String> = std::fs::read_dir(format!("/proc/{process}/task"))
        .ok()?
        .flatten()
        .filter_map(|thread| std::fs::read_to_string(thread.path().join("children")).ok())
        .collect();
    if lists.is_empty() {
        return None;
    }
    let pids = lists.iter().flat_map(|list| list.split_ascii_whitespace());
    Some(pids.filter_map(|pid| pid.parse().ok()).collect())
}

/// The pid by which `/proc` knows this process (`/proc/self`), 0 when it
/// cannot be read. Allocation-free and async-signal-safe: children between
/// fork and exec use it.
pub(super) fn seen_self() -> u32 {
    let mut link = [0_u8; 16];
    // SAFETY: `readlink` writes at most `link.len()` bytes into `link`.
    let read =
        unsafe { libc::readlink(c"/proc/self".as_ptr(), link.as_mut_ptr().cast(), link.len()) };
    let Ok(read) = usize::try_from(read) else {
        return 0;
    };
    let mut pid: u32 = 0;
    for &digit in &link[..read.min(link.len())] {
        if !digit.is_ascii_digit() {
            return 0;
        }
        let Some(next) = pid
            .checked_mul(10)
            .and_then(|p| p.checked_add(u32::from(digit - b'0')))
        else {
            return 0;
        };
        pid = next;
    }
    pid
}

/// What a process tree uses: CPU time and resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct TreeUsage {
    /// User and system CPU time of each live process of the tree, and of
    /// the children each one waited for (so a dead descendant still counts
    /// once reaped inside the tree).
    pub(crate) cpu: std::time::Duration,
    /// Resident memory (`VmRSS`), summed, in bytes.
    pub(crate) rss: u64,
    /// How many processes were read.
    pub(crate) processes: usize,
}

/// What process `pid` (one of our children, by our pid) and its live
/// descendants use, from each one's `/proc/PID/stat` (at most [`MAX_TREE`]
/// processes). The descendants are `members` (the other processes of its
/// cgroup, by our pids: one read finds them all, even those that left its
/// process tree) where `/proc` is our PID namespace's, else found through
/// the `children` lists. `None` when the process itself cannot be read
/// (gone).
pub(crate) fn tree_usage(pid: u32, members: Option<&[u32]>) -> Option<TreeUsage> {
    let root = seen_pid(pid)?;
    let members = members.filter(|_| is_ours());
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    let page = rustix::param::page_size() as u64;
    let mut usage = TreeUsage::default();
    let (mut cpu_ticks, mut queue) = (0_u64, vec![root]);
    if let Some(members) = members {
        let others = members.iter().filter(|&&member| member != root);
        queue.extend(others.take(MAX_TREE - 1));
    }
    let mut buffer = [0; STAT_SIZE];
    while let Some(next) = queue.pop() {
        let stat = i32::try_from(next)
            .ok()
            .and_then(|next| read_stat(next, &mut buffer));
        let Some(stat) = stat else {
            if next == root {
                return None;
            }
            // Gone meanwhile.
            continue;
        };
        cpu_ticks += CPU_TIMES
            .iter()
            .filter_map(|&field| stat_field(stat, field))
            .sum::<u64>();
        usage.rss += stat_field(stat, RSS_PAGES).unwrap_or(0) * page;
        usage.processes += 1;
        if members.is_none() && usage.processes + queue.len() < MAX_TREE {
            queue.extend(children(&next.to_string()).unwrap_or_default());
        }
    }
    usage.cpu = std::time::Duration::from_nanos(
        u64::try_from(u128::from(cpu_ticks) * 1_000_000_000 / u128::from(ticks))
            .unwrap_or(u64::MAX),
    );
    Some(usage)
}

/// Whether process `pid` holds a TCP (v4 or v6) or Unix stream socket in the
/// listening state: the inodes of listening sockets in its network namespace
/// (`/proc/PID/net/…`) against the sockets among its fds. False when it has
/// gone or cannot be read.
pub(crate) fn holds_listening_socket(pid: u32) -> bool {
    let table =
        |name: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{name}")).unwrap_or_default();
    let mut listening = HashSet::new();
    for name in ["tcp", "tcp6"] {
        listening.extend(listening_tcp(&table(name)));
    }
    listening.extend(listening_unix(&table("unix")));
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            socket_inode(&target.to_string_lossy()).is_some_and(|inode| listening.contains(inode))
        })
    })
}

/// The inodes of the listening sockets in a `/proc/PID/net/tcp` (or `tcp6`)
/// table: `sl local rem st … inode`, where st `0A` is LISTEN and the inode is
/// field 9.
fn listening_tcp(table: &str) -> Vec<String> {
    inodes_where(table, (3, "0A"), 9)
}

/// The inodes of the listening sockets in a `/proc/PID/net/unix` table:
/// `Num RefCount Protocol Flags Type St Inode`, where flag `00010000` is
/// accepting.
fn listening_unix(table: &str) -> Vec<String> {
    inodes_where(table, (3, "00010000"), 6)
}

/// Field `inode` of the rows of `table` (after its header) whose field
/// `column` is `value`.
fn inodes_where(table: &str, (column, value): (usize, &str), inode: usize) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(column) == Some(&value) {
                fields.get(inode).map(|inode| (*inode).to_owned())
            } else {
                None
            }
        })
        .collect()
}

/// The inode of a socket, from the target of its `/proc/PID/fd` link
/// (`socket:[INODE]`).
fn socket_inode(target: &str) -> Option<&str> {
    target.strip_prefix("socket:[")?.strip_suffix(']')
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt as _;

    use super::*;

    #[test]
    fn stat_fields_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        let stat = b"4242 (a (b) c) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 7 0 812 \
                    8192000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";
        assert_eq!(stat_field(stat, THREADS), Some(7));
        assert_eq!(stat_field(stat, START_TIME), Some(812));
        assert_eq!(stat_field(stat, 4), Some(1));
        assert_eq!(stat_field(stat, 44), Some(0), "the last one");
        assert_eq!(stat_field(stat, 45), None);
        assert_eq!(stat_field(stat, 8), None, "negative");
        assert_eq!(stat_field(stat, 3), None, "the state is a letter");
        assert_eq!(stat_field(b"4242 (cut short) S 1", THREADS), None);
        assert_eq!(stat_field(b"no command name", THREADS), None);
        assert_eq!(stat_field(b"4242 (x)", THREADS), None);
    }

    #[test]
    fn the_start_time_of_a_process_is_its_own() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let expected: u64 = text[text.rfind(')').expect(")") + 2..]
            .split_whitespace()
            .nth(19)
            .and_then(|t| t.parse().ok())
            .expect("field 22");
        assert_eq!(start_time(pid), Some(expected));
        assert!(start_time(0).is_some());
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert_eq!(start_time(pid), None, "reaped: no such process");
    }

    #[test]
    fn the_ns_pids_are_read_from_the_nspid_line() {
        assert_eq!(
            ns_pids("Name:\tx\nNSpid:\t22972\t3\n"),
            Some(vec![22972, 3])
        );
        assert_eq!(ns_pids("NSpid:\t7\n"), Some(vec![7]));
        assert_eq!(ns_pids("Name:\tx\n"), None);
    }

    #[test]
    fn here_proc_is_ours_and_knows_us_and_our_children_by_our_pids() {
        // Tests run in the PID namespace of their `/proc`.
        assert!(is_ours());
        assert_eq!(seen_self(), std::process::id());
        assert_eq!(seen_pid(4242), Some(4242));
        // As where `/proc` is another namespace's: found among our children.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        assert_eq!(find_child(child.id()), Some(child.id()));
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert_eq!(find_child(child.id()), None, "reaped: no child of ours");
    }

    #[test]
    fn a_tree_counts_its_descendants_cpu_and_memory() {
        // sh, its child sh, and that one's sleep, in a group of their own.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sh -c 'sleep 30; :' & wait"])
            .process_group(0)
            .spawn()
            .expect("sh");
        let started = std::time::Instant::now();
        let usage = loop {
            let usage = tree_usage(child.id(), None).expect("alive");
            if usage.processes == 3 {
                break usage;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "{usage:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        let alone = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .expect("status")
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS");
        assert!(usage.rss > alone * 1024, "{usage:?}, alone {alone} KiB");
        // The same processes, listed (as a cgroup lists them).
        let mut members = vec![child.id()];
        members.extend(children(&child.id().to_string()).expect("a child"));
        members.extend(children(&members[1].to_string()).expect("a grandchild"));
        let listed = tree_usage(child.id(), Some(&members)).expect("alive");
        assert_eq!(listed.processes, 3);
        let group = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process_group(group, rustix::process::Signal::KILL).expect("kill");
        child.wait().expect("reap");
        assert_eq!(tree_usage(child.id(), None), None, "reaped");
    }

    /// The cost of one sample of a small tree (prints it: see
    /// docs/performance.md).
    #[test]
    fn a_samples_cost_is_measured() {
        let mut children: Vec<_> = (0..8)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .expect("sleep")
            })
            .collect();
        let rounds = 200_u32;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            for child in &children {
                assert!(tree_usage(child.id(), None).is_some());
            }
        }
        let per_worker = started.elapsed() / (rounds * 8);
        println!("one sample of a one-process worker: {per_worker:?}");
        for child in &mut children {
            child.kill().expect("kill");
            child.wait().expect("reap");
        }
    }

    #[test]
    fn the_thread_count_of_this_process_is_read() {
        assert!(thread_count().is_some_and(|threads| threads >= 1));
    }

    #[test]
    fn only_tcp_rows_in_the_listen_state_count() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 51234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D2F0 0100007F:0BB8 01 00000000:00000000 00:00000000 00000000  1000        0 51240 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1777 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(listening_tcp(table), ["51234", "1777"]);
        assert!(listening_tcp("  sl  local_address rem_address   st\n").is_empty());
        assert!(listening_tcp("").is_empty());
    }

    #[test]
    fn only_accepting_unix_rows_count() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 61001 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 61002 /run/app.sock
0000000000000000: 00000002 00000000 00000000 0002 01 61003
";
        assert_eq!(listening_unix(table), ["61001"]);
    }

    #[test]
    fn a_socket_link_names_its_inode() {
        assert_eq!(socket_inode("socket:[51234]"), Some("51234"));
        assert_eq!(socket_inode("pipe:[51234]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[51234"), None);
    }

    #[test]
    fn a_process_holding_a_listening_socket_is_seen_listening() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bound");
        assert!(holds_listening_socket(std::process::id()));
        drop(tcp);
    }

    #[test]
    fn a_process_that_does_not_exist_holds_nothing() {
        // Above any pid_max Linux allows.
        assert!(!holds_listening_socket(u32::MAX));
    }
}
