//! The primary's handle to one worker process.

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::WorkerId;
use crate::channel::Outbox;
use crate::error::ProtocolError;
use crate::error::SendError;
use crate::protocol::{self, Encoded, Sizes, User, Wire};
use crate::request::{Pending, RequestError};
use crate::shared::Lender;

use super::metrics::Latency;

/// A cloneable handle to one worker: its id, its pid, and its channel.
///
/// Handles stay valid after the worker exits; sending then fails with
/// [`SendError::Closed`].
#[derive(Clone)]
pub struct WorkerHandle {
    inner: Arc<Inner>,
}

struct Inner {
    id: WorkerId,
    slot: u32,
    generation: u64,
    pid: u32,
    outbox: Outbox,
    sizes: Sizes,
    pending: Arc<Pending>,
    deadline: Duration,
    wire: Wire,
    /// The protocol version of the worker's hello (0 until it comes).
    protocol: AtomicU32,
    /// Where the latency of each answered request goes.
    requests: Arc<Latency>,
    /// The segments large payloads to the worker are lent from.
    lender: Arc<Lender>,
}

impl WorkerHandle {
    pub(crate) fn new(
        (id, slot, generation): (WorkerId, u32, u64),
        pid: u32,
        outbox: Outbox,
        sizes: Sizes,
        deadline: Duration,
        wire: Wire,
        requests: Arc<Latency>,
    ) -> Self {
        let lender = Lender::new(outbox.clone());
        Self {
            inner: Arc::new(Inner {
                id,
                slot,
                generation,
                pid,
                outbox,
                sizes,
                pending: Arc::default(),
                deadline,
                wire,
                protocol: AtomicU32::new(0),
                requests,
                lender,
            }),
        }
    }

    /// Sends `message` as a request and waits for the worker's reply,
    /// decoded into `R`, within the primary's default deadline (see
    /// [`PrimaryBuilder::request_timeout`](super::PrimaryBuilder::request_timeout)).
    ///
    /// # Errors
    ///
    /// [`RequestError::Timeout`]; [`RequestError::Gone`] at once when the
    /// worker exits or disconnects before replying (or had already);
    /// [`RequestError::Remote`] when its
    /// handler fails or panics (or none takes the request);
    /// [`RequestError::Decode`] for a reply that does not fit `R`;
    /// [`RequestError::Send`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future forgets the request: a late reply is discarded.
    pub async fn request<R: DeserializeOwned, M: Serialize + ?Sized>(
        &self,
        message: &M,
    ) -> Result<R, RequestError> {
        self.request_within(message, self.inner.deadline).await
    }

    /// [`request`](Self::request) with its own deadline.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    ///
    /// # Cancel safety
    ///
    /// As [`request`](Self::request).
    pub async fn request_within<R: DeserializeOwned, M: Serialize + ?Sized>(
        &self,
        message: &M,
        deadline: Duration,
    ) -> Result<R, RequestError> {
        if self.inner.wire == Wire::NodeJson {
            let unsupported = ProtocolError::Encode("requests need the framed channel".into());
            return Err(RequestError::Send(SendError::Encode(unsupported)));
        }
        let waiter = self.inner.pending.begin(Some(self.id()))?;
        let frame = self
            .inner
            .wire
            .encode(
                User::Request(waiter.id(), message),
                self.inner.sizes.max_frame,
            )
            .map_err(|e| RequestError::Send(SendError::Encode(e)))?;
        let asked = std::time::Instant::now();
        self.send_frame(frame).await?;
        let reply = waiter.reply(deadline).await;
        // (Answered, well or not: its latency counts.)
        if !matches!(
            reply,
            Err(RequestError::Timeout { .. } | RequestError::Gone { .. })
        ) {
            self.inner.requests.observe(asked.elapsed());
        }
        reply
    }

    /// How many requests to this worker wait for a reply.
    pub fn in_flight(&self) -> usize {
        self.inner.pending.len()
    }

    pub(crate) fn pending(&self) -> &Pending {
        &self.inner.pending
    }

    /// The worker's id: 1 for the first worker of a primary, then 2, 3, …
    pub fn id(&self) -> WorkerId {
        self.inner.id
    }

    /// The worker's slot, 0 to N−1 for a pool of N: a replacement takes the
    /// slot of the worker it replaces (the lowest free one), so an app can
    /// derive per-slot ports, files or shards from it. The worker has it in
    /// `ISOTROPIC_CLUSTER_SLOT` (and, as PM2 names it, `NODE_APP_INSTANCE`).
    pub fn slot(&self) -> u32 {
        self.inner.slot
    }

    /// The generation of the workers' program it runs: 1 for the release
    /// the primary started with, then one more for each rollout
    /// ([`ClusterPrimary::restart_workers`](super::ClusterPrimary::restart_workers)).
    /// The worker has it in `ISOTROPIC_CLUSTER_GENERATION`.
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Whether the channel to the worker is still open for sending.
    pub fn is_connected(&self) -> bool {
        !self.inner.outbox.is_closed()
    }

