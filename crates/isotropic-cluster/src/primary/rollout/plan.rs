//! The rules of a rollout, pure: given the workers there are, which to
//! start and which to ask to leave, so that the pool moves to the target
//! generation without falling below its floor of available workers (as
//! Kubernetes' `maxSurge` and `maxUnavailable` bound a Deployment's).

use crate::WorkerId;

/// A worker that is not leaving, as a rollout sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    pub(super) id: WorkerId,
    pub(super) slot: u32,
    pub(super) generation: u64,
    /// It serves: in the pool (and, for the target generation, up for the
    /// minimum uptime and healthy).
    pub(super) available: bool,
}

/// How far a rollout may stray from the pool's size.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// The pool's size: slots 0 to `size - 1`.
    pub(super) size: usize,
    /// Workers started beyond `size`.
    pub(super) surge: usize,
    /// Available workers below `size`.
    pub(super) max_unavailable: usize,
}

/// What to do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Steps {
    /// Slots to start a worker of the target generation in.
    pub(super) start: Vec<u32>,
    /// Workers of other generations, or beyond the pool's size, to ask to
    /// leave (drained).
    pub(super) retire: Vec<WorkerId>,
    /// Every slot runs an available worker of the target generation, and
    /// no other worker is left (none beyond the pool's size either).
    pub(super) done: bool,
}

