//! Rollouts: a rolling restart moves the pool to a new release of the
//! workers' program slot by slot, each new worker available before an old
//! one leaves (within the surge and unavailability limits); a new worker
//! that fails (exits early, never gets ready, fails its health check) rolls
//! the pool back to the last release rolled out whole.

mod plan;
mod release;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::config::{Config, HealthCheck};
use super::context::{PrimaryContext, Timer};
use super::events::{
    RestartIntensityExceeded, RolledBack, RolloutComplete, RolloutFailed, RolloutFailure,
    RolloutStarted,
};
use super::input::Input;
use super::metrics::RolloutStep;
use super::registry::Entry;
use super::state::{AfterExit, Why};
use crate::events;
use crate::{Error, WorkerId};
use plan::{Limits, Seen};
pub(crate) use release::Release;

/// How long a worker of a rollout has to get ready when no ready timeout is
/// configured: a rollout never waits for ever.
pub(crate) const ROLLOUT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How a rollout ended: the workers it replaced, or the generation that
/// failed and why (it was rolled back).
pub(super) type Outcome = Result<usize, (u64, RolloutFailure)>;

/// The releases, and the rollout under way.
#[derive(Debug)]
pub(super) struct Rollouts {
    /// The last release rolled out whole: what replacements, recycles and
    /// new slots run.
    stable: Arc<Release>,
    /// The program to find anew for each release, where, and whether to
    /// hold its file.
    program: PathBuf,
    search: Option<OsString>,
    dir: Option<PathBuf>,
    hold: bool,
    /// The newest generation begun.
    newest: u64,
    under_way: Option<Rollout>,
    /// Told how the rollout ended.
    waiters: Vec<oneshot::Sender<Outcome>>,
}

/// A rollout under way.
#[derive(Debug)]
struct Rollout {
    /// Where it goes: the new release, or the stable one when rolling back.
    target: Arc<Release>,
    /// The generation that failed, and why, while rolling back.
    failed: Option<(u64, RolloutFailure)>,
    /// The pool's size.
    size: usize,
    /// The last worker id given before it began: those workers are proven
    /// (going back).
    began_after: u64,
    /// Workers of the pool it asked to leave.
    replaced: usize,
    /// Its workers that joined the pool, and those that passed their health
    /// check.
    joined: HashSet<WorkerId>,
    healthy: HashSet<WorkerId>,
    /// Its workers stopped for not being ready in time.
    not_ready: HashMap<WorkerId, Duration>,
    /// Going back, after a worker of the rollback failed: no worker starts
    /// before then (the restart policy's backoff).
    paused_until: Option<Instant>,
}

impl Rollouts {
    /// The first release of `config`'s program.
    pub(super) fn new(config: &Config) -> Self {
        let program = config.program.clone().unwrap_or_else(own_program);
        let search = (config.envs.iter())
            .find(|(key, _)| key == "PATH")
            .map_or_else(|| std::env::var_os("PATH"), |(_, value)| value.clone());
        // Another user could not reach the held file through `/proc`.
        let hold = config.uid.is_none() && config.gid.is_none();
        let dir = config.current_dir.clone();
        let stable = Arc::new(Release::new(
            1,
            &program,
            search.as_deref(),
            dir.as_deref(),
            hold,
        ));
        Self {
            stable,
            program,
            search,
            dir,
            hold,
            newest: 1,
            under_way: None,
            waiters: Vec::new(),
        }
    }

    /// The release workers start from outside a rollout.
    pub(super) fn stable(&self) -> &Arc<Release> {
        &self.stable
    }

    /// Whether a rollout is under way.
    pub(super) fn under_way(&self) -> bool {
        self.under_way.is_some()
    }

    /// The pool's size a rollout holds (a slot may be empty meanwhile).
    pub(super) fn size(&self) -> Option<usize> {
        self.under_way.as_ref().map(|rollout| rollout.size)
    }

    /// A rollout under way holds `size` slots now; whether one is.
    pub(super) fn resize(&mut self, size: usize) -> bool {
        self.under_way
            .as_mut()
            .map(|rollout| rollout.size = size)
            .is_some()
    }

    /// Someone to tell when the rollout under way (or the next) ends.
    pub(super) fn wait(&mut self) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        rx
    }

    /// Ends the rollout (done, or a shutdown began), telling the waiters.
    pub(super) fn end(&mut self) {
        let outcome = match self.under_way.take() {
            Some(Rollout {
                failed: Some(failed),
                ..
            }) => Err(failed),
            Some(rollout) => Ok(rollout.replaced),
            None => Ok(0),
        };
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(outcome.clone());
        }
    }

    /// Worker `id` was stopped for not being ready within `after`.
    pub(super) fn not_ready(&mut self, id: WorkerId, after: Duration) {
        if let Some(rollout) = &mut self.under_way {
            rollout.not_ready.insert(id, after);
        }
    }
}