    /// Sends `message`, waiting while the worker's queue is full; resolves once
    /// the message has been written to the channel.
    ///
    /// # Errors
    ///
    /// [`SendError::Encode`] if `message` does not serialize or is larger than
    /// the maximum frame; [`SendError::Closed`] if the channel is closed.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once queued, a cancelled message may still be written.
    pub async fn send<M: Serialize + ?Sized>(&self, message: &M) -> Result<(), SendError> {
        self.send_frame(self.encode(message)?).await
    }

    /// Queues `message` without waiting.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), and [`SendError::Full`] when the queue is full.
    pub fn try_send<M: Serialize + ?Sized>(&self, message: &M) -> Result<(), SendError> {
        self.try_send_frame(self.encode(message)?)
    }

    /// Sends `bytes` as a bytes message (no serialization, no copy: the
    /// payload is written as it is), waiting while the worker's queue is
    /// full; resolves once it has been written to the channel. The worker
    /// gets it as a `PrimaryBytes` event (other languages: a `bytes` frame,
    /// `docs/protocol.md`).
    ///
    /// A payload of at least the primary's
    /// [`sealed_payload_threshold`](super::PrimaryBuilder::sealed_payload_threshold)
    /// is copied into one of the worker's shared segments (or, none free, a
    /// sealed memfd), not sent through the channel (`docs/protocol.md`,
    /// "Shared segments").
    ///
    /// # Errors
    ///
    /// [`SendError::Unsupported`] for a worker on Node's channel, or whose
    /// hello said protocol version 1; [`SendError::Encode`] for a payload
    /// larger than the maximum frame; [`SendError::Closed`] if the channel
    /// is closed.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once queued, a cancelled message may still be written.
    pub async fn send_bytes(&self, bytes: impl Into<Bytes>) -> Result<(), SendError> {
        let bytes = bytes.into();
        self.send_payload(&bytes, || self.sealed_or_not(&bytes))
            .await
    }

    /// Sends `message` with `fds` (files, sockets, pipe ends: at most
    /// [`MAX_FDS`](crate::MAX_FDS)), as Node's `send(message, handle)`. The
    /// worker takes them from its `PrimaryMessage` event
    /// ([`take_fds`](crate::worker::PrimaryMessage::take_fds)); ours are
    /// closed once written.
    ///
    /// # Errors
    ///
    /// [`SendError::Encode`] with [`ProtocolError::TooManyFds`] for more
    /// than `MAX_FDS`; [`SendError::Unsupported`] for a worker on Node's
    /// channel or whose hello said a version before 3; as
    /// [`send`](Self::send) otherwise.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once queued, a cancelled message may still be written.
    pub async fn send_with_fds<M: Serialize + ?Sized>(
        &self,
        message: &M,
        fds: Vec<OwnedFd>,
    ) -> Result<(), SendError> {
        self.takes_fds()?;
        let frame =
            protocol::attach_fds(self.encode(message)?.into(), fds).map_err(SendError::Encode)?;
        self.inner.outbox.send(frame).await
    }

    /// Sends `bytes` with `fds`: as [`send_bytes`](Self::send_bytes) and
    /// [`send_with_fds`](Self::send_with_fds) together (the worker's
    /// `PrimaryBytes` event has them).
    ///
    /// # Errors
    ///
    /// As [`send_with_fds`](Self::send_with_fds) and
    /// [`send_bytes`](Self::send_bytes).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once queued, a cancelled message may still be written.
    pub async fn send_bytes_with_fds(
        &self,
        bytes: impl Into<Bytes>,
        fds: Vec<OwnedFd>,
    ) -> Result<(), SendError> {
        self.takes_fds()?;
        let frame = protocol::attach_fds(self.encode_payload(bytes.into())?, fds)
            .map_err(SendError::Encode)?;
        self.inner.outbox.send(frame).await
    }

    /// Queues `bytes` as a bytes message without waiting.
    ///
    /// # Errors
    ///
    /// As [`send_bytes`](Self::send_bytes), and [`SendError::Full`] when
    /// the queue is full.
    pub fn try_send_bytes(&self, bytes: impl Into<Bytes>) -> Result<(), SendError> {
        let bytes = bytes.into();
        self.try_send_payload(&bytes, || self.sealed_or_not(&bytes))
    }

    /// A bytes message for this worker: when large, if it takes that, lent
    /// from one of its segments, else sealed.
    fn encode_payload(&self, bytes: Bytes) -> Result<Encoded, SendError> {
        Ok(self.lend_or(&bytes, || self.sealed_or_not(&bytes))?.0)
    }

