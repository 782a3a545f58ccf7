//! The primary's state and every default action, owned by one task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::time::DelayQueue;

use super::builder::{Config, WorkerChannel};
use super::events::*;
use super::listen::Listeners;
use super::pool::{Destination, Pool};
use super::restart::{Backoff, OnIntensity};
use super::rolling::Rolling;
use super::supervisor::{self, Input};
use super::{ClusterPrimary, Worker};
use crate::WorkerId;
use crate::actor::{Command, WeakMailbox};
use crate::error::{Error, ProtocolError, SendError};
use crate::events::{self, Hub, StreamSource, Topic};
use crate::protocol::{self, Frame, Wire};
use crate::request::Handlers;
use crate::sys;

/// Where a phase of the lifecycle (shutdown, destroy) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Running,
    Done,
}

#[derive(Debug)]
enum Timer {
    Restart,
    Escalate(WorkerId, i32),
    Ready(WorkerId),
    /// Time to look whether a worker listens yet (`ready_on_listen`).
    Listening(WorkerId),
}

/// One live worker, as the actor tracks it.
#[derive(Debug)]
struct Live {
    worker: Worker,
    started: Instant,
    online: bool,
    ready: bool,
    disconnected: bool,
    /// Asked to disconnect, or announced that it leaves.
    voluntary: bool,
    /// Termination has been scheduled.
    stopping: bool,
    /// Stopped by `stop_worker`: replaced at once, not counted as a failure.
    recycled: bool,
    signals: mpsc::UnboundedSender<i32>,
}

/// The primary as its event handlers see it: the same operations as
/// [`ClusterPrimary`], synchronous, so that what a handler does runs
/// depth-first inside the event being handled.
///
/// Reached from a handler through [`Event::primary`](crate::Event::primary).
pub struct PrimaryContext {
    hub: Hub,
    config: Arc<Config>,
    pool: Arc<Pool>,
    pub(super) stream: StreamSource<PrimaryEvent>,
    mailbox: WeakMailbox<PrimaryContext>,
    pub(super) inputs: mpsc::Sender<Input>,
    timers: DelayQueue<Timer>,
    live: HashMap<WorkerId, Live>,
    next_id: u64,
    initialized: bool,
    active: bool,
    shutdown: Phase,
    destroy: Phase,
    finished: bool,
    backoff: Backoff,
    /// Workers whose `workerFork` is published on the next turn.
    forked: Vec<Worker>,
    /// What the last `fork` default action did.
    fork_outcome: Option<Result<usize, Error>>,
    shut_down_waiters: Vec<oneshot::Sender<()>>,
    destroy_waiters: Vec<oneshot::Sender<()>>,
    /// A rolling restart under way, if any.
    rolling: Rolling,
    /// Handlers of requests from workers.
    handlers: Handlers,
    /// Listening sockets, and the connections passed in round robin.
    pub(super) listeners: Listeners,
}

impl std::fmt::Debug for PrimaryContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryContext")
            .field("active", &self.active)
            .field("live", &self.live.len())
            .field("ready", &self.pool.ready().len())
            .finish_non_exhaustive()
    }
}

impl<E: Topic<Host = PrimaryContext>> events::Event<'_, E> {
    /// The primary, to act on from a handler (fork, send, shut down, …).
    pub fn primary(&mut self) -> &mut PrimaryContext {
        self.host
    }
}

crate::topics::host!(PrimaryContext, stream: PrimaryEvent, inbound: WorkerMessage, handle: ClusterPrimary, builder: super::PrimaryBuilder);

// ===== public operations =====

impl PrimaryContext {
    /// Starts `count` workers, unless the primary has been shut down (then
    /// nothing happens, as in the original). Returns how many were started:
    /// fewer than `count` when a handler prevented the `fork` event.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] when a worker process could not be started (those
    /// started before it keep running; a `forkError` event is published too).
    pub fn fork(&mut self, count: usize) -> Result<usize, Error> {
        if !self.active {
            tracing::debug!(count, "fork ignored: the primary is shut down");
            return Ok(0);
        }
        events::publish(self, Fork { count });
        self.fork_outcome.take().unwrap_or(Ok(0))
    }

    /// Queues `message` for every worker `to` names, without waiting (for the
    /// waiting form, see [`ClusterPrimary::send`]).
    ///
    /// # Errors
    ///
    /// As [`ClusterPrimary::send`], and [`SendError::Full`] for a worker
    /// whose queue is full.
    pub fn send<M: Serialize + ?Sized>(
        &self,
        to: impl Into<Destination>,
        message: &M,
    ) -> Result<(), SendError> {
        let frame = self.config.encode(message)?;
        self.pool.try_send(to.into(), &frame)
    }

