//! The one registry of live workers: each one's handle and [`WorkerState`],
//! owned by the actor. It alone writes the [`Pool`], the view of the workers
//! that handles read (live ids, the ready pool, round robin), and the
//! workers' series of the [`PoolMetrics`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::WorkerHandle;
use super::metrics::PoolMetrics;
use super::pool::Pool;
use super::resources::Resources;
use super::rollout::Release;
use super::spawner::Spawned;
use super::state::{Action, Trigger, WorkerState};
use crate::{Signal, WorkerId};

/// One live worker.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) worker: WorkerHandle,
    pub(super) state: WorkerState,
    pub(super) started: Instant,
    /// Requests it served (see `max_requests`), and its limit.
    pub(super) served: u64,
    pub(super) request_limit: Option<u64>,
    /// Its `workerExpired` was published.
    pub(super) expired: bool,
    /// Its last `STATUS=` on `NOTIFY_SOCKET`.
    pub(super) status: Option<String>,
    /// It sent `READY=1` before its hello: ready at its hello.
    pub(super) ready_notified: bool,
    signals: mpsc::UnboundedSender<Signal>,
    /// Its cgroup's directory, if it runs in one of its own.
    pub(super) cgroup: Option<PathBuf>,
    /// The release of the program it runs.
    pub(super) release: Arc<Release>,
    /// How many workers held its slot before it.
    pub(super) restarts: u32,
    /// What it used when last sampled (see `resources.rs`).
    pub(super) resources: Resources,
}

impl Entry {
    /// Sends `signal` to the worker and its process group, unless it has been
    /// reaped.
    pub(super) fn signal(&self, signal: Signal) {
        let _ = self.signals.send(signal);
    }
}

/// The live workers, from their start to the end of their `workerExit`.
#[derive(Debug)]
pub(super) struct Registry {
    /// (Looked up for every frame a worker sends: no SipHash.)
    entries: HashMap<WorkerId, Entry, crate::events::FoldHash>,
    pool: Arc<Pool>,
    metrics: Arc<PoolMetrics>,
    /// How many workers each slot has had.
    slot_starts: HashMap<u32, u32>,
    /// Changes made so far: a worker started, changed state, joined or left
    /// the pool, or was forgotten.
    version: u64,
}

impl Registry {
    pub(super) fn new(metrics: Arc<PoolMetrics>) -> Self {
        Self {
            entries: HashMap::default(),
            pool: Arc::default(),
            metrics,
            slot_starts: HashMap::new(),
            version: 0,
        }
    }

    /// Changes made so far (see `metrics.rs`: what they change is summed up
    /// only after a change). A worker's state changes only in
    /// [`apply`](Self::apply), which counts: the actor lets a run of bytes
    /// messages in once while this stays the same.
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// The view that handles read.
    pub(super) fn pool(&self) -> Arc<Pool> {
        self.pool.clone()
    }

    /// Registers a started worker, in [`WorkerState::Starting`].
    pub(super) fn insert(&mut self, spawned: Spawned, release: Arc<Release>) {
        let Spawned {
            worker,
            signals,
            cgroup,
        } = spawned;
        self.version += 1;
        self.pool.add_live(&worker);
        let starts = self.slot_starts.entry(worker.slot()).or_default();
        *starts += 1;
        let entry = Entry {
            worker: worker.clone(),
            state: WorkerState::Starting,
            started: Instant::now(),
            served: 0,
            request_limit: None,
            expired: false,
            status: None,
            ready_notified: false,
            signals,
            cgroup,
            release,
            restarts: *starts - 1,
            resources: Resources::default(),
        };
        self.metrics.started(&worker, entry.restarts);
        self.entries.insert(worker.id(), entry);
    }

    /// The lowest slot no live worker holds, and none of `owed` (the slots
    /// that delayed replacements will take).
    pub(super) fn free_slot(&self, owed: impl Iterator<Item = u32>) -> u32 {
        let held: std::collections::BTreeSet<u32> = self
            .entries
            .values()
            .filter(|entry| !matches!(entry.state, WorkerState::Gone { .. }))
            .map(|entry| entry.worker.slot())
            .chain(owed)
            .collect();
        (0..).find(|slot| !held.contains(slot)).unwrap_or(0)
    }

