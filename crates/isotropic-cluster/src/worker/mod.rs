//! The worker side: [`ClusterWorker`] connects to the primary over the
//! inherited channel, signals ready once its initialization is done, receives
//! messages, and disconnects cleanly.
//!
//! A panic in any of its event handlers, typed routes, initializer or cleanup
//! ends the process with exit code 101 (see [`Subscribe`](crate::Subscribe)):
//! the primary replaces it.

mod context;
mod events;
mod phase;
#[cfg(test)]
mod tests;
mod watchdog;

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

pub use context::{WorkerContext, WorkerEvent};
pub use events::*;
pub use watchdog::Watchdog;

use crate::actor::{self, Mailbox};
use crate::channel::{Outbox, QueueLimits};
use crate::error::{BoxError, Error, SendError};
use crate::events::{self as pubsub, EventStream, Hub, StreamSource, Topic as _};
use crate::net::{ListenAddress, ListenError, ListenErrorKind, Listener};
use crate::protocol::{self, Frame, Sizes, User, Wire};
use crate::request::{Handlers, Pending, RequestError};
use crate::shared::Borrower;
use crate::{Codec, WorkerId, role};

type Initializer = Box<
    dyn FnOnce(ClusterWorker) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send,
>;
pub(crate) type Cleanup = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Builds and starts a [`ClusterWorker`].
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use isotropic_cluster::worker::ClusterWorker;
/// use isotropic_cluster::Subscribe;
///
/// # async fn connect() -> Result<(), std::io::Error> { Ok(()) }
/// # async fn demo() -> Result<(), isotropic_cluster::Error> {
/// let worker = ClusterWorker::builder()
///     .initialize(|_worker| async { connect().await })
///     .on_destroy(|| async { /* close connections */ })
///     .route::<String>("greet", |_event, name| println!("hello, {name}"))
///     .start()
///     .await?;
/// worker.closed().await;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until started"]
pub struct WorkerBuilder {
    hub: Hub,
    handlers: Handlers,
    initializer: Option<Initializer>,
    cleanup: Option<Cleanup>,
    settings: Settings,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The builder's settings that the running worker keeps.
#[derive(Debug, Clone, Copy)]
struct Settings {
    request_timeout: Duration,
    destroy_timeout: Duration,
    max_frame_size: usize,
    sealed_from: usize,
    queue: QueueLimits,
    /// The channel's message codec (the primary's, from the markers).
    codec: Codec,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            destroy_timeout: Duration::from_secs(5),
            max_frame_size: protocol::DEFAULT_MAX_FRAME,
            sealed_from: protocol::DEFAULT_SEALED_FROM,
            queue: QueueLimits::default(),
            codec: Codec::Json,
        }
    }
}

impl Settings {
    fn sizes(&self) -> Sizes {
        Sizes {
            max_frame: self.max_frame_size,
            sealed_from: self.sealed_from,
        }
    }
}

