//! The primary's state, owned by one task, and the operations its event
//! handlers call on it.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::time::DelayQueue;

use super::WorkerHandle;
use super::config::{Config, WorkerChannel};
use super::events::*;
use super::input::Input;
use super::listen::Listeners;
use super::liveness::Liveness;
use super::metrics::{PoolMetrics, Recorder};
use super::phase::Phase;
use super::pool::{Destination, Pool};
use super::ready::ReadyWaiters;
use super::recycle::Recycler;
use super::registry::Registry;
use super::resources::Sampler;
use super::restart::{Backoff, Owed};
use super::rollout::{Release, Rollouts};
use super::spawner::Spawn;
use super::state::{Trigger, Why};
use crate::actor::WeakMailbox;
use crate::error::{Error, SendError};
use crate::events::{self, Hub, StreamSource};
use crate::request::Handlers;
use crate::topics::topics;
use crate::{ListenAddress, Signal, WorkerId};

/// What the actor's timers are for.
#[derive(Debug)]
pub(crate) enum Timer {
    /// Start a delayed replacement (the token of `Owed::push`).
    Restart(u64),
    /// Try the recycle again that a failed replacement paused.
    Recycle,
    /// The worker reached its maximum age.
    Expire(WorkerId),
    /// Send this signal to the worker, if it is still live.
    Escalate(WorkerId, Signal),
    /// The worker's ready timeout.
    Ready(WorkerId, std::time::Duration),
    /// Look whether the worker listens yet.
    Listening(WorkerId),
    /// Close this socket (by the address asked for) if no worker took it
    /// since its last holder left.
    Unheld(ListenAddress),
    /// Send heartbeats, and look for silent workers (`liveness.rs`).
    Heartbeat,
    /// Sample what the workers use.
    Sample,
    /// Look at the rollout under way again.
    Rollout,
}

/// The primary as its event handlers see it: the same operations as
/// [`ClusterPrimary`](super::ClusterPrimary), synchronous, so that what a
/// handler does runs depth-first inside the event being handled.
///
/// Reached from a handler through [`Event::context`](crate::Event::context).
pub struct PrimaryContext {
    pub(super) hub: Hub,
    pub(super) config: Arc<Config>,
    pub(super) spawner: Arc<dyn Spawn>,
    pub(super) stream: StreamSource<PrimaryEvent>,
    pub(super) mailbox: WeakMailbox<PrimaryContext>,
    /// Where the workers' watchers and the acceptors report.
    pub(super) inputs: mpsc::Sender<Input>,
    pub(super) input_rx: mpsc::Receiver<Input>,
    pub(super) timers: DelayQueue<Timer>,
    pub(super) registry: Registry,
    pub(super) phase: Phase,
    pub(super) next_id: u64,
    pub(super) backoff: Backoff,
    /// Workers whose `workerFork` is published at the end of this turn.
    pub(super) forked: Vec<WorkerHandle>,
    /// What the last `fork` default action did: the workers it started.
    pub(super) fork_outcome: Option<Result<Vec<WorkerId>, Error>>,
    pub(super) shut_down_waiters: Vec<oneshot::Sender<()>>,
    pub(super) destroy_waiters: Vec<oneshot::Sender<()>>,
    /// The releases of the workers' program, and the rollout under way.
    pub(super) rollouts: Rollouts,
    /// Drained recycles.
    pub(super) recycler: Recycler,
    /// The slots whose delayed replacements are still to start.
    pub(super) owed: Owed,
    /// The slot the next worker forked takes (a replacement's).
    pub(super) fork_slot: Option<u32>,
    /// The release the next worker forked runs (a rollout's).
    pub(super) fork_release: Option<Arc<Release>>,
    /// The slot whose replacement is being paced (for `restartScheduled`).
    pub(super) pacing: Option<u32>,
    /// Callers of `fork(…).ready()`.
    pub(super) ready_waiters: ReadyWaiters,
    /// Handlers of requests from workers.
    pub(super) handlers: Handlers,
    /// Listening sockets, and the connections passed in round robin.
    pub(super) listeners: Listeners,
    /// `NOTIFY_SOCKET` datagrams dropped for coming from no worker.
    pub(super) notify_dropped: super::notify::Dropped,
    /// The workers watched for signs of life.
    pub(super) liveness: Liveness,
    /// The timer that samples what workers use.
    pub(super) sampler: Sampler,
    /// The pool's metrics.
    pub(super) metrics: Recorder,
}

impl std::fmt::Debug for PrimaryContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryContext")
            .field("phase", &self.phase)
            .field("live", &self.registry.len())
            .field("ready", &self.registry.pool().members().len())
            .finish_non_exhaustive()
    }
}