    /// The ready worker least recently selected for `tag` (see
    /// [`ClusterPrimary::round_robin`]).
    pub fn round_robin(&self, tag: &str) -> Option<Worker> {
        self.pool.round_robin(tag)
    }

    /// The ready workers, by ascending id.
    pub fn workers(&self) -> Vec<Worker> {
        self.pool.ready()
    }

    /// The ready worker with this id.
    pub fn worker_by_id(&self, id: WorkerId) -> Option<Worker> {
        self.pool.ready_by_id(id)
    }

    /// Whether the primary still replaces workers and accepts `fork` (true
    /// until shutdown).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Starts a shutdown (publishes `shutDown`); completion is the
    /// `shutDownComplete` event.
    pub fn shut_down(&mut self) {
        events::publish(self, ShutDown);
    }

    /// Starts a destroy (publishes `destroy`); completion is the
    /// `destroyComplete` event.
    pub fn destroy(&mut self) {
        events::publish(self, Destroy);
    }

    /// Asks one worker to leave, as a shutdown asks each: the disconnect
    /// request (SIGTERM for programs without a channel), SIGTERM after the
    /// shutdown grace period, SIGKILL after the kill grace period. It leaves
    /// the pool at once; its exit is voluntary and, while the primary is
    /// active, replaced at once (it does not count towards the restart
    /// policy's backoff or intensity): a way to recycle a worker that is
    /// stuck or too big.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchWorker`] when no live worker has this id.
    pub fn stop_worker(&mut self, id: WorkerId) -> Result<(), Error> {
        let worker = self
            .live_worker(id)
            .ok_or(Error::NoSuchWorker { worker_id: id })?;
        self.remove_if_present(&worker);
        if let Some(live) = self.live.get_mut(&id) {
            live.recycled = true;
        }
        self.ask_to_leave(id);
        Ok(())
    }

    /// Restarts the ready workers one at a time: each is stopped as by
    /// [`stop_worker`](Self::stop_worker) once the previous one's
    /// replacement is ready, so that at most one is missing from the pool.
    /// A restart under way begins again with the workers ready now. A
    /// shutdown ends it.
    pub fn restart_workers(&mut self) {
        let ready = self.pool.ready().iter().map(Worker::id).collect();
        self.rolling.begin(ready);
        self.roll();
    }

    /// Stops the next worker of the rolling restart, or ends it.
    fn roll(&mut self) {
        while let Some(id) = self.rolling.next() {
            // One that exited meanwhile has been replaced already.
            if self.stop_worker(id).is_ok() {
                self.rolling.stopped();
                return;
            }
        }
        self.rolling.end();
    }

    /// Sends SIGKILL to every live worker and its process group now (each a
    /// `workerSignal` event): a forced stop. Exits follow as usual.
    pub fn kill_workers(&mut self) {
        let workers: Vec<Worker> = self.live.values().map(|live| live.worker.clone()).collect();
        for worker in workers {
            events::publish(
                self,
                WorkerSignal {
                    worker,
                    signal: libc::SIGKILL,
                },
            );
        }
    }

    /// A handle to this primary, for async work started from a handler; `None`
    /// once every handle is gone.
    pub fn handle(&self) -> Option<ClusterPrimary> {
        Some(ClusterPrimary::new(self.mailbox.upgrade()?, self))
    }
}

// ===== the actor =====

impl PrimaryContext {
    pub(super) fn new(
        config: Config,
        hub: Hub,
        handlers: Handlers,
        mailbox: WeakMailbox<Self>,
    ) -> (Self, mpsc::Receiver<Input>) {
        let (inputs, input_rx) = mpsc::channel(1024);
        let context = Self {
            handlers,
            hub,
            config: Arc::new(config),
            pool: Arc::default(),
            stream: StreamSource::default(),
            mailbox,
            inputs,
            timers: DelayQueue::new(),
            live: HashMap::new(),
            next_id: 0,
            initialized: false,
            active: true,
            shutdown: Phase::Idle,
            destroy: Phase::Idle,
            finished: false,
            backoff: Backoff::default(),
            forked: Vec::new(),
            fork_outcome: None,
            shut_down_waiters: Vec::new(),
            destroy_waiters: Vec::new(),
            rolling: Rolling::default(),
            listeners: Listeners::activated(),
        };
        (context, input_rx)
    }

