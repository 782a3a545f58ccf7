//! Round robin: the primary accepts on an address and passes each connection
//! to the next of its workers that keeps up.
//!
//! A worker takes one turn per round however many times it asked for the
//! address (its connections go to its listen requests in turn). A worker
//! that acknowledges the connections it takes (it says so in each listen
//! request) holds at most [`UNACKED`] it has not acknowledged, on all its
//! requests together: one that is stopped or stuck gets no more, and the
//! others take its turns.
//! Connections that no worker has room for wait in the group's queue, in
//! order, until an acknowledgement makes room.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tokio::task::AbortHandle;

use super::super::WorkerHandle;
use super::super::input::Input;
use crate::WorkerId;
use crate::net::{self, Connection, ListenAddress};
use crate::protocol::{self, Frame};

/// The most connections passed to one worker and not acknowledged yet.
const UNACKED: usize = 4;

/// Connections that no worker has room for wait here, up to this many per
/// address.
const WAITING: usize = 1024;

/// A worker taking its turns, for its listen requests on one address.
#[derive(Debug)]
struct Taker {
    worker: WorkerId,
    /// Its listen requests (id, and whether it acknowledges what it takes),
    /// and the one whose turn is next.
    listeners: Vec<(u64, bool)>,
    next: usize,
    unacked: usize,
}

impl Taker {
    /// Bounded by `unacked` unless one of its requests does not acknowledge.
    fn has_room(&self) -> bool {
        self.unacked < UNACKED || self.listeners.iter().any(|(_, acks)| !acks)
    }

    /// The listen request whose turn it is (and the next one's after it).
    fn turn(&mut self) -> (u64, bool) {
        let listener = self.listeners[self.next % self.listeners.len()];
        self.next = (self.next + 1) % self.listeners.len();
        listener
    }
}

/// The workers that take the connections of one address, in turn.
#[derive(Debug)]
struct Group {
    takers: Vec<Taker>,
    next: usize,
    waiting: VecDeque<OwnedFd>,
    acceptor: AbortHandle,
}

/// The round-robin groups, by bound address.
#[derive(Debug, Default)]
pub(super) struct Turns {
    groups: HashMap<ListenAddress, Group>,
    /// Connections dropped so far (the count each warning gives).
    dropped: u64,
}

impl Turns {
    /// How many listen requests of `worker` take turns on `bound`.
    pub(super) fn requests(&self, worker: WorkerId, bound: &ListenAddress) -> usize {
        self.groups.get(bound).map_or(0, |group| {
            let mine = |taker: &&Taker| taker.worker == worker;
            group
                .takers
                .iter()
                .find(mine)
                .map_or(0, |t| t.listeners.len())
        })
    }

    /// Adds listen request `listener` of worker `worker` to the group of
    /// `bound` (to the worker's turns, when it has some already), starting
    /// to accept on `fd` for the first one; hands it what was waiting.
    pub(super) fn join(
        &mut self,
        (worker, listener, acks): (WorkerId, u64, bool),
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
        match group.takers.iter_mut().find(|taker| taker.worker == worker) {
            Some(taker) => taker.listeners.push((listener, acks)),
            None => group.takers.push(Taker {
                worker,
                listeners: vec![(listener, acks)],
                next: 0,
                unacked: 0,
            }),
        }
        group.drain(&mut self.dropped, &connected);
    }

    /// Passes a connection accepted on `bound` to the next worker with room,
    /// or queues it.
    pub(super) fn pass(
        &mut self,
        bound: &ListenAddress,
        connection: OwnedFd,
        connected: impl Fn(WorkerId) -> Option<WorkerHandle>,
    ) {
        let Some(group) = self.groups.get_mut(bound) else {
            self.dropped += 1;
            let dropped = self.dropped;
            tracing::warn!(address = %bound, dropped, "a connection was dropped: its socket was released");
            return;
        };
        group.waiting.push_back(connection);
        group.drain(&mut self.dropped, &connected);
        if group.waiting.len() > WAITING {
            group.waiting.pop_back();
            self.dropped += 1;
            let dropped = self.dropped;
            tracing::warn!(address = %bound, dropped, "a connection was dropped: {WAITING} wait already and no worker has room");
        }
    }