// Each event, its original name, and its default action (in `actions.rs`).
topics!(PrimaryContext =>
    /// Every event of a primary, as an item of its
    /// [`EventStream`](crate::EventStream).
    PrimaryEvent {
        Initialize: "initialize" once Complete => complete_initialize;
        InitializeComplete: "initializeComplete" once Publish => log_event;
        InitializeError: "initializeError" once Publish => log_event;
        Destroy: "destroy" once Complete => complete_destroy;
        DestroyComplete: "destroyComplete" once Publish => log_event;
        Fork: "fork" => complete_fork;
        ForkError: "forkError" => log_event;
        WorkerFork: "workerFork" => log_event;
        WorkerOnline: "workerOnline" => log_event;
        WorkerReady: "workerReady" => complete_ready;
        AddWorker: "addWorker" => complete_add;
        RemoveWorker: "removeWorker" => complete_remove;
        WorkerMessage: "workerMessage" => complete_message;
        WorkerBytes: "workerBytes" => log_event;
        WorkerMessageError: "workerMessageError" => log_event;
        WorkerListening: "workerListening" => log_event;
        WorkerListenError: "workerListenError" => log_event;
        WorkerOutput: "workerOutput" => log_event;
        WorkerDisconnect: "workerDisconnect" => complete_disconnect;
        WorkerError: "workerError" => complete_error;
        WorkerExit: "workerExit" => complete_exit;
        RestartScheduled: "restartScheduled" => complete_restart_scheduled;
        RestartIntensityExceeded: "restartIntensityExceeded" => complete_restart_intensity;
        ShutDown: "shutDown" once Complete => complete_shut_down;
        WorkerSignal: "workerSignal" => complete_signal;
        ShutDownComplete: "shutDownComplete" once Publish => log_event;
        HandlerPanicked: "handlerPanicked" => log_event;
        WorkerExpired: "workerExpired" => complete_expired;
        WorkerStatus: "workerStatus" => complete_status;
        WorkerStopping: "workerStopping" => complete_stopping;
        WorkerUnresponsive: "workerUnresponsive" => complete_unresponsive;
        WorkerOverMemory: "workerOverMemory" => complete_over_memory;
        RolloutStarted: "rolloutStarted" => log_event;
        RolloutComplete: "rolloutComplete" => log_event;
        RolloutFailed: "rolloutFailed" => log_event;
        RolledBack: "rolledBack" => log_event;
    }
);

impl events::sealed::StreamEvent for PrimaryEvent {
    fn weight(&self) -> usize {
        match self {
            Self::WorkerMessage(WorkerMessage { message, .. })
            | Self::WorkerMessageError(WorkerMessageError { message, .. }) => {
                message.as_bytes().len()
            }
            Self::WorkerBytes(WorkerBytes { bytes, .. }) => bytes.len(),
            Self::WorkerOutput(output) => output.line.len(),
            _ => 0,
        }
    }
}

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
        self.fork_ids(count).map(|ids| ids.len())
    }

    /// As [`fork`](Self::fork): the ids of the workers started.
    pub(super) fn fork_ids(&mut self, count: usize) -> Result<Vec<WorkerId>, Error> {
        if !self.phase.is_active() {
            tracing::debug!(count, "fork ignored: the primary is shut down");
            return Ok(Vec::new());
        }
        events::publish(self, Fork { count });
        self.fork_outcome.take().unwrap_or(Ok(Vec::new()))
    }

    /// As [`fork`](Self::fork); the receiver is told when the workers it
    /// started are ready, or that one exited first.
    pub(super) fn fork_ready(
        &mut self,
        count: usize,
    ) -> Result<oneshot::Receiver<Result<Vec<WorkerHandle>, Error>>, Error> {
        let ids = self.fork_ids(count)?;
        Ok(self.ready_waiters.wait(ids))
    }

    /// Queues `message` for every worker `to` names, without waiting: as
    /// [`ClusterPrimary::try_send`](super::ClusterPrimary::try_send) (a
    /// handler cannot wait).
    ///
    /// # Errors
    ///
    /// As [`ClusterPrimary::try_send`](super::ClusterPrimary::try_send).
    pub fn try_send<M: Serialize + ?Sized>(
        &self,
        to: impl Into<Destination>,
        message: &M,
    ) -> Result<(), SendError> {
        let frame = self.config.encode(message)?;
        self.registry
            .pool()
            .try_send(to.into(), |worker| worker.try_send_frame(frame.clone()))
    }

    /// Queues `bytes` as a bytes message for each worker `to` names,
    /// without waiting (see
    /// [`ClusterPrimary::try_send_bytes`](super::ClusterPrimary::try_send_bytes)).
    ///
    /// # Errors
    ///
    /// As [`ClusterPrimary::try_send_bytes`](super::ClusterPrimary::try_send_bytes).
    pub fn try_send_bytes(
        &self,
        to: impl Into<Destination>,
        bytes: impl Into<bytes::Bytes>,
    ) -> Result<(), SendError> {
        let sizes = self.config.sizes();
        (self.registry.pool()).try_send_bytes(to.into(), bytes.into(), sizes)
    }

    /// The ready worker least recently selected for `tag` (see
    /// [`ClusterPrimary::round_robin`](super::ClusterPrimary::round_robin)).
    pub fn round_robin(&self, tag: &str) -> Option<WorkerHandle> {
        self.registry.pool().round_robin(tag)
    }

    /// The ready workers, by ascending id.
    pub fn workers(&self) -> Vec<WorkerHandle> {
        self.registry.pool().members()
    }

    /// The ready worker with this id.
    pub fn worker_by_id(&self, id: WorkerId) -> Option<WorkerHandle> {
        self.registry.pool().member(id)
    }

    /// Whether the primary still replaces workers and accepts `fork` (true
    /// until shutdown).
    pub fn is_active(&self) -> bool {
        self.phase.is_active()
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
            .registry
            .connected(id)
            .ok_or(Error::NoSuchWorker { worker_id: id })?;
        self.leave_pool(&worker);
        self.ask_to_leave(id, Why::Recycled);
        Ok(())
    }

    /// Sends SIGKILL to every live worker and its process group now (each a
    /// `workerSignal` event): a forced stop. Exits follow as usual.
    pub fn kill_workers(&mut self) {
        for worker in self.registry.workers() {
            events::publish(
                self,
                WorkerSignal {
                    worker,
                    signal: Signal::KILL,
                },
            );
        }
    }
}