    pub(super) fn pool(&self) -> Arc<Pool> {
        self.pool.clone()
    }

    pub(super) fn config(&self) -> Arc<Config> {
        self.config.clone()
    }

    pub(super) fn initialized(&self) -> bool {
        self.initialized
    }

    /// Starts a shutdown if needed; the receiver fires when it is complete,
    /// or is dropped if the shutdown was prevented.
    pub(super) fn restart_waiter(&mut self) -> oneshot::Receiver<usize> {
        let done = self.rolling.wait();
        self.restart_workers();
        done
    }

    pub(super) fn shut_down_waiter(&mut self) -> oneshot::Receiver<()> {
        self.shut_down();
        self.completion_waiter(false)
    }

    /// Fires when a shutdown completes; with `wait_for_start`, also waits for
    /// a shutdown to start, instead of giving up when none is under way.
    pub(super) fn completion_waiter(&mut self, wait_for_start: bool) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        match self.shutdown {
            Phase::Idle if wait_for_start => self.shut_down_waiters.push(tx),
            Phase::Idle => {}
            Phase::Running => self.shut_down_waiters.push(tx),
            Phase::Done => drop(tx.send(())),
        }
        rx
    }

    /// As [`shut_down_waiter`](Self::shut_down_waiter), for destroy.
    pub(super) fn destroy_waiter(&mut self) -> oneshot::Receiver<()> {
        self.destroy();
        let (tx, rx) = oneshot::channel();
        match self.destroy {
            Phase::Idle => {}
            Phase::Running => self.destroy_waiters.push(tx),
            Phase::Done => drop(tx.send(())),
        }
        rx
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Frames(id, frames, _budget) => {
                for frame in frames {
                    self.frame(id, frame);
                }
            }
            Input::Output(id, stream, line) => {
                if let Some(worker) = self.worker(id) {
                    events::publish(
                        self,
                        WorkerOutput {
                            worker,
                            stream,
                            line,
                        },
                    );
                }
            }
            Input::Closed(id, None) => self.disconnected(id),
            Input::Closed(id, Some(error)) => self.protocol_error(id, error),
            Input::Exited(id, code, signal) => self.exited(id, code, signal),
            Input::Accepted(bound, connection) => self.pass(&bound, connection),
        }
    }

    pub(super) fn live_worker(&self, id: WorkerId) -> Option<Worker> {
        self.live
            .get(&id)
            .filter(|live| !live.disconnected)
            .map(|live| live.worker.clone())
    }

    fn worker(&self, id: WorkerId) -> Option<Worker> {
        self.live.get(&id).map(|live| live.worker.clone())
    }

    fn frame(&mut self, id: WorkerId, frame: Frame) {
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        let worker = live.worker.clone();
        match frame {
            Frame::Hello { protocol } if !live.online => {
                if protocol != protocol::VERSION {
                    let error = ProtocolError::Version {
                        received: protocol,
                        supported: protocol::VERSION,
                    };
                    return self.protocol_error(id, error);
                }
                live.online = true;
                events::publish(self, WorkerOnline { worker });
            }
            _ if !live.online => {
                self.protocol_error(id, unexpected(&frame, "the first frame must be hello"))
            }
            Frame::Hello { .. } => {
                self.protocol_error(id, unexpected(&frame, "hello was already received"))
            }
            Frame::Ready if !live.ready => {
                live.ready = true;
                events::publish(self, WorkerReady { worker });
            }
            Frame::Ready => {
                self.protocol_error(id, unexpected(&frame, "ready was already received"))
            }
            Frame::Disconnect => {
                live.voluntary = true;
                self.disconnected(id);
            }
            Frame::Message(message) => events::publish(self, WorkerMessage { worker, message }),
            Frame::Listen {
                id: request,
                address,
            } => self.listen(worker, request, address),
            Frame::Reply {
                id: request,
                result,
            } => {
                worker.pending().resolve(request, result, Some(id));
            }
            Frame::Request {
                id: request,
                message,
            } => self
                .handlers
                .answer(request, &message, self.config.max_frame_size)
                .send(worker.outbox()),
            other @ (Frame::Listening { .. } | Frame::Connection { .. }) => {
                self.protocol_error(id, unexpected(&other, "only the primary sends it"));
            }
        }
    }

    fn disconnected(&mut self, id: WorkerId) {
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        if std::mem::replace(&mut live.disconnected, true) {
            return;
        }
        live.worker.pending().fail_all(Some(id));
        self.listeners.forget(id);
        let worker = live.worker.clone();
        events::publish(self, WorkerDisconnect { worker });
    }

    fn protocol_error(&mut self, id: WorkerId, error: ProtocolError) {
        let Some(worker) = self.worker(id) else {
            return;
        };
        events::publish(self, WorkerError { worker, error });
        self.disconnected(id);
    }

    fn exited(&mut self, id: WorkerId, code: Option<i32>, signal: Option<i32>) {
        self.disconnected(id);
        let Some(live) = self.live.get(&id) else {
            return;
        };
        let exit = WorkerExit {
            worker: live.worker.clone(),
            code,
            signal,
            voluntary: live.voluntary,
        };
        events::publish(self, exit);
        // Prevented or not, the process is gone.
        if let Some(live) = self.live.remove(&id) {
            live.worker.outbox().close();
        }
        self.pool.remove_live(id);
    }

    fn timer(&mut self, timer: Timer) {
        match timer {
            Timer::Restart => {
                if self.active {
                    let _ = self.fork(1);
                }
            }
            Timer::Ready(id) => {
                if let (Some(after), Some(live)) = (self.config.ready_timeout, self.live.get(&id))
                    && !live.ready
                    && !live.disconnected
                {
                    self.protocol_error(id, ProtocolError::ReadyTimeout(after));
                }
            }
            Timer::Listening(id) => self.check_listening(id),
            Timer::Escalate(id, signal) => {
                if let Some(worker) = self.worker(id) {
                    events::publish(self, WorkerSignal { worker, signal });
                }
            }
        }
    }

    /// Work that follows a turn: `workerFork` of new workers, the end of a
    /// shutdown, the end of a destroy.
    fn settle(&mut self) {
        while !self.forked.is_empty() {
            for worker in std::mem::take(&mut self.forked) {
                events::publish(
                    self,
                    WorkerFork {
                        worker: worker.clone(),
                    },
                );
                match self.config.channel {
                    WorkerChannel::None if self.config.ready_on_listen => {
                        self.started(&worker, false);
                        self.check_listening(worker.id());
                    }
                    WorkerChannel::None => self.started(&worker, true),
                    // Node's IPC has no hello: online once started.
                    WorkerChannel::Node => self.started(&worker, false),
                    WorkerChannel::Frames => {}
                }
            }
        }
        if self.shutdown == Phase::Running && self.live.is_empty() {
            self.shutdown = Phase::Done;
            tracing::info!("Worker shut down complete");
            events::publish(self, ShutDownComplete);
            for waiter in self.shut_down_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        if self.destroy == Phase::Running && self.shutdown == Phase::Done {
            self.teardown();
        }
    }

    /// A worker without a channel is ready once it holds a listening socket;
    /// until then, look again shortly.
    fn check_listening(&mut self, id: WorkerId) {
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        if live.ready || live.disconnected {
            return;
        }
        if sys::holds_listening_socket(live.worker.pid()) {
            live.ready = true;
            let worker = live.worker.clone();
            events::publish(self, WorkerReady { worker });
        } else {
            self.timers
                .insert(Timer::Listening(id), Duration::from_millis(10));
        }
    }

    /// A worker whose channel has no hello counts as online once started,
    /// and, without a channel at all, as ready.
    fn started(&mut self, worker: &Worker, ready: bool) {
        let Some(live) = self.live.get_mut(&worker.id()) else {
            return;
        };
        live.online = true;
        live.ready = ready;
        let worker = worker.clone();
        if ready {
            events::publish(self, WorkerReady { worker });
        } else {
            events::publish(self, WorkerOnline { worker });
        }
    }

    fn teardown(&mut self) {
        self.destroy = Phase::Done;
        self.active = false;
        self.listeners.close();
        events::publish(self, DestroyComplete);
        self.hub.clear();
        self.stream.close();
        for waiter in self.destroy_waiters.drain(..) {
            let _ = waiter.send(());
        }
        self.finished = true;
    }

    /// Closes the worker's channel and schedules SIGTERM after the grace
    /// period (then SIGKILL), unless that is already under way.
    fn stop(&mut self, id: WorkerId, grace: Duration) {
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        if std::mem::replace(&mut live.stopping, true) {
            return;
        }
        self.timers
            .insert(Timer::Escalate(id, libc::SIGTERM), grace);
    }
}

