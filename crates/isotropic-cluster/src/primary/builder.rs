//! [`PrimaryBuilder`]: a primary's settings, std-`Command`-shaped, and its start.

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::WorkerHandle;
use super::config::{Config, HealthCheck, HealthFuture, Readiness, WorkerChannel, WorkerStdio};
use super::context::{PrimaryContext, PrimaryEvent};
use super::events::{Initialize, InitializeComplete, InitializeError, WorkerMessage};
use super::handle::ClusterPrimary;
use super::notify::NotifySocket;
use super::phase::Phase;
use super::process::ProcessSpawner;
use super::restart::RestartPolicy;
use super::spawner::Spawn;
use crate::actor::{self, Mailbox, WeakMailbox};
use crate::error::{BoxError, Error};
use crate::events::{self, Hub};
use crate::message::Codec;
use crate::net::{Distribution, ListenPolicy};
use crate::request::Handlers;

type Initializer =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send>;

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
#[must_use = "a builder does nothing until started"]
pub struct PrimaryBuilder {
    config: Config,
    hub: Hub,
    handlers: Handlers,
    initializer: Option<Initializer>,
    /// Starts the workers: processes, unless a test says otherwise.
    spawner: Option<Arc<dyn Spawn>>,
}

impl std::fmt::Debug for PrimaryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryBuilder")
            .field("config", &self.config)
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

impl ClusterPrimary {
    /// A builder with the defaults: workers re-execute this program with its
    /// arguments, inherit its stdio, and are replaced when they exit.
    pub fn builder() -> PrimaryBuilder {
        PrimaryBuilder {
            config: Config::default(),
            hub: Hub::default(),
            handlers: Handlers::default(),
            initializer: None,
            spawner: None,
        }
    }
}

crate::topics::host!(PrimaryContext, stream: PrimaryEvent, inbound: WorkerMessage, handle: ClusterPrimary, builder: PrimaryBuilder);

impl PrimaryBuilder {
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
    /// already of that user). Supplementary groups are dropped with it. By
    /// default such workers get through the primary only the listening
    /// sockets that user could bind itself (see
    /// [`listen_policy`](Self::listen_policy)).
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

    /// Sends the lines of piped output to `sink` (see [`output_channel`]:
    /// lossless, with backpressure) instead of publishing `workerOutput`
    /// events (lossy when a stream falls behind).
    ///
    /// [`output_channel`]: super::output_channel
    pub fn output(mut self, sink: super::OutputSink) -> Self {
        self.config.output = Some(sink);
        self
    }

