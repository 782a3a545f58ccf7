//! Who can be reached: live workers, the pool of ready ones, round robin, and
//! message destinations. Written by the [`Registry`](super::registry::Registry)
//! alone, read by the handles (behind a mutex).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use super::WorkerHandle;
use super::config::SharedBytes;
use crate::WorkerId;
use crate::error::SendError;
use crate::protocol::{self, Sizes};

/// Where a message goes: one worker, several, or every ready worker.
///
/// Built with `From` from a [`WorkerHandle`], a [`WorkerId`], or a `Vec` of either;
/// an id names any live worker, ready or not.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Destination {
    /// One worker, by handle.
    Worker(WorkerHandle),
    /// One worker, by id.
    Id(WorkerId),
    /// Several destinations.
    Many(Vec<Destination>),
    /// Every worker in the pool of ready workers at the time of the call.
    Ready,
}

impl From<WorkerHandle> for Destination {
    fn from(worker: WorkerHandle) -> Self {
        Self::Worker(worker)
    }
}

impl From<&WorkerHandle> for Destination {
    fn from(worker: &WorkerHandle) -> Self {
        Self::Worker(worker.clone())
    }
}

impl From<WorkerId> for Destination {
    fn from(id: WorkerId) -> Self {
        Self::Id(id)
    }
}

impl<T: Into<Destination>> From<Vec<T>> for Destination {
    fn from(many: Vec<T>) -> Self {
        Self::Many(many.into_iter().map(Into::into).collect())
    }
}

#[derive(Debug, Default)]
struct State {
    live: HashMap<WorkerId, WorkerHandle>,
    /// The pool: workers that are ready and joined it.
    members: BTreeMap<WorkerId, WorkerHandle>,
    /// The same, by ascending id, shared: what a send to every ready
    /// worker iterates (no list built per message).
    ready: Arc<[WorkerHandle]>,
    /// Per tag: when each worker was last selected, on a logical clock.
    selected: HashMap<String, HashMap<WorkerId, u64>>,
    clock: u64,
}

/// The registry of workers.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    state: Mutex<State>,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under every operation, so a panic
        // elsewhere while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn add_live(&self, worker: &WorkerHandle) {
        self.lock().live.insert(worker.id(), worker.clone());
    }

    pub(crate) fn remove_live(&self, id: WorkerId) {
        self.lock().live.remove(&id);
    }

    pub(crate) fn join(&self, worker: &WorkerHandle) {
        let mut state = self.lock();
        state.members.insert(worker.id(), worker.clone());
        state.ready = state.members.values().cloned().collect();
    }

    /// Removes a worker from the pool and forgets its round-robin history;
    /// whether it was in the pool.
    pub(crate) fn leave(&self, id: WorkerId) -> bool {
        let mut state = self.lock();
        let removed = state.members.remove(&id).is_some();
        state.ready = state.members.values().cloned().collect();
        state.selected.retain(|_, stamps| {
            stamps.remove(&id);
            !stamps.is_empty()
        });
        removed
    }

    /// How many workers are in the pool.
    pub(crate) fn len(&self) -> usize {
        self.lock().members.len()
    }

    pub(crate) fn contains(&self, id: WorkerId) -> bool {
        self.lock().members.contains_key(&id)
    }

    /// The ready worker with the fewest requests waiting for a reply (the
    /// lowest id among equals).
    pub(crate) fn least_loaded(&self) -> Option<WorkerHandle> {
        self.lock()
            .members
            .values()
            .min_by_key(|w| w.in_flight())
            .cloned()
    }

    pub(crate) fn members(&self) -> Vec<WorkerHandle> {
        self.lock().ready.to_vec()
    }

    pub(crate) fn member(&self, id: WorkerId) -> Option<WorkerHandle> {
        self.lock().members.get(&id).cloned()
    }

    /// The ready worker least recently selected for `tag`: workers never
    /// selected for it first (lowest id first), then the oldest selection.
    pub(crate) fn round_robin(&self, tag: &str) -> Option<WorkerHandle> {
        let mut state = self.lock();
        let State {
            members,
            selected,
            clock,
            ..
        } = &mut *state;
        let stamps = selected.get(tag);
        let stamp = |id: &WorkerId| stamps.and_then(|s| s.get(id)).copied();
        let chosen = members
            .values()
            .find(|w| stamp(&w.id()).is_none())
            .or_else(|| members.values().min_by_key(|w| stamp(&w.id())))?
            .clone();
        *clock += 1;
        selected
            .entry(tag.to_owned())
            .or_default()
            .insert(chosen.id(), *clock);
        Some(chosen)
    }

    /// The workers `to` names, and an error for each id that names none.
    pub(crate) fn resolve(&self, to: Destination) -> (Vec<WorkerHandle>, Vec<SendError>) {
        let state = self.lock();
        let mut workers = Vec::new();
        let mut errors = Vec::new();
        let mut pending = vec![to];
        while let Some(to) = pending.pop() {
            match to {
                Destination::Worker(worker) => workers.push(worker),
                Destination::Id(id) => match state.live.get(&id) {
                    Some(worker) => workers.push(worker.clone()),
                    None => errors.push(SendError::InvalidDestination { worker_id: id }),
                },
                Destination::Many(many) => pending.extend(many.into_iter().rev()),
                Destination::Ready => workers.extend(state.ready.iter().cloned()),
            }
        }
        (workers, errors)
    }
}