fn unexpected(frame: &Frame, reason: &'static str) -> ProtocolError {
    ProtocolError::UnexpectedFrame {
        frame: frame.name(),
        reason,
    }
}

/// How many queued inputs are handled per turn of the actor's loop.
const BATCH: usize = 256;

/// Runs the primary until it is destroyed (or every handle is dropped, which
/// destroys it).
pub(super) async fn run(
    mut context: PrimaryContext,
    mut commands: mpsc::UnboundedReceiver<Command<PrimaryContext>>,
    mut inputs: mpsc::Receiver<Input>,
) {
    let mut handles = true;
    while !context.finished {
        tokio::select! {
            command = commands.recv(), if handles => match command {
                Some(command) => command(&mut context),
                None => {
                    handles = false;
                    tracing::debug!("every handle dropped: destroying the primary");
                    context.destroy();
                }
            },
            Some(input) = inputs.recv() => {
                context.input(input);
                // Handle what is already queued in one go (bounded).
                for _ in 1..BATCH {
                    let Ok(input) = inputs.try_recv() else { break };
                    context.settle();
                    context.input(input);
                }
            }
            Some(expired) = context.timers.next(), if !context.timers.is_empty() => {
                context.timer(expired.into_inner());
            }
        }
        context.settle();
    }
}