impl WorkerBuilder {
    /// Custom initialization (the original's `_initialize`): a database
    /// connection, say. The worker signals ready only once it succeeds; it may
    /// already send messages. Its failure is an `initializeError` event and
    /// [`start`](Self::start)'s error, and the worker never becomes ready;
    /// its panic ends the process with exit code 101, as a handler's does.
    pub fn initialize<F, Fut, E>(mut self, init: F) -> Self
    where
        F: FnOnce(ClusterWorker) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.initializer = Some(Box::new(move |worker| {
            Box::pin(async move { init(worker).await.map_err(Into::into) })
        }));
        self
    }

    /// Cleanup run when the worker is destroyed (the original's `_destroy`),
    /// bounded by the destroy timeout. Its panic ends the process with exit
    /// code 101, as a handler's does.
    pub fn on_destroy<F, Fut>(mut self, cleanup: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.cleanup = Some(Box::new(move || Box::pin(cleanup())));
        self
    }

    /// The deadline of a request to the primary (default 30 s).
    pub fn request_timeout(mut self, deadline: Duration) -> Self {
        self.settings.request_timeout = deadline;
        self
    }

    /// The timeout of a destroy that the worker did not ask for itself (the
    /// primary disconnected, SIGTERM): default 5 s.
    pub fn destroy_timeout(mut self, timeout: Duration) -> Self {
        self.settings.destroy_timeout = timeout;
        self
    }

    /// The largest frame accepted from or sent to the primary (default 16 MiB).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.settings.max_frame_size = bytes.clamp(1, u32::MAX as usize);
        self
    }

    /// The size from which a bytes payload sent to the primary goes in a
    /// sealed memfd instead of through the channel (default 1 MiB): one
    /// copy, whatever its size, and not bound by the maximum frame.
    pub fn sealed_payload_threshold(mut self, bytes: usize) -> Self {
        self.settings.sealed_from = bytes.max(1);
        self
    }

    /// How many messages may wait to be written (default 1024).
    pub fn queue_capacity(mut self, messages: usize) -> Self {
        self.settings.queue.messages = messages.max(1);
        self
    }

    /// How many bytes of messages may wait to be written (default 4 MiB; a
    /// larger message waits for the whole queue).
    pub fn queue_bytes(mut self, bytes: usize) -> Self {
        self.settings.queue.bytes = bytes.max(1);
        self
    }

    /// Connects to the primary, runs the initializer, then signals ready.
    ///
    /// # Errors
    ///
    /// [`Error::NotAWorker`] outside a worker process; [`Error::Channel`] if
    /// the channel was already taken or is not usable; [`Error::Initialize`]
    /// if the initializer fails; [`Error::Prevented`] if a handler prevents
    /// `initialize`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: the channel is taken at the first poll, so a start
    /// dropped after that cannot be tried again ([`Error::Channel`]). The
    /// primary sees the worker leave, or time out if it set `ready_timeout`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start(mut self) -> Result<ClusterWorker, Error> {
        let markers = role::markers().ok_or(Error::NotAWorker)?;
        let channel_error = |e: std::io::Error| Error::Channel(Arc::new(e));
        let fd = role::take_channel(markers).map_err(channel_error)?;
        let initializer = self.initializer.take();
        self.settings.codec = markers.codec;
        let (mut context, mailbox, commands) =
            WorkerContext::connect(markers.id, fd, self).map_err(channel_error)?;
        pubsub::publish(&mut context, Initialize);
        if !context.initialized() {
            return Err(Error::Prevented {
                event: "initialize",
            });
        }
        let worker = ClusterWorker::new(mailbox.clone(), &context);
        tokio::spawn(actor::run(context.on_sigterm(), commands));

        if let Some(init) = initializer
            && let Err(error) = initialize(init, worker.clone()).await
        {
            let error = Error::Initialize(error.into());
            let event = InitializeError {
                error: error.clone(),
            };
            mailbox.call(move |w| pubsub::publish(w, event)).await?;
            // Flush what was queued (the hello, early messages), so that the
            // primary sees this worker come online and go.
            worker.outbox.close();
            worker.outbox.wait_closed().await;
            return Err(error);
        }
        mailbox
            .call(|w| pubsub::publish(w, InitializeComplete))
            .await?;
        Ok(worker)
    }
}

/// Bytes shorter than this (and than a frame, and than a sealed payload)
/// are copied when sent, even when they lie in a payload the primary lent
/// us: cheaper than a `returned` frame and the lookup of the loan.
const RETURNED_FROM: usize = 4 * 1024;

/// A bytes message of `bytes` for the primary: `returned` when they lie in
/// a payload it lent us that we hold and are not short (not copied: the
/// caller keeps `bytes` until the frame is queued, so that their release
/// comes after it); else
/// a large one sealed, unless its hello said version 2; unless its hello
/// (once it came) said version 1.
fn bytes_frame(
    bytes: &Bytes,
    sizes: Sizes,
    primary_protocol: &AtomicU32,
    borrower: &Borrower,
) -> Result<protocol::Encoded, SendError> {
    takes_bytes(primary_protocol)?;
    if !is_short(bytes, sizes)
        && let Some(returned) = borrower.returned(bytes)
    {
        return Ok(returned);
    }
    let sealed = takes_fds(primary_protocol).is_ok();
    protocol::encode_payload(bytes.clone(), sizes, sealed).map_err(SendError::Encode)
}

/// Whether `bytes` are copied when sent (see [`RETURNED_FROM`]).
fn is_short(bytes: &[u8], sizes: Sizes) -> bool {
    bytes.len() < RETURNED_FROM.min(sizes.sealed_from).min(sizes.max_frame)
}

