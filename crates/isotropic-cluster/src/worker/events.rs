//! The worker's events. Each is a type carrying its data; subscribe with
//! [`Subscribe`](crate::Subscribe), or read them all from
//! [`ClusterWorker::events`](super::ClusterWorker::events).

use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, MessageError};
use crate::fds::PassedFds;
use crate::message::Message;

/// The worker is starting; runs its initializer next.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Initialize;

/// The worker finished initializing (once only). Its default action sends
/// *ready* to the primary: preventing it keeps the worker out of the pool.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InitializeComplete;

/// The worker's initializer failed (once only): the worker never becomes
/// ready, and [`WorkerBuilder::start`](super::WorkerBuilder::start) returns
/// the error.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InitializeError {
    /// What failed.
    pub error: Error,
}

/// A message from the primary. Its default action is typed routing.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PrimaryMessage {
    /// The message.
    pub message: Message,
    /// The fds that came with it (`send_with_fds`; none otherwise).
    pub fds: PassedFds,
}

impl PrimaryMessage {
    /// Takes the fds that came with it (see [`PassedFds::take`]).
    pub fn take_fds(&self) -> Vec<OwnedFd> {
        self.fds.take()
    }
}

/// A bytes message from the primary (protocol version 2). Bytes carry no
/// `type`: nothing routes them.
#[derive(Clone)]
#[non_exhaustive]
pub struct PrimaryBytes {
    /// The payload, as the primary sent it.
    pub bytes: Bytes,
    /// The fds that came with it (`send_with_fds`; none otherwise).
    pub fds: PassedFds,
}

impl PrimaryBytes {
    /// Takes the fds that came with it (see [`PassedFds::take`]).
    pub fn take_fds(&self) -> Vec<OwnedFd> {
        self.fds.take()
    }
}

impl std::fmt::Debug for PrimaryBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryBytes")
            .field("len", &self.bytes.len())
            .field("fds", &self.fds)
            .finish()
    }
}

/// A routed message did not decode into the route's type.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PrimaryMessageError {
    /// The message.
    pub message: Message,
    /// What did not fit.
    pub error: MessageError,
}

/// The primary asked this worker to disconnect, or went away (its channel
/// closed, even if it was killed). The default action destroys the worker
/// with its default timeout.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PrimaryDisconnect;

/// The worker is being destroyed: its cleanup runs, bounded by `timeout`,
/// then it disconnects.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Destroy {
    /// The longest the cleanup may take; the process is ended after it.
    pub timeout: Duration,
}

/// The worker is destroyed and disconnected (once only); every subscription is
/// removed after it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DestroyComplete;
