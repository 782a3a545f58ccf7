//! A primary's settings: how workers are started, what channel they get,
//! and the lifecycle's timings.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{RestartPolicy, WorkerHandle};
use crate::channel::QueueLimits;
use crate::message::Codec;
use crate::net::{Distribution, ListenPolicy};
use crate::protocol::{self, User, Wire};

/// Whether workers get a channel to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WorkerChannel {
    /// Our framed channel (`docs/protocol.md`): the default.
    #[default]
    Frames,
    /// None: the workers are plain programs. They count as ready when
    /// started, and a shutdown sends them SIGTERM at once (then SIGKILL after
    /// the kill grace period).
    None,
    /// Node.js's child-process IPC (`NODE_CHANNEL_FD`, one JSON value per
    /// line): a plain Node script is a worker, `process.send` and
    /// `process.on('message')` are its messages, sending the string
    /// `'ready'` makes it ready (as with the original), and
    /// `process.disconnect()` is a disconnect. Requests need [`Frames`](Self::Frames).
    /// Asked to leave, it is disconnected (its channel closed) and, as
    /// Node's own cluster does, sent SIGTERM shortly after if it has not
    /// exited ([`NODE_TERM_AFTER`]).
    Node,
}

/// How long after a Node worker ([`WorkerChannel::Node`]) is asked to leave
/// (disconnected: its channel closed, a `disconnect` event in the worker) it
/// is sent SIGTERM unless it has exited; the shutdown grace instead when
/// that is shorter. Node's own cluster (`worker.kill()`) sends SIGTERM as
/// soon as the disconnect is done: this second lets a `disconnect` handler
/// that exits do so unsignalled, and a worker without one (most Node
/// servers, which drain on SIGTERM) is not left waiting for the whole grace.
pub const NODE_TERM_AFTER: Duration = Duration::from_secs(1);

/// When a worker counts as ready: then it joins the pool (`workerReady`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Readiness {
    /// Once started: at once for a program without a channel, at its hello
    /// on our framed channel. The default without a channel.
    Started,
    /// When it says so: our ready frame, or `process.send('ready')` from a
    /// Node worker. The default with a channel.
    Message,
    /// Once it holds a listening TCP or Unix socket (its own, or one passed
    /// to it), looked for every 10 ms: for servers that cannot say ready.
    Listening,
    /// When it sends `READY=1` to the socket named by `NOTIFY_SOCKET`
    /// (systemd's `sd_notify` protocol, with any channel): the primary owns
    /// one datagram socket with an abstract name (`@isotropic-cluster/…`) and
    /// checks each sender's credentials, so a worker (or a process of its
    /// process group) speaks only for itself. `STATUS=` is a
    /// [`WorkerStatus`](super::WorkerStatus) event, `STOPPING=1` a
    /// [`WorkerStopping`](super::WorkerStopping); datagrams over 4096 bytes
    /// or from other processes are dropped (and logged, at most once a second).
    Notify,
}

/// What a worker's standard output and error are connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerStdio {
    /// The primary's own (the default).
    #[default]
    Inherit,
    /// Discarded (the original's `workerSilent`).
    Null,
    /// Read by the primary: each line becomes a
    /// [`WorkerOutput`](super::WorkerOutput) event.
    Piped,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `None`: re-execute this program (`/proc/self/exe`).
    pub(crate) program: Option<PathBuf>,
    /// `None`: this process's own arguments.
    pub(crate) args: Option<Vec<OsString>>,
    pub(crate) envs: Vec<(OsString, Option<OsString>)>,
    pub(crate) env_clear: bool,
    pub(crate) current_dir: Option<PathBuf>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) stdout: WorkerStdio,
    pub(crate) stderr: WorkerStdio,
    /// Where piped lines go: `None`, as `workerOutput` events.
    pub(crate) output: Option<super::OutputSink>,
    pub(crate) max_frame_size: usize,
    /// The framed channel's message codec.
    pub(crate) codec: Codec,
    /// Bytes payloads from this size on go in a sealed memfd.
    pub(crate) sealed_from: usize,
    pub(crate) queue: QueueLimits,
    pub(crate) shutdown_grace: Duration,
    pub(crate) kill_grace: Duration,
    pub(crate) restart: RestartPolicy,
    pub(crate) distribution: Distribution,
    /// What workers may listen on.
    pub(crate) listen_policy: ListenPolicy,
    /// The most listening sockets one worker may hold.
    pub(crate) max_listens: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) ready_timeout: Option<Duration>,
    /// Recycle a worker after this many requests, plus up to the jitter.
    pub(crate) max_requests: Option<u64>,
    pub(crate) max_requests_jitter: u64,
    /// Recycle a worker after this long, plus up to a tenth.
    pub(crate) max_age: Option<Duration>,
    /// `None`: as the channel implies (see [`Config::readiness`]).
    pub(crate) readiness: Option<Readiness>,
    pub(crate) channel: WorkerChannel,
    /// The address of the primary's notify socket, given to workers as
    /// `NOTIFY_SOCKET` (with [`Readiness::Notify`]).
    pub(crate) notify_socket: Option<String>,
    /// Fds every worker inherits (see `pass_fds`).
    pub(crate) pass_fds: std::sync::Arc<Vec<std::os::fd::OwnedFd>>,
    /// A worker watched for liveness and silent this long is unresponsive.
    pub(crate) watchdog: Option<Duration>,
    /// How often what workers use is sampled (`None`: never).
    pub(crate) sample_interval: Option<Duration>,
    /// The memory a worker may use, in bytes.
    pub(crate) max_memory: Option<u64>,
    /// A rollout's workers beyond the pool's size, and available workers
    /// below it.
    pub(crate) surge: usize,
    pub(crate) max_unavailable: usize,
    /// How long a rollout's new worker must be up to be proven.
    pub(crate) min_uptime: Duration,
    /// Checks a rollout's new worker once it is in the pool.
    pub(crate) health_check: Option<HealthCheck>,
    /// Start each worker as this program with these arguments, followed by
    /// the worker's program and arguments.
    pub(crate) launcher: Option<(PathBuf, Vec<OsString>)>,
    /// The `pool` label of the metrics.
    pub(crate) pool_name: String,
}

