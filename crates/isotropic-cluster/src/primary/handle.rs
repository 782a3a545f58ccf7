//! [`ClusterPrimary`]: the cloneable handle to a running primary.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::WorkerHandle;
use super::config::{Config, SharedBytes};
use super::context::{PrimaryContext, PrimaryEvent};
use super::figures::WorkerFigures;
use super::metrics::{Metrics, PoolMetrics};
use super::pool::{self, Destination, Pool};
use crate::WorkerId;
use crate::actor::Mailbox;
use crate::error::{Error, SendError};
use crate::events::{EventStream, StreamSource};
use crate::request::RequestError;

/// A cloneable handle to a running primary.
///
/// Dropping every handle destroys the primary: its workers are asked to
/// disconnect and are terminated after the grace period.
///
/// # Examples
///
/// ```no_run
/// use isotropic_cluster::primary::{ClusterPrimary, WorkerMessage};
/// use isotropic_cluster::Subscribe;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let primary = ClusterPrimary::builder()
///     .on::<WorkerMessage>(|event| println!("{}: {}", event.worker.id(), event.message))
///     .start()
///     .await?;
/// primary.fork(4).await?;
/// // … later
/// primary.shut_down().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClusterPrimary {
    pub(super) mailbox: Mailbox<PrimaryContext>,
    pool: Arc<Pool>,
    config: Arc<Config>,
    stream: StreamSource<PrimaryEvent>,
    metrics: Arc<PoolMetrics>,
}

impl std::fmt::Debug for ClusterPrimary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPrimary")
            .field("ready", &self.pool.members().len())
            .finish_non_exhaustive()
    }
}

impl ClusterPrimary {
    pub(super) fn new(mailbox: Mailbox<PrimaryContext>, context: &PrimaryContext) -> Self {
        Self {
            mailbox,
            pool: context.pool(),
            config: context.config.clone(),
            stream: context.stream.clone(),
            metrics: context.metrics.pool.clone(),
        }
    }

