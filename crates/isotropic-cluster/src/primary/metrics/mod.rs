//! The primary's metrics: [`Metrics`], rendered in Prometheus' text format
//! (see `docs/metrics.md` for every series).
//!
//! The actor writes them as things happen (a worker's start, sample and
//! exit; a rollout's steps), into atomics and two tables locked only then
//! and by a scrape: nothing is written per message (a channel's traffic
//! counts are read at the scrape) but a reply's latency (two relaxed adds).
//! Pool-level figures that depend on the actor's
//! state (the pool's size, its ready minimum, the workers by state) are
//! summed up at the end of each turn of the actor that changed them.

mod encode;
mod latency;

use std::collections::BTreeMap;
use std::fmt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub(crate) use latency::Latency;

use super::WorkerHandle;
use super::context::PrimaryContext;
use super::figures::WorkerPhase;
use super::phase::Phase;
use super::resources::Usage;
use crate::WorkerId;
use crate::actor::WeakMailbox;

/// The metrics of one or more primaries (pools), from
/// [`ClusterPrimary::metrics`](super::ClusterPrimary::metrics): a cheap,
/// cloneable handle for an application that serves its own endpoint.
///
/// Every series carries a `pool` label (the
/// [`pool_name`](super::PrimaryBuilder::pool_name), `"default"` unless
/// set), so that the metrics of several primaries of one process
/// ([`merge`](Self::merge)) render as one exposition.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(primary: isotropic_cluster::primary::ClusterPrimary) {
/// let metrics = primary.metrics();
/// // In the handler of GET /metrics, with `Metrics::CONTENT_TYPE`:
/// let body: String = metrics.render();
/// // In the handler of GET /readyz:
/// let ready = metrics.pools().iter().all(|pool| pool.is_ready());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Metrics {
    pools: Vec<Arc<PoolMetrics>>,
}

impl Metrics {
    /// The `Content-Type` of [`render`](Self::render)'s text: Prometheus'
    /// text format, version 0.0.4.
    pub const CONTENT_TYPE: &'static str =
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

    pub(super) fn of(pool: Arc<PoolMetrics>) -> Self {
        Self { pools: vec![pool] }
    }

    /// These metrics and `other`'s, rendered together (each series labelled
    /// with its pool). A pool already here is not added twice.
    #[must_use]
    pub fn merge(mut self, other: Metrics) -> Self {
        for pool in other.pools {
            if !self.pools.iter().any(|known| Arc::ptr_eq(known, &pool)) {
                self.pools.push(pool);
            }
        }
        self
    }

    /// Every series now, in Prometheus' text format
    /// ([`CONTENT_TYPE`](Self::CONTENT_TYPE)).
    pub fn render(&self) -> String {
        encode::render(&self.pools)
    }

    /// Adds these metrics to an application's own registry: each scrape of
    /// it reads them as [`render`](Self::render) does. (Behind the
    /// `prometheus` feature: `prometheus_client` is then part of this
    /// crate's public API, and its version must match the application's.)
    #[cfg(feature = "prometheus")]
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(encode::Collect(self.pools.clone())));
    }

    /// Each pool's state: whether its primary runs and whether enough of its
    /// workers are ready (what `/healthz` and `/readyz` answer).
    pub fn pools(&self) -> Vec<PoolStatus> {
        self.pools.iter().map(|pool| pool.status()).collect()
    }
}

/// One pool's state, from [`Metrics::pools`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// Its name (the `pool` label).
    pub pool: String,
    /// Its primary runs: not shut down nor destroyed (a shutdown under way
    /// counts: the workers are draining).
    pub alive: bool,
    /// Its primary is shutting down (or has).
    pub shutting_down: bool,
    /// The workers the pool holds (see
    /// [`ClusterPrimary::pool_size`](super::ClusterPrimary::pool_size)).
    pub size: usize,
    /// The workers in it that are ready.
    pub ready: usize,
    /// The fewest ready workers for the pool to count as ready: its size,
    /// less `max_unavailable` while a rollout runs.
    pub minimum: usize,
}