// ===== default actions =====

impl PrimaryContext {
    pub(super) fn log_event<E: Topic>(&mut self, event: &E) {
        tracing::debug!(event = E::NAME, data = ?event);
    }

    pub(super) fn complete_initialize(&mut self, _: &Initialize) {
        tracing::info!("Initializing primary");
        self.initialized = true;
    }

    pub(super) fn complete_destroy(&mut self, _: &Destroy) {
        self.destroy = Phase::Running;
        if self.shutdown == Phase::Idle {
            self.shut_down();
        }
        // A destroy stops the workers even if a handler vetoed the shutdown.
        if self.shutdown == Phase::Idle {
            self.begin_shutdown();
        }
    }

    pub(super) fn complete_fork(&mut self, event: &Fork) {
        let mut started = 0;
        for _ in 0..event.count {
            self.next_id += 1;
            let id = WorkerId(self.next_id);
            tracing::info!(worker_id = %id, "Starting a new worker");
            match supervisor::spawn(&self.config, id, self.inputs.clone()) {
                Ok(spawned) => {
                    let worker = spawned.worker;
                    self.pool.add_live(&worker);
                    self.forked.push(worker.clone());
                    if let Some(timeout) = self.config.ready_timeout {
                        self.timers.insert(Timer::Ready(id), timeout);
                    }
                    self.live.insert(
                        id,
                        Live {
                            worker,
                            started: Instant::now(),
                            online: false,
                            ready: false,
                            disconnected: false,
                            voluntary: false,
                            stopping: false,
                            recycled: false,
                            signals: spawned.signals,
                        },
                    );
                    started += 1;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot start a worker");
                    events::publish(
                        self,
                        ForkError {
                            error: error.clone(),
                        },
                    );
                    self.fork_outcome = Some(Err(error));
                    return;
                }
            }
        }
        self.fork_outcome = Some(Ok(started));
    }

    pub(super) fn complete_ready(&mut self, event: &WorkerReady) {
        tracing::info!(worker_id = %event.worker.id(), "Worker is ready to work");
        events::publish(
            self,
            AddWorker {
                worker: event.worker.clone(),
            },
        );
    }

    pub(super) fn complete_add(&mut self, event: &AddWorker) {
        if self.live.contains_key(&event.worker.id()) {
            self.pool.add_ready(&event.worker);
        }
        if self.rolling.take_waiting() {
            self.roll();
        }
    }

    pub(super) fn complete_remove(&mut self, event: &RemoveWorker) {
        self.pool.remove_ready(event.worker.id());
    }

    fn remove_if_present(&mut self, worker: &Worker) {
        if self.pool.is_ready(worker.id()) {
            events::publish(
                self,
                RemoveWorker {
                    worker: worker.clone(),
                },
            );
        }
    }

    pub(super) fn complete_message(&mut self, event: &WorkerMessage) {
        if let Err(error) = events::route(self, event, &event.message) {
            tracing::warn!(worker_id = %event.worker.id(), %error, "message does not fit its route");
            let worker = event.worker.clone();
            let message = event.message.clone();
            events::publish(
                self,
                WorkerMessageError {
                    worker,
                    message,
                    error,
                },
            );
        }
    }

    pub(super) fn complete_disconnect(&mut self, event: &WorkerDisconnect) {
        tracing::info!(worker_id = %event.worker.id(), "Worker disconnected");
        self.remove_if_present(&event.worker);
        self.stop(event.worker.id(), self.config.shutdown_grace);
    }

