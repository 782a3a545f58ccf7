//! Configuration of a primary, std-`Command`-shaped.

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use super::events::{Initialize, InitializeComplete, InitializeError};
use super::{ClusterPrimary, PrimaryContext, RestartPolicy};
use crate::actor::Mailbox;
use crate::channel::QueueLimits;
use crate::error::{BoxError, Error};
use crate::events::{self, Hub};
use crate::net::Distribution;
use crate::protocol::{self, User, Wire};
use crate::request::Handlers;

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
    Node,
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

type Initializer =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send>;

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
    pub(crate) max_frame_size: usize,
    pub(crate) queue: QueueLimits,
    pub(crate) shutdown_grace: Duration,
    pub(crate) kill_grace: Duration,
    pub(crate) restart: RestartPolicy,
    pub(crate) distribution: Distribution,
    pub(crate) request_timeout: Duration,
    pub(crate) ready_timeout: Option<Duration>,
    /// Without a channel: ready once listening, not once started.
    pub(crate) ready_on_listen: bool,
    pub(crate) channel: WorkerChannel,
    /// Fds every worker inherits (see `pass_fds`).
    pub(crate) pass_fds: std::sync::Arc<Vec<std::os::fd::OwnedFd>>,
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

    /// What the channel to the workers speaks.
    pub(crate) fn wire(&self) -> Wire {
        match self.channel {
            WorkerChannel::Node => Wire::NodeJson,
            _ => Wire::Frames,
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
            max_frame_size: protocol::DEFAULT_MAX_FRAME,
            queue: QueueLimits::default(),
            shutdown_grace: Duration::from_secs(5),
            kill_grace: Duration::from_secs(2),
            restart: RestartPolicy::default(),
            distribution: Distribution::default(),
            request_timeout: Duration::from_secs(30),
            ready_timeout: None,
            ready_on_listen: false,
            channel: WorkerChannel::Frames,
            pass_fds: std::sync::Arc::default(),
        }
    }
}

/// Builds and starts a [`ClusterPrimary`].
///
/// By default every worker re-executes this very program (through
/// `/proc/self/exe`, so a rebuilt or deleted binary still works) with this
/// process's arguments; the program then branches on [`crate::is_worker`].
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use isotropic_cluster::primary::{ClusterPrimary, WorkerStdio};
///
/// # async fn demo() -> Result<(), isotropic_cluster::Error> {
/// let primary = ClusterPrimary::builder()
///     .program("/usr/local/bin/my-worker")
///     .arg("--verbose")
///     .env("RUST_LOG", "info")
///     .stdio(WorkerStdio::Piped)
///     .shutdown_grace(Duration::from_secs(10))
///     .start()
///     .await?;
/// primary.fork(4).await?;
/// # Ok(()) }
/// ```
pub struct PrimaryBuilder {
    config: Config,
    pub(super) hub: Hub,
    handlers: Handlers,
    initializer: Option<Initializer>,
}

impl std::fmt::Debug for PrimaryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryBuilder")
            .field("config", &self.config)
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

impl PrimaryBuilder {
    pub(crate) fn new() -> Self {
        Self {
            config: Config::default(),
            hub: Hub::default(),
            handlers: Handlers::default(),
            initializer: None,
        }
    }