impl PoolStatus {
    /// It runs, is not shutting down, and has at least its minimum of ready
    /// workers (a pool of none, before the first fork, has: serve a
    /// readiness probe once the workers are forked).
    pub fn is_ready(&self) -> bool {
        self.alive && !self.shutting_down && self.ready >= self.minimum
    }
}

impl fmt::Display for PoolStatus {
    /// `pool default: 2 of 2 workers ready (at least 2 needed)`, or why it
    /// is not running.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            pool,
            ready,
            size,
            minimum,
            ..
        } = self;
        if !self.alive {
            write!(f, "pool {pool}: stopped")
        } else if self.shutting_down {
            write!(f, "pool {pool}: shutting down")
        } else {
            write!(
                f,
                "pool {pool}: {ready} of {size} workers ready (at least {minimum} needed)"
            )
        }
    }
}

/// Why a worker exited, as counted: after a disconnect (asked for or
/// announced), or by itself with a code, or killed by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExitReason {
    Voluntary,
    Code,
    Signal,
    /// Waiting for it failed.
    Unknown,
}

impl ExitReason {
    const ALL: [Self; 4] = [Self::Voluntary, Self::Code, Self::Signal, Self::Unknown];

    fn of(status: Option<ExitStatus>, voluntary: bool) -> Self {
        use std::os::unix::process::ExitStatusExt as _;
        match status {
            _ if voluntary => Self::Voluntary,
            Some(status) if status.code().is_some() => Self::Code,
            Some(status) if status.signal().is_some() => Self::Signal,
            _ => Self::Unknown,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Voluntary => "voluntary",
            Self::Code => "code",
            Self::Signal => "signal",
            Self::Unknown => "unknown",
        }
    }
}

/// A step of a rollout, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RolloutStep {
    Started,
    Completed,
    /// A new worker failed: rolling back.
    Failed,
}

/// One live worker's series.
#[derive(Debug)]
struct Series {
    worker: WorkerHandle,
    usage: Option<Usage>,
}

/// Where the pool stood at the end of the last turn of the actor that
/// changed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Summary {
    size: usize,
    minimum: usize,
    /// In the pool.
    ready: usize,
    /// The live workers by [`WorkerPhase`], in [`PHASES`]' order.
    phases: [usize; 4],
    shutting_down: bool,
    stopped: bool,
}

/// The phases counted, and their `state` labels.
const PHASES: [(WorkerPhase, &str); 4] = [
    (WorkerPhase::Starting, "starting"),
    (WorkerPhase::Online, "online"),
    (WorkerPhase::Ready, "ready"),
    (WorkerPhase::Leaving, "leaving"),
];

/// One pool's metrics: written by its actor (and by whoever gets a reply
/// to a request), read by [`Metrics`].
pub(crate) struct PoolMetrics {
    pool: String,
    /// To tell whether the actor still runs.
    mailbox: WeakMailbox<PrimaryContext>,
    summary: Mutex<Summary>,
    /// The live workers, by id.
    workers: Mutex<BTreeMap<WorkerId, Series>>,
    /// Workers started in a slot held before.
    restarts: AtomicU64,
    /// Exits by [`ExitReason`] (in its order).
    exits: [AtomicU64; 4],
    /// Rollouts by [`RolloutStep`] (in its order).
    rollouts: [AtomicU64; 3],
    /// Frames sent to and received from the workers gone.
    departed: [AtomicU64; 2],
    /// The latency of the requests to the workers that were answered.
    requests: Arc<Latency>,
}

