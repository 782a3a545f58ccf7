//! The listening sockets the primary holds for its workers, and, in round
//! robin, the connections it accepts and passes to them in turn.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::task::AbortHandle;

use tokio::sync::mpsc::Sender;

use super::WorkerHandle;
use super::input::Input;
use crate::WorkerId;
use crate::net::{self, Connection, Distribution, ListenAddress, ListenError, ListenErrorKind};
use crate::protocol::{self, Frame};

/// Connections accepted while no worker listens wait here, up to this many.
const WAITING: usize = 1024;

/// A listening socket the primary holds for its workers.
#[derive(Debug)]
struct Shared {
    fd: OwnedFd,
    bound: ListenAddress,
    /// Bound by us (not passed by socket activation): a Unix path is ours to
    /// remove at the end.
    ours: bool,
}

/// The workers that take the connections of one address, in turn.
#[derive(Debug)]
struct Group {
    /// Each worker, with the id of its listen request.
    takers: Vec<(WorkerId, u64)>,
    next: usize,
    waiting: VecDeque<OwnedFd>,
    acceptor: AbortHandle,
}

/// Sockets by the address asked for, kept while the primary runs so that
/// replacements serve on the same socket; and the round-robin groups.
#[derive(Debug, Default)]
pub(super) struct Listeners {
    sockets: HashMap<ListenAddress, Shared>,
    groups: HashMap<ListenAddress, Group>,
}

impl Listeners {
    /// Starts with the sockets passed by socket activation, if any.
    pub(super) fn activated() -> Self {
        let sockets = net::take_activated()
            .into_iter()
            .map(|(fd, bound)| {
                (
                    bound.clone(),
                    Shared {
                        fd,
                        bound,
                        ours: false,
                    },
                )
            })
            .collect();
        Self {
            sockets,
            groups: HashMap::new(),
        }
    }

    /// Stops accepting for round robin (the sockets stay open).
    pub(super) fn stop_accepting(&mut self) {
        for group in self.groups.values() {
            group.acceptor.abort();
        }
    }