/// The worker whose failure `reason` is, if one is.
fn failed_worker(reason: &RolloutFailure) -> Option<WorkerId> {
    match reason {
        RolloutFailure::Exited { worker, .. }
        | RolloutFailure::NotReady { worker, .. }
        | RolloutFailure::Unhealthy { worker, .. }
        | RolloutFailure::KeptOut { worker } => Some(*worker),
        RolloutFailure::CannotStart { .. } => None,
    }
}

/// The primary's own program, by the path it was started from (so that a
/// new release finds a new build there); itself, if that path is gone.
fn own_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .filter(|path| path.exists())
        .unwrap_or_else(|| "/proc/self/exe".into())
}

impl PrimaryContext {
    /// Rolls the pool out to a new release of the workers' program (found
    /// anew: a deploy may have replaced it), slot by slot: a new worker is
    /// started in a slot, and once it is available (in the pool, up for the
    /// [minimum uptime](super::PrimaryBuilder::min_uptime), healthy if a
    /// [health check](super::PrimaryBuilder::health_check) is set) an old
    /// worker is asked to leave, drained: at most
    /// [`surge`](super::PrimaryBuilder::surge) workers beyond the pool's
    /// size, never fewer than [`max_unavailable`](super::PrimaryBuilder::max_unavailable)
    /// below it. Published as `rolloutStarted`, then `rolloutComplete`.
    ///
    /// A new worker that exits before its minimum uptime, is not ready
    /// within the ready timeout (60 s unless set), or fails its health check
    /// fails the rollout (`rolloutFailed`): the old release takes back every
    /// slot the same way, started from its own program file, held open, and
    /// `rolledBack` follows. A restart asked for during a rollout restarts
    /// it for the newest release: two rollouts never overlap. A shutdown
    /// ends it. Workers that exit meanwhile are replaced by the rollout
    /// (when the restart policy says, after its delay); drained recycles
    /// wait for the rollout's end.
    pub fn restart_workers(&mut self) {
        if !self.phase.is_active() {
            return self.rollouts.end();
        }
        let size = self.pool_size();
        let rollouts = &mut self.rollouts;
        rollouts.newest += 1;
        let generation = rollouts.newest;
        let release = Release::new(
            generation,
            &rollouts.program,
            rollouts.search.as_deref(),
            rollouts.dir.as_deref(),
            rollouts.hold,
        );
        let from = rollouts.stable.generation();
        let replaced = self.rollouts.under_way.take().map_or(0, |r| r.replaced);
        tracing::info!(generation, from, "Rolling out a new release");
        self.rollouts.under_way = Some(Rollout {
            target: Arc::new(release),
            failed: None,
            size,
            began_after: self.next_id,
            replaced,
            joined: HashSet::new(),
            healthy: HashSet::new(),
            not_ready: HashMap::new(),
            paused_until: None,
        });
        self.metrics.pool.rollout(RolloutStep::Started);
        events::publish(self, RolloutStarted { generation, from });
        self.rollout_step();
    }

    /// Takes the next steps of the rollout under way, if any.
    pub(super) fn rollout_step(&mut self) {
        let Some(rollout) = &self.rollouts.under_way else {
            return;
        };
        if !self.phase.is_active() {
            return;
        }
        let target = rollout.target.generation();
        let seen: Vec<Seen> = (self.registry.entries().into_iter())
            .filter(|entry| entry.state.staying())
            .map(|entry| Seen {
                id: entry.worker.id(),
                slot: entry.worker.slot(),
                generation: entry.release.generation(),
                available: self.registry.in_pool(entry.worker.id())
                    && (entry.release.generation() != target || self.proven(entry)),
            })
            .collect();
        let limits = Limits {
            size: rollout.size,
            surge: self.config.surge,
            max_unavailable: self.config.max_unavailable,
        };
        let paused = (rollout.paused_until).is_some_and(|until| Instant::now() < until);
        let owed: Vec<u32> = self.owed.slots().collect();
        let steps = plan::plan(target, limits, &seen, &owed);
        for id in steps.retire {
            if let Some(worker) = self.registry.connected(id) {
                if self.registry.in_pool(id)
                    && let Some(rollout) = &mut self.rollouts.under_way
                {
                    rollout.replaced += 1;
                }
                self.leave_pool(&worker);
            }
            self.ask_to_leave(id, Why::Replaced);
        }
        if steps.done {
            return self.rollout_done();
        }
        if paused {
            return;
        }
        for slot in steps.start {
            if let Err(error) = self.rollout_start(slot) {
                return self.rollout_failed(RolloutFailure::CannotStart { error });
            }
        }
    }