impl fmt::Debug for PoolMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolMetrics")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // (Every write leaves the tables whole: a panic elsewhere leaves them
    // usable.)
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PoolMetrics {
    pub(super) fn new(pool: String, mailbox: WeakMailbox<PrimaryContext>) -> Self {
        Self {
            pool,
            mailbox,
            summary: Mutex::default(),
            workers: Mutex::default(),
            restarts: AtomicU64::default(),
            exits: Default::default(),
            rollouts: Default::default(),
            departed: Default::default(),
            requests: Arc::default(),
        }
    }

    /// Where requests to the workers record their latency.
    pub(super) fn requests(&self) -> &Arc<Latency> {
        &self.requests
    }

    /// A worker started; `restarts` workers held its slot before.
    pub(super) fn started(&self, worker: &WorkerHandle, restarts: u32) {
        if restarts > 0 {
            self.restarts.fetch_add(1, Ordering::Relaxed);
        }
        let series = Series {
            worker: worker.clone(),
            usage: None,
        };
        lock(&self.workers).insert(worker.id(), series);
    }

    /// Worker `id` was sampled.
    pub(super) fn sampled(&self, id: WorkerId, usage: Usage) {
        if let Some(series) = lock(&self.workers).get_mut(&id) {
            series.usage = Some(usage);
        }
    }

    /// Worker `id` is forgotten: its series go, its traffic stays in the
    /// pool's.
    pub(super) fn gone(&self, id: WorkerId) {
        if let Some(series) = lock(&self.workers).remove(&id) {
            let traffic = series.worker.outbox().traffic();
            let (sent, received) = (traffic.sent_total().0, traffic.received_total().0);
            self.departed[0].fetch_add(sent, Ordering::Relaxed);
            self.departed[1].fetch_add(received, Ordering::Relaxed);
        }
    }

    /// A worker exited.
    pub(super) fn exited(&self, status: Option<ExitStatus>, voluntary: bool) {
        let reason = ExitReason::of(status, voluntary);
        self.exits[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn rollout(&self, step: RolloutStep) {
        self.rollouts[step as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn status(&self) -> PoolStatus {
        let summary = *lock(&self.summary);
        let running = self.mailbox.upgrade().is_some_and(|m| !m.is_closed());
        PoolStatus {
            pool: self.pool.clone(),
            alive: running && !summary.stopped,
            shutting_down: summary.shutting_down,
            size: summary.size,
            ready: summary.ready,
            minimum: summary.minimum,
        }
    }
}

/// What the pool-level figures depend on: they are summed up again only
/// when it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Inputs {
    registry: u64,
    owed: usize,
    rollout: Option<usize>,
    phase: Phase,
}

/// The actor's side: its pool's metrics, and the inputs of their last
/// summary.
#[derive(Debug)]
pub(super) struct Recorder {
    pub(super) pool: Arc<PoolMetrics>,
    summed: Option<Inputs>,
}

impl Recorder {
    pub(super) fn new(pool: Arc<PoolMetrics>) -> Self {
        Self { pool, summed: None }
    }
}

impl PrimaryContext {
    /// Sums up the pool-level figures, if what they depend on changed in
    /// this turn (the registry, delayed replacements, a rollout, the phase):
    /// not after a turn of messages only.
    pub(super) fn sum_up(&mut self) {
        let inputs = Inputs {
            registry: self.registry.version(),
            owed: self.owed.len(),
            rollout: self.rollouts.size(),
            phase: self.phase,
        };
        if self.metrics.summed == Some(inputs) {
            return;
        }
        self.metrics.summed = Some(inputs);
        let size = self.pool_size();
        let mut phases = [0; 4];
        for entry in self.registry.entries() {
            let phase = WorkerPhase::from(entry.state);
            if let Some(at) = PHASES.iter().position(|(p, _)| *p == phase) {
                phases[at] += 1;
            }
        }
        let summary = Summary {
            size,
            minimum: match inputs.rollout {
                Some(_) => size.saturating_sub(self.config.max_unavailable),
                None => size,
            },
            ready: self.registry.pool().len(),
            phases,
            shutting_down: !self.phase.is_active(),
            stopped: matches!(self.phase, Phase::ShutDown { .. } | Phase::Destroyed),
        };
        *lock(&self.metrics.pool.summary) = summary;
    }
}