/// Queues a bytes message of `bytes` for the primary without waiting: short
/// ones copied into the write buffer as they are queued (no frame built,
/// the common case of small messages), others as [`bytes_frame`] makes them.
fn try_send_bytes(
    outbox: &Outbox,
    bytes: &Bytes,
    sizes: Sizes,
    primary_protocol: &AtomicU32,
    borrower: &Borrower,
) -> Result<(), SendError> {
    if is_short(bytes, sizes) {
        takes_bytes(primary_protocol)?;
        let header = protocol::bytes_header(bytes.len(), sizes.max_frame);
        return outbox.try_send_bytes(header.map_err(SendError::Encode)?, bytes);
    }
    outbox.try_send(bytes_frame(bytes, sizes, primary_protocol, borrower)?)
}

/// A message of `wire`'s with `fds`, for a primary that takes them.
fn message_with_fds<M: Serialize + ?Sized>(
    wire: Wire,
    message: &M,
    fds: Vec<OwnedFd>,
    sizes: Sizes,
    primary_protocol: &AtomicU32,
) -> Result<protocol::Encoded, SendError> {
    takes_fds(primary_protocol)?;
    wire.encode(User::Message(message), sizes.max_frame)
        .and_then(|frame| protocol::attach_fds(frame.into(), fds))
        .map_err(SendError::Encode)
}

/// A bytes message with `fds`, for a primary that takes them (the caller
/// keeps `bytes` until the frame is queued, as for [`bytes_frame`]).
fn bytes_with_fds(
    bytes: &Bytes,
    fds: Vec<OwnedFd>,
    sizes: Sizes,
    primary_protocol: &AtomicU32,
    borrower: &Borrower,
) -> Result<protocol::Encoded, SendError> {
    takes_fds(primary_protocol)?;
    let frame = bytes_frame(bytes, sizes, primary_protocol, borrower)?;
    protocol::attach_fds(frame, fds).map_err(SendError::Encode)
}

/// Whether the primary takes bytes messages (its hello, once it came, said
/// version 2 or later).
fn takes_bytes(primary_protocol: &AtomicU32) -> Result<(), SendError> {
    let why = "the primary's hello said protocol version 1";
    primary_takes(
        primary_protocol,
        protocol::supports_bytes,
        ("bytes messages", why),
    )
}

/// Whether the primary takes fds and sealed payloads (its hello, once it
/// came, said version 3 or later).
fn takes_fds(primary_protocol: &AtomicU32) -> Result<(), SendError> {
    let why = "the primary's hello said an older protocol version";
    primary_takes(
        primary_protocol,
        protocol::supports_fds,
        ("fds and sealed payloads", why),
    )
}

/// Whether the primary's protocol version `supports` something: else
/// [`SendError::Unsupported`] with its `what` and `why`.
fn primary_takes(
    primary_protocol: &AtomicU32,
    supports: fn(u32) -> bool,
    (what, why): (&'static str, &'static str),
) -> Result<(), SendError> {
    if supports(primary_protocol.load(Ordering::Relaxed)) {
        return Ok(());
    }
    Err(SendError::Unsupported {
        worker_id: None,
        what,
        why,
    })
}

async fn initialize(init: Initializer, worker: ClusterWorker) -> Result<(), BoxError> {
    let id = worker.id;
    match pubsub::catch_async(async move { init(worker).await }).await {
        Ok(outcome) => outcome,
        Err(message) => context::exit_on_panic(
            id,
            &pubsub::HandlerPanic {
                event: Initialize::NAME,
                stage: pubsub::Stage::Complete,
                message,
            },
        ),
    }
}

/// A cloneable handle to this process's worker side.
///
/// # Examples
///
/// ```no_run
/// use isotropic_cluster::worker::{ClusterWorker, PrimaryMessage};
/// use isotropic_cluster::Subscribe;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = ClusterWorker::builder()
///     .on::<PrimaryMessage>(|event| println!("from the primary: {}", event.message))
///     .start()
///     .await?;
/// worker.send(&serde_json::json!({"type": "hello"})).await?;
/// worker.closed().await; // until the primary asks us to go
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClusterWorker {
    mailbox: Mailbox<WorkerContext>,
    outbox: Outbox,
    pending: Arc<Pending>,
    deadline: Duration,
    id: WorkerId,
    sizes: Sizes,
    wire: Wire,
    stream: StreamSource<WorkerEvent>,
    watchdogs: Arc<watchdog::Watchdogs>,
    counts_served: Arc<std::sync::atomic::AtomicBool>,
    primary_protocol: Arc<AtomicU32>,
    borrower: Arc<Borrower>,
}

