//! The primary's handle to one worker process.

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::WorkerId;
use crate::channel::Outbox;
use crate::error::ProtocolError;
use crate::error::SendError;
use crate::protocol::{self, BytesHeader, Encoded, Frame, Sizes, User, Wire};
use crate::request::{Pending, RequestError, Waiter};
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
    /// Its hello (of version 3) said it takes shared segments.
    segments: AtomicBool,
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
                segments: AtomicBool::new(false),
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
        let encode = |id| {
            let request = User::Request(id, message);
            let frame = self.inner.wire.encode(request, self.inner.sizes.max_frame);
            frame.map(Encoded::from)
        };
        self.ask(encode, |waiter| waiter.reply(deadline)).await
    }

    /// Sends `body` as a bytes request to the worker's handler named `name`
    /// ([`handle_bytes`](crate::HandleRequests::handle_bytes)) and waits
    /// for its reply, within the primary's default deadline: raw bytes both
    /// ways, neither serialized nor copied (a body of at least the
    /// [`sealed_payload_threshold`](super::PrimaryBuilder::sealed_payload_threshold)
    /// goes in a sealed memfd). Other languages: `docs/protocol.md`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(worker: isotropic_cluster::primary::WorkerHandle) -> Result<(), isotropic_cluster::RequestError> {
    /// let reversed = worker.request_bytes("reverse", &b"abc"[..]).await?;
    /// assert_eq!(&reversed[..], b"cba");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request): [`RequestError::Remote`] when the
    /// handler fails or panics, or no handler has this name;
    /// [`RequestError::Send`] with [`SendError::Unsupported`] for a worker
    /// on Node's channel or whose hello said a version before 3, and with
    /// [`SendError::Encode`] for a body below the sealed threshold larger
    /// than the maximum frame; [`RequestError::Decode`] if the worker
    /// answered with a message.
    ///
    /// # Cancel safety
    ///
    /// As [`request`](Self::request).
    pub async fn request_bytes(
        &self,
        name: &str,
        body: impl Into<Bytes>,
    ) -> Result<Bytes, RequestError> {
        self.request_bytes_within(name, body, self.inner.deadline)
            .await
    }

    /// [`request_bytes`](Self::request_bytes) with its own deadline.
    ///
    /// # Errors
    ///
    /// As [`request_bytes`](Self::request_bytes).
    ///
    /// # Cancel safety
    ///
    /// As [`request`](Self::request).
    pub async fn request_bytes_within(
        &self,
        name: &str,
        body: impl Into<Bytes>,
        deadline: Duration,
    ) -> Result<Bytes, RequestError> {
        self.takes_bytes_requests().map_err(RequestError::Send)?;
        let body = body.into();
        let encode = |id| {
            let (name, body) = (name.to_owned(), body);
            let request = Frame::BytesRequest { id, name, body };
            protocol::encode_with_body(&request, self.inner.sizes)
        };
        self.ask(encode, |waiter| waiter.reply_bytes(deadline))
            .await
    }

    /// Sends the request `encode` makes with its id, and waits for what
    /// `reply` makes of its waiter; the latency of each answered one counts.
    async fn ask<T, F>(
        &self,
        encode: impl FnOnce(u64) -> Result<Encoded, ProtocolError>,
        reply: impl FnOnce(Waiter) -> F,
    ) -> Result<T, RequestError>
    where
        F: Future<Output = Result<T, RequestError>>,
    {
        let waiter = self.inner.pending.begin(Some(self.id()))?;
        let frame = encode(waiter.id()).map_err(|e| RequestError::Send(SendError::Encode(e)))?;
        let asked = std::time::Instant::now();
        self.inner.outbox.send(frame).await?;
        let reply = reply(waiter).await;
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
        let frame = self.with_fds(self.encode(message)?.into(), fds)?;
        self.inner.outbox.send(frame).await
    }

    /// Queues `message` with `fds` without waiting: [`send_with_fds`](Self::send_with_fds)
    /// for an event handler, which cannot wait.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use isotropic_cluster::primary::{ClusterPrimary, WorkerReady};
    /// use isotropic_cluster::Subscribe;
    ///
    /// # async fn demo() -> Result<(), isotropic_cluster::Error> {
    /// let primary = ClusterPrimary::builder()
    ///     .on::<WorkerReady>(|event| {
    ///         let Ok(log) = std::fs::File::options().append(true).open("/tmp/app.log") else { return };
    ///         let _ = event.worker.try_send_with_fds(&"your log file", vec![log.into()]);
    ///     })
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`send_with_fds`](Self::send_with_fds), and [`SendError::Full`]
    /// when the queue is full. On any error the fds are closed (send
    /// duplicates to retry).
    pub fn try_send_with_fds<M: Serialize + ?Sized>(
        &self,
        message: &M,
        fds: Vec<OwnedFd>,
    ) -> Result<(), SendError> {
        let frame = self.with_fds(self.encode(message)?.into(), fds)?;
        self.inner.outbox.try_send(frame)
    }

    /// Queues `bytes` with `fds` without waiting: as
    /// [`try_send_bytes`](Self::try_send_bytes) and
    /// [`try_send_with_fds`](Self::try_send_with_fds) together.
    ///
    /// # Errors
    ///
    /// As [`send_bytes_with_fds`](Self::send_bytes_with_fds), and
    /// [`SendError::Full`] when the queue is full. On any error the fds
    /// are closed.
    pub fn try_send_bytes_with_fds(
        &self,
        bytes: impl Into<Bytes>,
        fds: Vec<OwnedFd>,
    ) -> Result<(), SendError> {
        let bytes = bytes.into();
        let (frame, loan) = self.bytes_with_fds(&bytes, fds)?;
        loan.try_send(&self.inner.outbox, &frame)
    }

    /// A bytes message of `bytes` with `fds` (lent or not, as
    /// [`lend_or`](Self::lend_or) says), for a worker that takes fds.
    fn bytes_with_fds(
        &self,
        bytes: &Bytes,
        fds: Vec<OwnedFd>,
    ) -> Result<(Encoded, Loan<'_>), SendError> {
        let (frame, loan) = self.lend_or(bytes, || self.sealed_or_not(bytes))?;
        Ok((self.with_fds(frame, fds)?, loan))
    }

    /// `frame` with `fds`, for a worker that takes them.
    fn with_fds(&self, frame: Encoded, fds: Vec<OwnedFd>) -> Result<Encoded, SendError> {
        self.takes_fds()?;
        protocol::attach_fds(frame, fds).map_err(SendError::Encode)
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
        let bytes = bytes.into();
        let (frame, loan) = self.bytes_with_fds(&bytes, fds)?;
        loan.send(&self.inner.outbox, frame).await
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

    /// A bytes message of `bytes` on its own: sealed when large, if the
    /// worker takes that.
    fn sealed_or_not(&self, bytes: &Bytes) -> Result<Encoded, SendError> {
        let sealed = self.takes_fds().is_ok();
        protocol::encode_payload(bytes.clone(), self.inner.sizes, sealed).map_err(SendError::Encode)
    }

    /// A bytes message of `bytes` for this worker, and its loan: lent from
    /// one of its segments when large, its hello said it takes that, and a
    /// segment is free (see `shared.rs`); else `otherwise`'s frame (for a
    /// broadcast, one sealed memfd shared by the workers that get no
    /// segment), with no loan.
    fn lend_or(
        &self,
        bytes: &Bytes,
        otherwise: impl FnOnce() -> Result<Encoded, SendError>,
    ) -> Result<(Encoded, Loan<'_>), SendError> {
        let (frame, token) = if bytes.len() >= self.inner.sizes.sealed_from
            && self.inner.segments.load(Ordering::Relaxed)
            && self.takes_fds().is_ok()
        {
            self.inner.lender.lend(bytes, otherwise)?
        } else {
            (otherwise()?, None)
        };
        let lender = &self.inner.lender;
        Ok((frame, Loan { lender, token }))
    }

    /// Sends `bytes` as [`lend_or`](Self::lend_or) encodes them.
    pub(crate) async fn send_payload(
        &self,
        bytes: &Bytes,
        otherwise: impl FnOnce() -> Result<Encoded, SendError>,
    ) -> Result<(), SendError> {
        let (frame, loan) = self.lend_or(bytes, otherwise)?;
        self.takes(&frame)?;
        loan.send(&self.inner.outbox, frame).await
    }

    /// Queues `bytes` as [`lend_or`](Self::lend_or) encodes them.
    pub(crate) fn try_send_payload(
        &self,
        bytes: &Bytes,
        otherwise: impl FnOnce() -> Result<Encoded, SendError>,
    ) -> Result<(), SendError> {
        let (frame, loan) = self.lend_or(bytes, otherwise)?;
        self.takes(&frame)?;
        loan.try_send(&self.inner.outbox, &frame)
    }

    /// The segments large payloads to the worker are lent from.
    pub(crate) fn lender(&self) -> &Arc<Lender> {
        &self.inner.lender
    }

    /// Records the protocol version of the worker's hello, and whether it
    /// said it takes shared segments.
    pub(crate) fn said_hello(&self, version: u32, segments: bool) {
        self.inner.protocol.store(version, Ordering::Relaxed);
        let segments = segments && protocol::supports_segments(version);
        self.inner.segments.store(segments, Ordering::Relaxed);
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

    /// Whether the worker takes bytes requests (and replies): as fds, from
    /// version 3 on.
    fn takes_bytes_requests(&self) -> Result<(), SendError> {
        self.takes_fds().map_err(|error| match error {
            SendError::Unsupported { worker_id, why, .. } => SendError::Unsupported {
                worker_id,
                what: "bytes requests",
                why,
            },
            other => other,
        })
    }

    /// Whether the worker, by the version of its hello, may send `frame`:
    /// a bytes request or reply only from version 3 on (so that none is
    /// ever sent to an older one).
    pub(crate) fn may_send(&self, frame: &Frame) -> Result<(), ProtocolError> {
        let bytes_request = matches!(frame, Frame::BytesRequest { .. } | Frame::BytesReply { .. });
        if bytes_request && self.takes_bytes_requests().is_err() {
            return Err(ProtocolError::UnexpectedFrame {
                frame: frame.name(),
                reason: "its hello said a protocol version before 3",
            });
        }
        Ok(())
    }

    /// Whether the worker takes `frame`: a bytes message, with fds or not.
    fn takes(&self, frame: &Encoded) -> Result<(), SendError> {
        if frame.fds.is_empty() {
            self.takes_bytes()
        } else {
            self.takes_fds()
        }
    }

    /// Queues the bytes message of `header` and `payload` (see
    /// [`Outbox::try_send_bytes`]).
    pub(crate) fn try_send_bytes_parts(
        &self,
        header: BytesHeader,
        payload: &Bytes,
    ) -> Result<(), SendError> {
        self.takes_bytes()?;
        self.inner.outbox.try_send_bytes(header, payload)
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

/// A payload lent for a frame not queued yet: given back when dropped
/// unless its frame was queued ([`send`](Self::send),
/// [`try_send`](Self::try_send)), so that an error, or a send cancelled
/// while it waits for room, leaves no segment lent for nothing.
struct Loan<'a> {
    lender: &'a Lender,
    token: Option<u64>,
}

impl Loan<'_> {
    /// Queues `frame` on `outbox` without waiting; once queued, the loan is
    /// the worker's to release.
    fn try_send(mut self, outbox: &Outbox, frame: &Encoded) -> Result<(), SendError> {
        outbox.try_send_ref(frame)?;
        self.token = None;
        Ok(())
    }

    /// Queues `frame` on `outbox`, waiting for room (cancelled meanwhile,
    /// the loan is given back), then waits for its write.
    async fn send(mut self, outbox: &Outbox, frame: Encoded) -> Result<(), SendError> {
        let written = outbox.queue(frame).await?;
        self.token = None;
        written.await
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.token {
            self.lender.unsent(token);
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::channel::QueueLimits;

    const MIB: usize = 1 << 20;

    #[tokio::test(start_paused = true)]
    async fn a_lent_send_cancelled_or_refused_before_it_is_queued_gives_its_segment_back() {
        // The peer never reads: once its socket is full, the queue fills.
        let (ours, _peer) = tokio::net::UnixStream::pair().expect("socket pair");
        let limits = QueueLimits {
            messages: 4,
            bytes: 8 * MIB,
        };
        let outbox = Outbox::spawn(ours.into_split().1, limits, Some(WorkerId(1)));
        let sizes = Sizes::frames(64 * MIB);
        let wire = Wire::Frames(crate::Codec::Json);
        let timeout = Duration::from_secs(1);
        let worker = WorkerHandle::new(
            (WorkerId(1), 0, 1),
            0,
            outbox,
            sizes,
            timeout,
            wire,
            Arc::default(),
        );
        worker.said_hello(protocol::VERSION, true);
        let large = Bytes::from(vec![7u8; 2 * MIB]);
        // A first large send makes a segment, which the worker releases.
        let sent = worker.send_bytes(large.clone()).await;
        assert!(sent.is_ok(), "lent and written: {sent:?}");
        assert_eq!(worker.lender().loans(), 1);
        worker.lender().release_all();
        let small = || vec![0u8; 64 * 1024];
        let mut filled = false;
        for _ in 0..1000 {
            if let Err(SendError::Full { .. }) = worker.try_send_bytes(small()) {
                tokio::task::yield_now().await;
                if let Err(SendError::Full { .. }) = worker.try_send_bytes(small()) {
                    filled = true;
                    break;
                }
            }
        }
        assert!(filled, "the queue fills while the peer reads nothing");
        // Lent from the free segment, refused at once (full): given back.
        let refused = worker.try_send_bytes(large.clone());
        assert!(matches!(refused, Err(SendError::Full { .. })));
        assert_eq!(worker.lender().loans(), 0);
        // Lent, then cancelled while waiting for room: the same.
        let send = worker.send_bytes(large.clone());
        let cancelled = tokio::time::timeout(Duration::from_secs(5), send).await;
        assert!(cancelled.is_err(), "still waiting for room");
        assert_eq!(worker.lender().loans(), 0, "no loan left behind");
        // The segment is free: lent again.
        let again = worker.lender().lend(&large, || Err(()));
        assert!(again.is_ok_and(|(_, token)| token.is_some()));
    }
}