    /// Forgets a worker (once its exit is reported).
    pub(super) fn remove(&mut self, id: WorkerId) -> Option<Entry> {
        self.leave_pool(id);
        self.pool.remove_live(id);
        self.metrics.gone(id);
        self.entries.remove(&id)
    }

    /// Applies `trigger` to worker `id`'s state: its handle and what to do,
    /// or `None` for a worker that is not live.
    pub(super) fn apply(
        &mut self,
        id: WorkerId,
        trigger: Trigger,
    ) -> Option<(WorkerHandle, Vec<Action>)> {
        let entry = self.entries.get_mut(&id)?;
        self.version += 1;
        let (state, actions) = entry.state.on(trigger);
        entry.state = state;
        Some((entry.worker.clone(), actions))
    }

    pub(super) fn get(&self, id: WorkerId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub(super) fn get_mut(&mut self, id: WorkerId) -> Option<&mut Entry> {
        self.entries.get_mut(&id)
    }

    /// Each live worker's id and pid.
    pub(super) fn pids(&self) -> impl Iterator<Item = (WorkerId, u32)> + '_ {
        self.entries
            .iter()
            .map(|(&id, entry)| (id, entry.worker.pid()))
    }

    /// Every live worker's entry, by ascending id.
    pub(super) fn entries(&self) -> Vec<&Entry> {
        let mut entries: Vec<&Entry> = self.entries.values().collect();
        entries.sort_by_key(|entry| entry.worker.id());
        entries
    }

    /// The live worker with this id.
    pub(super) fn worker(&self, id: WorkerId) -> Option<WorkerHandle> {
        self.get(id).map(|entry| entry.worker.clone())
    }

    /// The live worker with this id, if its channel has not closed.
    pub(super) fn connected(&self, id: WorkerId) -> Option<WorkerHandle> {
        self.get(id)
            .filter(|entry| match entry.state {
                WorkerState::Leaving(leaving) => !leaving.disconnected,
                WorkerState::Gone { .. } => false,
                _ => true,
            })
            .map(|entry| entry.worker.clone())
    }

    /// The live worker with this id, if it is not leaving.
    pub(super) fn staying(&self, id: WorkerId) -> Option<&Entry> {
        self.get(id).filter(|entry| entry.state.staying())
    }

    /// The workers not leaving, by slot, the highest slot first.
    pub(super) fn staying_by_slot(
        &self,
    ) -> std::collections::BTreeMap<std::cmp::Reverse<u32>, Vec<WorkerId>> {
        let mut slots = std::collections::BTreeMap::<_, Vec<_>>::new();
        for entry in self.entries.values().filter(|entry| entry.state.staying()) {
            slots
                .entry(std::cmp::Reverse(entry.worker.slot()))
                .or_default()
                .push(entry.worker.id());
        }
        slots
    }

    /// Every live worker, by ascending id.
    pub(super) fn workers(&self) -> Vec<WorkerHandle> {
        let mut workers: Vec<WorkerHandle> =
            self.entries.values().map(|e| e.worker.clone()).collect();
        workers.sort_by_key(WorkerHandle::id);
        workers
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds a worker to the pool of ready workers if it is (still) ready:
    /// not one that began to leave meanwhile; whether it joined.
    pub(super) fn join_pool(&mut self, worker: &WorkerHandle) -> bool {
        let ready = self
            .get(worker.id())
            .is_some_and(|entry| entry.state == WorkerState::Ready);
        if ready {
            self.version += 1;
            self.pool.join(worker);
        }
        ready
    }

    /// Takes a worker out of the pool; whether it was in it.
    pub(super) fn leave_pool(&mut self, id: WorkerId) -> bool {
        self.version += 1;
        self.pool.leave(id)
    }

    pub(super) fn in_pool(&self, id: WorkerId) -> bool {
        self.pool.contains(id)
    }
}