impl std::fmt::Debug for ClusterWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterWorker")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ClusterWorker {
    /// A builder with the defaults.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder {
            hub: Hub::default(),
            handlers: Handlers::default(),
            initializer: None,
            cleanup: None,
            settings: Settings::default(),
        }
    }

    /// This process's worker id; `None` outside a worker.
    pub fn worker_id() -> Option<WorkerId> {
        role::markers().map(|m| m.id)
    }

    pub(crate) fn new(mailbox: Mailbox<WorkerContext>, context: &WorkerContext) -> Self {
        Self {
            mailbox,
            outbox: context.outbox.clone(),
            pending: context.pending.clone(),
            deadline: context.settings.request_timeout,
            id: context.id,
            sizes: context.settings.sizes(),
            wire: Wire::Frames(context.settings.codec),
            stream: context.stream.clone(),
            watchdogs: context.watchdogs.clone(),
            counts_served: context.counts_served.clone(),
            primary_protocol: context.primary_protocol.clone(),
            borrower: context.borrower.clone(),
        }
    }

    /// This worker's id.
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// Sends `message` to the primary, waiting while the queue is full;
    /// resolves once it is written to the channel.
    ///
    /// # Errors
    ///
    /// [`SendError::Encode`] for a message that cannot be encoded or is too
    /// large; [`SendError::Closed`] once disconnected.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled message may still be written.
    pub async fn send<M: Serialize + ?Sized>(&self, message: &M) -> Result<(), SendError> {
        let frame = self
            .wire
            .encode(User::Message(message), self.sizes.max_frame)
            .map_err(SendError::Encode)?;
        self.outbox.send(frame).await
    }

    /// Sends `bytes` to the primary as a bytes message (no serialization,
    /// no copy: the payload is written as it is), waiting while the queue
    /// is full; resolves once it is written to the channel. The primary
    /// gets it as a `WorkerBytes` event.
    ///
    /// # Errors
    ///
    /// [`SendError::Unsupported`] when the primary's hello said protocol
    /// version 1; [`SendError::Encode`] for a payload larger than the
    /// maximum frame; [`SendError::Closed`] once disconnected.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled message may still be written.
    pub async fn send_bytes(&self, bytes: impl Into<Bytes>) -> Result<(), SendError> {
        let bytes = bytes.into();
        let frame = bytes_frame(&bytes, self.sizes, &self.primary_protocol, &self.borrower)?;
        self.outbox.send(frame).await
    }

    /// Sends `message` with `fds` (files, sockets, pipe ends: at most
    /// [`MAX_FDS`](crate::MAX_FDS)) to the primary, as Node's
    /// `process.send(message, handle)`. The primary takes them from its
    /// `WorkerMessage` event; ours are closed once written.
    ///
    /// # Errors
    ///
    /// [`SendError::Encode`] with
    /// [`ProtocolError::TooManyFds`](crate::ProtocolError::TooManyFds) for
    /// more than `MAX_FDS`; [`SendError::Unsupported`] when the primary's
    /// hello said a version before 3; as [`send`](Self::send) otherwise.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled message may still be written.
    pub async fn send_with_fds<M: Serialize + ?Sized>(
        &self,
        message: &M,
        fds: Vec<OwnedFd>,
    ) -> Result<(), SendError> {
        let frame = message_with_fds(self.wire, message, fds, self.sizes, &self.primary_protocol)?;
        self.outbox.send(frame).await
    }

    /// Queues `message` with `fds` without waiting: [`send_with_fds`](Self::send_with_fds)
    /// for an event handler, which cannot wait (its context has it too:
    /// [`WorkerContext::try_send_with_fds`]).
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
        let frame = message_with_fds(self.wire, message, fds, self.sizes, &self.primary_protocol)?;
        self.outbox.try_send(frame)
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
        let frame = self.bytes_with_fds(&bytes, fds)?;
        self.outbox.try_send(frame)
    }

    /// A bytes message of `bytes` with `fds` (the caller keeps `bytes`
    /// until it is queued: see [`bytes_frame`]).
    fn bytes_with_fds(
        &self,
        bytes: &Bytes,
        fds: Vec<OwnedFd>,
    ) -> Result<protocol::Encoded, SendError> {
        let (sizes, protocol) = (self.sizes, &self.primary_protocol);
        bytes_with_fds(bytes, fds, sizes, protocol, &self.borrower)
    }

    /// Sends `bytes` with `fds`: as [`send_bytes`](Self::send_bytes) and
    /// [`send_with_fds`](Self::send_with_fds) together (the primary's
    /// `WorkerBytes` event has them).
    ///
    /// # Errors
    ///
    /// As [`send_with_fds`](Self::send_with_fds) and
    /// [`send_bytes`](Self::send_bytes).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled message may still be written.
    pub async fn send_bytes_with_fds(
        &self,
        bytes: impl Into<Bytes>,
        fds: Vec<OwnedFd>,
    ) -> Result<(), SendError> {
        let bytes = bytes.into();
        let frame = self.bytes_with_fds(&bytes, fds)?;
        self.outbox.send(frame).await
    }

    /// Queues `bytes` as a bytes message without waiting.
    ///
    /// # Errors
    ///
    /// As [`send_bytes`](Self::send_bytes), and [`SendError::Full`] when
    /// the queue is full.
    pub fn try_send_bytes(&self, bytes: impl Into<Bytes>) -> Result<(), SendError> {
        let (sizes, protocol) = (self.sizes, &self.primary_protocol);
        try_send_bytes(&self.outbox, &bytes.into(), sizes, protocol, &self.borrower)
    }

    /// Queues `message` without waiting.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), and [`SendError::Full`] when the queue is full.
    pub fn try_send<M: Serialize + ?Sized>(&self, message: &M) -> Result<(), SendError> {
        let frame = self
            .wire
            .encode(User::Message(message), self.sizes.max_frame)
            .map_err(SendError::Encode)?;
        self.outbox.try_send(frame)
    }

    /// Counts `requests` more requests served by this worker toward the
    /// primary's [`max_requests`](crate::primary::PrimaryBuilder::max_requests)
    /// (for requests that do not come through the primary's requests: an
    /// HTTP server's, say). Whether the primary takes the count: `false`
    /// before its hello arrived, or from a primary too old to count.
    ///
    /// ```no_run
    /// # fn demo(worker: isotropic_cluster::worker::ClusterWorker) -> Result<(), isotropic_cluster::SendError> {
    /// // After each HTTP request served:
    /// worker.count_served(1)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_send`](Self::try_send): [`SendError::Full`] when the queue
    /// is full (the count is not sent), [`SendError::Closed`] once the
    /// channel is closed.
    pub fn count_served(&self, requests: u64) -> Result<bool, SendError> {
        if !self
            .counts_served
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(false);
        }
        let frame = protocol::encode_control(&Frame::Served { requests });
        self.outbox.try_send(frame).map(|()| true)
    }

    /// Sends `message` to the primary as a request and waits for its reply,
    /// decoded into `R`, within the worker's default deadline (see
    /// [`WorkerBuilder::request_timeout`]).
    ///
    /// # Errors
    ///
    /// As [`WorkerHandle::request`](crate::primary::WorkerHandle::request).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future forgets the request.
    pub async fn request<R: serde::de::DeserializeOwned, M: Serialize + ?Sized>(
        &self,
        message: &M,
    ) -> Result<R, RequestError> {
        self.request_within(message, self.deadline).await
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
    pub async fn request_within<R: serde::de::DeserializeOwned, M: Serialize + ?Sized>(
        &self,
        message: &M,
        deadline: Duration,
    ) -> Result<R, RequestError> {
        let waiter = self.pending.begin(None)?;
        let frame = self
            .wire
            .encode(User::Request(waiter.id(), message), self.sizes.max_frame)
            .map_err(|e| RequestError::Send(SendError::Encode(e)))?;
        self.outbox.send(frame).await?;
        waiter.reply(deadline).await
    }

    /// Sends `body` as a bytes request to the primary's handler named
    /// `name` ([`handle_bytes`](crate::HandleRequests::handle_bytes) on
    /// its builder) and waits for its reply, within the worker's default
    /// deadline: raw bytes both ways, neither serialized nor copied (a body
    /// of at least the
    /// [`sealed_payload_threshold`](WorkerBuilder::sealed_payload_threshold)
    /// goes in a sealed memfd).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(worker: isotropic_cluster::worker::ClusterWorker) -> Result<(), isotropic_cluster::RequestError> {
    /// let config = worker.request_bytes("config", bytes::Bytes::new()).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`WorkerHandle::request_bytes`](crate::primary::WorkerHandle::request_bytes)
    /// ([`SendError::Unsupported`] when the primary's hello said a version
    /// before 3).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future forgets the request.
    pub async fn request_bytes(
        &self,
        name: &str,
        body: impl Into<Bytes>,
    ) -> Result<Bytes, RequestError> {
        self.request_bytes_within(name, body, self.deadline).await
    }

    /// [`request_bytes`](Self::request_bytes) with its own deadline.
    ///
    /// # Errors
    ///
    /// As [`request_bytes`](Self::request_bytes).
    ///
    /// # Cancel safety
    ///
    /// As [`request_bytes`](Self::request_bytes).
    pub async fn request_bytes_within(
        &self,
        name: &str,
        body: impl Into<Bytes>,
        deadline: Duration,
    ) -> Result<Bytes, RequestError> {
        takes_fds(&self.primary_protocol).map_err(|_| {
            RequestError::Send(SendError::Unsupported {
                worker_id: None,
                what: "bytes requests",
                why: "the primary's hello said an older protocol version",
            })
        })?;
        let waiter = self.pending.begin(None)?;
        let (id, name, body) = (waiter.id(), name.to_owned(), body.into());
        let frame = protocol::encode_with_body(&Frame::BytesRequest { id, name, body }, self.sizes)
            .map_err(|e| RequestError::Send(SendError::Encode(e)))?;
        self.outbox.send(frame).await?;
        waiter.reply_bytes(deadline).await
    }

    /// Destroys the worker: runs its cleanup (at most `timeout`), disconnects
    /// from the primary, and resolves once the disconnect is written. The
    /// process is ended `timeout` after the call at the latest: return from
    /// `main` once this resolves. Safe to call more than once.
    ///
    /// # Errors
    ///
    /// [`Error::Prevented`] when a handler vetoed the destroy.
    ///
    /// # Cancel safety
    ///
    /// The destroy goes on if the future is dropped (it is ordered at the
    /// first poll).
    pub async fn destroy(&self, timeout: Duration) -> Result<(), Error> {
        let done = self
            .mailbox
            .call(move |w| {
                w.destroy(timeout);
                w.closed_waiter()
            })
            .await;
        if let Ok(done) = done {
            done.await
                .map_err(|_| Error::Prevented { event: "destroy" })?;
        }
        self.outbox.wait_closed().await;
        Ok(())
    }

    /// A listening socket for `address`, shared with every worker that asks
    /// for the same one: the primary binds it once (port 0: one ephemeral
    /// port for all) and keeps it open while a live worker holds it and 5 s
    /// more, so a replacement serves on the same socket (one that asks later
    /// than that gets a new socket, on the same port while it is free).
    /// The primary also publishes `workerListening`.
    ///
    /// # Errors
    ///
    /// A [`ListenError`] naming the address: [`ListenErrorKind::AddrInUse`],
    /// [`ListenErrorKind::PermissionDenied`], [`ListenErrorKind::NotAllowed`]
    /// or [`ListenErrorKind::TooMany`] (the primary's limits), an address
    /// that does not parse,
    /// or [`ListenErrorKind::Disconnected`] once the primary is gone.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(worker: isotropic_cluster::worker::ClusterWorker) -> Result<(), Box<dyn std::error::Error>> {
    /// // Works with every `Distribution` (with `RoundRobin` the primary passes
    /// // each connection; `into_tcp` would then be `None`).
    /// let mut listener = worker.listen("127.0.0.1:3000").await?;
    /// loop {
    ///     let connection = listener.accept().await?; // a `Connection::Tcp`
    ///     // serve it
    /// #   drop(connection);
    /// }
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a socket that arrives after the future is dropped is closed.
    pub async fn listen<A>(&self, address: A) -> Result<Listener, ListenError>
    where
        A: TryInto<ListenAddress>,
        ListenError: From<A::Error>,
    {
        let address = address.try_into()?;
        let disconnected = |address: &ListenAddress| ListenError {
            address: address.to_string(),
            kind: ListenErrorKind::Disconnected,
            message: "the channel to the primary is closed".into(),
        };
        let asked = address.clone();
        let reply = self
            .mailbox
            .call(move |w| w.request_listen(address))
            .await
            .map_err(|_| disconnected(&asked))?;
        reply.await.map_err(|_| disconnected(&asked))?
    }

    /// Resolves when the worker starts being destroyed (the primary asked it to
    /// disconnect, or went away, SIGTERM, or `destroy`): the moment for a
    /// server to stop accepting and finish what is in flight.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn closing(&self) {
        if let Ok(closing) = self.mailbox.call(WorkerContext::closing_waiter).await {
            let _ = closing.await;
        }
    }

    /// Resolves once the worker is destroyed, for any reason (the primary
    /// asked it to disconnect or went away, SIGTERM, or `destroy`), and its
    /// disconnect is written.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn closed(&self) {
        if let Ok(done) = self.mailbox.call(WorkerContext::closed_waiter).await {
            let _ = done.await;
        }
        self.outbox.wait_closed().await;
    }

    /// Every event from now on that reaches its default action, as a stream;
    /// it ends when the worker is destroyed.
    ///
    /// Lossy as [`ClusterPrimary::events`](crate::primary::ClusterPrimary::events):
    /// a stream that falls behind yields [`WorkerEvent::Skipped`] in place of
    /// the events it lost; handlers see every event.
    pub fn events(&self) -> EventStream<WorkerEvent> {
        self.stream.subscribe()
    }
}