    /// Closes everything, and removes the Unix socket files we made.
    pub(super) fn close(&mut self) {
        self.stop_accepting();
        self.groups.clear();
        for (_, shared) in self.sockets.drain() {
            if let (true, ListenAddress::Unix(path)) = (shared.ours, shared.bound) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Takes `worker` out of every round-robin group.
    pub(super) fn forget(&mut self, worker: WorkerId) {
        for group in self.groups.values_mut() {
            group.takers.retain(|(id, _)| *id != worker);
        }
    }

    /// The socket for `address` (bound on first use) and its bound address;
    /// with `reuseport`, a socket of the worker's own on the reserved port.
    fn socket(
        &mut self,
        address: &ListenAddress,
        reuseport: bool,
    ) -> std::io::Result<(OwnedFd, ListenAddress)> {
        let known = self.sockets.get(address).or_else(|| {
            self.sockets
                .values()
                .find(|shared| shared.bound == *address)
        });
        match (known, address) {
            (
                Some(Shared {
                    bound: ListenAddress::Tcp(bound),
                    ours: true,
                    ..
                }),
                _,
            ) if reuseport => {
                net::reuseport(*bound, true).map(|(fd, bound)| (fd, ListenAddress::Tcp(bound)))
            }
            (Some(shared), _) => Ok((shared.fd.try_clone()?, shared.bound.clone())),
            (None, ListenAddress::Tcp(asked)) if reuseport => {
                // The primary reserves the port (bound, not listening).
                let (anchor, bound) = net::reuseport(*asked, false)?;
                let (fd, bound) = net::reuseport(bound, true)?;
                self.keep(address, anchor, ListenAddress::Tcp(bound));
                Ok((fd, ListenAddress::Tcp(bound)))
            }
            (None, _) => {
                let (fd, bound) = net::bind(address)?;
                let copy = fd.try_clone()?;
                self.keep(address, fd, bound.clone());
                Ok((copy, bound))
            }
        }
    }

    fn keep(&mut self, address: &ListenAddress, fd: OwnedFd, bound: ListenAddress) {
        self.sockets.insert(
            address.clone(),
            Shared {
                fd,
                bound,
                ours: true,
            },
        );
    }
}

impl Listeners {
    /// Answers listen request `request` of `worker`: the socket for
    /// `address`, or (round robin) the promise of its connections; the
    /// address bound, or why not (`None` when the answer could not be queued:
    /// the worker is leaving, or its queue is full). `connected` finds a
    /// worker still connected.
    pub(super) fn answer(
        &mut self,
        worker: &WorkerHandle,
        request: u64,
        address: &ListenAddress,
        distribution: Distribution,
        inputs: &Sender<Input>,
        connected: impl Fn(WorkerId) -> Option<WorkerHandle>,
    ) -> Option<Result<ListenAddress, ListenError>> {
        let reuseport = distribution == Distribution::ReusePort;
        let answer = |result, passed| {
            protocol::encode_control(&Frame::Listening {
                id: request,
                result,
                passed,
            })
        };
        let (fd, bound) = match self.socket(address, reuseport) {
            Ok(socket) => socket,
            Err(error) => {
                let kind = ListenErrorKind::of(&error);
                let message = error.to_string();
                let _ = worker.try_send_frame(answer(Err((kind, message.clone())), false));
                return Some(Err(ListenError {
                    address: address.to_string(),
                    kind,
                    message,
                }));
            }
        };
        if distribution == Distribution::RoundRobin {
            worker
                .try_send_frame(answer(Ok(bound.clone()), true))
                .ok()?;
            self.take_turns(worker.id(), request, fd, &bound, inputs, connected);
        } else {
            worker
                .outbox()
                .try_send_fd(answer(Ok(bound.clone()), false), fd)
                .ok()?;
        }
        Some(Ok(bound))
    }

    /// Adds worker `id` to the round-robin group of `bound`, starting to
    /// accept on `fd` for the first one; hands it what was waiting.
    fn take_turns(
        &mut self,
        id: WorkerId,
        request: u64,
        fd: OwnedFd,
        bound: &ListenAddress,
        inputs: &Sender<Input>,
        connected: impl Fn(WorkerId) -> Option<WorkerHandle>,
    ) {
        let group = self.groups.entry(bound.clone()).or_insert_with(|| Group {
            takers: Vec::new(),
            next: 0,
            waiting: VecDeque::new(),
            acceptor: tokio::spawn(accept(fd, bound.clone(), inputs.clone())).abort_handle(),
        });
        group.takers.push((id, request));
        let waiting = std::mem::take(&mut group.waiting);
        for connection in waiting {
            self.pass(bound, connection, &connected);
        }
    }

    /// Passes an accepted connection to the next connected worker of its
    /// group (or keeps it until one listens).
    pub(super) fn pass(
        &mut self,
        bound: &ListenAddress,
        connection: OwnedFd,
        connected: impl Fn(WorkerId) -> Option<WorkerHandle>,
    ) {
        let Some(group) = self.groups.get_mut(bound) else {
            return;
        };
        let count = group.takers.len();
        let taker = (0..count)
            .map(|i| (group.next + i) % count)
            .find_map(|slot| {
                let (id, listener) = group.takers[slot];
                let worker = connected(id).filter(WorkerHandle::is_connected)?;
                Some((slot, worker, listener))
            });
        match taker {
            Some((slot, worker, listener)) => {
                group.next = (slot + 1) % count;
                let frame = protocol::encode_control(&Frame::Connection { listener });
                if worker.outbox().try_send_fd(frame, connection).is_err() {
                    tracing::warn!(worker_id = %worker.id(), "a passed connection was dropped: the worker's queue is full");
                }
            }
            None if group.waiting.len() < WAITING => group.waiting.push_back(connection),
            None => tracing::warn!(address = %bound, "a connection was dropped: no worker listens"),
        }
    }
}

/// Accepts on `fd` and hands each connection to the actor.
async fn accept(fd: OwnedFd, bound: ListenAddress, inputs: Sender<Input>) {
    let Ok(mut listener) = net::adopt(&bound, fd) else {
        return;
    };
    loop {
        match listener.accept().await.and_then(Connection::into_fd) {
            Ok(connection) => {
                if inputs
                    .send(Input::Accepted(bound.clone(), connection))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(error) => {
                // Out of fds, say: wait a little rather than spin.
                tracing::warn!(%error, address = %bound, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