impl Pool {
    /// Queues a message for each worker `to` names with `send`, without
    /// waiting.
    pub(crate) fn try_send(
        &self,
        to: Destination,
        send: impl Fn(&WorkerHandle) -> Result<(), SendError>,
    ) -> Result<(), SendError> {
        match to {
            Destination::Worker(worker) => send(&worker),
            Destination::Ready => {
                let ready = self.lock().ready.clone();
                combine(ready.iter().map(send))
            }
            to => {
                let (workers, errors) = self.resolve(to);
                combine(workers.iter().map(send).chain(errors.into_iter().map(Err)))
            }
        }
    }

    /// Queues `bytes` as a bytes message for each worker `to` names,
    /// without waiting. A payload below `sizes.sealed_from` gets its header
    /// once (each queue copies a short one, and refers to a longer one); a
    /// larger one is lent from each worker's segments, or sealed once for
    /// all.
    pub(crate) fn try_send_bytes(
        &self,
        to: Destination,
        bytes: Bytes,
        sizes: Sizes,
    ) -> Result<(), SendError> {
        if bytes.len() < sizes.sealed_from {
            // (A payload too large fails for each worker `to` names, as
            // with `send_bytes`.)
            let header = protocol::bytes_header(bytes.len(), sizes.max_frame);
            let header = header.map_err(SendError::Encode);
            return self.try_send(to, |worker| {
                (header.as_ref().map_err(Clone::clone))
                    .and_then(|h| worker.try_send_bytes_parts(*h, &bytes))
            });
        }
        let shared = SharedBytes::new(bytes.clone(), sizes);
        self.try_send(to, |worker| {
            worker.try_send_payload(&bytes, || shared.frame())
        })
    }
}

/// Combines the outcomes of sending one message to several workers.
pub(crate) fn combine(
    results: impl IntoIterator<Item = Result<(), SendError>>,
) -> Result<(), SendError> {
    let mut delivered = 0;
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(()) => delivered += 1,
            Err(error) => failures.push(error),
        }
    }
    match (delivered, failures.len()) {
        (0, 0) => Err(SendError::NoDestination),
        (_, 0) => Ok(()),
        (0, 1) => Err(failures.remove(0)),
        _ => Err(SendError::Partial {
            delivered,
            failures,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Outbox;

    fn worker(id: u64) -> WorkerHandle {
        let (ours, _theirs) = tokio::net::UnixStream::pair().expect("socket pair");
        let outbox = Outbox::spawn(ours.into_split().1, Default::default(), Some(WorkerId(id)));
        WorkerHandle::new(
            (WorkerId(id), 0, 1),
            0,
            outbox,
            crate::protocol::Sizes::frames(1024),
            std::time::Duration::from_secs(1),
            crate::protocol::Wire::Frames(crate::Codec::Json),
            std::sync::Arc::default(),
        )
    }

    #[tokio::test]
    async fn round_robin_forgets_removed_workers_and_empty_tags() {
        let pool = Pool::default();
        for id in 1..=2 {
            pool.join(&worker(id));
        }
        let picks: Vec<u64> = (0..3)
            .map(|_| pool.round_robin("a").map_or(0, |w| w.id().get()))
            .collect();
        assert_eq!(picks, [1, 2, 1]);
        pool.round_robin("b");
        assert_eq!(pool.lock().selected.len(), 2);
        pool.leave(WorkerId(1));
        // Tag "b" only knew worker 1: it is gone with it.
        assert_eq!(pool.lock().selected.keys().collect::<Vec<_>>(), ["a"]);
        pool.leave(WorkerId(2));
        assert!(pool.lock().selected.is_empty());
        assert!(pool.round_robin("a").is_none());
    }

    /// A small payload too large for a frame fails for each worker `to`
    /// names, as with `send_bytes`: no ready worker is `NoDestination`, two
    /// are `Partial` with both failures.
    #[tokio::test]
    async fn try_send_bytes_error_precedence_matches_send_bytes() {
        let sizes = Sizes {
            max_frame: 1000,
            sealed_from: 1 << 20,
        };
        let payload = || Bytes::from(vec![0u8; 2000]);
        let pool = Pool::default();
        let none = pool.try_send_bytes(Destination::Ready, payload(), sizes);
        assert!(
            matches!(none, Err(SendError::NoDestination)),
            "no ready worker: {none:?}"
        );
        for id in 1..=2 {
            let worker = worker(id);
            worker.said_hello(crate::protocol::VERSION, true);
            pool.join(&worker);
        }
        let two = pool.try_send_bytes(Destination::Ready, payload(), sizes);
        assert!(
            matches!(&two, Err(SendError::Partial { delivered: 0, failures }) if failures.len() == 2),
            "two ready workers: {two:?}"
        );
    }

    /// The shared list of ready workers follows joins, rejoins and leaves.
    #[tokio::test]
    async fn a_send_to_every_ready_worker_follows_joins_and_leaves() {
        let pool = Pool::default();
        let workers: Vec<_> = (1..=3).map(worker).collect();
        for worker in &workers {
            pool.join(worker);
        }
        pool.join(&workers[1]);
        let ids = |pool: &Pool| {
            pool.members()
                .iter()
                .map(|w| w.id().get())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&pool), [1, 2, 3]);
        assert!(pool.leave(WorkerId(2)));
        assert_eq!(ids(&pool), [1, 3]);
        let reached = std::sync::Mutex::new(Vec::new());
        let sent = pool.try_send(Destination::Ready, |w| {
            reached.lock().expect("lock").push(w.id().get());
            Ok(())
        });
        assert!(sent.is_ok());
        assert_eq!(*reached.lock().expect("lock"), [1, 3]);
        pool.leave(WorkerId(1));
        pool.leave(WorkerId(3));
        let none = pool.try_send(Destination::Ready, |_| Ok(()));
        assert!(matches!(none, Err(SendError::NoDestination)));
    }
}