    pub(super) fn complete_error(&mut self, event: &WorkerError) {
        tracing::error!(worker_id = %event.worker.id(), error = %event.error, "Worker error");
        self.remove_if_present(&event.worker);
        event.worker.outbox().close();
        let Some(live) = self.live.get_mut(&event.worker.id()) else {
            return;
        };
        live.stopping = true;
        let worker = event.worker.clone();
        events::publish(
            self,
            WorkerSignal {
                worker,
                signal: libc::SIGTERM,
            },
        );
    }

    pub(super) fn complete_exit(&mut self, event: &WorkerExit) {
        let id = event.worker.id();
        match (event.voluntary, event.code, event.signal) {
            (true, _, _) => tracing::info!(worker_id = %id, "Worker exited voluntarily"),
            (false, Some(0), _) => tracing::warn!(worker_id = %id, "Worker died"),
            (false, code, signal) => {
                tracing::error!(worker_id = %id, ?code, ?signal, "Worker died unexpectedly");
            }
        }
        self.remove_if_present(&event.worker);
        if !self.active {
            return;
        }
        let Some((started, recycled)) = self.live.get(&id).map(|l| (l.started, l.recycled)) else {
            return;
        };
        if recycled {
            tracing::info!(worker_id = %id, "Replacing recycled worker");
            let _ = self.fork(1);
            return;
        }
        let policy = self.config.restart;
        if let Some((restarts, period, then)) = self.backoff.over_intensity(&policy) {
            events::publish(
                self,
                RestartIntensityExceeded {
                    restarts,
                    period,
                    then,
                },
            );
            return;
        }
        match self.backoff.on_exit(&policy, started) {
            (Duration::ZERO, _) => {
                tracing::info!(worker_id = %id, "Replacing dead worker");
                let _ = self.fork(1);
            }
            (delay, failures) => events::publish(self, RestartScheduled { delay, failures }),
        }
    }

    pub(super) fn complete_restart_scheduled(&mut self, event: &RestartScheduled) {
        tracing::warn!(delay = ?event.delay, failures = event.failures, "Workers keep dying early: replacement delayed");
        self.timers.insert(Timer::Restart, event.delay);
    }

    pub(super) fn complete_restart_intensity(&mut self, event: &RestartIntensityExceeded) {
        tracing::error!(restarts = event.restarts, period = ?event.period, then = ?event.then, "Restart intensity exceeded");
        match event.then {
            OnIntensity::SlowDown => {
                let delay = self.config.restart.max();
                events::publish(
                    self,
                    RestartScheduled {
                        delay,
                        failures: event.restarts,
                    },
                );
            }
            OnIntensity::ShutDown => events::publish(self, ShutDown),
        }
    }

    pub(super) fn complete_shut_down(&mut self, _: &ShutDown) {
        self.begin_shutdown();
    }

    fn begin_shutdown(&mut self) {
        tracing::info!("Shutting down workers");
        self.listeners.stop_accepting();
        self.active = false;
        self.rolling.end();
        self.shutdown = Phase::Running;
        let ids: Vec<WorkerId> = self.live.keys().copied().collect();
        for id in ids {
            self.ask_to_leave(id);
        }
    }

    /// Asks worker `id` to disconnect (its exit is then voluntary), and
    /// schedules SIGTERM after the grace period, then SIGKILL.
    fn ask_to_leave(&mut self, id: WorkerId) {
        let frames = self.config.wire() == Wire::Frames;
        if let Some(live) = self.live.get_mut(&id) {
            live.voluntary = true;
            if frames {
                let _ = live
                    .worker
                    .try_send_frame(protocol::encode_control(&Frame::Disconnect));
            }
            live.worker.outbox().close();
        }
        // Without a channel, SIGTERM is the only way to ask.
        let grace = match self.config.channel {
            WorkerChannel::None => Duration::ZERO,
            _ => self.config.shutdown_grace,
        };
        self.stop(id, grace);
    }

    pub(super) fn complete_signal(&mut self, event: &WorkerSignal) {
        let id = event.worker.id();
        tracing::warn!(worker_id = %id, signal = event.signal, "Signalling worker");
        if let Some(live) = self.live.get(&id) {
            let _ = live.signals.send(event.signal);
        }
        if event.signal == libc::SIGTERM {
            self.timers
                .insert(Timer::Escalate(id, libc::SIGKILL), self.config.kill_grace);
        }
    }
}
