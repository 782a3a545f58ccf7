//! Upgrading a primary without dropping connections, as nginx's `USR2`:
//! the running (old) process starts the new version of its program with its
//! listening sockets, waits until the new one says its pool is ready, then
//! drains and exits; if the new one fails, the old one keeps serving.
//!
//! The old side builds an [`Upgrade`] and waits on its [`Successor`]; the
//! new side finds what it was handed with [`handover`] and says
//! [`Handover::ready`]. The sockets stay open throughout, in both processes:
//! a connection waiting to be accepted is accepted by whichever workers
//! take it, and none is refused.
//!
//! In the new process, the handed sockets are at fds 3, 4, …: first the
//! ones the old process got from systemd's socket activation (with
//! `LISTEN_FDS` and `LISTEN_FDNAMES` as the old process got them, and
//! `LISTEN_PID` set by [`handover`]), then the named ones, then a private
//! handshake socket. `ISOTROPIC_CLUSTER_UPGRADE_FROM` (the old pid, which
//! must be the new process's parent) and `ISOTROPIC_CLUSTER_UPGRADE_FDNAMES`
//! describe them.
//!
//! # Examples
//!
//! One program, both sides:
//!
//! ```no_run
//! use std::os::fd::OwnedFd;
//! use isotropic_cluster::upgrade::{self, Upgrade};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // First thing in main, before any thread starts: adopt, or bind.
//! let listener: OwnedFd = match upgrade::handover()? {
//!     Some(mut handover) => {
//!         let (socket, address) = handover.take("http").ok_or("no http socket")?;
//!         println!("serving {address}, handed over by pid {}", handover.from_pid());
//!         // … start the workers on `socket`; once they are ready:
//!         handover.ready()?;
//!         socket
//!     }
//!     None => std::net::TcpListener::bind("127.0.0.1:8080")?.into(),
//! };
//! // Later, on SIGUSR2, once the new version of the program is in place:
//! let successor = Upgrade::new("/usr/local/bin/app")
//!     .args(std::env::args_os().skip(1))
//!     .socket("http", &listener)
//!     .start()?;
//! let pid = successor.ready().await?;
//! upgrade::notify_main_pid(pid)?; // under systemd
//! // … drain the workers and exit: the new process serves on.
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

use crate::ListenAddress;
use crate::sys;

/// The old process's pid, in the new one's environment.
const FROM: &str = "ISOTROPIC_CLUSTER_UPGRADE_FROM";
/// The names of the handed sockets, `:`-separated.
const FDNAMES: &str = "ISOTROPIC_CLUSTER_UPGRADE_FDNAMES";
/// What the new side writes on the handshake socket.
const READY: &[u8] = b"READY=1\n";

/// How to start the new version of the program: its command line, the
/// sockets it gets, and how long it has to be ready.
///
/// Its environment is this process's (so a `NOTIFY_SOCKET` from systemd
/// reaches it, and `WATCHDOG_USEC`: a `WATCHDOG_PID` of this process is
/// removed, the watchdog being the successor's once it is the main
/// process), its stdio too.
#[derive(Debug)]
pub struct Upgrade {
    program: OsString,
    args: Vec<OsString>,
    sockets: Vec<(String, io::Result<OwnedFd>)>,
    ready_timeout: Duration,
    grace: Duration,
}

impl Upgrade {
    /// Starts `program` (a path: the new version of this program).
    pub fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            sockets: Vec::new(),
            ready_timeout: Duration::from_secs(60),
            grace: Duration::from_secs(5),
        }
    }

    /// Its arguments.
    #[must_use]
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Hands `socket` (a listening TCP or Unix socket) over as `name` (not
    /// empty, no `:`); the new process finds it with [`Handover::take`]. The socket
    /// stays open here too.
    #[must_use]
    pub fn socket(mut self, name: impl Into<String>, socket: impl AsFd) -> Self {
        let copy = socket.as_fd().try_clone_to_owned();
        self.sockets.push((name.into(), copy));
        self
    }

    /// How long the new process has, from its start, to say it is ready
    /// (default 60 s).
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long a new process not ready in time has to exit after SIGTERM,
    /// before SIGKILL (default 5 s).
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Starts the new process; call it within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`UpgradeError::Start`] when a socket cannot be copied, a name is
    /// empty or holds a `:`, or the program cannot be started.
    pub fn start(self) -> Result<Successor, UpgradeError> {
        self.spawn().map_err(UpgradeError::Start)
    }

    fn spawn(self) -> io::Result<Successor> {
        let mut names = Vec::new();
        let (mut fds, activated_names) = activated();
        let activated = fds.len();
        for (name, socket) in self.sockets {
            if name.is_empty() || name.contains(':') {
                let text = format!("not a socket name (empty, or with a ':'): {name}");
                return Err(io::Error::new(io::ErrorKind::InvalidInput, text));
            }
            fds.push(socket?);
            names.push(name);
        }
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        fds.push(theirs.into());
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env(FROM, std::process::id().to_string())
            .env(FDNAMES, names.join(":"))
            .env_remove("LISTEN_PID");
        // The service manager's watchdog, meant for this process, is the
        // successor's once it is the main process: it pings as its own.
        if std::env::var("WATCHDOG_PID").is_ok_and(|pid| pid == std::process::id().to_string()) {
            command.env_remove("WATCHDOG_PID");
        }
        match (activated, activated_names) {
            (0, _) => command
                .env_remove("LISTEN_FDS")
                .env_remove("LISTEN_FDNAMES"),
            (count, names) => command
                .env("LISTEN_FDS", count.to_string())
                .env("LISTEN_FDNAMES", names.unwrap_or_default()),
        };
        let copies = sys::place_in_child(&mut command, &fds)?;
        drop(fds);
        // Recorded before an orphan reaper could see it.
        let mut children = sys::own_children();
        let child = command.spawn()?;
        drop(copies);
        let pid = child.id().unwrap_or_default();
        children.insert(pid);
        drop(children);
        ours.set_nonblocking(true)?;
        Ok(Successor {
            child,
            pid,
            handshake: tokio::net::UnixStream::from_std(ours)?,
            deadline: tokio::time::Instant::now() + self.ready_timeout,
            timeout: self.ready_timeout,
            grace: self.grace,
            done: false,
        })
    }
}

