//! The primary's events. Each is a type carrying its data; subscribe with
//! [`Subscribe`](crate::Subscribe), or read them all from
//! [`ClusterPrimary::events`](super::ClusterPrimary::events).

use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::time::Duration;

use bytes::Bytes;

use super::WorkerHandle;
use crate::Signal;
use crate::error::{Error, MessageError, ProtocolError};
use crate::events::{HandlerPanic, Stage};
use crate::fds::PassedFds;
use crate::message::Message;
use crate::net::{ListenAddress, ListenError};

/// The primary is starting; runs its initializer next.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Initialize;

/// The primary finished initializing (once only; late subscribers are called).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InitializeComplete;

/// The primary's initializer failed (once only). The error is also returned by
/// [`PrimaryBuilder::start`](super::PrimaryBuilder::start); nothing crashes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InitializeError {
    /// What failed.
    pub error: Error,
}

/// `destroy()` was called: shut down (if needed), then tear down.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Destroy;

/// The primary is torn down (once only): every subscription is removed after it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DestroyComplete;

/// Workers are about to be started. Preventing it starts none.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Fork {
    /// How many workers.
    pub count: usize,
}

/// A worker process could not be started.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ForkError {
    /// Why.
    pub error: Error,
}

/// A worker process was started (published on the turn after its `fork`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerFork {
    /// The new worker.
    pub worker: WorkerHandle,
}

/// A worker's runtime connected: its hello arrived.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerOnline {
    /// The worker.
    pub worker: WorkerHandle,
}

/// A worker signalled ready. Its default action adds it to the pool
/// ([`AddWorker`]); preventing it keeps the worker out.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerReady {
    /// The worker.
    pub worker: WorkerHandle,
}

/// A worker joins the pool of ready workers (in this event's default action).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AddWorker {
    /// The worker.
    pub worker: WorkerHandle,
}

/// A worker leaves the pool (in this event's default action).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RemoveWorker {
    /// The worker.
    pub worker: WorkerHandle,
}

/// A message from a worker. Its default action is typed routing.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerMessage {
    /// The sender.
    pub worker: WorkerHandle,
    /// The message.
    pub message: Message,
    /// The fds that came with it (`send_with_fds`; none otherwise).
    pub fds: PassedFds,
}

impl WorkerMessage {
    /// Takes the fds that came with it (see [`PassedFds::take`]).
    pub fn take_fds(&self) -> Vec<OwnedFd> {
        self.fds.take()
    }
}

/// A bytes message from a worker (protocol version 2: see
/// [`WorkerHandle::send_bytes`](super::WorkerHandle::send_bytes) for the
/// other way). Bytes carry no `type`: nothing routes them.
#[derive(Clone)]
#[non_exhaustive]
pub struct WorkerBytes {
    /// The sender.
    pub worker: WorkerHandle,
    /// The payload, as the worker sent it.
    pub bytes: Bytes,
    /// The fds that came with it (`send_with_fds`; none otherwise).
    pub fds: PassedFds,
}

impl WorkerBytes {
    /// Takes the fds that came with it (see [`PassedFds::take`]).
    pub fn take_fds(&self) -> Vec<OwnedFd> {
        self.fds.take()
    }
}

impl std::fmt::Debug for WorkerBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBytes")
            .field("worker", &self.worker)
            .field("len", &self.bytes.len())
            .field("fds", &self.fds)
            .finish()
    }
}

/// A routed message did not decode into the route's type.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerMessageError {
    /// The sender.
    pub worker: WorkerHandle,
    /// The message.
    pub message: Message,
    /// What did not fit.
    pub error: MessageError,
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A line a worker printed, with [`WorkerStdio::Piped`](super::WorkerStdio::Piped).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerOutput {
    /// The worker.
    pub worker: WorkerHandle,
    /// Which stream.
    pub stream: OutputStream,
    /// The line, without its newline (invalid UTF-8 replaced; lines over
    /// 64 KiB split).
    pub line: String,
}

/// A worker listens on a shared socket (the original's `workerListening`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerListening {
    /// The worker.
    pub worker: WorkerHandle,
    /// The address bound (with the real port when port 0 was asked for).
    pub address: ListenAddress,
}

