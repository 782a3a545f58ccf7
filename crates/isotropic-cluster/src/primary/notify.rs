//! Readiness over `NOTIFY_SOCKET` ([`Readiness::Notify`]): systemd's
//! `sd_notify` protocol, for any program.
//!
//! The primary owns one datagram socket with an abstract name
//! (`@isotropic-cluster/<primary pid>/<random>`: no file, so workers of any
//! user reach it) that receives its senders' credentials (`SO_PASSCRED`).
//! A task reads it and reports each datagram to the actor with the sender's
//! pid and process group, as the kernel vouches for them; the actor takes a
//! datagram from a worker, or from a process in a worker's process group (a
//! worker leads its own session, so its own group, which no process of
//! another worker can join), as that worker's, and drops any other: one
//! worker cannot speak for another. (A sender other than the worker must still run
//! when its datagram is read: an exited one's group cannot be read.) A
//! datagram is `KEY=VALUE` lines (at most
//! [`MAX_DATAGRAM`] bytes): `READY=1`, `STATUS=…`, `STOPPING=1`,
//! `WATCHDOG=1` are read, other keys ignored.
//!
//! [`Readiness::Notify`]: super::Readiness::Notify

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::sync::mpsc;

use super::config::Readiness;
use super::context::PrimaryContext;
use super::events::{WorkerStatus, WorkerStopping};
use super::input::Input;
use super::state::{Trigger, WorkerState};
use crate::events;
use crate::{WorkerId, sys};

/// The variable that names the socket to a worker.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The longest datagram read (systemd reads at most `PIPE_BUF`, 4096 bytes,
/// too); a longer one is dropped whole.
pub(crate) const MAX_DATAGRAM: usize = 4096;

/// At most one warning about dropped datagrams in this time.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// What one datagram says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Notice {
    /// `READY=1`.
    pub(crate) ready: bool,
    /// `STOPPING=1`.
    pub(crate) stopping: bool,
    /// `WATCHDOG=1`.
    pub(crate) watchdog: bool,
    /// The last `STATUS=` line.
    pub(crate) status: Option<String>,
}

impl Notice {
    /// Reads a datagram's `KEY=VALUE` lines (invalid UTF-8 replaced; keys
    /// not read here, and flags other than `1`, ignored).
    pub(crate) fn parse(datagram: &[u8]) -> Self {
        let mut notice = Self::default();
        for line in String::from_utf8_lossy(datagram).lines() {
            match line.split_once('=') {
                Some(("READY", "1")) => notice.ready = true,
                Some(("STOPPING", "1")) => notice.stopping = true,
                Some(("WATCHDOG", "1")) => notice.watchdog = true,
                Some(("STATUS", status)) => notice.status = Some(status.to_owned()),
                _ => {}
            }
        }
        notice
    }
}

/// Who sent a datagram, as the kernel vouches for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sender {
    /// Its pid.
    pub(crate) pid: u32,
    /// Its process group when it was read (`None`: it had exited).
    pub(crate) group: Option<u32>,
}

impl Sender {
    /// The worker this sender speaks for, among `workers` (id, pid): the
    /// worker itself, or a process of its process group (whose id is the
    /// worker's pid).
    pub(crate) fn worker(self, workers: impl Iterator<Item = (WorkerId, u32)>) -> Option<WorkerId> {
        let mut in_group = None;
        for (id, pid) in workers {
            if pid == self.pid {
                return Some(id);
            }
            if self.group == Some(pid) {
                in_group = Some(id);
            }
        }
        in_group
    }
}

/// Counts dropped datagrams, and says when to warn: at most once per
/// [`WARN_EVERY`].
#[derive(Debug, Default)]
pub(crate) struct Dropped {
    total: u64,
    unreported: u64,
    warned: Option<Instant>,
}

impl Dropped {
    /// Counts one dropped datagram (`why`, from `pid`), and warns unless it
    /// did less than [`WARN_EVERY`] ago.
    pub(crate) fn count(&mut self, why: &'static str, pid: Option<u32>) {
        if let Some(dropped) = self.note(Instant::now()) {
            tracing::warn!(
                ?pid,
                why,
                dropped,
                total = self.total,
                "NOTIFY_SOCKET datagram(s) dropped"
            );
        }
    }

    /// Counts one at `now`: how many to report now, if it is time to warn.
    fn note(&mut self, now: Instant) -> Option<u64> {
        self.total += 1;
        self.unreported += 1;
        if self
            .warned
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            return None;
        }
        self.warned = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// The primary's notify socket, bound and not yet read.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    socket: OwnedFd,
    /// Its address as workers get it (`@` and the abstract name).
    address: String,
}

impl NotifySocket {
    /// Binds a socket with a fresh abstract name.
    pub(crate) fn bind() -> io::Result<Self> {
        use std::hash::{BuildHasher as _, Hasher as _};
        // Not a secret (credentials decide who is heard): unique enough
        // that two primaries of one pid namespace never meet.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let name = format!("isotropic-cluster/{}/{random:016x}", std::process::id());
        let socket = sys::notify_socket(&name)?;
        let address = format!("@{name}");
        Ok(Self { socket, address })
    }

