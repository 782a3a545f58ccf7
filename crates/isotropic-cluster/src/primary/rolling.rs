//! A rolling restart: the ready workers are stopped one at a time, each once
//! the previous one's replacement is ready, so that at most one is missing.

use std::collections::VecDeque;

use tokio::sync::oneshot;

use super::context::PrimaryContext;
use crate::WorkerId;

/// Where a rolling restart stands (the primary's actor drives it).
#[derive(Debug, Default)]
pub(super) struct Rolling {
    /// Workers still to restart.
    pending: VecDeque<WorkerId>,
    /// A stopped worker's replacement is awaited.
    waiting: bool,
    /// Workers stopped so far in this restart.
    restarted: usize,
    /// Told the count when the restart ends.
    waiters: Vec<oneshot::Sender<usize>>,
}

impl Rolling {
    /// Begins a restart of `ready` (or begins again: a worker already
    /// stopped is not counted twice, its replacement still awaited); whether
    /// the next worker may be stopped now (no replacement is awaited).
    pub(super) fn begin(&mut self, ready: VecDeque<WorkerId>) -> bool {
        if !self.waiting {
            self.restarted = 0;
        }
        self.pending = ready;
        !self.waiting
    }

    /// Someone to tell when this restart ends.
    pub(super) fn wait(&mut self) -> oneshot::Receiver<usize> {
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        rx
    }

    /// The next worker to stop.
    pub(super) fn next(&mut self) -> Option<WorkerId> {
        self.pending.pop_front()
    }

    /// A worker was stopped: its replacement is awaited.
    pub(super) fn stopped(&mut self) {
        self.waiting = true;
        self.restarted += 1;
    }

    /// Whether a replacement was awaited (a worker just became ready): then
    /// it is time for the next.
    pub(super) fn take_waiting(&mut self) -> bool {
        std::mem::take(&mut self.waiting)
    }

    /// Ends the restart (every worker done, or a shutdown began), telling the
    /// waiters how many workers were restarted.
    pub(super) fn end(&mut self) {
        self.pending.clear();
        self.waiting = false;
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(self.restarted);
        }
    }
}

impl PrimaryContext {
    /// A worker exited and is not replaced: a rolling restart that waits for
    /// a replacement goes on if none can come any more (none is starting,
    /// none is owed): the one it waited for was retired, or exited and was
    /// not replaced, before it was ready.
    pub(super) fn roll_unless_awaited(&mut self) {
        if self.owed.is_empty() && !self.registry.any_starting() && self.rolling.take_waiting() {
            self.roll();
        }
    }
}