/// The sockets this process got by systemd's socket activation (copies),
/// and their `LISTEN_FDNAMES`; none if one of them is no longer open.
fn activated() -> (Vec<OwnedFd>, Option<String>) {
    let read = |key: &str| std::env::var(key).ok();
    let number = |key: &str| read(key)?.parse::<u32>().ok();
    if number("LISTEN_PID") != Some(std::process::id()) {
        return (Vec::new(), None);
    }
    let count = number("LISTEN_FDS").unwrap_or(0).min(1024);
    let copies: io::Result<Vec<OwnedFd>> = (0..count)
        .map(|i| sys::copy_socket(3 + RawFd::try_from(i).unwrap_or(RawFd::MAX)))
        .collect();
    match copies {
        Ok(copies) => (copies, read("LISTEN_FDNAMES")),
        Err(error) => {
            tracing::warn!(%error, "the socket-activation sockets are not all open: not handed over");
            (Vec::new(), None)
        }
    }
}

/// The new process, started by [`Upgrade::start`], until it is ready.
///
/// Dropped before it is ready, it is asked to stop (SIGTERM).
#[derive(Debug)]
pub struct Successor {
    child: tokio::process::Child,
    pid: u32,
    handshake: tokio::net::UnixStream,
    deadline: tokio::time::Instant,
    timeout: Duration,
    grace: Duration,
    /// Ready, or reaped: nothing to stop when dropped.
    done: bool,
}

impl Successor {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until it says it is ready ([`Handover::ready`]); resolves with
    /// its pid. It then runs on (this process no longer waits for it).
    ///
    /// # Errors
    ///
    /// [`UpgradeError::Exited`] when it exits first (it is reaped), and
    /// [`UpgradeError::NotReady`] when it is not ready within the ready
    /// timeout: then it is stopped (SIGTERM, SIGKILL after the grace) and
    /// reaped.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the successor: it is asked to stop.
    pub async fn ready(mut self) -> Result<u32, UpgradeError> {
        let result = self.wait().await;
        sys::own_children().remove(&self.pid);
        self.done = true;
        result.map(|()| self.pid)
    }

    async fn wait(&mut self) -> Result<(), UpgradeError> {
        let mut buf = [0; READY.len()];
        let mut open = true;
        loop {
            tokio::select! {
                read = self.handshake.read(&mut buf), if open => match read {
                    Ok(n) if n > 0 => return Ok(()),
                    // Closed without a word: its exit or the deadline tells.
                    _ => open = false,
                },
                status = self.child.wait() => {
                    return Err(status.map_or_else(UpgradeError::Start, UpgradeError::Exited));
                }
                () = tokio::time::sleep_until(self.deadline) => {
                    self.stop().await;
                    return Err(UpgradeError::NotReady(self.timeout));
                }
            }
        }
    }