    /// Its address, for `NOTIFY_SOCKET`.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// Reads the socket in a task of its own, reporting each datagram to
    /// `inputs` until the actor is gone.
    ///
    /// # Errors
    ///
    /// Registering the socket with the runtime failed.
    pub(crate) fn listen(self, inputs: mpsc::Sender<Input>) -> io::Result<()> {
        let socket = std::os::unix::net::UnixDatagram::from(self.socket);
        let socket = tokio::net::UnixDatagram::from_std(socket)?;
        tokio::spawn(async move {
            let mut buf = vec![0; MAX_DATAGRAM];
            let mut dropped = Dropped::default();
            loop {
                let received = tokio::select! {
                    () = inputs.closed() => return,
                    received = socket.async_io(Interest::READABLE, || {
                        sys::recv_credentials(&socket, &mut buf)
                    }) => received,
                };
                let datagram = match received {
                    Ok(datagram) => datagram,
                    Err(error) => {
                        tracing::error!(%error, "cannot read NOTIFY_SOCKET: no more readiness from it");
                        return;
                    }
                };
                let pid = match datagram.pid {
                    Some(pid) if !datagram.truncated => pid,
                    Some(_) => {
                        dropped.count("over 4096 bytes", datagram.pid);
                        continue;
                    }
                    None => {
                        dropped.count("no credentials", None);
                        continue;
                    }
                };
                let sender = Sender {
                    pid,
                    group: sys::process_group(pid),
                };
                let notice = Notice::parse(&buf[..datagram.len]);
                if inputs.send(Input::Notify(sender, notice)).await.is_err() {
                    return;
                }
            }
        });
        Ok(())
    }
}

// ===== in the actor =====

impl PrimaryContext {
    /// A datagram from `sender`: taken as its worker's, or dropped.
    pub(super) fn notified(&mut self, sender: Sender, notice: Notice) {
        let Some(id) = sender.worker(self.registry.pids()) else {
            return self
                .notify_dropped
                .count("not from a worker", Some(sender.pid));
        };
        let Some(worker) = self.registry.worker(id) else {
            return;
        };
        if let Some(status) = notice.status {
            let worker = worker.clone();
            events::publish(self, WorkerStatus { worker, status });
        }
        if notice.ready && self.config.readiness() == Readiness::Notify {
            self.notified_ready(id);
        }
        if notice.stopping {
            events::publish(self, WorkerStopping { worker });
        }
        if notice.watchdog {
            self.heard_from(id);
        }
    }

    /// `READY=1` from worker `id`: it is ready if it is online; one whose
    /// hello has not arrived yet is ready at its hello. A repeated
    /// `READY=1` (a reload, say) changes nothing.
    fn notified_ready(&mut self, id: WorkerId) {
        let Some(entry) = self.registry.get_mut(id) else {
            return;
        };
        match entry.state {
            WorkerState::Online => {}
            WorkerState::Starting => return entry.ready_notified = true,
            _ => return,
        }
        self.apply(id, Trigger::Ready);
    }

    /// After worker `id`'s hello: it is ready if it said so before.
    pub(super) fn ready_if_notified(&mut self, id: WorkerId) {
        if let Some(entry) = self.registry.get_mut(id)
            && std::mem::take(&mut entry.ready_notified)
        {
            self.notified_ready(id);
        }
    }

    /// How many datagrams were dropped for coming from no worker.
    #[cfg(test)]
    pub(super) fn notify_dropped_total(&self) -> u64 {
        self.notify_dropped.total
    }

    pub(super) fn complete_status(&mut self, event: &WorkerStatus) {
        let id = event.worker.id();
        tracing::info!(worker_id = %id, status = %event.status, "Worker status");
        if let Some(entry) = self.registry.get_mut(id) {
            entry.status = Some(event.status.clone());
        }
    }

    pub(super) fn complete_stopping(&mut self, event: &WorkerStopping) {
        tracing::info!(worker_id = %event.worker.id(), "Worker is stopping");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_is_read_as_its_known_keys() {
        let notice = Notice::parse(b"READY=1\nSTATUS=serving on :80\nMAINPID=7\nX");
        assert_eq!(
            notice,
            Notice {
                ready: true,
                status: Some("serving on :80".into()),
                ..Notice::default()
            }
        );
        let notice = Notice::parse(b"STOPPING=1\nWATCHDOG=1\nSTATUS=a\nSTATUS=b=c\n");
        assert!(notice.stopping && notice.watchdog && !notice.ready);
        assert_eq!(notice.status.as_deref(), Some("b=c"));
        assert_eq!(Notice::parse(b"READY=0\nREADY\n\xff"), Notice::default());
        assert_eq!(
            Notice::parse(b"STATUS=\xff").status.as_deref(),
            Some("\u{fffd}")
        );
    }

    #[test]
    fn a_sender_speaks_for_itself_or_the_worker_whose_group_it_is_in() {
        let (one, two) = (WorkerId::new(1), WorkerId::new(2));
        let workers = || [(one, 100), (two, 200)].into_iter();
        let sender = |pid, group| Sender { pid, group };
        // The worker itself, whatever its group.
        assert_eq!(sender(200, Some(200)).worker(workers()), Some(two));
        assert_eq!(sender(100, Some(5)).worker(workers()), Some(one));
        // A process of worker 1's group (a child, a thread of its own).
        assert_eq!(sender(101, Some(100)).worker(workers()), Some(one));
        // Its own pid wins over the group it is in.
        assert_eq!(sender(200, Some(100)).worker(workers()), Some(two));
        // No worker: another group, or gone before its group was read.
        assert_eq!(sender(300, Some(300)).worker(workers()), None);
        assert_eq!(sender(101, None).worker(workers()), None);
    }

    #[test]
    fn drops_are_counted_and_warned_about_at_most_once_a_second() {
        let mut dropped = Dropped::default();
        let start = Instant::now();
        assert_eq!(dropped.note(start), Some(1));
        assert_eq!(dropped.note(start + Duration::from_millis(10)), None);
        assert_eq!(dropped.note(start + Duration::from_millis(999)), None);
        assert_eq!(dropped.note(start + WARN_EVERY), Some(3));
        assert_eq!(dropped.total, 4);
    }
}