    /// The largest frame accepted from or sent to a worker (default 16 MiB).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.max_frame_size = bytes.clamp(1, u32::MAX as usize);
        self
    }

    /// The size from which a bytes payload sent to a worker goes by shared
    /// memory instead of through the channel (default 1 MiB): copied into
    /// one of the worker's shared segments (a sealed memfd of its own when
    /// none is free), and not bound by the maximum frame
    /// (`docs/protocol.md`, "Shared segments"). Workers whose hello said
    /// protocol version 2 get it through the channel.
    pub fn sealed_payload_threshold(mut self, bytes: usize) -> Self {
        self.config.sealed_from = bytes.max(1);
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
    /// is sent SIGTERM (default 5 s; a Node worker, at most
    /// [`NODE_TERM_AFTER`](super::NODE_TERM_AFTER)).
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

    /// What workers may listen on (default [`ListenPolicy::AsWorkerUser`]:
    /// what the workers' user could bind itself). A refused request is a
    /// [`ListenErrorKind::NotAllowed`](crate::ListenErrorKind::NotAllowed)
    /// error for the worker and a `workerListenError` event.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use isotropic_cluster::ListenPolicy;
    /// use isotropic_cluster::primary::ClusterPrimary;
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// // Workers run as nobody, and may listen on port 80 only.
    /// let primary = ClusterPrimary::builder()
    ///     .uid(65534)
    ///     .gid(65534)
    ///     .listen_policy(ListenPolicy::Only(vec!["0.0.0.0:80".parse()?]))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn listen_policy(mut self, policy: ListenPolicy) -> Self {
        self.config.listen_policy = policy;
        self
    }

    /// The most listening sockets (distinct addresses) one worker may hold
    /// through the primary (default 64): over it, a listen request is a
    /// [`ListenErrorKind::TooMany`](crate::ListenErrorKind::TooMany) error.
    /// In round robin a worker may ask for one address this many times.
    /// A socket is closed (its Unix file removed) 5 s after the last live
    /// worker that held it left, unless a replacement took it over; at most
    /// this many sockets wait so, the oldest closed first beyond.
    pub fn max_listens_per_worker(mut self, sockets: usize) -> Self {
        self.config.max_listens = sockets;
        self
    }

    /// How long a worker may take from its start to signalling ready; one
    /// that takes longer is a `workerError` (`ProtocolError::ReadyTimeout`),
    /// stopped and replaced. Default: no limit, as the original.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.config.ready_timeout = Some(timeout);
        self
    }

    /// Recycles a worker once it has served `requests` requests (replies
    /// to the primary's requests), plus a random share of
    /// [`max_requests_jitter`](Self::max_requests_jitter) drawn for each
    /// worker (gunicorn's `max_requests`): a `workerExpired` event, then a
    /// drained recycle ([`PrimaryContext::recycle_worker`]), one worker at a
    /// time. Default: no limit.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), isotropic_cluster::Error> {
    /// let primary = isotropic_cluster::primary::ClusterPrimary::builder()
    ///     .max_requests(10_000)
    ///     .max_requests_jitter(500)
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn max_requests(mut self, requests: u64) -> Self {
        self.config.max_requests = Some(requests);
        self
    }

    /// Adds 0 to `jitter` (uniformly, per worker) to
    /// [`max_requests`](Self::max_requests), so that workers started together
    /// do not expire together. Default: 0.
    pub fn max_requests_jitter(mut self, jitter: u64) -> Self {
        self.config.max_requests_jitter = jitter;
        self
    }

    /// Recycles a worker once it has run for `age`, plus up to a tenth of it
    /// (random per worker, so workers started together do not expire
    /// together): a `workerExpired` event, then a drained recycle
    /// ([`PrimaryContext::recycle_worker`]). Default: no limit.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.config.max_age = Some(age);
        self
    }

    /// Watches workers for liveness: a watched worker that gives no sign of
    /// life for `period` is unresponsive (a
    /// [`WorkerUnresponsive`](super::WorkerUnresponsive) event, whose
    /// default action stops and replaces it). Default: off; a zero period
    /// turns it off.
    ///
    /// Every `period / 4` the primary sends a heartbeat to each watched
    /// worker on our framed channel whose hello says it answers them (the
    /// worker library does, from its event loop: a worker whose event
    /// handling is blocked misses them, one busy in a spawned task or
    /// thread does not; see also
    /// [`ClusterWorker::watchdog`](crate::worker::ClusterWorker::watchdog)).
    /// A worker is watched from its first sign of life once online, and
    /// no longer once it is leaving; one that never gives any (a plain
    /// program, a Node worker, a framed worker that does not answer
    /// heartbeats) is never watched, so never stopped by this.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use isotropic_cluster::primary::ClusterPrimary;
    ///
    /// # async fn demo() -> Result<(), isotropic_cluster::Error> {
    /// // A worker silent for 10 s is stopped (SIGTERM, then SIGKILL) and replaced.
    /// let primary = ClusterPrimary::builder()
    ///     .watchdog(Duration::from_secs(10))
    ///     .start()
    ///     .await?;
    /// primary.fork(4).await?;
    /// # Ok(()) }
    /// ```
    pub fn watchdog(mut self, period: Duration) -> Self {
        self.config.watchdog = Some(period).filter(|period| !period.is_zero());
        self
    }

    /// When a worker counts as ready (default: when it says so on a
    /// channel, once started without one). A worker without a channel
    /// cannot say so: [`start`](Self::start) refuses [`Readiness::Message`]
    /// with [`WorkerChannel::None`].
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.config.readiness = Some(readiness);
        self
    }

    /// Fds every worker inherits, their numbers listed in the
    /// `ISOTROPIC_CLUSTER_PASS_FDS` environment variable (comma-separated).
    /// [`exec_with_listen_fds`](crate::socket_activation::exec_with_listen_fds)
    /// turns them into sockets passed by the systemd convention. The primary
    /// keeps them open.
    pub fn pass_fds(mut self, fds: Vec<std::os::fd::OwnedFd>) -> Self {
        self.config.pass_fds = std::sync::Arc::new(fds);
        self
    }

    /// How typed messages, requests and replies are encoded on our framed
    /// channel (default [`Codec::Json`]; Node's channel is always JSON).
    /// Workers learn it from `ISOTROPIC_CLUSTER_CODEC` and name it in their
    /// hello: one that names another fails with
    /// [`ProtocolError::CodecMismatch`](crate::ProtocolError::CodecMismatch).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.config.codec = codec;
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

    /// The pool's name: the `pool` label of its
    /// [`metrics`](ClusterPrimary::metrics) (default `"default"`), which
    /// tells the pools of one process apart.
    pub fn pool_name(mut self, name: impl Into<String>) -> Self {
        self.config.pool_name = name.into();
        self
    }

    /// How often each worker's CPU time and memory are sampled, by one timer
    /// for all workers (default 1 s; `Duration::ZERO`: never). The samples
    /// feed [`ClusterPrimary::figures`], the [`metrics`](ClusterPrimary::metrics)
    /// and [`max_memory`](Self::max_memory).
    /// A sample costs a few µs per worker process (`docs/performance.md`).
    pub fn sample_interval(mut self, interval: Duration) -> Self {
        self.config.sample_interval = (!interval.is_zero()).then_some(interval);
        self
    }

    /// The memory a worker may use, in bytes: its cgroup's `memory.current`
    /// where it runs in a cgroup with the memory controller, else the
    /// resident memory of its whole process tree. A worker sampled over it
    /// raises [`WorkerOverMemory`](super::WorkerOverMemory) once, whose
    /// default action recycles it. Needs sampling ([`start`](Self::start)
    /// refuses it with a zero [`sample_interval`](Self::sample_interval)).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), isotropic_cluster::Error> {
    /// use std::time::Duration;
    /// let primary = isotropic_cluster::primary::ClusterPrimary::builder()
    ///     .max_memory(200 << 20)
    ///     .sample_interval(Duration::from_millis(500))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.config.max_memory = Some(bytes);
        self
    }

    /// How many workers a rollout ([`PrimaryContext::restart_workers`], the
    /// CLI's SIGHUP) may start beyond the pool's size (Kubernetes'
    /// `maxSurge`). Default 1: one slot at a time, its new worker available
    /// before the old one leaves.
    pub fn surge(mut self, workers: usize) -> Self {
        self.config.surge = workers;
        self
    }

    /// How many workers a rollout may take out of the pool before their
    /// replacements are available (Kubernetes' `maxUnavailable`). Default 0:
    /// the pool never falls below its size. [`start`](Self::start) refuses
    /// both this and [`surge`](Self::surge) at 0.
    pub fn max_unavailable(mut self, workers: usize) -> Self {
        self.config.max_unavailable = workers;
        self
    }

    /// How long a rollout's new worker must be up, and in the pool, before
    /// an old one leaves for it; one that exits sooner fails the rollout,
    /// which is rolled back (PM2's `min_uptime`). Default 1 s.
    pub fn min_uptime(mut self, uptime: Duration) -> Self {
        self.config.min_uptime = uptime;
        self
    }

    /// Checks each new worker of a rollout once it is in the pool: an old
    /// worker leaves for it only once the check said `Ok`; an `Err` (its
    /// text says why), or no answer within the ready timeout (60 s unless
    /// set), fails the rollout, which is rolled back. Not run for other
    /// workers.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), isotropic_cluster::Error> {
    /// let primary = isotropic_cluster::primary::ClusterPrimary::builder()
    ///     .health_check(|worker| async move {
    ///         let healthy: bool = worker.request("health").await.map_err(|e| e.to_string())?;
    ///         healthy.then_some(()).ok_or_else(|| "unhealthy".to_owned())
    ///     })
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn health_check<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn(WorkerHandle) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check = move |worker| -> HealthFuture { Box::pin(check(worker)) };
        self.config.health_check = Some(HealthCheck(Arc::new(check)));
        self
    }

    /// Starts each worker through `launcher` and `args`, followed by the
    /// worker's program and its arguments (a wrapper that prepares the
    /// process, then executes the program it is given). The program given
    /// is its release's: the file held open once a deploy replaced it.
    pub fn launcher<I, S>(mut self, launcher: impl Into<PathBuf>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let args = args.into_iter().map(Into::into).collect();
        self.config.launcher = Some((launcher.into(), args));
        self
    }

    /// Custom initialization, run by [`start`](Self::start) before the
    /// primary counts as initialized (the original's `_initialize`). Its
    /// failure is an `initializeError` event and `start`'s error; so is its
    /// panic, after a `handlerPanicked` event.
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
    /// [`Error::InvalidConfig`] for settings that cannot work together;
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
    pub async fn start(mut self) -> Result<ClusterPrimary, Error> {
        if !self.config.has_channel() && self.config.readiness() == Readiness::Message {
            return Err(Error::InvalidConfig {
                reason: "a worker without a channel cannot say it is ready (Readiness::Message)",
            });
        }
        if self.config.surge == 0 && self.config.max_unavailable == 0 {
            return Err(Error::InvalidConfig {
                reason: "a rollout needs a surge or a max_unavailable above zero",
            });
        }
        if self.config.max_memory.is_some() && self.config.sample_interval.is_none() {
            return Err(Error::InvalidConfig {
                reason: "max_memory needs sampling (a sample_interval above zero)",
            });
        }
        let notify = (self.config.readiness() == Readiness::Notify)
            .then(NotifySocket::bind)
            .transpose()
            .map_err(|error| Error::Notify(error.into()))?;
        self.config.notify_socket = notify.as_ref().map(|socket| socket.address().to_owned());
        let (mailbox, commands) = Mailbox::new();
        let (mut context, initializer) = self.into_context(mailbox.downgrade());
        if let Some(socket) = notify {
            socket
                .listen(context.inputs.clone())
                .map_err(|error| Error::Notify(error.into()))?;
        }
        events::publish(&mut context, Initialize);
        if context.phase == Phase::Starting {
            return Err(Error::Prevented {
                event: "initialize",
            });
        }
        if let Some(init) = initializer
            && let Err(error) = context.initialize_with(init).await
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
        tokio::spawn(actor::run(context, commands));
        Ok(primary)
    }

    /// The primary's state, not yet initialized, and its initializer.
    pub(super) fn into_context(
        self,
        mailbox: WeakMailbox<PrimaryContext>,
    ) -> (PrimaryContext, Option<Initializer>) {
        let config = Arc::new(self.config);
        let spawner = self
            .spawner
            .unwrap_or_else(|| Arc::new(ProcessSpawner::new(config.clone())));
        let context = PrimaryContext::new(config, spawner, self.hub, self.handlers, mailbox);
        (context, self.initializer)
    }

    /// Workers are started by `spawner` instead of as processes (tests).
    #[cfg(test)]
    pub(super) fn spawner(mut self, spawner: Arc<dyn Spawn>) -> Self {
        self.spawner = Some(spawner);
        self
    }
}

impl crate::request::sealed::HasHandlers for PrimaryBuilder {
    fn handlers(&mut self) -> &mut Handlers {
        &mut self.handlers
    }
}