    /// SIGTERM, then SIGKILL after the grace; reaped.
    async fn stop(&mut self) {
        let _ = sys::send_signal(self.pid, false, libc::SIGTERM);
        if tokio::time::timeout(self.grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if !self.done {
            // Not reaped yet: its pid is still its own.
            let _ = sys::send_signal(self.pid, false, libc::SIGTERM);
            sys::own_children().remove(&self.pid);
        }
    }
}

/// Tells this process's service manager that `pid` (a successor) is its
/// main process now: `MAINPID=pid` on `NOTIFY_SOCKET`, as systemd reads it
/// (the unit needs `NotifyAccess=main` or `all`; see [`crate::systemd`]).
/// Returns whether there was a `NOTIFY_SOCKET` to tell.
///
/// # Errors
///
/// When the datagram cannot be sent.
pub fn notify_main_pid(pid: u32) -> io::Result<bool> {
    crate::systemd::notify(&[crate::systemd::Notice::MainPid(pid)])
}

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The new process cannot be started.
    #[error("cannot start the new process")]
    Start(#[source] io::Error),
    /// The new process exited before it was ready.
    #[error("the new process exited before it was ready ({0})")]
    Exited(ExitStatus),
    /// The new process was not ready within the ready timeout: it was stopped.
    #[error("the new process was not ready within {0:?}: stopped it")]
    NotReady(Duration),
}

/// What the old process handed this one: its sockets by name, and the
/// handshake on which to say ready.
#[derive(Debug)]
pub struct Handover {
    from: u32,
    sockets: Vec<(String, OwnedFd, ListenAddress)>,
    handshake: std::os::unix::net::UnixStream,
}

/// What this process was handed, if an old process started it through
/// [`Upgrade`]: its sockets are adopted (close-on-exec), the ones from
/// systemd's socket activation put back as systemd passes them
/// (`LISTEN_PID` is set to this process). Taken by the first call only.
///
/// Call it first thing in `main`, before any thread starts (the
/// environment is changed only while this process has a single thread: the
/// variables that describe the handover are removed, so that no child sees
/// them).
///
/// # Errors
///
/// When this process was handed sockets that are not there (an fd that is
/// not a socket, a socket with no TCP or Unix path address).
pub fn handover() -> io::Result<Option<Handover>> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    if std::env::var_os(FROM).is_none() {
        return Ok(None);
    }
    let layout = Layout::read(|key| std::env::var(key).ok(), sys::parent_pid());
    let _ = sys::remove_env_if_single_threaded(&[FROM, FDNAMES]);
    let Some(layout) = layout.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))? else {
        return Ok(None);
    };
    if layout.activated > 0
        && !sys::set_env_if_single_threaded("LISTEN_PID", &std::process::id().to_string())
    {
        tracing::warn!(
            "more than one thread: LISTEN_PID not set for the handed socket-activation sockets"
        );
    }
    let fd = |i: usize| 3 + RawFd::try_from(layout.activated + i).unwrap_or(RawFd::MAX);
    let mut sockets = Vec::new();
    for (i, name) in layout.names.iter().enumerate() {
        let socket = sys::adopt_inherited_socket(fd(i))?;
        let address = crate::net::address_of(&socket).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the socket handed over as {name} has no TCP or Unix path address"),
            )
        })?;
        sockets.push((name.clone(), socket, address));
    }
    let handshake = sys::adopt_inherited_socket(fd(layout.names.len()))?;
    Ok(Some(Handover {
        from: layout.from,
        sockets,
        handshake: handshake.into(),
    }))
}

impl Handover {
    /// The pid of the old process.
    pub fn from_pid(&self) -> u32 {
        self.from
    }

    /// The names of the sockets not taken yet.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sockets.iter().map(|(name, ..)| name.as_str())
    }

    /// The socket handed over as `name`, and the address it is bound to.
    pub fn take(&mut self, name: &str) -> Option<(OwnedFd, ListenAddress)> {
        let at = self.sockets.iter().position(|(n, ..)| n == name)?;
        let (_, socket, address) = self.sockets.remove(at);
        Some((socket, address))
    }

    /// Tells the old process that this one is ready: it then drains and
    /// exits.
    ///
    /// # Errors
    ///
    /// When the old process is gone (it gave up waiting, or died).
    pub fn ready(self) -> io::Result<()> {
        use std::io::Write as _;
        (&self.handshake).write_all(READY)
    }
}

/// What the variables of a handover say.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    /// The old process.
    from: u32,
    /// Sockets from systemd's socket activation, from fd 3.
    activated: usize,
    /// The names of the sockets after them (the handshake is last).
    names: Vec<String>,
}

impl Layout {
    /// The handover `var` describes, for a process whose parent is `parent`:
    /// none without one, or when it was meant for another process (a
    /// descendant of the new process inherited the variables).
    fn read(
        var: impl Fn(&str) -> Option<String>,
        parent: Option<u32>,
    ) -> Result<Option<Self>, String> {
        let Some(from) = var(FROM) else {
            return Ok(None);
        };
        let from: u32 = from
            .parse()
            .map_err(|_| format!("{FROM} is not a pid: {from}"))?;
        if Some(from) != parent {
            return Ok(None);
        }
        let activated = match var("LISTEN_FDS") {
            Some(count) => count
                .parse::<usize>()
                .ok()
                .filter(|&count| count <= 1024)
                .ok_or_else(|| format!("LISTEN_FDS is not a count: {count}"))?,
            None => 0,
        };
        let names = var(FDNAMES).unwrap_or_default();
        let names = names
            .split(':')
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Some(Self {
            from,
            activated,
            names,
        }))
    }
}

#[cfg(test)]
mod tests;
