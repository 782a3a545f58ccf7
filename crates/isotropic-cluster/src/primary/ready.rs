//! Callers waiting for the workers of a `fork` to be ready.

use tokio::sync::oneshot;

use super::WorkerHandle;
use crate::WorkerId;
use crate::error::Error;

/// One caller: the workers it waits for, and those ready so far.
#[derive(Debug)]
struct Waiter {
    pending: Vec<WorkerId>,
    ready: Vec<WorkerHandle>,
    tx: oneshot::Sender<Result<Vec<WorkerHandle>, Error>>,
}

/// Every caller waiting.
#[derive(Debug, Default)]
pub(super) struct ReadyWaiters {
    waiters: Vec<Waiter>,
}

impl ReadyWaiters {
    /// Waits for the workers `ids`: the receiver gets them once every one
    /// joined the pool, by ascending id, or the error of the first one that
    /// will not (it exits, or is kept out of the pool).
    pub(super) fn wait(
        &mut self,
        ids: Vec<WorkerId>,
    ) -> oneshot::Receiver<Result<Vec<WorkerHandle>, Error>> {
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            pending: ids,
            ready: Vec::new(),
            tx,
        };
        if waiter.pending.is_empty() {
            let _ = waiter.tx.send(Ok(Vec::new()));
        } else {
            self.waiters.push(waiter);
        }
        rx
    }

    /// `worker` joined the pool.
    pub(super) fn joined(&mut self, worker: &WorkerHandle) {
        self.settle(worker.id(), |waiter| {
            waiter.ready.push(worker.clone());
            waiter.pending.is_empty().then(|| {
                let mut ready = std::mem::take(&mut waiter.ready);
                ready.sort_by_key(WorkerHandle::id);
                Ok(ready)
            })
        });
    }

    /// Worker `id` will not join the pool: it exited, or was kept out.
    pub(super) fn lost(&mut self, id: WorkerId) {
        self.settle(id, |_| Some(Err(Error::NotReady { worker_id: id })));
    }

    /// Takes `id` off every waiter's list; tells those that `outcome` ends.
    fn settle(
        &mut self,
        id: WorkerId,
        mut outcome: impl FnMut(&mut Waiter) -> Option<Result<Vec<WorkerHandle>, Error>>,
    ) {
        let mut index = 0;
        while index < self.waiters.len() {
            let waiter = &mut self.waiters[index];
            let Some(position) = waiter.pending.iter().position(|p| *p == id) else {
                index += 1;
                continue;
            };
            waiter.pending.swap_remove(position);
            match outcome(waiter) {
                Some(result) => {
                    let _ = self.waiters.swap_remove(index).tx.send(result);
                }
                None => index += 1,
            }
        }
    }
}
