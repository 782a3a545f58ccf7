//! The listening sockets the primary holds for its workers, within what its
//! [`ListenPolicy`] lets them have; and, in round robin, the connections it
//! accepts and passes to them in turn.
//!
//! - `sockets`: the sockets, and which live workers hold each (a socket
//!   goes, its Unix file removed, when its last holder does);
//! - `turns`: round robin, bounded by the workers' acknowledgements.

mod sockets;
mod turns;

use std::os::fd::OwnedFd;

use tokio::sync::mpsc::Sender;

use super::WorkerHandle;
use super::config::Config;
use super::input::Input;
use crate::WorkerId;
use crate::net::{
    Distribution, ListenAddress, ListenError, ListenErrorKind, ListenPolicy, WorkerUser,
};
use crate::protocol::{self, Frame};
pub(super) use sockets::LINGER;
use sockets::Sockets;
use turns::Turns;

/// Sockets by the address asked for, each kept while a live worker holds
/// it (so that replacements serve on the same socket), and the round-robin
/// groups.
#[derive(Debug)]
pub(super) struct Listeners {
    sockets: Sockets,
    turns: Turns,
    policy: ListenPolicy,
    /// Who the workers run as, when not as the primary.
    user: Option<WorkerUser>,
    /// The most sockets one worker may hold.
    per_worker: usize,
}

/// A listen request: worker, request id, and whether the worker
/// acknowledges passed connections.
pub(super) type Request<'a> = (&'a WorkerHandle, u64, bool);

impl Listeners {
    /// Starts with the sockets passed by socket activation, if any, and the
    /// limits `config` sets.
    pub(super) fn activated(config: &Config) -> Self {
        let user = WorkerUser::of(config.uid, config.gid);
        Self {
            sockets: Sockets::activated(config.listen_policy.binder(user)),
            turns: Turns::default(),
            policy: config.listen_policy.clone(),
            user,
            per_worker: config.max_listens,
        }
    }

    /// The shutdown begins: stops accepting for round robin (the sockets
    /// live workers hold stay open), and closes those that only lingered for
    /// a replacement (none is coming).
    pub(super) fn stop_accepting(&mut self) {
        self.turns.stop_accepting();
        self.release_unheld(0);
    }

    /// Closes everything, and removes the Unix socket files we made.
    pub(super) fn close(&mut self) {
        self.turns.close();
        self.sockets.close();
    }

    /// `worker` is gone: out of every round-robin group; returns the
    /// sockets (by the address asked for) it held last, to
    /// [`expire`](Self::expire) after [`LINGER`] (round-robin connections
    /// wait for a replacement meanwhile). At most one worker's worth of
    /// sockets (`per_worker`) linger: beyond, the oldest are closed at once.
    pub(super) fn forget(&mut self, worker: WorkerId) -> Vec<ListenAddress> {
        self.turns.forget(worker);
        let unheld = self.sockets.forget(worker);
        self.release_unheld(self.per_worker);
        unheld
    }

    /// Closes the sockets no live worker holds, the oldest first, all but
    /// `kept` (their round-robin connections dropped, counted).
    fn release_unheld(&mut self, kept: usize) {
        for bound in self.sockets.release_unheld(kept) {
            self.turns.release(&bound);
        }
    }

    /// Closes the socket asked for as `key` (its file removed, its
    /// round-robin connections dropped, counted) if no live worker took it
    /// since it was left, `linger` ago or more.
    pub(super) fn expire(&mut self, key: &ListenAddress, linger: std::time::Duration) {
        if let Some(bound) = self.sockets.expire(key, linger) {
            self.turns.release(&bound);
        }
    }

    /// Why worker `worker` may not have `address`, if it may not.
    fn refusal(&self, worker: WorkerId, address: &ListenAddress) -> Option<ListenError> {
        let activated = self.sockets.is_activated(address);
        let refused = |kind, message| ListenError {
            address: address.to_string(),
            kind,
            message,
        };
        if let Some(why) = self.policy.refusal(address, self.user, activated) {
            return Some(refused(ListenErrorKind::NotAllowed, why));
        }
        let held = self.sockets.held_by(worker);
        (held >= self.per_worker && !self.sockets.holds(worker, address)).then(|| {
            let why = format!("the worker holds {held} sockets already, the most it may");
            refused(ListenErrorKind::TooMany, why)
        })
    }

    /// Answers listen request `request` (see [`Request`]): the socket for
    /// `address`, or (round robin) the promise of its connections; the
    /// address bound, or why not (`None` when the answer could not be queued:
    /// the worker is leaving, or its queue is full). `connected` finds a
    /// worker still connected.
    pub(super) fn answer(
        &mut self,
        (worker, request, acks): Request<'_>,
        address: &ListenAddress,
        distribution: Distribution,
        inputs: &Sender<Input>,
        connected: impl Fn(WorkerId) -> Option<WorkerHandle>,
    ) -> Option<Result<ListenAddress, ListenError>> {
        let reuseport = distribution == Distribution::ReusePort;
        let round_robin = distribution == Distribution::RoundRobin;
        let answer = |result| {
            protocol::encode_control(&Frame::Listening {
                id: request,
                result,
                passed: round_robin,
                acks,
            })
        };
        let socket = match self.refusal(worker.id(), address) {
            Some(error) => Err(error),
            None => self
                .sockets
                .socket(worker.id(), address, reuseport)
                .map_err(|error| ListenError {
                    address: address.to_string(),
                    kind: ListenErrorKind::of(&error),
                    message: error.to_string(),
                })
                .and_then(|(fd, bound)| {
                    // Round robin: one turn per worker, its requests bounded.
                    let requests = self.turns.requests(worker.id(), &bound);
                    if round_robin && requests >= self.per_worker {
                        return Err(ListenError {
                            address: address.to_string(),
                            kind: ListenErrorKind::TooMany,
                            message: format!(
                                "the worker asked for it {requests} times already, the most it may"
                            ),
                        });
                    }
                    Ok((fd, bound))
                }),
        };
        let (fd, bound) = match socket {
            Ok(socket) => socket,
            Err(error) => {
                let refused = Err((error.kind, error.message.clone()));
                let _ = worker.try_send_frame(answer(refused));
                return Some(Err(error));
            }
        };
        if round_robin {
            worker.try_send_frame(answer(Ok(bound.clone()))).ok()?;
            let taker = (worker.id(), request, acks);
            self.turns.join(taker, fd, &bound, inputs, connected);
        } else {
            worker
                .outbox()
                .try_send_fd(answer(Ok(bound.clone())), fd)
                .ok()?;
        }
        Some(Ok(bound))
    }

    /// Passes a connection accepted on `bound` to the next worker with room
    /// (or keeps it until one has room).
    pub(super) fn pass(
        &mut self,
        bound: &ListenAddress,
        connection: OwnedFd,
        connected: impl Fn(WorkerId) -> Option<WorkerHandle>,
    ) {
        self.turns.pass(bound, connection, connected);
    }

    /// Worker `worker` took a connection passed for its listen request
    /// `listener`.
    pub(super) fn accepted(
        &mut self,
        worker: WorkerId,
        listener: u64,
        connected: impl Fn(WorkerId) -> Option<WorkerHandle>,
    ) {
        self.turns.accepted(worker, listener, connected);
    }
}