    /// Starts `count` workers (publishes `fork`). Awaited, it resolves once
    /// their processes are started, with how many were;
    /// [`.ready()`](Forking::ready) waits until they are ready. Does nothing
    /// once the primary is shut down (0 workers).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(primary: isotropic_cluster::primary::ClusterPrimary) -> Result<(), isotropic_cluster::Error> {
    /// let started = primary.fork(2).await?; // processes started
    /// let ready = primary.fork(2).ready().await?; // in the pool
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] when a worker process cannot be started (not
    /// retried: the caller decides; a *replacement* that cannot start is
    /// retried with the restart policy's backoff); [`Error::Destroyed`]
    /// after destroy.
    ///
    /// # Cancel safety
    ///
    /// The fork happens even if the future is dropped (once polled).
    pub fn fork(&self, count: usize) -> Forking<'_> {
        Forking {
            primary: self,
            count,
        }
    }

    /// Sends `message` to each worker `to` names, waiting while a worker's
    /// queue is full; resolves once it is written to every channel. The
    /// message is encoded once.
    ///
    /// # Errors
    ///
    /// [`SendError::InvalidDestination`] for an id of no live worker,
    /// [`SendError::NoDestination`] when `to` names no worker (an empty pool),
    /// [`SendError::Closed`] when a worker's channel is closed,
    /// [`SendError::Encode`] for a message that cannot be encoded or is too
    /// large, and [`SendError::Partial`] when several destinations were named
    /// and only some failed.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled message may still be written.
    pub async fn send<M: Serialize + ?Sized>(
        &self,
        to: impl Into<Destination>,
        message: &M,
    ) -> Result<(), SendError> {
        let frame = self.config.encode(message)?;
        self.send_each(to.into(), |worker| {
            let frame = frame.clone();
            async move { worker.send_frame(frame).await }
        })
        .await
    }

    /// Sends `bytes` as a bytes message to each worker `to` names (see
    /// [`WorkerHandle::send_bytes`]): the payload is neither serialized nor
    /// copied, and shared by every destination; resolves once it is
    /// written to every channel.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), and [`SendError::Unsupported`] for a worker
    /// on Node's channel or whose hello said protocol version 1.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled message may still be written.
    pub async fn send_bytes(
        &self,
        to: impl Into<Destination>,
        bytes: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        let bytes = bytes.into();
        let shared = SharedBytes::new(bytes.clone(), self.config.sizes());
        self.send_each(to.into(), |worker| {
            let (bytes, shared) = (&bytes, &shared);
            async move { worker.send_payload(bytes, || shared.frame()).await }
        })
        .await
    }

    /// Queues `bytes` as a bytes message for each worker `to` names,
    /// without waiting.
    ///
    /// # Errors
    ///
    /// As [`send_bytes`](Self::send_bytes), and [`SendError::Full`] as for
    /// [`try_send`](Self::try_send).
    pub fn try_send_bytes(
        &self,
        to: impl Into<Destination>,
        bytes: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        (self.pool).try_send_bytes(to.into(), bytes.into(), self.config.sizes())
    }

    /// Sends to each worker `to` names with `send`, all at once.
    async fn send_each<F: Future<Output = Result<(), SendError>>>(
        &self,
        to: Destination,
        send: impl Fn(WorkerHandle) -> F,
    ) -> Result<(), SendError> {
        let (workers, errors) = self.pool.resolve(to);
        let mut results = futures_util::future::join_all(workers.into_iter().map(send)).await;
        results.extend(errors.into_iter().map(Err));
        pool::combine(results)
    }

    /// Queues `message` for each worker `to` names, without waiting (the
    /// message is encoded once).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), and [`SendError::Full`] for a worker whose
    /// queue is full: with several destinations, [`SendError::Partial`] lists
    /// the workers that did not get it, so that exactly those can be retried.
    pub fn try_send<M: Serialize + ?Sized>(
        &self,
        to: impl Into<Destination>,
        message: &M,
    ) -> Result<(), SendError> {
        let frame = self.config.encode(message)?;
        self.pool
            .try_send(to.into(), |worker| worker.try_send_frame(frame.clone()))
    }

    /// The ready worker least recently selected for `tag` (use `""` for one
    /// shared rotation): workers never selected for the tag come first, lowest
    /// id first. `None` when no worker is ready. Exact: every ready worker is
    /// selected once before any is selected twice.
    pub fn round_robin(&self, tag: &str) -> Option<WorkerHandle> {
        self.pool.round_robin(tag)
    }

    /// Sends `message` to `worker` as a request and waits for its reply (see
    /// [`WorkerHandle::request`]).
    ///
    /// # Errors
    ///
    /// As [`WorkerHandle::request`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future forgets the request.
    pub async fn request<R: DeserializeOwned, M: Serialize + ?Sized>(
        &self,
        worker: &WorkerHandle,
        message: &M,
    ) -> Result<R, RequestError> {
        worker.request(message).await
    }

    /// A task pool's verb: asks the ready worker chosen by round robin for
    /// `tag`, and if it dies before answering, the next one (each worker at
    /// most once).
    ///
    /// # Errors
    ///
    /// [`RequestError::NoWorker`] when no ready worker is left to ask; the
    /// others as [`WorkerHandle::request`] (a remote error or a timeout is not
    /// retried: the request may have run).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future forgets the request.
    pub async fn dispatch<R: DeserializeOwned, M: Serialize + ?Sized>(
        &self,
        tag: &str,
        message: &M,
    ) -> Result<R, RequestError> {
        let ask = |worker: WorkerHandle| async move { worker.request(message).await };
        self.dispatch_to(|| self.pool.round_robin(tag), ask).await
    }

    /// As [`dispatch`](Self::dispatch), choosing the ready worker with the
    /// fewest requests in flight.
    ///
    /// # Errors
    ///
    /// As [`dispatch`](Self::dispatch).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future forgets the request.
    pub async fn dispatch_least_loaded<R: DeserializeOwned, M: Serialize + ?Sized>(
        &self,
        message: &M,
    ) -> Result<R, RequestError> {
        let ask = |worker: WorkerHandle| async move { worker.request(message).await };
        self.dispatch_to(|| self.pool.least_loaded(), ask).await
    }

    /// Sends `body` as a bytes request to `worker`'s handler named `name`
    /// and waits for its reply (see [`WorkerHandle::request_bytes`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(primary: isotropic_cluster::primary::ClusterPrimary) -> Result<(), isotropic_cluster::RequestError> {
    /// for worker in primary.workers() {
    ///     let digest = primary.request_bytes(&worker, "digest", &b"payload"[..]).await?;
    ///     println!("worker {}: {} bytes", worker.id(), digest.len());
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`WorkerHandle::request_bytes`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future forgets the request.
    pub async fn request_bytes(
        &self,
        worker: &WorkerHandle,
        name: &str,
        body: impl Into<Bytes>,
    ) -> Result<Bytes, RequestError> {
        worker.request_bytes(name, body).await
    }

    /// [`dispatch`](Self::dispatch) for a bytes request: asks the handler
    /// named `name` of the ready worker chosen by round robin for `tag`,
    /// and if that worker dies before answering, the next one (each worker
    /// at most once), with the same body.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(primary: isotropic_cluster::primary::ClusterPrimary) -> Result<(), isotropic_cluster::RequestError> {
    /// let image = bytes::Bytes::from(vec![0_u8; 4 << 20]); // large: passed in a sealed memfd
    /// let thumbnail = primary.dispatch_bytes("images", "thumbnail", image).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`RequestError::NoWorker`] when no ready worker is left to ask; the
    /// others as [`WorkerHandle::request_bytes`] (a remote error or a
    /// timeout is not retried: the request may have run).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future forgets the request.
    pub async fn dispatch_bytes(
        &self,
        tag: &str,
        name: &str,
        body: impl Into<Bytes>,
    ) -> Result<Bytes, RequestError> {
        self.dispatch_bytes_to(|| self.pool.round_robin(tag), name, body.into())
            .await
    }

    /// As [`dispatch_bytes`](Self::dispatch_bytes), choosing the ready
    /// worker with the fewest requests in flight.
    ///
    /// # Errors
    ///
    /// As [`dispatch_bytes`](Self::dispatch_bytes).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future forgets the request.
    pub async fn dispatch_bytes_least_loaded(
        &self,
        name: &str,
        body: impl Into<Bytes>,
    ) -> Result<Bytes, RequestError> {
        self.dispatch_bytes_to(|| self.pool.least_loaded(), name, body.into())
            .await
    }

    /// [`dispatch_to`](Self::dispatch_to) with bytes requests.
    async fn dispatch_bytes_to(
        &self,
        choose: impl FnMut() -> Option<WorkerHandle>,
        name: &str,
        body: Bytes,
    ) -> Result<Bytes, RequestError> {
        let ask = |worker: WorkerHandle| {
            let body = body.clone();
            async move { worker.request_bytes(name, body).await }
        };
        self.dispatch_to(choose, ask).await
    }

    /// Asks the worker `choose` gives with `ask`, and the next while they
    /// die before answering.
    async fn dispatch_to<T, F: Future<Output = Result<T, RequestError>>>(
        &self,
        mut choose: impl FnMut() -> Option<WorkerHandle>,
        ask: impl Fn(WorkerHandle) -> F,
    ) -> Result<T, RequestError> {
        let mut tried = Vec::new();
        // Bounded: every worker is tried at most once, and a pool refilled by
        // replacements (new ids) is bounded by the attempts below.
        for _ in 0..64 {
            let Some(worker) = choose() else { break };
            if tried.contains(&worker.id()) {
                break;
            }
            tried.push(worker.id());
            match ask(worker).await {
                Err(RequestError::Gone { .. }) => continue,
                other => return other,
            }
        }
        Err(RequestError::NoWorker)
    }

    /// The ready workers (the pool), by ascending id: a snapshot.
    pub fn workers(&self) -> Vec<WorkerHandle> {
        self.pool.members()
    }

    /// The ready worker with this id.
    pub fn worker_by_id(&self, id: WorkerId) -> Option<WorkerHandle> {
        self.pool.member(id)
    }

    /// A snapshot of every live worker: pid, slot, phase, uptime, restarts
    /// of its slot, its last CPU and memory sample, messages and bytes each
    /// way, requests in flight (see [`WorkerFigures`]). Empty once the
    /// primary is destroyed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(primary: isotropic_cluster::primary::ClusterPrimary) {
    /// for worker in primary.figures().await {
    ///     let memory = worker.usage.map_or(0, |usage| usage.memory);
    ///     println!("worker {} (pid {}): {memory} bytes", worker.id, worker.pid);
    /// }
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn figures(&self) -> Vec<WorkerFigures> {
        self.mailbox
            .call(|primary| primary.figures())
            .await
            .unwrap_or_default()
    }

    /// The pool's metrics (workers by state, restarts, exits, each worker's
    /// CPU, memory and messages, request latency, rollouts), for an
    /// application that serves its own `/metrics`: see [`Metrics`] and
    /// `docs/metrics.md`. Reading them does not go through the primary's
    /// task; they are kept as things happen, at no cost per message.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(primary: isotropic_cluster::primary::ClusterPrimary) {
    /// let text = primary.metrics().render();
    /// assert!(text.contains("isotropic_cluster_workers_ready{pool=\"default\"}"));
    /// # }
    /// ```
    pub fn metrics(&self) -> Metrics {
        Metrics::of(self.metrics.clone())
    }

    /// Asks worker `id` to leave, then replaces it (see
    /// [`PrimaryContext::stop_worker`]): recycles one worker gracefully,
    /// escalating to SIGTERM and SIGKILL if it does not go.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(primary: isotropic_cluster::primary::ClusterPrimary) -> Result<(), isotropic_cluster::Error> {
    /// // Recycle the worker that stopped answering.
    /// if let Some(worker) = primary.workers().first() {
    ///     primary.stop_worker(worker.id()).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchWorker`] when no live worker has this id;
    /// [`Error::Destroyed`] after destroy.
    ///
    /// # Cancel safety
    ///
    /// The stop is ordered at the first poll; dropping the future after that
    /// does not undo it.
    pub async fn stop_worker(&self, id: WorkerId) -> Result<(), Error> {
        self.mailbox
            .call(move |primary| primary.stop_worker(id))
            .await?
    }

    /// Recycles worker `id` without leaving the pool short (see
    /// [`PrimaryContext::recycle_worker`]): its replacement is started in
    /// its slot and is in the pool before `id` is asked to leave. Resolves
    /// once the recycle is ordered.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchWorker`] when no live worker that is not leaving has
    /// this id; [`Error::Destroyed`] after destroy.
    ///
    /// # Cancel safety
    ///
    /// The recycle is ordered at the first poll; dropping the future after
    /// that does not undo it.
    pub async fn recycle_worker(&self, id: WorkerId) -> Result<(), Error> {
        self.mailbox
            .call(move |primary| primary.recycle_worker(id))
            .await?
    }

    /// Grows or shrinks the pool to `count` workers (see
    /// [`PrimaryContext::scale_to`]): new workers are forked; surplus ones,
    /// the highest slots first, are asked to leave gracefully and not
    /// replaced. Resolves once the change is ordered (new workers started,
    /// surplus ones asked to leave), not when they are ready or gone.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(primary: isotropic_cluster::primary::ClusterPrimary) -> Result<(), isotropic_cluster::Error> {
    /// primary.scale_to(8).await?;
    /// assert_eq!(primary.pool_size().await?, 8);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`fork`](Self::fork) when growing; [`Error::Destroyed`] after
    /// destroy.
    ///
    /// # Cancel safety
    ///
    /// The change is ordered at the first poll; dropping the future after
    /// that does not undo it.
    pub async fn scale_to(&self, count: usize) -> Result<(), Error> {
        self.mailbox
            .call(move |primary| primary.scale_to(count))
            .await?
    }

    /// How many workers the pool holds (see [`PrimaryContext::pool_size`]):
    /// those not leaving, and delayed replacements still to start.
    ///
    /// # Errors
    ///
    /// [`Error::Destroyed`] after destroy.
    pub async fn pool_size(&self) -> Result<usize, Error> {
        self.mailbox.call(|primary| primary.pool_size()).await
    }

    /// Asks worker `id` to leave for good (see
    /// [`PrimaryContext::retire_worker`]): the pool shrinks by one.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchWorker`] when no live worker that is not leaving has
    /// this id; [`Error::Destroyed`] after destroy.
    pub async fn retire_worker(&self, id: WorkerId) -> Result<(), Error> {
        self.mailbox
            .call(move |primary| primary.retire_worker(id))
            .await?
    }

    /// Rolls out a new generation of the workers' program, found anew on
    /// disk (see [`PrimaryContext::restart_workers`]): slot by slot, each
    /// new worker proven before an old one leaves, so the pool is never
    /// short. Resolves with how many workers of the pool were replaced once
    /// the rollout is complete (or sooner, if a shutdown begins).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(primary: isotropic_cluster::primary::ClusterPrimary) {
    /// match primary.restart_workers().await {
    ///     Ok(replaced) => println!("{replaced} workers run the new release"),
    ///     Err(error) => eprintln!("{error}; the old release serves on"),
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::RolledBack`] when a new worker failed (exited before its
    /// minimum uptime, was not ready in time, failed its health check) and
    /// the old generation took every slot back; [`Error::Destroyed`] after
    /// destroy.
    ///
    /// # Cancel safety
    ///
    /// The restart goes on if the future is dropped (it is ordered at the
    /// first poll).
    pub async fn restart_workers(&self) -> Result<usize, Error> {
        let done = self.mailbox.call(PrimaryContext::restart_waiter).await?;
        match done.await.map_err(|_| Error::Destroyed)? {
            Ok(replaced) => Ok(replaced),
            Err((generation, reason)) => Err(Error::RolledBack {
                generation,
                reason: reason.to_string(),
            }),
        }
    }

    /// Shuts down: stops replacing workers, asks each to disconnect, and
    /// resolves when every worker has exited (`shutDownComplete`). Workers
    /// still running after the grace period get SIGTERM, then SIGKILL.
    /// Calling it again, or after completion, resolves at completion.
    ///
    /// # Errors
    ///
    /// [`Error::Prevented`] when a handler vetoed the shutdown;
    /// [`Error::Destroyed`] after destroy.
    ///
    /// # Cancel safety
    ///
    /// The shutdown goes on if the future is dropped.
    pub async fn shut_down(&self) -> Result<(), Error> {
        let done = self.mailbox.call(PrimaryContext::shut_down_waiter).await?;
        done.await
            .map_err(|_| Error::Prevented { event: "shutDown" })
    }

    /// Resolves once the primary has shut down and every worker has exited,
    /// however the shutdown was started (by a handler, say); it does not start
    /// one.
    ///
    /// # Errors
    ///
    /// [`Error::Destroyed`] when the primary is destroyed without a shutdown
    /// completing.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn shut_down_complete(&self) -> Result<(), Error> {
        let done = self
            .mailbox
            .call(|primary| primary.completion_waiter(true))
            .await?;
        done.await.map_err(|_| Error::Destroyed)
    }

    /// Sends SIGKILL to every worker now (see [`PrimaryContext::kill_workers`]):
    /// the forced end of a shutdown that takes too long.
    ///
    /// # Errors
    ///
    /// [`Error::Destroyed`] after destroy.
    ///
    /// # Cancel safety
    ///
    /// The kill is ordered at the first poll; dropping the future after that
    /// does not undo it.
    pub async fn kill_workers(&self) -> Result<(), Error> {
        self.mailbox.call(PrimaryContext::kill_workers).await
    }

    /// Shuts down if needed, then tears the primary down (`destroyComplete`,
    /// then every subscription is removed). Safe at any moment, and more than
    /// once.
    ///
    /// # Errors
    ///
    /// [`Error::Prevented`] when a handler vetoed the destroy.
    ///
    /// # Cancel safety
    ///
    /// The destroy goes on if the future is dropped.
    pub async fn destroy(&self) -> Result<(), Error> {
        let done = match self.mailbox.call(PrimaryContext::destroy_waiter).await {
            Ok(done) => done,
            Err(Error::Destroyed) => return Ok(()),
            Err(error) => return Err(error),
        };
        done.await
            .map_err(|_| Error::Prevented { event: "destroy" })
    }

    /// Every event from now on that reaches its default action, as a stream;
    /// it ends when the primary is destroyed.
    ///
    /// A stream is for watching: one that falls behind (4,096 events or
    /// 32 MiB unread) loses its oldest events and yields
    /// [`PrimaryEvent::Skipped`] in their place. Handlers (see
    /// [`Subscribe`](crate::Subscribe)) see every event, losslessly.
    pub fn events(&self) -> EventStream<PrimaryEvent> {
        self.stream.subscribe()
    }
}

/// Workers being started: see [`ClusterPrimary::fork`].
#[derive(Debug)]
#[must_use = "nothing is started unless awaited"]
pub struct Forking<'a> {
    primary: &'a ClusterPrimary,
    count: usize,
}

impl<'a> Forking<'a> {
    /// Waits until every worker this fork started is ready (in the pool);
    /// resolves with them, by ascending id.
    ///
    /// # Errors
    ///
    /// As [`ClusterPrimary::fork`], and [`Error::NotReady`] when one of them
    /// exits first (a crash, a ready timeout, a shutdown).
    ///
    /// # Cancel safety
    ///
    /// The fork happens even if the future is dropped (once polled).
    pub async fn ready(self) -> Result<Vec<WorkerHandle>, Error> {
        let count = self.count;
        let ready = self
            .primary
            .mailbox
            .call(move |primary| primary.fork_ready(count))
            .await??;
        ready.await.map_err(|_| Error::Destroyed)?
    }
}

impl<'a> IntoFuture for Forking<'a> {
    type Output = Result<usize, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        let count = self.count;
        Box::pin(async move {
            self.primary
                .mailbox
                .call(move |primary| primary.fork(count))
                .await?
        })
    }
}

impl PrimaryContext {
    /// The pool's metrics (see [`ClusterPrimary::metrics`]).
    pub fn metrics(&self) -> Metrics {
        Metrics::of(self.metrics.pool.clone())
    }

    /// A handle to this primary, for async work started from a handler; `None`
    /// once every handle is gone.
    pub fn handle(&self) -> Option<ClusterPrimary> {
        Some(ClusterPrimary::new(self.mailbox.upgrade()?, self))
    }
}