    /// Whether worker `entry`, of the rollout's target release, is proven:
    /// it was there before the rollout began (going back), or it joined the
    /// pool, is up for the minimum uptime, and passed its health check (if
    /// one is set, and the rollout goes forward).
    fn proven(&self, entry: &Entry) -> bool {
        let Some(rollout) = &self.rollouts.under_way else {
            return true;
        };
        let id = entry.worker.id();
        id.get() <= rollout.began_after
            || rollout.joined.contains(&id)
                && entry.started.elapsed() >= self.config.min_uptime
                && (self.config.health_check.is_none()
                    || rollout.failed.is_some()
                    || rollout.healthy.contains(&id))
    }

    /// Starts a worker of the rollout's target release in `slot`.
    fn rollout_start(&mut self, slot: u32) -> Result<(), Error> {
        let Some(rollout) = &self.rollouts.under_way else {
            return Ok(());
        };
        self.fork_slot = Some(slot);
        self.fork_release = Some(rollout.target.clone());
        let forked = self.fork_ids(1);
        self.fork_slot = None;
        self.fork_release = None;
        let id = *forked?.first().ok_or(Error::Prevented { event: "fork" })?;
        if self.config.ready_timeout.is_none() {
            (self.timers).insert(
                Timer::Ready(id, ROLLOUT_READY_TIMEOUT),
                ROLLOUT_READY_TIMEOUT,
            );
        }
        Ok(())
    }

    /// A worker of the rollout failed: the rollout goes back to the stable
    /// release (when already going back, the next try waits a backoff and
    /// counts towards the restart intensity).
    fn rollout_failed(&mut self, reason: RolloutFailure) {
        let stable = self.rollouts.stable.clone();
        let Some(rollout) = &mut self.rollouts.under_way else {
            return;
        };
        if rollout.failed.is_some() {
            tracing::warn!(%reason, "A worker of the rollback failed: trying again");
            let (delay, _) = self.backoff.on_failure(&self.config.restart);
            rollout.paused_until = Some(Instant::now() + delay);
            self.timers.insert(Timer::Rollout, delay);
            // Its tries are restarts: too many give up (or slow down), as
            // the restart intensity says.
            let policy = self.config.restart;
            if let Some((restarts, period, then)) = self.backoff.over_intensity(&policy) {
                // (Slowing down delays the next try in the failed worker's slot.)
                self.pacing = (failed_worker(&reason))
                    .and_then(|id| self.registry.get(id))
                    .map(|entry| entry.worker.slot());
                let exceeded = RestartIntensityExceeded {
                    restarts,
                    period,
                    then,
                };
                events::publish(self, exceeded);
            }
            return;
        }
        let generation = rollout.target.generation();
        tracing::error!(generation, %reason, "The rollout failed: rolling back");
        rollout.failed = Some((generation, reason.clone()));
        rollout.target = stable.clone();
        // Its workers in the pool now are proven once up long enough.
        rollout.joined = (self.registry.entries().into_iter())
            .filter(|entry| entry.release.generation() == stable.generation())
            .map(|entry| entry.worker.id())
            .filter(|id| self.registry.in_pool(*id))
            .collect();
        self.timers.insert(Timer::Rollout, self.config.min_uptime);
        let to = stable.generation();
        self.metrics.pool.rollout(RolloutStep::Failed);
        events::publish(
            self,
            RolloutFailed {
                generation,
                to,
                reason,
            },
        );
        self.rollout_step();
    }

    /// The rollout reached its target. It ends (its waiters are told)
    /// before its event is published: a handler may begin the next.
    fn rollout_done(&mut self) {
        let Some(rollout) = &self.rollouts.under_way else {
            return;
        };
        let generation = rollout.target.generation();
        let failed = rollout.failed.as_ref().map(|(failed, _)| *failed);
        let replaced = rollout.replaced;
        if failed.is_none() {
            self.rollouts.stable = rollout.target.clone();
        }
        self.rollouts.end();
        match failed {
            Some(failed) => {
                tracing::info!(generation, failed, "Rolled back");
                events::publish(self, RolledBack { generation, failed });
            }
            None => {
                tracing::info!(generation, replaced, "Rolled out");
                self.metrics.pool.rollout(RolloutStep::Completed);
                events::publish(
                    self,
                    RolloutComplete {
                        generation,
                        replaced,
                    },
                );
            }
        }
        self.recycle_next();
    }