    /// Worker `worker` took a connection of its listen request `listener`:
    /// it has room for another.
    pub(super) fn accepted(
        &mut self,
        worker: WorkerId,
        listener: u64,
        connected: impl Fn(WorkerId) -> Option<WorkerHandle>,
    ) {
        for group in self.groups.values_mut() {
            let mine = |taker: &&mut Taker| {
                taker.worker == worker && taker.listeners.iter().any(|(id, _)| *id == listener)
            };
            if let Some(taker) = group.takers.iter_mut().find(mine) {
                taker.unacked = taker.unacked.saturating_sub(1);
                group.drain(&mut self.dropped, &connected);
                return;
            }
        }
    }

    /// Takes `worker` out of every group (what it holds unacknowledged goes
    /// with it).
    pub(super) fn forget(&mut self, worker: WorkerId) {
        for group in self.groups.values_mut() {
            group.takers.retain(|taker| taker.worker != worker);
        }
    }

    /// Stops accepting on `bound`, whose socket is released; drops what
    /// waited (counted).
    pub(super) fn release(&mut self, bound: &ListenAddress) {
        let Some(group) = self.groups.remove(bound) else {
            return;
        };
        group.acceptor.abort();
        if !group.waiting.is_empty() {
            self.dropped += group.waiting.len() as u64;
            let (waiting, dropped) = (group.waiting.len(), self.dropped);
            tracing::warn!(address = %bound, waiting, dropped, "connections were dropped: their socket was released");
        }
    }

    /// Stops accepting (the sockets stay open).
    pub(super) fn stop_accepting(&mut self) {
        for group in self.groups.values() {
            group.acceptor.abort();
        }
    }

    /// Stops accepting and drops every group.
    pub(super) fn close(&mut self) {
        let bound: Vec<ListenAddress> = self.groups.keys().cloned().collect();
        for bound in bound {
            self.release(&bound);
        }
    }
}

impl Group {
    /// Passes what waits, in order, while a worker has room.
    fn drain(&mut self, dropped: &mut u64, connected: impl Fn(WorkerId) -> Option<WorkerHandle>) {
        while let Some(connection) = self.waiting.pop_front() {
            if let Err(connection) = self.offer(connection, dropped, &connected) {
                self.waiting.push_front(connection);
                return;
            }
        }
    }

    /// Passes `connection` to the next connected worker with room; gives
    /// it back when there is none.
    fn offer(
        &mut self,
        connection: OwnedFd,
        dropped: &mut u64,
        connected: impl Fn(WorkerId) -> Option<WorkerHandle>,
    ) -> Result<(), OwnedFd> {
        let count = self.takers.len();
        let taker = (0..count)
            .map(|i| (self.next + i) % count)
            .filter(|slot| self.takers[*slot].has_room())
            .find_map(|slot| {
                let worker =
                    connected(self.takers[slot].worker).filter(WorkerHandle::is_connected)?;
                Some((slot, worker))
            });
        let Some((slot, worker)) = taker else {
            return Err(connection);
        };
        self.next = (slot + 1) % count;
        let taker = &mut self.takers[slot];
        let (listener, acks) = taker.turn();
        let frame = protocol::encode_control(&Frame::Connection { listener });
        match worker.outbox().try_send_fd(frame, connection) {
            Ok(()) if acks => taker.unacked += 1,
            Ok(()) => {}
            Err(_) => {
                *dropped += 1;
                tracing::warn!(worker_id = %worker.id(), dropped = *dropped, "a passed connection was dropped: the worker's channel is closed");
            }
        }
        Ok(())
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