/// A worker asked for a socket that could not be bound; the worker's
/// `listen` gets the same error.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerListenError {
    /// The worker.
    pub worker: WorkerHandle,
    /// What failed.
    pub error: ListenError,
}

/// A worker's channel closed: it disconnected, or was disconnected. Removes it
/// from the pool; a worker that has not exited after the shutdown grace period
/// is then terminated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerDisconnect {
    /// The worker.
    pub worker: WorkerHandle,
}

/// A worker broke the protocol. Removes it from the pool and stops it (its
/// channel is closed and it is sent SIGTERM); it is then replaced as any
/// exited worker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerError {
    /// The worker.
    pub worker: WorkerHandle,
    /// What it sent.
    pub error: ProtocolError,
}

/// A worker watched for liveness ([`PrimaryBuilder::watchdog`]) gave no
/// sign of life for `silent_for` (at least the watchdog's period). Its
/// default action takes it out of the pool and stops it: SIGTERM now (a
/// blocked worker cannot answer a disconnect request), SIGKILL after the
/// kill grace period; its exit counts as a failure (replaced under the
/// restart policy, with its backoff, even under [`Restart::OnFailure`]
/// after a SIGTERM). Preventing it keeps the worker, and the event comes
/// again after another period of silence.
///
/// [`PrimaryBuilder::watchdog`]: super::PrimaryBuilder::watchdog
/// [`Restart::OnFailure`]: super::Restart::OnFailure
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerUnresponsive {
    /// The worker.
    pub worker: WorkerHandle,
    /// How long since its last sign of life.
    pub silent_for: Duration,
}

/// A worker exited (and was reaped). Removes it from the pool, and while the
/// primary is active starts a replacement: preventing this event prevents both.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerExit {
    /// The worker.
    pub worker: WorkerHandle,
    /// How it ended (`None` in the unlikely case that waiting for it failed).
    pub status: Option<ExitStatus>,
    /// Whether it exited after a disconnect (asked for or announced).
    pub voluntary: bool,
    /// Whether the primary stopped it for a failure (not ready in time, a
    /// protocol error, unresponsive): an abnormal exit, whatever its status.
    pub failed: bool,
    /// Whether the event's default action starts a replacement: the
    /// primary runs, and the worker was recycled or the restart policy
    /// ([`Restart`](super::Restart)) replaces this exit.
    pub replaced: bool,
}

impl WorkerExit {
    /// The exit code, if it exited normally.
    pub fn code(&self) -> Option<i32> {
        self.status?.code()
    }

    /// The signal that killed it, if one did.
    pub fn signal(&self) -> Option<Signal> {
        self.status?.signal().map(Signal::from_raw)
    }
}

/// A replacement is delayed because workers keep dying early, or a
/// replacement could not start (it is retried; exponential backoff, see
/// [`RestartPolicy`](super::RestartPolicy)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RestartScheduled {
    /// How long until the replacement is started.
    pub delay: Duration,
    /// Consecutive early exits and failed starts so far (after an exceeded
    /// restart intensity: the replacements within its period).
    pub failures: u32,
}

/// Shutting down: stop replacing workers and ask each one to disconnect.
/// Preventing it vetoes the shutdown (a later one may still run).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ShutDown;

/// The primary sends `signal` to a worker and its whole process group: a
/// worker that did not exit within its grace period after a disconnect or a
/// shutdown, or one that broke the protocol. SIGTERM first, then SIGKILL after
/// the kill grace period.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerSignal {
    /// The worker.
    pub worker: WorkerHandle,
    /// The signal.
    pub signal: Signal,
}

/// Workers were replaced more often than the restart intensity allows
/// ([`RestartPolicy::intensity`](super::RestartPolicy::intensity)); by
/// default, what the policy says then happens (slow down, or shut down).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RestartIntensityExceeded {
    /// Replacements within the period, this one included.
    pub restarts: u32,
    /// The period.
    pub period: Duration,
    /// What follows.
    pub then: super::OnIntensity,
}

