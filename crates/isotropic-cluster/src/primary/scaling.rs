//! Scaling the pool at runtime: workers added, or taken out for good.

use super::context::PrimaryContext;
use super::state::Why;
use crate::{Error, WorkerId};

impl PrimaryContext {
    /// How many workers the pool holds: the slots of the workers that are
    /// not leaving (a worker and the replacement of its drained recycle
    /// share one), and the delayed replacements still to start.
    pub fn pool_size(&self) -> usize {
        (self.rollouts.size())
            .unwrap_or_else(|| self.registry.staying_by_slot().len() + self.owed.len())
    }

    /// Grows or shrinks the pool to `count` workers (see
    /// [`pool_size`](Self::pool_size)): forks the missing ones; or cancels
    /// delayed replacements, then asks the workers of the highest slots to
    /// leave gracefully (as a shutdown asks them), not to be replaced. The
    /// highest slots go first so that the slots stay 0 to `count - 1` (the
    /// newest workers hold them, unless replacements took lower ones).
    /// Does nothing once the primary is shut down.
    ///
    /// # Errors
    ///
    /// As [`fork`](Self::fork), when growing.
    pub fn scale_to(&mut self, count: usize) -> Result<(), Error> {
        if !self.phase.is_active() {
            return Ok(());
        }
        let slots = self.registry.staying_by_slot();
        let size = slots.len() + self.owed.len();
        // A rollout fills and empties the slots of its size.
        if self.resize_rollout(count) {
            tracing::info!(to = count, "Scaling during a rollout");
            let beyond = slots
                .into_iter()
                .filter(|(slot, _)| slot.0 as usize >= count);
            for id in beyond.flat_map(|(_, ids)| ids) {
                self.leave_for_good(id);
            }
            self.rollout_step();
            return Ok(());
        }
        if count > size {
            tracing::info!(from = size, to = count, "Scaling up");
            return self.fork(count - size).map(drop);
        }
        // The delayed replacements of the highest slots first.
        let cancelled = self.owed.cancel(size - count);
        let excess = size - count - cancelled;
        if excess > 0 {
            tracing::info!(from = size, to = count, "Scaling down");
        }
        for id in slots.into_values().take(excess).flatten() {
            self.leave_for_good(id);
        }
        Ok(())
    }

    /// Asks worker `id` to leave for good, gracefully (as a shutdown asks
    /// each): it is not replaced, and the pool shrinks by one (during a
    /// recycle or a rollout of its slot, the other worker of the slot leaves
    /// too).
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchWorker`] when no live worker that is not leaving has
    /// this id.
    pub fn retire_worker(&mut self, id: WorkerId) -> Result<(), Error> {
        let Some(entry) = self.registry.staying(id) else {
            return Err(Error::NoSuchWorker { worker_id: id });
        };
        let slot = std::cmp::Reverse(entry.worker.slot());
        if let Some(size) = self.rollouts.size() {
            self.resize_rollout(size.saturating_sub(1));
            let in_slot = self.registry.staying_by_slot().remove(&slot);
            for id in in_slot.into_iter().flatten() {
                self.leave_for_good(id);
            }
            self.rollout_step();
            return Ok(());
        }
        self.leave_for_good(id);
        Ok(())
    }

    /// The rollout under way holds `size` slots now (the delayed
    /// replacements of those beyond are cancelled); whether one is.
    fn resize_rollout(&mut self, size: usize) -> bool {
        let resized = self.rollouts.resize(size);
        if resized {
            self.owed
                .cancel_from(u32::try_from(size).unwrap_or(u32::MAX));
        }
        resized
    }

    /// Worker `id` leaves for good; so does the other worker of its slot
    /// during its recycle (the recycled one, or its replacement): the slot
    /// goes, and the next recycle begins.
    fn leave_for_good(&mut self, id: WorkerId) {
        let Some(worker) = self.registry.staying(id).map(|entry| entry.worker.clone()) else {
            return;
        };
        let partner = self.recycler.forget(id);
        self.leave_pool(&worker);
        self.ask_to_leave(id, Why::ScaledDown);
        if let Some(partner) = partner {
            self.leave_for_good(partner);
            self.recycle_next();
        }
    }
}