impl crate::request::sealed::HasHandlers for WorkerBuilder {
    fn handlers(&mut self) -> &mut Handlers {
        &mut self.handlers
    }
}

#[cfg(test)]
mod lent_slices {
    use super::*;
    use crate::protocol::{DEFAULT_MAX_FRAME, DEFAULT_SEALED_FROM, Frame};
    use crate::shared::tests::{Ends, bytes, ends, lend};

    /// A payload of 1.5 MiB lent by the primary, as the worker holds it.
    async fn lent_to_us(ends: &mut Ends) -> Bytes {
        lend(ends, &Bytes::from(vec![5u8; 3 << 19]));
        bytes(&mut ends.worker.1).await
    }

    /// A short slice of a payload the primary lent us is copied into a
    /// bytes frame only when it fits one: under a small maximum frame it
    /// goes back as a `returned` frame.
    #[tokio::test]
    async fn a_short_slice_of_a_lent_payload_is_sent_back_under_a_small_max_frame() {
        let mut ends = ends();
        let received = lent_to_us(&mut ends).await;
        let sizes = Sizes {
            max_frame: 1024,
            sealed_from: DEFAULT_SEALED_FROM,
        };
        let version = AtomicU32::new(protocol::VERSION);
        let frame = bytes_frame(&received.slice(0..2048), sizes, &version, &ends.borrower);
        assert!(frame.is_ok(), "a 2 KiB slice of a lent payload: {frame:?}");
    }