    /// Worker `id` joined the pool: if it is of the rollout's target, it is
    /// proven once up for the minimum uptime (looked at then), and its
    /// health check begins.
    pub(super) fn rollout_joined(&mut self, id: WorkerId) {
        let Some(rollout) = &mut self.rollouts.under_way else {
            return;
        };
        let Some(entry) = self.registry.get(id) else {
            return;
        };
        if entry.release.generation() != rollout.target.generation() {
            return self.rollout_step();
        }
        rollout.joined.insert(id);
        let left = self
            .config
            .min_uptime
            .saturating_sub(entry.started.elapsed());
        self.timers.insert(Timer::Rollout, left);
        if let (Some(check), None) = (&self.config.health_check, &rollout.failed) {
            let deadline = self.config.ready_timeout.unwrap_or(ROLLOUT_READY_TIMEOUT);
            let checking = check.run(entry.worker.clone(), deadline);
            let inputs = self.inputs.clone();
            tokio::spawn(async move {
                let _ = inputs.send(Input::Health(id, checking.await)).await;
            });
        }
        self.rollout_step();
    }

    /// Worker `id` is ready but was kept out of the pool (a handler
    /// prevented its `workerReady` or `addWorker`): if it is of the
    /// rollout's target, it would hold its slot for ever; it leaves, not
    /// replaced, and the rollout fails (going back, it tries again after a
    /// backoff).
    pub(super) fn rollout_kept_out(&mut self, id: WorkerId) {
        let Some(rollout) = &self.rollouts.under_way else {
            return;
        };
        let target = rollout.target.generation();
        let ours = (self.registry.staying(id)).map(|entry| entry.release.generation());
        if ours != Some(target) {
            return;
        }
        tracing::warn!(worker_id = %id, "A worker of the rollout was kept out of the pool: it leaves");
        self.ask_to_leave(id, Why::Replaced);
        self.rollout_failed(RolloutFailure::KeptOut { worker: id });
    }

    /// Worker `id`'s health check said `result`.
    pub(super) fn rollout_health(&mut self, id: WorkerId, result: Result<(), String>) {
        let Some(rollout) = &mut self.rollouts.under_way else {
            return;
        };
        let ours = (self.registry.get(id))
            .is_some_and(|entry| entry.release.generation() == rollout.target.generation());
        if !ours || rollout.failed.is_some() {
            return;
        }
        match result {
            Ok(()) => {
                rollout.healthy.insert(id);
                self.rollout_step();
            }
            Err(reason) => self.rollout_failed(RolloutFailure::Unhealthy { worker: id, reason }),
        }
    }

    /// Worker `id` exits (`status`; `after`, as its state says): whether the
    /// rollout takes its slot over (no replacement by the restart policy): a
    /// worker of its target that was not proven yet and was not asked to
    /// leave (then the rollout fails, or, going back, tries again after a
    /// backoff), or of neither the target nor the stable release.
    pub(super) fn rollout_exited(
        &mut self,
        id: WorkerId,
        status: Option<std::process::ExitStatus>,
        after: AfterExit,
    ) -> bool {
        use std::os::unix::process::ExitStatusExt as _;
        let Some(rollout) = &self.rollouts.under_way else {
            return false;
        };
        let Some(entry) = self.registry.get(id) else {
            return false;
        };
        let generation = entry.release.generation();
        if generation != rollout.target.generation() {
            return generation != self.rollouts.stable.generation();
        }
        let asked = matches!(after, AfterExit::Nothing | AfterExit::Replace);
        if asked || self.proven(entry) {
            return false;
        }
        let uptime = entry.started.elapsed();
        let reason = match rollout.not_ready.get(&id) {
            Some(after) => RolloutFailure::NotReady {
                worker: id,
                after: *after,
            },
            None => RolloutFailure::Exited {
                worker: id,
                code: status.and_then(|s| s.code()),
                signal: status.and_then(|s| s.signal()).map(crate::Signal::from_raw),
                uptime,
            },
        };
        self.rollout_failed(reason);
        true
    }
}

/// Runs [`HealthCheck`]s: the check with its deadline.
impl HealthCheck {
    fn run(
        &self,
        worker: super::WorkerHandle,
        deadline: Duration,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let check = (self.0)(worker);
        async move {
            let start = Instant::now();
            tokio::time::timeout(deadline, check)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", start.elapsed())))
        }
    }
}
