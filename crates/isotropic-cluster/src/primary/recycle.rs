//! Drained recycling: a worker is replaced by one started in its slot, and
//! asked to leave only once that one is in the pool, one worker at a time,
//! so the pool is never short.

use std::collections::VecDeque;

use super::context::{PrimaryContext, Timer};
use super::state::Why;
use crate::{Error, WorkerId};

/// The recycles asked for, and the one under way (the primary's actor
/// drives it; this is the bookkeeping, pure).
#[derive(Debug, Default)]
pub(super) struct Recycler {
    /// Workers waiting for their turn, in the order asked.
    queue: VecDeque<WorkerId>,
    turn: Turn,
}

/// Where the recycle under way stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// None is under way.
    #[default]
    Idle,
    /// The replacement of `old` is being forked (into its slot).
    Forking { old: WorkerId },
    /// `new` was started in the slot of `old`; `old` is asked to leave once
    /// `new` is in the pool (`None`: `old` exited first, and `new` is its
    /// replacement).
    Surge {
        old: Option<WorkerId>,
        new: WorkerId,
    },
    /// A replacement failed: the next try waits for a timer.
    Paused,
}

/// What a worker's exit means for the recycle under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SurgeExit {
    /// Not part of it.
    Unrelated,
    /// The worker being recycled: its replacement is already starting.
    Old,
    /// The replacement, before it was in the pool: `old` (if still there) is
    /// tried again later.
    New { old: Option<WorkerId> },
}

impl Recycler {
    /// Queues `id` for a recycle; whether it was not queued or under way yet.
    pub(super) fn ask(&mut self, id: WorkerId) -> bool {
        if self.queue.contains(&id) || self.involves(id) {
            return false;
        }
        self.queue.push_back(id);
        true
    }

    /// Whether `id` is recycled, or is a replacement, right now.
    pub(super) fn involves(&self, id: WorkerId) -> bool {
        match self.turn {
            Turn::Forking { old, .. } => old == id,
            Turn::Surge { old, new } => old == Some(id) || new == id,
            Turn::Idle | Turn::Paused => false,
        }
    }

    /// The next worker to recycle and its slot, if none is under way;
    /// `live(id)` says which of the queued workers are still there to
    /// recycle (its slot).
    pub(super) fn next(
        &mut self,
        live: impl Fn(WorkerId) -> Option<u32>,
    ) -> Option<(WorkerId, u32)> {
        if self.turn != Turn::Idle {
            return None;
        }
        while let Some(old) = self.queue.pop_front() {
            if let Some(slot) = live(old) {
                self.turn = Turn::Forking { old };
                return Some((old, slot));
            }
        }
        None
    }

    /// The fork for the recycle of `old` started `new` (`None`: it started
    /// none, or failed: then the recycle pauses, to be tried again).
    pub(super) fn forked(&mut self, new: Option<WorkerId>) {
        if let Turn::Forking { old } = self.turn {
            self.turn = match new {
                Some(new) => Turn::Surge {
                    old: Some(old),
                    new,
                },
                None => {
                    self.queue.push_front(old);
                    Turn::Paused
                }
            };
        }
    }

    /// A fork for it was prevented: the recycle of `old` is given up.
    pub(super) fn give_up(&mut self) {
        if matches!(self.turn, Turn::Forking { .. }) {
            self.turn = Turn::Idle;
        }
    }

    /// Worker `id` joined the pool: if it is the replacement under way, the
    /// worker to ask to leave now (if it is still there).
    pub(super) fn joined(&mut self, id: WorkerId) -> Option<Option<WorkerId>> {
        match self.turn {
            Turn::Surge { old, new } if new == id => {
                self.turn = Turn::Idle;
                Some(old)
            }
            _ => None,
        }
    }

    /// Worker `id` is ready but kept out of the pool: whether it is the
    /// replacement under way (then the recycle is given up).
    pub(super) fn kept_out(&mut self, id: WorkerId) -> bool {
        let surge = matches!(self.turn, Turn::Surge { new, .. } if new == id);
        if surge {
            self.turn = Turn::Idle;
        }
        surge
    }

    /// Worker `id` exited.
    pub(super) fn exited(&mut self, id: WorkerId) -> SurgeExit {
        self.queue.retain(|queued| *queued != id);
        match self.turn {
            Turn::Surge { old, new } if old == Some(id) => {
                self.turn = Turn::Surge { old: None, new };
                SurgeExit::Old
            }
            Turn::Surge { old, new } if new == id => {
                self.turn = match old {
                    Some(old) => {
                        self.queue.push_front(old);
                        Turn::Paused
                    }
                    None => Turn::Idle,
                };
                SurgeExit::New { old }
            }
            _ => SurgeExit::Unrelated,
        }
    }