/// The next steps towards `target` for `workers`, the slots in `owed`
/// waiting for a delayed replacement (left to it).
pub(super) fn plan(target: u64, limits: Limits, workers: &[Seen], owed: &[u32]) -> Steps {
    let size = u32::try_from(limits.size).unwrap_or(u32::MAX);
    let covered =
        |slot| (workers.iter()).any(|w| w.slot == slot && w.generation == target && w.available);
    let floor = limits.size.saturating_sub(limits.max_unavailable);
    let mut available = workers.iter().filter(|w| w.available).count();
    // Those of other generations, and those beyond the pool's size (its
    // slots were taken out, or emptied and filled again): one too many.
    let beyond = |w: &Seen| w.slot >= size;
    let mut old: Vec<&Seen> = (workers.iter())
        .filter(|w| w.generation != target || beyond(w))
        .collect();
    // Those that serve nobody first, then those not needed in their slot.
    old.sort_by_key(|w| (w.available, !(beyond(w) || covered(w.slot)), w.slot));
    let mut retire = Vec::new();
    for worker in &old {
        if !worker.available {
            retire.push(worker.id);
        } else if available > floor {
            available -= 1;
            retire.push(worker.id);
        }
    }
    let staying = |w: &&Seen| !retire.contains(&w.id);
    let mut live = workers.iter().filter(staying).count();
    let mut free: Vec<u32> = (0..size)
        .filter(|slot| !owed.contains(slot))
        .filter(|slot| {
            !workers
                .iter()
                .any(|w| w.slot == *slot && w.generation == target)
        })
        .collect();
    // Empty slots first.
    free.sort_by_key(|slot| {
        (
            workers.iter().filter(staying).any(|w| w.slot == *slot),
            *slot,
        )
    });
    let start: Vec<u32> = free
        .into_iter()
        .take((limits.size + limits.surge).saturating_sub(live))
        .collect();
    live += start.len();
    let done = old.is_empty() && owed.is_empty() && (0..size).all(covered) && live >= limits.size;
    Steps {
        start,
        retire,
        done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: u64, slot: u32, generation: u64, available: bool) -> Seen {
        Seen {
            id: WorkerId::new(id),
            slot,
            generation,
            available,
        }
    }

    fn limits(size: usize, surge: usize, max_unavailable: usize) -> Limits {
        Limits {
            size,
            surge,
            max_unavailable,
        }
    }

    fn ids(ids: &[u64]) -> Vec<WorkerId> {
        ids.iter().map(|id| WorkerId::new(*id)).collect()
    }

    /// Runs a rollout of `size` workers of generation 1 to generation 2, each
    /// new worker available as soon as it starts; checks the floor and the
    /// ceiling at every step, and returns how many steps it took.
    fn roll(size: usize, surge: usize, max_unavailable: usize) -> usize {
        let limits = limits(size, surge, max_unavailable);
        let mut workers: Vec<Seen> = (0..size)
            .map(|slot| seen(slot as u64 + 1, slot as u32, 1, true))
            .collect();
        let mut next = size as u64 + 1;
        for step in 1..=4 * size + 4 {
            let steps = plan(2, limits, &workers, &[]);
            if steps.done {
                assert!(workers.iter().all(|w| w.generation == 2 && w.available));
                return step;
            }
            workers.retain(|w| !steps.retire.contains(&w.id));
            let serving = workers.iter().filter(|w| w.available).count();
            assert!(
                serving >= size - max_unavailable,
                "{serving} serve at step {step}"
            );
            for slot in steps.start {
                workers.push(seen(next, slot, 2, false));
                next += 1;
            }
            assert!(workers.len() <= size + surge, "{} live", workers.len());
            // Every new worker gets ready before the next look.
            for worker in &mut workers {
                worker.available = true;
            }
        }
        panic!("no end");
    }

    #[test]
    fn a_surge_rollout_never_leaves_fewer_than_the_pool_available() {
        assert_eq!(roll(4, 1, 0), 6, "one slot at a time");
        assert_eq!(roll(4, 2, 0), 4, "two at a time");
        assert_eq!(roll(4, 0, 1), 5, "one taken out before its replacement");
        assert_eq!(roll(1, 1, 0), 3);
    }

    #[test]
    fn a_new_worker_not_available_yet_holds_the_old_one() {
        let workers = [
            seen(1, 0, 1, true),
            seen(2, 1, 1, true),
            seen(3, 0, 2, false),
        ];
        let steps = plan(2, limits(2, 1, 0), &workers, &[]);
        assert_eq!(
            steps,
            Steps::default(),
            "wait: at the surge, and nothing to retire"
        );
        let workers = [
            seen(1, 0, 1, true),
            seen(2, 1, 1, true),
            seen(3, 0, 2, true),
        ];
        let steps = plan(2, limits(2, 1, 0), &workers, &[]);
        assert_eq!(
            steps.retire,
            ids(&[1]),
            "the old worker of the covered slot"
        );
        assert_eq!(steps.start, [1]);
    }

    #[test]
    fn workers_that_serve_nobody_leave_first_and_empty_slots_fill_first() {
        // Slot 1 lost its worker; slot 2's old worker is not ready yet.
        let workers = [seen(1, 0, 1, true), seen(3, 2, 1, false)];
        let steps = plan(2, limits(3, 1, 0), &workers, &[]);
        assert_eq!(steps.retire, ids(&[3]));
        assert_eq!(steps.start, [1, 2, 0], "up to the surge, empty slots first");
        let steps = plan(2, limits(3, 1, 0), &workers, &[1]);
        assert_eq!(
            steps.start,
            [2, 0],
            "slot 1's delayed replacement is left to it"
        );
    }

    #[test]
    fn a_rollback_is_a_rollout_to_the_old_generation() {
        // Generation 2 failed: its worker in slot 0 serves, slot 1's exited.
        let workers = [seen(3, 0, 2, true), seen(2, 1, 1, true)];
        let steps = plan(1, limits(2, 1, 0), &workers, &[]);
        assert_eq!(steps.start, [0]);
        assert!(
            steps.retire.is_empty(),
            "it serves until its slot is covered"
        );
        let workers = [
            seen(3, 0, 2, true),
            seen(2, 1, 1, true),
            seen(4, 0, 1, true),
        ];
        let steps = plan(1, limits(2, 1, 0), &workers, &[]);
        assert_eq!(steps.retire, ids(&[3]));
        let workers = [seen(2, 1, 1, true), seen(4, 0, 1, true)];
        assert!(plan(1, limits(2, 1, 0), &workers, &[]).done);
    }

    #[test]
    fn workers_beyond_the_pool_leave_whatever_their_generation() {
        // Slot 0's worker was retired before a rollback (or during it):
        // slot 0 is filled again, so slot 2's worker is one too many.
        let workers = [
            seen(2, 1, 1, true),
            seen(3, 2, 1, true),
            seen(4, 0, 1, true),
        ];
        let steps = plan(1, limits(2, 1, 0), &workers, &[]);
        assert_eq!(steps.retire, ids(&[3]));
        assert!(!steps.done, "done once it left");
        let workers = [seen(2, 1, 1, true), seen(4, 0, 1, true)];
        assert!(plan(1, limits(2, 1, 0), &workers, &[]).done);
    }

    #[test]
    fn an_empty_pool_is_rolled_out_at_once_and_scaled_down_slots_are_not_filled() {
        assert!(plan(2, limits(0, 1, 0), &[], &[]).done);
        let workers = [seen(1, 0, 2, true), seen(2, 5, 1, true)];
        let steps = plan(2, limits(1, 1, 0), &workers, &[]);
        assert_eq!((steps.start, steps.retire), (vec![], ids(&[2])));
    }
}