/// A health check of a rollout's new worker (see
/// [`PrimaryBuilder::health_check`](super::PrimaryBuilder::health_check)).
#[derive(Clone)]
pub(crate) struct HealthCheck(pub(crate) Arc<dyn Fn(WorkerHandle) -> HealthFuture + Send + Sync>);

/// What a [`HealthCheck`] returns.
pub(crate) type HealthFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

impl std::fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HealthCheck")
    }
}

impl Config {
    /// Encodes a user message for the workers' channel.
    pub(crate) fn encode<M: serde::Serialize + ?Sized>(
        &self,
        message: &M,
    ) -> Result<bytes::Bytes, crate::SendError> {
        self.wire()
            .encode(User::Message(message), self.max_frame_size)
            .map_err(crate::SendError::Encode)
    }

    /// The frame sizes of the workers' channels.
    pub(crate) fn sizes(&self) -> protocol::Sizes {
        protocol::Sizes {
            max_frame: self.max_frame_size,
            sealed_from: self.sealed_from,
        }
    }

    /// Whether workers get a channel at all.
    pub(crate) fn has_channel(&self) -> bool {
        self.channel != WorkerChannel::None
    }

    /// When workers count as ready: as set, or what the channel implies
    /// (they say so on a channel, are ready once started without one).
    pub(crate) fn readiness(&self) -> Readiness {
        let implied = match self.channel {
            WorkerChannel::None => Readiness::Started,
            WorkerChannel::Frames | WorkerChannel::Node => Readiness::Message,
        };
        self.readiness.unwrap_or(implied)
    }

    /// What the channel to the workers speaks.
    pub(crate) fn wire(&self) -> Wire {
        match self.channel {
            WorkerChannel::Node => Wire::NodeJson,
            _ => Wire::Frames(self.codec),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            program: None,
            args: None,
            envs: Vec::new(),
            env_clear: false,
            current_dir: None,
            uid: None,
            gid: None,
            stdout: WorkerStdio::Inherit,
            stderr: WorkerStdio::Inherit,
            output: None,
            max_frame_size: protocol::DEFAULT_MAX_FRAME,
            codec: Codec::Json,
            sealed_from: protocol::DEFAULT_SEALED_FROM,
            queue: QueueLimits::default(),
            shutdown_grace: Duration::from_secs(5),
            kill_grace: Duration::from_secs(2),
            restart: RestartPolicy::default(),
            distribution: Distribution::default(),
            listen_policy: ListenPolicy::default(),
            max_listens: 64,
            request_timeout: Duration::from_secs(30),
            ready_timeout: None,
            max_requests: None,
            max_requests_jitter: 0,
            max_age: None,
            readiness: None,
            channel: WorkerChannel::Frames,
            notify_socket: None,
            pass_fds: std::sync::Arc::default(),
            watchdog: None,
            sample_interval: Some(Duration::from_secs(1)),
            max_memory: None,
            surge: 1,
            max_unavailable: 0,
            min_uptime: Duration::from_secs(1),
            health_check: None,
            launcher: None,
            pool_name: "default".to_owned(),
        }
    }
}

/// A bytes message for the workers that get it neither lent from their
/// segments nor otherwise: encoded once, when first asked for (a large one
/// in a sealed memfd they share; whether a worker takes it is its handle's
/// to say).
#[derive(Debug)]
pub(crate) struct SharedBytes {
    bytes: bytes::Bytes,
    sizes: protocol::Sizes,
    frame: std::sync::OnceLock<Result<protocol::Encoded, crate::SendError>>,
}

impl SharedBytes {
    pub(crate) fn new(bytes: bytes::Bytes, sizes: protocol::Sizes) -> Self {
        Self {
            bytes,
            sizes,
            frame: std::sync::OnceLock::new(),
        }
    }

    /// The frame, encoded at the first call.
    ///
    /// # Errors
    ///
    /// [`crate::SendError::Encode`] for a payload too large for a frame, or
    /// when the memfd cannot be made.
    pub(crate) fn frame(&self) -> Result<protocol::Encoded, crate::SendError> {
        self.frame
            .get_or_init(|| {
                protocol::encode_payload(self.bytes.clone(), self.sizes, true)
                    .map_err(crate::SendError::Encode)
            })
            .clone()
    }
}