    /// A bytes message of `bytes` on its own: sealed when large, if the
    /// worker takes that.
    fn sealed_or_not(&self, bytes: &Bytes) -> Result<Encoded, SendError> {
        let sealed = self.takes_fds().is_ok();
        protocol::encode_payload(bytes.clone(), self.inner.sizes, sealed).map_err(SendError::Encode)
    }

    /// A bytes message of `bytes` for this worker, and the token it is lent
    /// as: lent from one of its segments when large, its hello said it
    /// takes that, and a segment is free (see `shared.rs`); else
    /// `otherwise`'s frame (for
    /// a broadcast, one sealed memfd shared by the workers that get no
    /// segment).
    fn lend_or(
        &self,
        bytes: &Bytes,
        otherwise: impl FnOnce() -> Result<Encoded, SendError>,
    ) -> Result<(Encoded, Option<u64>), SendError> {
        let version = self.inner.protocol.load(Ordering::Relaxed);
        if bytes.len() >= self.inner.sizes.sealed_from
            && self.takes_fds().is_ok()
            && protocol::supports_segments(version)
        {
            self.inner.lender.lend(bytes, otherwise)
        } else {
            Ok((otherwise()?, None))
        }
    }

    /// Sends `bytes` as [`lend_or`](Self::lend_or) encodes them.
    pub(crate) async fn send_payload(
        &self,
        bytes: &Bytes,
        otherwise: impl FnOnce() -> Result<Encoded, SendError>,
    ) -> Result<(), SendError> {
        // (Cancelled before it is queued, a lent frame keeps its segment
        // until the channel closes: its loan is never released.)
        let (frame, _) = self.lend_or(bytes, otherwise)?;
        self.send_bytes_frame(frame).await
    }

    /// Queues `bytes` as [`lend_or`](Self::lend_or) encodes them.
    pub(crate) fn try_send_payload(
        &self,
        bytes: &Bytes,
        otherwise: impl FnOnce() -> Result<Encoded, SendError>,
    ) -> Result<(), SendError> {
        let (frame, token) = self.lend_or(bytes, otherwise)?;
        self.try_send_bytes_frame(frame).inspect_err(|_| {
            if let Some(token) = token {
                self.inner.lender.unsent(token);
            }
        })
    }

    /// The segments large payloads to the worker are lent from.
    pub(crate) fn lender(&self) -> &Arc<Lender> {
        &self.inner.lender
    }

    /// Records the protocol version of the worker's hello.
    pub(crate) fn said_hello(&self, version: u32) {
        self.inner.protocol.store(version, Ordering::Relaxed);
    }

    /// Whether the worker takes bytes messages: on our frames, unless its
    /// hello said version 1.
    fn takes_bytes(&self) -> Result<(), SendError> {
        let why = if self.inner.wire == Wire::NodeJson {
            "its channel is Node's JSON lines"
        } else if !protocol::supports_bytes(self.inner.protocol.load(Ordering::Relaxed)) {
            "its hello said protocol version 1"
        } else {
            return Ok(());
        };
        Err(SendError::Unsupported {
            worker_id: Some(self.id()),
            what: "bytes messages",
            why,
        })
    }

    /// Whether the worker takes fds and sealed payloads: on our frames,
    /// from version 3 on.
    fn takes_fds(&self) -> Result<(), SendError> {
        self.takes_bytes()?;
        if protocol::supports_fds(self.inner.protocol.load(Ordering::Relaxed)) {
            return Ok(());
        }
        Err(SendError::Unsupported {
            worker_id: Some(self.id()),
            what: "fds and sealed payloads",
            why: "its hello said protocol version 2",
        })
    }

    /// Whether the worker takes `frame`: a bytes message, with fds or not.
    fn takes(&self, frame: &Encoded) -> Result<(), SendError> {
        if frame.fds.is_empty() {
            self.takes_bytes()
        } else {
            self.takes_fds()
        }
    }

    pub(crate) async fn send_bytes_frame(&self, frame: Encoded) -> Result<(), SendError> {
        self.takes(&frame)?;
        self.inner.outbox.send(frame).await
    }

    pub(crate) fn try_send_bytes_frame(&self, frame: Encoded) -> Result<(), SendError> {
        self.takes(&frame)?;
        self.inner.outbox.try_send(frame)
    }

    pub(crate) fn encode<M: Serialize + ?Sized>(&self, message: &M) -> Result<Bytes, SendError> {
        self.inner
            .wire
            .encode(User::Message(message), self.inner.sizes.max_frame)
            .map_err(SendError::Encode)
    }

    pub(crate) async fn send_frame(&self, frame: Bytes) -> Result<(), SendError> {
        self.inner.outbox.send(frame).await
    }

    pub(crate) fn try_send_frame(&self, frame: Bytes) -> Result<(), SendError> {
        self.inner.outbox.try_send(frame)
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }
}

impl PartialEq for WorkerHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for WorkerHandle {}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.inner.id.get())
            .field("pid", &self.inner.pid)
            .finish()
    }
}
