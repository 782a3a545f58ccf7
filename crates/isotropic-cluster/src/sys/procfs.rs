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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_count_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 7 0 812 \
                    8192000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(threads_in_stat(stat), Some(7));
        assert_eq!(threads_in_stat("4242 (cut short) S 1"), None);
        assert_eq!(threads_in_stat("no command name"), None);
        assert_eq!(threads_in_stat("4242 (x)"), None);
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
