//! The worker's state and default actions, owned by one task.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::signal::unix::{Signal, SignalKind};
use tokio::sync::oneshot;

use super::events::*;
use super::phase::{Action, Input, Phase};
use super::watchdog::Watchdogs;
use super::{Cleanup, ClusterWorker, Settings, WorkerBuilder};
use crate::WorkerId;
use crate::actor::{Actor, Commands, Mailbox, WeakMailbox};
use crate::channel::{self, Inbox, Outbox};
use crate::error::{ProtocolError, SendError};
use crate::events::{self, HandlerPanic, Hub, Stage, StreamSource, Topic};
use crate::fds::PassedFds;
use crate::net::{self, ListenAddress, ListenError, ListenErrorKind, Listener, PassedSender};
use crate::protocol::{self, Frame, FrameCodec, User, Wire};
use crate::request::{Handlers, Pending};
use crate::shared::{Borrower, Sharing};
use crate::topics::topics;

/// The worker as its event handlers see it.
///
/// Reached from a handler through [`Event::context`](crate::Event::context).
pub struct WorkerContext {
    hub: Hub,
    pub(super) stream: StreamSource<WorkerEvent>,
    pub(super) id: WorkerId,
    pub(super) outbox: Outbox,
    mailbox: WeakMailbox<WorkerContext>,
    pub(super) settings: Settings,
    cleanup: Option<Cleanup>,
    phase: Phase,
    /// Fires when the cleanup of a destroy is done (or timed out).
    cleanup_done: Option<oneshot::Receiver<()>>,
    closed_waiters: Vec<oneshot::Sender<()>>,
    closing_waiters: Vec<oneshot::Sender<()>>,
    inbox: Inbox,
    /// Listen requests waiting for the primary's answer.
    listens: HashMap<
        u64,
        (
            ListenAddress,
            oneshot::Sender<Result<Listener, ListenError>>,
        ),
    >,
    next_listen: u64,
    /// Where passed connections go, by listen request.
    passed: HashMap<u64, PassedSender>,
    /// Requests to the primary waiting for a reply.
    pub(super) pending: Arc<Pending>,
    /// Handlers of the primary's requests.
    handlers: Handlers,
    /// The channel is still read.
    reading: bool,
    /// SIGTERM, when the worker listens for it.
    sigterm: Option<Signal>,
    /// The application's watchdogs: heartbeats are answered while they are fresh.
    pub(super) watchdogs: Arc<Watchdogs>,
    /// The primary's hello said it takes `served` frames.
    pub(super) counts_served: Arc<std::sync::atomic::AtomicBool>,
    /// The protocol version of the primary's hello (0 until it comes).
    pub(super) primary_protocol: Arc<std::sync::atomic::AtomicU32>,
    /// The primary's segments, mapped (`shared.rs`).
    pub(super) borrower: Arc<Borrower>,
}

impl std::fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerContext")
            .field("id", &self.id)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

crate::topics::host!(WorkerContext, stream: WorkerEvent, inbound: PrimaryMessage, handle: ClusterWorker, builder: super::WorkerBuilder);

// Each event, its original name, and its default action (below).
topics!(WorkerContext =>
    /// Every event of a worker, as an item of its
    /// [`EventStream`](crate::EventStream).
    WorkerEvent {
        Initialize: "initialize" once Complete => complete_initialize;
        InitializeComplete: "initializeComplete" once Publish => complete_initialize_complete;
        InitializeError: "initializeError" once Publish => log_event;
        PrimaryMessage: "primaryMessage" => complete_message;
        PrimaryBytes: "primaryBytes" => log_event;
        PrimaryMessageError: "primaryMessageError" => log_event;
        PrimaryDisconnect: "primaryDisconnect" => complete_primary_disconnect;
        Destroy: "destroy" once Complete => complete_destroy;
        DestroyComplete: "destroyComplete" once Publish => log_event;
    }
);

impl events::sealed::StreamEvent for WorkerEvent {
    fn weight(&self) -> usize {
        match self {
            Self::PrimaryMessage(PrimaryMessage { message, .. })
            | Self::PrimaryMessageError(PrimaryMessageError { message, .. }) => {
                message.as_bytes().len()
            }
            Self::PrimaryBytes(PrimaryBytes { bytes, .. }) => bytes.len(),
            _ => 0,
        }
    }
}

