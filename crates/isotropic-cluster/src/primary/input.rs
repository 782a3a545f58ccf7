//! What the actor hears from outside its own calls: each worker's watcher
//! reports frames, output, the end of the channel and the exit, in that order;
//! the round-robin acceptors report connections.

use std::os::fd::OwnedFd;
use std::process::ExitStatus;

use tokio::sync::OwnedSemaphorePermit;

use super::events::OutputStream;
use crate::WorkerId;
use crate::error::ProtocolError;
use crate::net::ListenAddress;
use crate::protocol::{BytesRun, Frame};

/// One report to the primary's actor.
#[derive(Debug)]
pub(crate) enum Input {
    /// Frames, in the order they arrived, with their share of the worker's
    /// input budget (given back when dropped), and one permit of its reply
    /// budget per request among them (each given back once its reply is
    /// queued for the worker).
    Frames(
        WorkerId,
        Vec<Inbound>,
        OwnedSemaphorePermit,
        Option<OwnedSemaphorePermit>,
    ),
    /// A line of the worker's piped output.
    Output(WorkerId, OutputStream, String),
    /// The channel ended: end of file, or a protocol error.
    Closed(WorkerId, Option<ProtocolError>),
    /// The process exited and was reaped (`None`: waiting for it failed).
    Exited(WorkerId, Option<ExitStatus>),
    /// A connection accepted on a round-robin address.
    Accepted(ListenAddress, OwnedFd),
    /// A datagram on the primary's `NOTIFY_SOCKET`, and who sent it.
    Notify(super::notify::Sender, super::notify::Notice),
    /// What a rollout's health check said of a worker.
    Health(WorkerId, Result<(), String>),
}

/// Frames of a worker as the actor gets them: one by one, or the common case
/// of consecutive bytes messages as one run (no [`Frame`] each).
#[derive(Debug)]
pub(crate) enum Inbound {
    Frame(Frame),
    Bytes(BytesRun),
}