// ===== for the handle and the builder =====

impl PrimaryContext {
    pub(super) fn new(
        config: Arc<Config>,
        spawner: Arc<dyn Spawn>,
        hub: Hub,
        handlers: Handlers,
        mailbox: WeakMailbox<Self>,
    ) -> Self {
        let (inputs, input_rx) = mpsc::channel(1024);
        let listeners = Listeners::activated(&config);
        let liveness = Liveness::new(config.watchdog);
        let rollouts = Rollouts::new(&config);
        let metrics = Arc::new(PoolMetrics::new(config.pool_name.clone(), mailbox.clone()));
        Self {
            handlers,
            hub,
            config,
            spawner,
            stream: StreamSource::default(),
            mailbox,
            inputs,
            input_rx,
            timers: DelayQueue::new(),
            registry: Registry::new(metrics.clone()),
            phase: Phase::Starting,
            next_id: 0,
            backoff: Backoff::default(),
            forked: Vec::new(),
            fork_outcome: None,
            shut_down_waiters: Vec::new(),
            destroy_waiters: Vec::new(),
            rollouts,
            recycler: Recycler::default(),
            owed: Owed::default(),
            fork_slot: None,
            fork_release: None,
            pacing: None,
            ready_waiters: ReadyWaiters::default(),
            listeners,
            notify_dropped: super::notify::Dropped::default(),
            liveness,
            sampler: Sampler::default(),
            metrics: Recorder::new(metrics),
        }
    }

    pub(super) fn pool(&self) -> Arc<Pool> {
        self.registry.pool()
    }

    /// Starts a rolling restart; the receiver is told how many workers were
    /// restarted when it ends.
    pub(super) fn restart_waiter(&mut self) -> oneshot::Receiver<super::rollout::Outcome> {
        let done = self.rollouts.wait();
        self.restart_workers();
        done
    }

    /// Starts a shutdown if needed; the receiver fires when it is complete,
    /// or is dropped if the shutdown was prevented.
    pub(super) fn shut_down_waiter(&mut self) -> oneshot::Receiver<()> {
        self.shut_down();
        self.completion_waiter(false)
    }

    /// Fires when a shutdown completes; with `wait_for_start`, also waits for
    /// a shutdown to start, instead of giving up when none is under way.
    pub(super) fn completion_waiter(&mut self, wait_for_start: bool) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        match self.phase {
            Phase::ShutDown { .. } | Phase::Destroyed => drop(tx.send(())),
            Phase::ShuttingDown { .. } => self.shut_down_waiters.push(tx),
            _ if wait_for_start => self.shut_down_waiters.push(tx),
            _ => {}
        }
        rx
    }

    /// As [`shut_down_waiter`](Self::shut_down_waiter), for destroy.
    pub(super) fn destroy_waiter(&mut self) -> oneshot::Receiver<()> {
        self.destroy();
        let (tx, rx) = oneshot::channel();
        match self.phase {
            Phase::Destroyed => drop(tx.send(())),
            phase if phase.destroying() => self.destroy_waiters.push(tx),
            _ => {}
        }
        rx
    }
}

// ===== worker lifecycle steps shared by the operations and the actions =====

impl PrimaryContext {
    /// Takes `worker` out of the pool (a `removeWorker` event) if it is in it.
    pub(super) fn leave_pool(&mut self, worker: &WorkerHandle) {
        if self.registry.in_pool(worker.id()) {
            events::publish(
                self,
                RemoveWorker {
                    worker: worker.clone(),
                },
            );
        }
    }

    /// Asks worker `id` to leave (its exit is then voluntary): the
    /// disconnect request, then SIGTERM after the shutdown grace period
    /// (at once for programs without a channel, soon for Node's), then SIGKILL.
    pub(super) fn ask_to_leave(&mut self, id: WorkerId, why: Why) {
        let grace = match self.config.channel {
            WorkerChannel::Frames => self.config.shutdown_grace,
            // As Node's cluster: SIGTERM once disconnected.
            WorkerChannel::Node => self.config.shutdown_grace.min(super::NODE_TERM_AFTER),
            // Without a channel, SIGTERM is the only way to ask.
            WorkerChannel::None => std::time::Duration::ZERO,
        };
        self.apply(id, Trigger::Leave(why, grace));
    }
}