impl WorkerContext {
    /// This worker's id.
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// Queues `message` for the primary without waiting.
    ///
    /// # Errors
    ///
    /// As [`ClusterWorker::try_send`].
    pub fn try_send<M: Serialize + ?Sized>(&self, message: &M) -> Result<(), SendError> {
        let frame = Wire::Frames(self.settings.codec)
            .encode(User::Message(message), self.settings.max_frame_size)
            .map_err(SendError::Encode)?;
        self.outbox.try_send(frame)
    }

    /// Queues `bytes` for the primary as a bytes message without waiting.
    ///
    /// # Errors
    ///
    /// As [`ClusterWorker::try_send_bytes`].
    pub fn try_send_bytes(&self, bytes: impl Into<bytes::Bytes>) -> Result<(), SendError> {
        let (sizes, protocol) = (self.settings.sizes(), &self.primary_protocol);
        super::try_send_bytes(&self.outbox, &bytes.into(), sizes, protocol, &self.borrower)
    }

    /// Queues `message` with `fds` for the primary without waiting.
    ///
    /// # Errors
    ///
    /// As [`ClusterWorker::try_send_with_fds`].
    pub fn try_send_with_fds<M: Serialize + ?Sized>(
        &self,
        message: &M,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<(), SendError> {
        let wire = Wire::Frames(self.settings.codec);
        let sizes = self.settings.sizes();
        let frame = super::message_with_fds(wire, message, fds, sizes, &self.primary_protocol)?;
        self.outbox.try_send(frame)
    }

    /// Queues `bytes` with `fds` for the primary without waiting.
    ///
    /// # Errors
    ///
    /// As [`ClusterWorker::try_send_bytes_with_fds`].
    pub fn try_send_bytes_with_fds(
        &self,
        bytes: impl Into<bytes::Bytes>,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<(), SendError> {
        let sizes = self.settings.sizes();
        let bytes = bytes.into();
        let frame =
            super::bytes_with_fds(&bytes, fds, sizes, &self.primary_protocol, &self.borrower)?;
        self.outbox.try_send(frame)
    }

    /// Starts destroying the worker (publishes `destroy`): cleanup, bounded by
    /// `timeout`, then disconnect.
    pub fn destroy(&mut self, timeout: Duration) {
        if self.step(Input::DestroyRequested) == Action::Destroy {
            events::publish(self, Destroy { timeout });
        }
    }

    /// A handle to this worker, for async work started from a handler; `None`
    /// once every handle is gone.
    pub fn handle(&self) -> Option<ClusterWorker> {
        Some(ClusterWorker::new(self.mailbox.upgrade()?, self))
    }
}

impl WorkerContext {
    /// The context of worker `id` on channel `fd`, with its hello queued and
    /// what `builder` set (its initializer is not kept); and the mailbox that
    /// commands it.
    pub(super) fn connect(
        id: WorkerId,
        fd: OwnedFd,
        builder: WorkerBuilder,
    ) -> std::io::Result<(Self, Mailbox<Self>, Commands<Self>)> {
        let (read, outbox) = channel::open(fd, builder.settings.queue, None)?;
        // It answers heartbeats (from this actor: `deliver`).
        let codec = builder.settings.codec;
        outbox.hello(true, false, true, codec);
        let borrower = Borrower::new(outbox.clone());
        let inbox = Inbox::new(
            read,
            FrameCodec::new(builder.settings.max_frame_size).with_codec(codec),
        )
        .sharing(Sharing::Borrower(borrower.clone()));
        let (mailbox, commands) = Mailbox::new();
        let context = Self {
            hub: builder.hub,
            stream: StreamSource::default(),
            id,
            outbox,
            inbox,
            mailbox: mailbox.downgrade(),
            settings: builder.settings,
            cleanup: builder.cleanup,
            phase: Phase::Starting,
            cleanup_done: None,
            closed_waiters: Vec::new(),
            closing_waiters: Vec::new(),
            listens: HashMap::new(),
            passed: HashMap::new(),
            pending: Arc::default(),
            handlers: builder.handlers,
            next_listen: 0,
            reading: true,
            sigterm: None,
            watchdogs: Arc::default(),
            counts_served: Arc::default(),
            primary_protocol: Arc::default(),
            borrower,
        };
        Ok((context, mailbox, commands))
    }

    /// Moves the phase on by `input`; returns what to do.
    fn step(&mut self, input: Input<'_>) -> Action {
        let (phase, action) = self.phase.step(input);
        self.phase = phase;
        action
    }

    /// Whether `initialize` completed (it was not prevented).
    pub(super) fn initialized(&self) -> bool {
        self.phase != Phase::Starting
    }

    /// Resolves once the worker starts being destroyed.
    pub(super) fn closing_waiter(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if self.phase.is_closing() {
            let _ = tx.send(());
        } else {
            self.closing_waiters.push(tx);
        }
        rx
    }

    /// Asks the primary for a listening socket; the receiver gets it.
    pub(super) fn request_listen(
        &mut self,
        address: ListenAddress,
    ) -> oneshot::Receiver<Result<Listener, ListenError>> {
        let (tx, rx) = oneshot::channel();
        self.next_listen += 1;
        let id = self.next_listen;
        // Passed connections are acknowledged (`net::PassedListener`).
        let request = protocol::encode_control(&Frame::Listen {
            id,
            address: address.clone(),
            acks: true,
        });
        match self.outbox.try_send(request) {
            Ok(()) => {
                self.listens.insert(id, (address, tx));
            }
            Err(error) => drop(tx.send(Err(ListenError {
                address: address.to_string(),
                kind: ListenErrorKind::Disconnected,
                message: error.to_string(),
            }))),
        }
        rx
    }

    /// A connection the primary accepted for listen request `listener`.
    fn connection(&mut self, listener: u64) {
        let Some(fd) = self.inbox.take_fd() else {
            tracing::warn!(worker_id = %self.id, listener, "a connection frame came without a socket");
            return;
        };
        match self.passed.get_mut(&listener) {
            Some(passed) => passed.pass(fd),
            None => {
                tracing::warn!(worker_id = %self.id, listener, "a connection for no listener was dropped");
            }
        }
    }

    /// The primary's answer to listen request `id`.
    fn listening(
        &mut self,
        id: u64,
        result: Result<ListenAddress, (ListenErrorKind, String)>,
        (passed, acks): (bool, bool),
    ) {
        let Some((asked, reply)) = self.listens.remove(&id) else {
            tracing::warn!(worker_id = %self.id, id, "answer to an unknown listen request");
            return;
        };
        let failed = |kind, message: String| ListenError {
            address: asked.to_string(),
            kind,
            message,
        };
        let result = match result {
            Ok(bound) if passed => {
                let (sender, listener) = net::passed(bound, id, acks.then(|| self.outbox.clone()));
                self.passed.insert(id, sender);
                Ok(Listener::Passed(listener))
            }
            Ok(bound) => match self.inbox.take_fd() {
                Some(fd) => net::adopt(&bound, fd)
                    .map_err(|e| failed(ListenErrorKind::of(&e), e.to_string())),
                None => Err(failed(
                    ListenErrorKind::Other,
                    "no socket came with the answer".into(),
                )),
            },
            Err((kind, message)) => Err(failed(kind, message)),
        };
        let _ = reply.send(result);
    }

    /// Resolves once the worker is destroyed.
    pub(super) fn closed_waiter(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if self.phase == Phase::Destroyed {
            let _ = tx.send(());
        } else {
            self.closed_waiters.push(tx);
        }
        rx
    }

    fn frame(&mut self, frame: Frame) {
        if let Frame::Hello {
            served, protocol, ..
        } = frame
        {
            self.counts_served
                .store(served, std::sync::atomic::Ordering::Relaxed);
            self.primary_protocol
                .store(protocol, std::sync::atomic::Ordering::Relaxed);
        }
        match self.step(Input::Frame(&frame)) {
            Action::Handle => self.deliver(frame),
            Action::Reject { announce } => {
                tracing::error!(worker_id = %self.id, frame = ?frame, "unexpected frame from the primary");
                self.primary_gone(announce);
            }
            Action::PrimaryGone { announce } => self.primary_gone(announce),
            // The hello: nothing more to do.
            _ => {}
        }
    }

    /// A frame that [`Phase::step`] let through, by kind.
    fn deliver(&mut self, frame: Frame) {
        let (frame, fds) = match frame {
            Frame::Attached(frame, fds) => (*frame, fds),
            frame => (frame, PassedFds::default()),
        };
        match frame {
            Frame::Message(message) => events::publish(self, PrimaryMessage { message, fds }),
            Frame::Bytes(bytes) => events::publish(self, PrimaryBytes { bytes, fds }),
            Frame::Listening {
                id,
                result,
                passed,
                acks,
            } => self.listening(id, result, (passed, acks)),
            Frame::Connection { listener } => self.connection(listener),
            Frame::Request { id, message } => {
                self.handlers
                    .answer(id, &message, self.settings.max_frame_size)
                    .send(&self.outbox, ());
            }
            Frame::Reply { id, result } => self.pending.resolve(id, result, None),
            Frame::BytesRequest { id, name, body } => {
                self.handlers
                    .answer_bytes(id, &name, body, self.settings.sizes())
                    .send(&self.outbox, ());
            }
            Frame::BytesReply { id, result } => self.pending.resolve_bytes(id, result, None),
            Frame::Heartbeat => self.heartbeat(),
            // Never handed over: the handshake and the disconnect are the
            // phase's, the others only a worker sends.
            Frame::Hello { .. }
            | Frame::Disconnect
            | Frame::Ready
            | Frame::Listen { .. }
            | Frame::Accepted { .. }
            | Frame::Served { .. }
            | Frame::Fds { .. }
            | Frame::Sealed { .. }
            | Frame::Segment { .. }
            | Frame::Lent { .. }
            | Frame::Release(_)
            | Frame::Returned { .. }
            | Frame::Retire { .. }
            | Frame::Attached(..) => {}
        }
    }

    /// Answers the primary's heartbeat, here in the actor (so a blocked
    /// event loop misses it), unless an application watchdog is stale.
    fn heartbeat(&self) {
        if self.watchdogs.fresh(tokio::time::Instant::now()) {
            let _ = self
                .outbox
                .try_send(protocol::encode_control(&Frame::Heartbeat));
        }
    }

    /// Handles what the channel gave; returns whether to keep reading.
    fn incoming(&mut self, frame: Option<Result<Frame, ProtocolError>>) -> bool {
        match frame {
            Some(Ok(frame)) => {
                self.frame(frame);
                true
            }
            Some(Err(error)) => {
                if !error.is_disconnect() {
                    tracing::error!(worker_id = %self.id, %error, "channel from the primary broken");
                }
                self.channel_end();
                false
            }
            None => {
                self.channel_end();
                false
            }
        }
    }

    fn channel_end(&mut self) {
        if let Action::PrimaryGone { announce } = self.step(Input::ChannelEnd) {
            self.primary_gone(announce);
        }
    }

    fn primary_gone(&mut self, announce: bool) {
        self.pending.fail_all(None);
        if announce {
            events::publish(self, PrimaryDisconnect);
        }
    }

    /// The cleanup is done (or timed out): disconnect and tear down.
    fn cleanup_done(&mut self) {
        self.cleanup_done = None;
        if self.step(Input::CleanupDone) != Action::Finish {
            return;
        }
        self.pending.fail_all(None);
        let _ = self
            .outbox
            .try_send(protocol::encode_control(&Frame::Disconnect));
        self.outbox.close();
        events::publish(self, DestroyComplete);
        self.hub.clear();
        self.stream.close();
        for waiter in self.closed_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

/// How many buffered frames are handled per turn of the actor's loop.
const BATCH: usize = 256;

/// What the worker hears besides commands.
#[derive(Debug)]
pub(crate) enum Turn {
    /// The channel gave a frame (or ended).
    Frame(Option<Result<Frame, ProtocolError>>),
    /// The cleanup of a destroy is done, or timed out.
    CleanupDone,
    /// SIGTERM.
    Terminate,
}

impl Actor for WorkerContext {
    type Input = Turn;

    async fn next_input(&mut self) -> Turn {
        tokio::select! {
            frame = self.inbox.next(), if self.reading => Turn::Frame(frame),
            () = cleanup_end(&mut self.cleanup_done) => Turn::CleanupDone,
            Some(()) = recv(&mut self.sigterm) => Turn::Terminate,
            else => std::future::pending().await,
        }
    }

    fn handle(&mut self, turn: Turn) {
        match turn {
            Turn::Frame(frame) => {
                // Handle what is already buffered in one go (bounded), rather
                // than one frame per turn of the loop.
                self.reading = self.incoming(frame);
                let mut count = 1;
                while count < BATCH && self.reading && self.phase != Phase::Destroyed {
                    // The common case first, without building a frame (a
                    // large enum, whose moves through `incoming` and
                    // `deliver` showed in profiles): bytes messages.
                    if self.phase.delivers()
                        && let Some(mut run) = self.inbox.try_next_run((BATCH - count, usize::MAX))
                    {
                        count += run.len();
                        // (A handler may destroy the worker: what follows is
                        // then not delivered, as by `incoming`.)
                        events::publish_each(self, |this: &mut Self| {
                            let bytes = run.next().filter(|_| this.phase.delivers())?;
                            let fds = PassedFds::default();
                            Some(PrimaryBytes { bytes, fds })
                        });
                        continue;
                    }
                    count += 1;
                    match self.inbox.try_next() {
                        None => break,
                        frame => self.reading = self.incoming(frame),
                    }
                }
            }
            Turn::CleanupDone => self.cleanup_done(),
            Turn::Terminate => {
                tracing::info!(worker_id = %self.id, "SIGTERM: destroying the worker");
                self.destroy(self.settings.destroy_timeout);
            }
        }
    }

    fn orphaned(&mut self) {
        self.destroy(self.settings.destroy_timeout);
    }

    fn finished(&self) -> bool {
        self.phase == Phase::Destroyed
    }

    fn handler_panicked(&mut self, panic: HandlerPanic) {
        exit_on_panic(self.id, &panic)
    }
}

/// The exit code of a worker whose handler panicked: that of a Rust program
/// whose `main` panicked.
const PANIC_EXIT_CODE: i32 = 101;

/// A handler of this worker panicked (the panic hook has printed it): the
/// process exits at once with [`PANIC_EXIT_CODE`], whichever task or thread
/// caught the panic, so the primary sees an involuntary exit and replaces the
/// worker. No destructor runs and nothing queued is flushed.
pub(super) fn exit_on_panic(id: WorkerId, panic: &HandlerPanic) -> ! {
    tracing::error!(
        worker_id = %id,
        event = panic.event,
        stage = ?panic.stage,
        message = %panic.message,
        "an event handler panicked: the worker exits"
    );
    std::process::exit(PANIC_EXIT_CODE)
}

async fn recv(signal: &mut Option<Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

async fn cleanup_end(done: &mut Option<oneshot::Receiver<()>>) {
    match done {
        Some(done) => drop(done.await),
        None => std::future::pending().await,
    }
}

impl WorkerContext {
    /// Destroys the worker on SIGTERM (the worker library's graceful exit).
    pub(super) fn on_sigterm(mut self) -> Self {
        self.sigterm = tokio::signal::unix::signal(SignalKind::terminate()).ok();
        self
    }
}

// ===== default actions =====

impl WorkerContext {
    pub(super) fn log_event<E: Topic>(&mut self, event: &E) {
        tracing::debug!(worker_id = %self.id, event = E::NAME, data = ?event);
    }

    pub(super) fn complete_initialize(&mut self, _: &Initialize) {
        tracing::info!(worker_id = %self.id, "Initializing worker");
        self.step(Input::Initialized);
    }

    pub(super) fn complete_initialize_complete(&mut self, _: &InitializeComplete) {
        tracing::info!(worker_id = %self.id, "Worker ready");
        let _ = self
            .outbox
            .try_send(protocol::encode_control(&Frame::Ready));
    }

    pub(super) fn complete_message(&mut self, event: &PrimaryMessage) {
        if let Err(error) = events::route(self, event, &event.message) {
            tracing::warn!(worker_id = %self.id, %error, "message does not fit its route");
            let message = event.message.clone();
            events::publish(self, PrimaryMessageError { message, error });
        }
    }

    pub(super) fn complete_primary_disconnect(&mut self, _: &PrimaryDisconnect) {
        tracing::info!(worker_id = %self.id, "Primary disconnected");
        self.destroy(self.settings.destroy_timeout);
    }

    pub(super) fn complete_destroy(&mut self, event: &Destroy) {
        if self.step(Input::DestroyStarted) != Action::Cleanup {
            return;
        }
        for waiter in self.closing_waiters.drain(..) {
            let _ = waiter.send(());
        }
        let timeout = event.timeout;
        // The process ends at the latest after the timeout, whatever `main`
        // is doing by then.
        std::thread::spawn(move || {
            std::thread::sleep(timeout);
            std::process::exit(0);
        });
        let cleanup = self.cleanup.take();
        let (done, done_rx) = oneshot::channel();
        self.cleanup_done = Some(done_rx);
        let id = self.id;
        tokio::spawn(async move {
            if let Some(cleanup) = cleanup {
                let cleanup = events::catch_async(async move { cleanup().await });
                match tokio::time::timeout(timeout, cleanup).await {
                    Ok(Ok(())) => {}
                    Ok(Err(message)) => exit_on_panic(
                        id,
                        &HandlerPanic {
                            event: Destroy::NAME,
                            stage: Stage::Complete,
                            message,
                        },
                    ),
                    Err(_) => tracing::warn!("worker cleanup timed out"),
                }
            }
            let _ = done.send(());
        });
    }
}
