//! Error types, one per concern.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::WorkerId;

/// A boxed error from user code (an initializer, a cleanup, a handler).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the cluster's lifecycle: starting, forking, shutting down.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `ClusterWorker::start` was called in a process that no primary started.
    #[error("this process is not a cluster worker (no channel was inherited from a primary)")]
    NotAWorker,
    /// The channel inherited from the primary could not be taken.
    #[error("cannot take the worker channel")]
    Channel(#[source] Arc<io::Error>),
    /// A worker process could not be started.
    #[error("cannot start worker program {program:?}")]
    Spawn {
        /// The program that was to run.
        program: PathBuf,
        /// Why it failed.
        #[source]
        source: Arc<io::Error>,
    },
    /// The user-provided initialization failed; the instance never became ready.
    #[error("initialize error")]
    Initialize(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// A handler prevented the event this call was waiting for.
    #[error("the {event} event was prevented by a handler")]
    Prevented {
        /// The event's name.
        event: &'static str,
    },
    /// The instance has been destroyed.
    #[error("the cluster instance has been destroyed")]
    Destroyed,
    /// A worker exited before it was ready (see
    /// [`Forking::ready`](crate::primary::Forking::ready)).
    #[error("worker {worker_id} exited before it was ready")]
    NotReady {
        /// The worker.
        worker_id: crate::WorkerId,
    },
    /// Settings that cannot work together.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// A rollout failed, and was rolled back: the old generation serves
    /// (see `ClusterPrimary::restart_workers`).
    #[error("the rollout of generation {generation} failed, and was rolled back: {reason}")]
    RolledBack {
        /// The generation that failed.
        generation: u64,
        /// Why (see `RolloutFailure`).
        reason: String,
    },
    /// No live worker has this id (it never existed, or has exited).
    #[error("no live worker {worker_id}")]
    NoSuchWorker {
        /// The id that was asked for.
        worker_id: crate::WorkerId,
    },
    /// The primary's `NOTIFY_SOCKET` could not be opened
    /// ([`Readiness::Notify`](crate::primary::Readiness::Notify)).
    #[error("cannot open the notify socket")]
    Notify(#[source] Arc<io::Error>),
}

/// Errors of the wire protocol: what a peer sent that cannot be accepted.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame with a length of zero.
    #[error("empty frame (length 0)")]
    EmptyFrame,
    /// A frame longer than the configured maximum.
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The length the frame announced.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A frame kind this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A control frame that must be empty carried a payload.
    #[error("frame kind {kind} must have an empty payload")]
    UnexpectedPayload {
        /// The frame kind.
        kind: u8,
    },
    /// A hello frame whose payload is not `{"protocol": N}`.
    #[error("invalid hello frame: {0}")]
    InvalidHello(String),
    /// A control frame (listen, listening) whose payload does not fit.
    #[error("invalid control frame: {0}")]
    InvalidControl(String),
    /// A message frame whose payload is not one valid JSON value.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The stream ended in the middle of a frame.
    #[error("channel closed in the middle of a frame ({received} bytes of it received)")]
    Truncated {
        /// Bytes of the incomplete frame that did arrive.
        received: usize,
    },
    /// The peer speaks a protocol version this library does not.
    #[error("peer speaks protocol version {received}, this library speaks {oldest} to {supported}")]
    Version {
        /// The peer's version.
        received: u32,
        /// The oldest version this library speaks.
        oldest: u32,
        /// Ours.
        supported: u32,
    },
    /// The peer's hello names another message codec than this channel's
    /// (`Codec`; a hello without one means JSON).
    #[error("peer speaks the {received:?} message codec, this channel speaks {expected:?}")]
    CodecMismatch {
        /// The peer's codec, by name.
        received: String,
        /// Ours, by name.
        expected: &'static str,
    },
    /// A frame that is not allowed at this point of the conversation.
    #[error("unexpected {frame} frame: {reason}")]
    UnexpectedFrame {
        /// The frame's kind.
        frame: &'static str,
        /// Why it is not allowed here.
        reason: &'static str,
    },
    /// The worker did not signal ready within the primary's ready timeout.
    #[error("no ready within {0:?}")]
    ReadyTimeout(std::time::Duration),
    /// More fds with one message than [`MAX_FDS`](crate::MAX_FDS) (sent:
    /// refused; received: the channel breaks, the fds closed).
    #[error("{count} fds with one message exceed the maximum of {max}")]
    TooManyFds {
        /// How many were sent, or announced (at least `max + 1` when the
        /// kernel had to drop some).
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// A frame announced fds that did not come with it, or fds came with
    /// no frame that takes them.
    #[error("fds do not match their frame: {0}")]
    FdsMismatch(&'static str),
    /// A bytes request, or a successful bytes reply, not followed by its
    /// body (a bytes or sealed frame).
    #[error("a {head} frame followed by {next}, not by its body")]
    MissingBody {
        /// The frame whose body is missing.
        head: &'static str,
        /// What came instead (a frame's kind, or the end of the channel).
        next: &'static str,
    },
    /// A large payload's memfd is not sealed against writing, shrinking and
    /// growing (its contents could change under the receiver).
    #[error("the payload's memfd is not sealed")]
    UnsealedMemfd,
    /// A large payload's memfd holds fewer bytes than its frame announced.
    #[error("the payload's memfd holds {size} bytes, {announced} announced")]
    ShortMemfd {
        /// The length the frame announced.
        announced: u64,
        /// The memfd's size.
        size: u64,
    },
    /// A `lent` or `retire` frame named a segment that was not announced
    /// (or was retired).
    #[error("unknown segment {0}")]
    UnknownSegment(u32),
    /// A segment id announced twice.
    #[error("segment {0} announced twice")]
    SegmentTwice(u32),
    /// More segments announced than a receiver maps at once.
    #[error("more than {max} segments announced")]
    TooManySegments {
        /// The most a receiver maps.
        max: usize,
    },
    /// A `release` or `returned` frame named a token that is not lent (or
    /// no longer), or a `lent` frame a token already lent.
    #[error("token {0} is not lent")]
    UnknownToken(u64),
    /// Bytes beyond the end of the segment or payload they are said to be in.
    #[error("{len} bytes at {offset} exceed the {size} bytes they are in")]
    OutOfBounds {
        /// Where the bytes start.
        offset: u64,
        /// How many.
        len: u64,
        /// The size of the segment or payload.
        size: u64,
    },
    /// Reading the channel failed.
    #[error("channel read failed")]
    Io(#[source] Arc<io::Error>),
}

impl ProtocolError {
    /// Whether this is the peer going away (a reset connection) rather than
    /// something it sent.
    pub(crate) fn is_disconnect(&self) -> bool {
        matches!(self, Self::Io(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe))
    }
}

/// For the lifecycle's unit tests, which compare actions: errors are equal
/// when they read the same.
#[cfg(test)]
impl PartialEq for ProtocolError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

#[cfg(test)]
impl Eq for ProtocolError {}

impl From<io::Error> for ProtocolError {
    fn from(error: io::Error) -> Self {
        Self::Io(Arc::new(error))
    }
}

/// Errors of a message's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Not valid MessagePack.
    #[error("invalid MessagePack: {0}")]
    MessagePack(String),
    /// Valid JSON that does not fit the requested type.
    #[error("message{} does not decode as {target}: {reason}", type_name.as_ref().map(|t| format!(" of type {t:?}")).unwrap_or_default())]
    Decode {
        /// The message's `type` field, if any.
        type_name: Option<String>,
        /// The Rust type asked for.
        target: &'static str,
        /// What serde said.
        reason: String,
    },
}

/// Errors of sending a message.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The destination names no live worker.
    #[error("invalid message destination: no live worker {worker_id}")]
    InvalidDestination {
        /// The id that was asked for.
        worker_id: WorkerId,
    },
    /// The destination resolved to no worker at all (an empty pool, say).
    #[error("no worker to send to")]
    NoDestination,
    /// The channel is closed: the peer disconnected or exited.
    #[error("channel closed{}", worker_label(*worker_id))]
    Closed {
        /// The worker, when sending from the primary.
        worker_id: Option<WorkerId>,
    },
    /// The outgoing queue is full (only from the non-waiting `try_send`).
    #[error("outgoing queue full{}", worker_label(*worker_id))]
    Full {
        /// The worker, when sending from the primary.
        worker_id: Option<WorkerId>,
    },
    /// The message could not be encoded, or is larger than the maximum frame.
    #[error("cannot encode message")]
    Encode(#[source] ProtocolError),
    /// The peer cannot take this kind of message: its channel is Node's
    /// (JSON lines), or its hello said an older protocol version.
    #[error("{what} cannot go to this peer{}: {why}", worker_label(*worker_id))]
    Unsupported {
        /// The worker, when sending from the primary.
        worker_id: Option<WorkerId>,
        /// What was sent (`"bytes messages"`).
        what: &'static str,
        /// Why the peer cannot take it.
        why: &'static str,
    },
    /// Sending to several workers failed for some of them.
    #[error("message delivered to {delivered} worker(s), failed for {}", failures.len())]
    Partial {
        /// How many destinations the message was written to.
        delivered: usize,
        /// One error per failed destination.
        failures: Vec<SendError>,
    },
}

fn worker_label(worker_id: Option<WorkerId>) -> String {
    worker_id
        .map(|id| format!(" (worker {id})"))
        .unwrap_or_default()
}