/// A worker was sampled over the memory limit
/// ([`PrimaryBuilder::max_memory`](super::PrimaryBuilder::max_memory); *new*:
/// the original has no equivalent). Raised once per worker. Its default
/// action recycles the worker: a replacement takes its slot and the worker is
/// asked to leave. Preventing it keeps the worker (it is not raised again).
///
/// # Examples
///
/// ```no_run
/// use isotropic_cluster::primary::{ClusterPrimary, WorkerOverMemory};
/// use isotropic_cluster::Subscribe;
///
/// # async fn demo() -> Result<(), isotropic_cluster::Error> {
/// let primary = ClusterPrimary::builder()
///     .max_memory(512 << 20)
///     .before::<WorkerOverMemory>(|event| {
///         eprintln!("worker {} uses {} bytes", event.worker.id(), event.memory);
///         // event.prevent() would keep it.
///     })
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerOverMemory {
    /// The worker.
    pub worker: WorkerHandle,
    /// Its memory when sampled, in bytes (see
    /// [`MemorySource`](super::MemorySource)).
    pub memory: u64,
    /// The limit, in bytes.
    pub limit: u64,
}

/// Every worker has exited after a shutdown (once only).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ShutDownComplete;

/// An event handler of this primary panicked (*new*: the original has no
/// equivalent). The panic was caught where the handler ran: the event it handled went on as if the handler had
/// returned (the rest of its stage, then its default action unless a handler
/// prevented it), and supervision goes on. It is logged at error level before
/// this is published, so preventing it changes nothing; a panic in a handler
/// of this very event is logged only. A handler keeps its subscription after
/// a panic.
///
/// # Examples
///
/// ```no_run
/// use isotropic_cluster::primary::{ClusterPrimary, HandlerPanicked};
/// use isotropic_cluster::Subscribe;
///
/// # async fn demo() -> Result<(), isotropic_cluster::Error> {
/// let primary = ClusterPrimary::builder()
///     .on::<HandlerPanicked>(|event| {
///         eprintln!("a {} handler panicked: {}", event.event, event.message);
///     })
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HandlerPanicked {
    /// The original name of the event whose handler panicked, e.g.
    /// `"workerOnline"`.
    pub event: &'static str,
    /// The stage the handler ran in ([`Stage::Complete`]: a typed route, or
    /// the initializer).
    pub stage: Stage,
    /// The panic's message.
    pub message: String,
}

impl From<HandlerPanic> for HandlerPanicked {
    fn from(panic: HandlerPanic) -> Self {
        let HandlerPanic {
            event,
            stage,
            message,
        } = panic;
        Self {
            event,
            stage,
            message,
        }
    }
}

/// A worker reached a limit of its life (*new*): the requests it may serve
/// ([`PrimaryBuilder::max_requests`](super::PrimaryBuilder::max_requests)) or
/// its age ([`PrimaryBuilder::max_age`](super::PrimaryBuilder::max_age)).
/// Published once per worker; the default action recycles it, drained
/// ([`PrimaryContext::recycle_worker`](super::PrimaryContext::recycle_worker)):
/// its replacement is in the pool before it is asked to leave. Preventing it
/// keeps the worker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerExpired {
    /// The worker.
    pub worker: WorkerHandle,
    /// Which limit.
    pub reason: Expiry,
}

/// Which limit a worker reached ([`WorkerExpired`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expiry {
    /// It served `served` requests, its limit being `limit` (the maximum
    /// plus its share of the jitter).
    Requests {
        /// Requests served.
        served: u64,
        /// Its limit.
        limit: u64,
    },
    /// It lived longer than `limit` (its age limit, before its jitter).
    Age {
        /// The maximum age.
        limit: Duration,
    },
}

/// A worker's `STATUS=` line on `NOTIFY_SOCKET` (*new*: the original has
/// none; with [`Readiness::Notify`](super::Readiness::Notify)). Its default
/// action logs it and keeps it as the worker's last status.
///
/// # Examples
///
/// ```no_run
/// use isotropic_cluster::primary::{ClusterPrimary, Readiness, WorkerStatus};
/// use isotropic_cluster::Subscribe;
///
/// # async fn demo() -> Result<(), isotropic_cluster::Error> {
/// let primary = ClusterPrimary::builder()
///     .readiness(Readiness::Notify)
///     .on::<WorkerStatus>(|event| {
///         println!("worker {}: {}", event.worker.id(), event.status);
///     })
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// The worker.
    pub worker: WorkerHandle,
    /// The status line (invalid UTF-8 replaced).
    pub status: String,
}