    /// The pause after a failed replacement is over.
    pub(super) fn resume(&mut self) {
        if self.turn == Turn::Paused {
            self.turn = Turn::Idle;
        }
    }

    /// Forgets `id` (it leaves for good): not recycled. If it is part of
    /// the recycle under way, that recycle ends, and the other worker of
    /// its slot (the recycled one, or its replacement, if still there) is
    /// returned: it leaves for good too.
    pub(super) fn forget(&mut self, id: WorkerId) -> Option<WorkerId> {
        self.queue.retain(|queued| *queued != id);
        let Turn::Surge { old, new } = self.turn else {
            return None;
        };
        if old != Some(id) && new != id {
            return None;
        }
        self.turn = Turn::Idle;
        if new == id { old } else { Some(new) }
    }

    /// Ends every recycle (a shutdown).
    pub(super) fn end(&mut self) {
        self.queue.clear();
        self.turn = Turn::Idle;
    }
}

impl PrimaryContext {
    /// Recycles worker `id` without leaving the pool short: a replacement
    /// is started in its slot, and `id` is asked to leave (as by
    /// [`stop_worker`](Self::stop_worker), but not replaced again) only once
    /// the replacement is in the pool. One recycle at a time: others wait
    /// their turn in the order asked; asking again for a worker that waits
    /// does nothing. A replacement that exits or cannot start before it is
    /// ready is tried again, paced by the restart policy's backoff, while
    /// `id` keeps working. A shutdown ends every recycle; a fork prevented
    /// by a handler gives this one up, and so does a replacement kept out of
    /// the pool by a handler (it leaves, not replaced).
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchWorker`] when no live worker that is not leaving has
    /// this id.
    pub fn recycle_worker(&mut self, id: WorkerId) -> Result<(), Error> {
        if self.registry.staying(id).is_none() {
            return Err(Error::NoSuchWorker { worker_id: id });
        }
        if self.phase.is_active() && self.recycler.ask(id) {
            self.recycle_next();
        }
        Ok(())
    }

    /// Starts the next recycle's replacement, unless one is under way.
    pub(super) fn recycle_next(&mut self) {
        // A rollout replaces every worker anyway: recycles wait for its end.
        if self.rollouts.under_way() {
            return;
        }
        loop {
            let registry = &self.registry;
            let staying = |id| registry.staying(id).map(|entry| entry.worker.slot());
            let Some((old, slot)) = self.recycler.next(staying) else {
                return;
            };
            tracing::info!(worker_id = %old, "Recycling a worker: its replacement first");
            self.fork_slot = Some(slot);
            let forked = self.fork_ids(1);
            self.fork_slot = None;
            match forked {
                Ok(ids) if !ids.is_empty() => return self.recycler.forked(ids.first().copied()),
                Ok(_) => self.recycler.give_up(),
                Err(_) => {
                    self.recycler.forked(None);
                    return self.pause_recycling();
                }
            }
        }
    }

    /// Whether a limit worker `id` reached may be acted on now: it stays,
    /// and no recycle involves it (as the recycled worker or its
    /// replacement). A limit reached meanwhile is not acted on, and is seen
    /// again later (at the next sample, or request).
    pub(super) fn recyclable(&self, id: WorkerId) -> bool {
        self.registry.staying(id).is_some() && !self.recycler.involves(id)
    }

    /// Worker `id` joined the pool: if it replaces a recycled worker, that
    /// one leaves now, and the next recycle begins.
    pub(super) fn recycle_joined(&mut self, id: WorkerId) {
        let Some(old) = self.recycler.joined(id) else {
            return;
        };
        if let Some(old) = old.and_then(|old| self.registry.connected(old)) {
            tracing::info!(worker_id = %old.id(), replacement = %id, "Replacement ready: the recycled worker leaves");
            self.leave_pool(&old);
            self.ask_to_leave(old.id(), Why::Replaced);
        }
        self.recycle_next();
    }

    /// Worker `id` is ready but was kept out of the pool (a handler
    /// prevented its `workerReady` or `addWorker`): if it is the replacement
    /// of a recycle, that recycle is given up (the recycled worker keeps
    /// working), the replacement leaves, not replaced, and the next recycle
    /// begins.
    pub(super) fn recycle_kept_out(&mut self, id: WorkerId) {
        if self.registry.staying(id).is_none() || !self.recycler.kept_out(id) {
            return;
        }
        tracing::warn!(worker_id = %id, "A recycle's replacement was kept out of the pool: it leaves, the recycle is given up");
        self.ask_to_leave(id, Why::Replaced);
        self.recycle_next();
    }

    /// Worker `id` exited: whether a recycle already replaces it (its
    /// replacement runs), or it was a replacement whose recycled worker
    /// still works (that one is tried again later).
    pub(super) fn recycle_exited(&mut self, id: WorkerId) -> bool {
        match self.recycler.exited(id) {
            SurgeExit::Unrelated | SurgeExit::New { old: None } => false,
            SurgeExit::Old => true,
            SurgeExit::New { old: Some(old) } => {
                tracing::warn!(worker_id = %old, replacement = %id, "The replacement left before it was ready: the worker keeps working, to be recycled later");
                self.pause_recycling();
                true
            }
        }
    }

    /// After a replacement that failed: the next try waits, as a restart
    /// would.
    fn pause_recycling(&mut self) {
        let (delay, _) = self.backoff.on_failure(&self.config.restart);
        self.timers.insert(Timer::Recycle, delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> WorkerId {
        WorkerId::new(n)
    }

    fn slot_of(n: u64) -> impl Fn(WorkerId) -> Option<u32> {
        move |id: WorkerId| (id.get() <= n).then_some(7)
    }

    #[test]
    fn one_recycle_at_a_time_in_the_order_asked() {
        let mut recycler = Recycler::default();
        assert!(recycler.ask(id(1)));
        assert!(recycler.ask(id(2)));
        assert!(!recycler.ask(id(1)), "asked twice, queued once");
        assert_eq!(recycler.next(slot_of(9)), Some((id(1), 7)), "and its slot");
        assert_eq!(recycler.next(slot_of(9)), None, "one under way");
        recycler.forked(Some(id(3)));
        assert!(
            !recycler.ask(id(3)),
            "a replacement under way is not queued"
        );
        assert_eq!(recycler.next(slot_of(9)), None);
        assert_eq!(recycler.joined(id(2)), None, "not the replacement");
        assert_eq!(recycler.joined(id(3)), Some(Some(id(1))));
        assert_eq!(recycler.next(slot_of(9)), Some((id(2), 7)));
    }

    #[test]
    fn a_replacement_that_fails_pauses_and_the_old_worker_is_tried_again() {
        let mut recycler = Recycler::default();
        recycler.ask(id(1));
        recycler.next(slot_of(9));
        recycler.forked(Some(id(2)));
        assert_eq!(recycler.exited(id(2)), SurgeExit::New { old: Some(id(1)) });
        assert_eq!(recycler.next(slot_of(9)), None, "paused");
        recycler.resume();
        assert_eq!(recycler.next(slot_of(9)), Some((id(1), 7)));
        recycler.forked(None);
        assert_eq!(recycler.next(slot_of(9)), None, "a failed start pauses too");
        recycler.resume();
        assert_eq!(recycler.next(slot_of(9)), Some((id(1), 7)));
    }

    #[test]
    fn an_old_worker_that_exits_first_is_replaced_by_the_one_under_way() {
        let mut recycler = Recycler::default();
        recycler.ask(id(1));
        recycler.next(slot_of(9));
        recycler.forked(Some(id(2)));
        assert_eq!(recycler.exited(id(1)), SurgeExit::Old);
        recycler.ask(id(5));
        assert_eq!(recycler.next(slot_of(9)), None, "still one at a time");
        assert_eq!(recycler.joined(id(2)), Some(None), "nobody left to stop");
        assert_eq!(recycler.next(slot_of(9)), Some((id(5), 7)));
    }

    #[test]
    fn workers_gone_or_forgotten_are_skipped_and_a_shutdown_ends_everything() {
        let mut recycler = Recycler::default();
        for n in [12, 1, 2, 3] {
            recycler.ask(id(n));
        }
        assert_eq!(recycler.forget(id(1)), None);
        assert_eq!(recycler.exited(id(2)), SurgeExit::Unrelated);
        assert_eq!(
            recycler.next(slot_of(9)),
            Some((id(3), 7)),
            "12 is not live"
        );
        recycler.give_up();
        assert!(recycler.ask(id(3)), "given up: it may be asked again");
        recycler.ask(id(4));
        recycler.end();
        assert_eq!(recycler.next(slot_of(9)), None);
    }
}
