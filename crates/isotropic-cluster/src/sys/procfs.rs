//! Reading `/proc`: this process's threads, and whether a process listens.

use std::collections::HashSet;

/// The number of threads of this process (from `/proc/self/stat`).
pub(super) fn thread_count() -> Option<usize> {
    threads_in_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// The thread count in the text of a `/proc/PID/stat`.
fn threads_in_stat(stat: &str) -> Option<usize> {
    // Fields after the command name, which is in parentheses and may hold
    // spaces and parentheses; the thread count is the 20th field.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(17)?.parse().ok()
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