/// A worker sent `STOPPING=1` on `NOTIFY_SOCKET` (*new*): it is on its way
/// out. Noted only: its exit is handled as any other.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerStopping {
    /// The worker.
    pub worker: WorkerHandle,
}

/// A rolling restart began (*new*: the original stops and starts the workers
/// one by one): generation `generation` of the workers' program (found anew:
/// a deploy may have replaced it) replaces the workers slot by slot, each
/// new worker in the pool before an old one leaves (see
/// [`PrimaryBuilder::surge`](super::PrimaryBuilder::surge)). `from` is the
/// generation a failed rollout rolls back to.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RolloutStarted {
    /// The generation rolled out.
    pub generation: u64,
    /// The last generation that was rolled out whole.
    pub from: u64,
}

/// Every slot runs generation `generation` now (*new*); the workers it
/// replaces have been asked to leave.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RolloutComplete {
    /// The generation rolled out.
    pub generation: u64,
    /// How many workers of the pool it replaced.
    pub replaced: usize,
}

/// A worker of the generation rolled out failed (*new*): the rollout stops,
/// and generation `to` takes back every slot (its workers started from its
/// own program file, held open, even if a deploy replaced the file), each
/// in the pool before a worker of the failed generation leaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RolloutFailed {
    /// The generation that failed.
    pub generation: u64,
    /// The generation rolled back to.
    pub to: u64,
    /// What failed.
    pub reason: RolloutFailure,
}

/// The rollback after a [`RolloutFailed`] is complete (*new*): every slot
/// runs generation `generation` again.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RolledBack {
    /// The generation serving again.
    pub generation: u64,
    /// The generation that failed.
    pub failed: u64,
}

/// Why a rollout failed ([`RolloutFailed`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RolloutFailure {
    /// A new worker exited before it had been up for the minimum uptime
    /// ([`PrimaryBuilder::min_uptime`](super::PrimaryBuilder::min_uptime)).
    Exited {
        /// The worker.
        worker: crate::WorkerId,
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<Signal>,
        /// How long it was up.
        uptime: Duration,
    },
    /// A new worker was not ready within the ready timeout.
    NotReady {
        /// The worker.
        worker: crate::WorkerId,
        /// The timeout.
        after: Duration,
    },
    /// A new worker failed its health check
    /// ([`PrimaryBuilder::health_check`](super::PrimaryBuilder::health_check)).
    Unhealthy {
        /// The worker.
        worker: crate::WorkerId,
        /// What the check said.
        reason: String,
    },
    /// A new worker could not be started, or a handler prevented its fork.
    CannotStart {
        /// Why.
        error: Error,
    },
    /// A handler kept a new worker out of the pool (prevented its
    /// `workerReady` or `addWorker`): it left.
    KeptOut {
        /// The worker.
        worker: crate::WorkerId,
    },
}

impl std::fmt::Display for RolloutFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited {
                worker,
                code,
                signal,
                uptime,
            } => {
                write!(f, "worker {worker} ")?;
                match (code, signal) {
                    (Some(code), _) => write!(f, "exited with code {code}")?,
                    (None, Some(signal)) => write!(f, "was killed by {signal}")?,
                    _ => f.write_str("exited")?,
                }
                write!(f, " after {:.1} s", uptime.as_secs_f64())
            }
            Self::NotReady { worker, after } => {
                write!(f, "worker {worker} was not ready within {after:?}")
            }
            Self::Unhealthy { worker, reason } => {
                write!(f, "worker {worker} failed its health check: {reason}")
            }
            Self::CannotStart { error } => write!(f, "cannot start a worker: {error}"),
            Self::KeptOut { worker } => {
                write!(f, "worker {worker} was kept out of the pool by a handler")
            }
        }
    }
}