    /// A slice just under 4 KiB of a lent payload is copied into a bytes
    /// frame whose body is the borrowed view, queued by reference (the
    /// frame is 4 KiB or more). Dropped by the sender before the write, its
    /// last reference goes with the written frame, and its release queues
    /// a frame on the same outbox: not under the queue's lock, or the
    /// writer would wait for itself.
    #[test]
    fn a_short_lent_slice_dropped_before_its_write_does_not_stall_the_writer() {
        const LEN: usize = 4093;
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut ends = ends();
                let received = lent_to_us(&mut ends).await;
                let sizes = Sizes::frames(DEFAULT_MAX_FRAME);
                let version = AtomicU32::new(protocol::VERSION);
                let slice = received.slice(0..LEN);
                let frame = bytes_frame(&slice, sizes, &version, &ends.borrower).expect("a frame");
                ends.worker.0.try_send(frame).expect("queued");
                drop((slice, received));
                // The echo, then the release, then a heartbeat.
                assert_eq!(bytes(&mut ends.primary.1).await.len(), LEN);
                let heartbeat = protocol::encode_control(&Frame::Heartbeat);
                ends.worker.0.try_send(heartbeat).expect("queued");
                let next = ends.primary.1.next().await;
                assert!(matches!(next, Some(Ok(Frame::Heartbeat))), "{next:?}");
            });
            let _ = done.send(());
        });
        let outcome = finished.recv_timeout(Duration::from_secs(30));
        assert!(outcome.is_ok(), "the worker's writer is stuck: {outcome:?}");
    }
}
