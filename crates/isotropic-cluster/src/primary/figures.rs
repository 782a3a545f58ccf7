//! Per-worker figures: a snapshot of each live worker, from the registry
//! (its state, its slot's restarts), its last resource sample and the
//! counters of its channel and requests.

use std::time::Duration;

use super::context::PrimaryContext;
use super::registry::Entry;
use super::state::WorkerState;
use crate::WorkerId;

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerPhase {
    /// Started; on our framed channel, its hello has not arrived yet.
    Starting,
    /// Connected, not ready yet.
    Online,
    /// Ready (in the pool unless a handler kept it out).
    Ready,
    /// On its way out (asked to leave, disconnected, or exited and being
    /// reported).
    Leaving,
}

impl From<WorkerState> for WorkerPhase {
    fn from(state: WorkerState) -> Self {
        match state {
            WorkerState::Starting => Self::Starting,
            WorkerState::Online => Self::Online,
            WorkerState::Ready => Self::Ready,
            WorkerState::Leaving(_) | WorkerState::Gone { .. } => Self::Leaving,
        }
    }
}

/// Where a worker's memory figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemorySource {
    /// Its cgroup's `memory.current`: everything it started, page cache and
    /// kernel memory included (where it runs in a cgroup of its own with the
    /// memory controller).
    Cgroup,
    /// The resident memory (`VmRSS`) of it and its live descendants (every
    /// process of its cgroup, where it runs in one), summed (pages shared
    /// between them count once per process).
    ProcessTree,
}

/// What a worker used when last sampled (see
/// [`PrimaryBuilder::sample_interval`](super::PrimaryBuilder::sample_interval)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResourceUsage {
    /// User and system CPU time of it and its live descendants (every process
    /// of its cgroup, where it runs in one), and of the children they reaped.
    pub cpu_time: Duration,
    /// Memory in bytes.
    pub memory: u64,
    /// What `memory` measures.
    pub memory_source: MemorySource,
    /// How long ago it was sampled.
    pub age: Duration,
    /// The CPU time it used between the sample before this one and this
    /// one (zero on its first sample)…
    pub recent_cpu_time: Duration,
    /// …and the time between those two samples (zero on its first):
    /// `recent_cpu_time / recent_interval` is its recent share of one CPU.
    pub recent_interval: Duration,
}

/// A snapshot of one live worker, from
/// [`ClusterPrimary::figures`](super::ClusterPrimary::figures) or
/// [`PrimaryContext::figures`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerFigures {
    /// Its id.
    pub id: WorkerId,
    /// Its process id.
    pub pid: u32,
    /// Its slot (see [`WorkerHandle::slot`](super::WorkerHandle::slot)).
    pub slot: u32,
    /// The generation of the program it runs (see
    /// [`WorkerHandle::generation`](super::WorkerHandle::generation)).
    pub generation: u64,
    /// Where it is in its life.
    pub phase: WorkerPhase,
    /// How long since it was started.
    pub uptime: Duration,
    /// How many workers held its slot before it (each replacement of an
    /// exited worker, each recycle, counts one).
    pub restarts: u32,
    /// Its last resource sample; `None` before the first one (or with
    /// sampling off).
    pub usage: Option<ResourceUsage>,
    /// Frames written to it (messages, requests, replies and the protocol's
    /// own), and their bytes on the wire.
    pub messages_sent: u64,
    /// See [`messages_sent`](Self::messages_sent).
    pub bytes_sent: u64,
    /// Frames read from it, and their bytes on the wire.
    pub messages_received: u64,
    /// See [`messages_received`](Self::messages_received).
    pub bytes_received: u64,
    /// Requests to it that wait for a reply.
    pub in_flight: usize,
    /// Its last `STATUS=` line on `NOTIFY_SOCKET`
    /// ([`Readiness::Notify`](super::Readiness::Notify)), if any.
    pub status: Option<String>,
}

impl WorkerFigures {
    fn of(entry: &Entry) -> Self {
        let worker = &entry.worker;
        let traffic = worker.outbox().traffic();
        let (messages_sent, bytes_sent) = traffic.sent_total();
        let (messages_received, bytes_received) = traffic.received_total();
        Self {
            id: worker.id(),
            pid: worker.pid(),
            slot: worker.slot(),
            generation: worker.generation(),
            phase: entry.state.into(),
            uptime: entry.started.elapsed(),
            restarts: entry.restarts,
            usage: entry.resources.usage(),
            messages_sent,
            bytes_sent,
            messages_received,
            bytes_received,
            in_flight: worker.in_flight(),
            status: entry.status.clone(),
        }
    }
}

impl PrimaryContext {
    /// A snapshot of every live worker (started and not yet reported
    /// exited), by ascending id.
    pub fn figures(&self) -> Vec<WorkerFigures> {
        self.registry
            .entries()
            .into_iter()
            .map(WorkerFigures::of)
            .collect()
    }
}