    /// The program each worker runs (the original's `workerScript`). Setting
    /// it also clears the arguments, which default to this process's own only
    /// when the program is this one.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.config.program = Some(program.into());
        self.config.args.get_or_insert_with(Vec::new);
        self
    }

    /// Adds an argument for the workers (the original's `workerArgs`).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.config
            .args
            .get_or_insert_with(Vec::new)
            .push(arg.into());
        self
    }

    /// Adds arguments for the workers.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        let list = self.config.args.get_or_insert_with(Vec::new);
        list.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the workers.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.config.envs.push((key.into(), Some(value.into())));
        self
    }

    /// Sets several environment variables for the workers.
    pub fn envs<I, K, V>(self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        vars.into_iter()
            .fold(self, |builder, (k, v)| builder.env(k, v))
    }

    /// Removes an environment variable from the workers' environment.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.config.envs.push((key.into(), None));
        self
    }

    /// Starts the workers with an empty environment (plus the role markers).
    pub fn env_clear(mut self) -> Self {
        self.config.env_clear = true;
        self.config.envs.clear();
        self
    }

    /// The workers' working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.current_dir = Some(dir.into());
        self
    }

    /// The user workers run as (needs a primary running as root, or one
    /// already of that user). Supplementary groups are dropped with it.
    ///
    /// # Errors
    ///
    /// Where the primary may not switch, forking fails with
    /// [`Error::Spawn`](crate::Error::Spawn) (permission denied).
    pub fn uid(mut self, uid: u32) -> Self {
        self.config.uid = Some(uid);
        self
    }

    /// The group workers run as (see [`uid`](Self::uid)).
    pub fn gid(mut self, gid: u32) -> Self {
        self.config.gid = Some(gid);
        self
    }

    /// Where both output streams of the workers go (the original's
    /// `workerSilent`/`workerStdio`).
    pub fn stdio(self, stdio: WorkerStdio) -> Self {
        self.stdout(stdio).stderr(stdio)
    }

    /// Where the workers' standard output goes.
    pub fn stdout(mut self, stdio: WorkerStdio) -> Self {
        self.config.stdout = stdio;
        self
    }

    /// Where the workers' standard error goes.
    pub fn stderr(mut self, stdio: WorkerStdio) -> Self {
        self.config.stderr = stdio;
        self
    }

    /// The largest frame accepted from or sent to a worker (default 16 MiB).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.max_frame_size = bytes.clamp(1, u32::MAX as usize);
        self
    }

    /// How many messages may wait to be written to one worker (default 1024).
    pub fn queue_capacity(mut self, messages: usize) -> Self {
        self.config.queue.messages = messages.max(1);
        self
    }

    /// How many bytes of messages may wait to be written to one worker
    /// (default 4 MiB; a larger message waits for the whole queue).
    pub fn queue_bytes(mut self, bytes: usize) -> Self {
        self.config.queue.bytes = bytes.max(1);
        self
    }

    /// How long a worker may take to exit once asked to disconnect, before it
    /// is sent SIGTERM (default 5 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// How long after SIGTERM a worker is sent SIGKILL (default 2 s).
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.config.kill_grace = grace;
        self
    }

    /// How connections to the addresses workers listen on are spread over
    /// the workers (default [`Distribution::Shared`]).
    pub fn distribution(mut self, distribution: Distribution) -> Self {
        self.config.distribution = distribution;
        self
    }

    /// How long a worker may take from its start to signalling ready; one
    /// that takes longer is a `workerError` (`ProtocolError::ReadyTimeout`),
    /// stopped and replaced. Default: no limit, as the original.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.config.ready_timeout = Some(timeout);
        self
    }

    /// With [`WorkerChannel::None`], a worker counts as ready once it holds
    /// a listening TCP or Unix socket (its own, or one passed to it) instead
    /// of once started: for servers that cannot say ready. Checked every
    /// 10 ms until then; other channels ignore it (their workers say ready).
    pub fn ready_on_listen(mut self, yes: bool) -> Self {
        self.config.ready_on_listen = yes;
        self
    }

    /// Fds every worker inherits, their numbers listed in the
    /// `ISOTROPIC_CLUSTER_PASS_FDS` environment variable (comma-separated).
    /// [`exec_with_listen_fds`](crate::exec_with_listen_fds) turns them into
    /// sockets passed by the systemd convention. The primary keeps them open.
    pub fn pass_fds(mut self, fds: Vec<std::os::fd::OwnedFd>) -> Self {
        self.config.pass_fds = std::sync::Arc::new(fds);
        self
    }

    /// Whether workers get a channel (default: our framed one).
    pub fn channel(mut self, channel: WorkerChannel) -> Self {
        self.config.channel = channel;
        self
    }

    /// The deadline of a request that names none (default 30 s).
    pub fn request_timeout(mut self, deadline: Duration) -> Self {
        self.config.request_timeout = deadline;
        self
    }

    /// How replacements of dead workers are paced.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.config.restart = policy;
        self
    }

    /// Custom initialization, run by [`start`](Self::start) before the
    /// primary counts as initialized (the original's `_initialize`). Its
    /// failure is an `initializeError` event and `start`'s error.
    pub fn initialize<F, Fut, E>(mut self, init: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.initializer = Some(Box::new(move || {
            Box::pin(async move { init().await.map_err(Into::into) })
        }));
        self
    }

    /// Starts the primary: runs the `initialize` events and the initializer,
    /// then hands the primary to a background task. No worker is started
    /// until [`ClusterPrimary::fork`].
    ///
    /// # Errors
    ///
    /// [`Error::Initialize`] if the initializer fails, [`Error::Prevented`]
    /// if a handler prevents `initialize`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it resolves drops the primary: nothing was
    /// started (workers only start with `fork`).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start(self) -> Result<ClusterPrimary, Error> {
        let (mailbox, commands) = Mailbox::new();
        let (mut context, inputs) =
            PrimaryContext::new(self.config, self.hub, self.handlers, mailbox.downgrade());
        events::publish(&mut context, Initialize);
        if !context.initialized() {
            return Err(Error::Prevented {
                event: "initialize",
            });
        }
        if let Some(init) = self.initializer
            && let Err(error) = init().await
        {
            let error = Error::Initialize(error.into());
            events::publish(
                &mut context,
                InitializeError {
                    error: error.clone(),
                },
            );
            return Err(error);
        }
        events::publish(&mut context, InitializeComplete);
        let primary = ClusterPrimary::new(mailbox, &context);
        tokio::spawn(super::context::run(context, commands, inputs));
        Ok(primary)
    }
}

impl crate::request::sealed::HasHandlers for PrimaryBuilder {
    fn handlers(&mut self) -> &mut Handlers {
        &mut self.handlers
    }
}
