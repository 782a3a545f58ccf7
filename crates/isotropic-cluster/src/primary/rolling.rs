//! A rolling restart: every ready worker recycled, drained (its
//! replacement is in the pool before it leaves), one at a time, so that the
//! pool is never short.

use tokio::sync::oneshot;

use super::context::PrimaryContext;
use crate::WorkerId;

/// Where a rolling restart stands (the primary's actor drives it; the
/// recycles themselves are the recycler's).
#[derive(Debug, Default)]
pub(super) struct Rolling {
    /// The workers of this restart not replaced yet.
    batch: Vec<WorkerId>,
    /// Workers replaced so far in this restart.
    restarted: usize,
    /// Told the count when the restart ends.
    waiters: Vec<oneshot::Sender<usize>>,
}

impl Rolling {
    /// Begins a restart of `ready`, or adds to the one under way; the
    /// workers added (those not in it yet).
    pub(super) fn begin(&mut self, ready: Vec<WorkerId>) -> Vec<WorkerId> {
        if self.batch.is_empty() {
            self.restarted = 0;
        }
        let added: Vec<WorkerId> = ready
            .into_iter()
            .filter(|id| !self.batch.contains(id))
            .collect();
        self.batch.extend(&added);
        added
    }

    /// Someone to tell when this restart ends.
    pub(super) fn wait(&mut self) -> oneshot::Receiver<usize> {
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        rx
    }

    /// Worker `old` was replaced (its replacement is in the pool).
    pub(super) fn replaced(&mut self, old: WorkerId) {
        if let Some(at) = self.batch.iter().position(|id| *id == old) {
            self.batch.swap_remove(at);
            self.restarted += 1;
        }
    }

    /// Keeps the workers still to be replaced (`pending`): the others left
    /// otherwise (they exited, or their recycle was given up); the restart
    /// ends once none is left.
    pub(super) fn keep(&mut self, pending: impl Fn(WorkerId) -> bool) {
        self.batch.retain(|id| pending(*id));
        if self.batch.is_empty() {
            self.end();
        }
    }

    /// Ends the restart (every worker done, or a shutdown began), telling the
    /// waiters how many workers were restarted.
    pub(super) fn end(&mut self) {
        self.batch.clear();
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(self.restarted);
        }
    }
}

impl PrimaryContext {
    /// The rolling restart forgets the workers no longer to be replaced,
    /// and ends once none is left.
    pub(super) fn settle_rolling(&mut self) {
        let (recycler, registry) = (&self.recycler, &self.registry);
        self.rolling
            .keep(|id| recycler.is_asked(id) && registry.staying(id).is_some());
    }
}
